//! The SDK's UniFFI bindings (clients/ffi) as an app uses them: the suite generates the Python
//! bindings from the built library with the workspace's `uniffi-bindgen`, and a Python
//! script sends, receives, reads, resumes by SYNC and pulls history through a real server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::path::PathBuf;
use std::process::Command;

/// `name` in this build's target directory (beside `roam`), which `scripts/test` builds.
fn built(name: &str) -> PathBuf {
    let path = roam_tests::roam_bin().with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p roam-ffi -p roam-uniffi-bindgen` (scripts/test does)",
        path.display()
    );
    path
}

#[test]
fn python_bindings_send_receive_and_sync_through_a_real_server() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed, so the Python bindings are not exercised");
        return;
    }
    let library = built("libroam_ffi.so");
    let bindgen = built("uniffi-bindgen");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bindgen)
        .args(["generate", "--library"])
        .arg(&library)
        .args(["--language", "python", "--no-format", "--out-dir"])
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uniffi-bindgen failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The generated module loads the library from its own directory.
    std::fs::copy(&library, dir.path().join("libroam_ffi.so")).unwrap();
    assert!(dir.path().join("roam.py").exists(), "no roam.py generated");

    let server = roam_tests::start("[messaging]\nsend_rate = 0\n");
    let edges = format!(
        "raw://{},wss://{}",
        server.addr("raw").unwrap(),
        server.addr("client_tcp").unwrap()
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clients/ffi/python/test_roam.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(edges)
        .arg(server.dev_cert())
        .arg(roam_tests::token(&server, "alice"))
        .arg(roam_tests::token(&server, "bob"))
        .env("PYTHONPATH", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "the Python bindings' test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
