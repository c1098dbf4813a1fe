//! The lean TLS record layer after a real handshake, fed a script of raw records, records
//! sealed under the peer's key (any inner type, content and padding), KeyUpdates with any
//! request value split over records, and our own writes at a tiny key limit: it must never
//! panic, every fault must name its alert, and sealed data must open to what was sealed.
//! The harness is `roam_tls::lean::fuzzing::run` (its documentation has the script format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    roam_tls::lean::fuzzing::run(data);
});
