//! # roam-tests — end-to-end tests against real `roam` processes
//!
//! Every test here starts the real binary (built by `cargo build --bins` before the suite,
//! see `scripts/test`) on a private data directory with ephemeral ports
//! ([`roam_client::child::ChildServer`]) and talks to it with real clients over loopback.
//! The tests live in `tests/tests/*.rs`; this library holds what they share.

use std::path::PathBuf;

use roam_client::child::ChildServer;

/// The `roam` binary of this build (`target/<profile>/roam`, next to the test's `deps/`).
pub fn roam_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join("roam");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bins` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Starts a private server with `extra_toml` added to its config.
pub fn start(extra_toml: &str) -> ChildServer {
    ChildServer::start(&roam_bin(), extra_toml).unwrap_or_else(|e| panic!("roam serve: {e}"))
}
