//! `uniffi-bindgen`, the version roam-ffi is built with (UniFFI's bindings must come from
//! the same UniFFI version as the library): `uniffi-bindgen generate --library
//! target/debug/libroam_ffi.so --language python --out-dir DIR`. See docs/sdk.md.

#![forbid(unsafe_code)]

fn main() {
    uniffi::uniffi_bindgen_main()
}
