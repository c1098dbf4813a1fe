//! Opening stores: spec strings, refusal of foreign or corrupt directories, reopening.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

mod common;

use common::msg;
use roam_store::{Store, StoreError, TimelineId};
use std::{fs, path::Path};

fn spec(dir: &Path) -> String {
    format!("embedded:{}", dir.display())
}

/// Every file under `dir` with its contents, to prove a refused open touched nothing.
fn snapshot_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

async fn expect_refused(dir: &Path, needle: &str) {
    let before = snapshot_tree(dir);
    let err = Store::open(&spec(dir)).await.unwrap_err();
    assert!(err.is_refused(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&dir.display().to_string()),
        "names the path: {text}"
    );
    assert!(text.contains(needle), "names the fault ({needle}): {text}");
    assert_eq!(
        snapshot_tree(dir),
        before,
        "a refused directory is left as it was"
    );
}

#[tokio::test]
async fn malformed_specs_are_rejected() {
    let err = Store::open("./data").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidSpec { .. }), "{err}");
    let err = Store::open("leveldb:/x").await.unwrap_err();
    assert!(err.to_string().contains("unknown backend"), "{err}");
}

#[cfg(not(feature = "fdb"))]
#[tokio::test]
async fn fdb_spec_without_the_feature_says_how_to_get_it() {
    let err = Store::open("fdb:/etc/foundationdb/fdb.cluster")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::FdbNotCompiled { .. }), "{err}");
    assert!(err.to_string().contains("--features fdb"), "{err}");
}

#[tokio::test]
async fn a_foreign_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("photos")).unwrap();
    fs::write(tmp.path().join("photos/cat.jpg"), b"meow").unwrap();
    fs::write(tmp.path().join("notes.txt"), b"important").unwrap();
    expect_refused(tmp.path(), "not a Roam store").await;
}

#[tokio::test]
async fn a_file_instead_of_a_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("store");
    fs::write(&file, b"x").unwrap();
    let err = Store::open(&spec(&file)).await.unwrap_err();
    assert!(
        err.is_refused() && err.to_string().contains("not a directory"),
        "{err}"
    );
}

async fn populated(dir: &Path) {
    let store = Store::open(&spec(dir)).await.unwrap();
    store
        .timelines()
        .append(&TimelineId::inbox("a"), msg(1, 0))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_corrupt_marker_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path()).await;
    fs::write(
        tmp.path().join("roam-store.meta"),
        b"format = roam-store\nschema = 99\n",
    )
    .unwrap();
    expect_refused(tmp.path(), "schema version 99").await;
    fs::write(tmp.path().join("roam-store.meta"), [0xde, 0xad, 0xbe, 0xef]).unwrap();
    expect_refused(tmp.path(), "not UTF-8").await;
}

#[tokio::test]
async fn a_corrupt_engine_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path()).await;
    fs::write(tmp.path().join("engine/version"), b"garbage!").unwrap();
    expect_refused(tmp.path(), "embedded engine cannot open").await;
}

#[tokio::test]
async fn a_missing_engine_is_refused_not_recreated() {
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path()).await;
    fs::remove_file(tmp.path().join("engine/version")).unwrap();
    expect_refused(tmp.path(), "missing").await;
    fs::remove_dir_all(tmp.path().join("engine")).unwrap();
    expect_refused(tmp.path(), "missing").await;
}

#[tokio::test]
async fn data_survives_a_reopen_and_the_directory_is_released_on_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/store");
    let inbox = TimelineId::inbox("a");
    for round in 1..=3u64 {
        let store = Store::open(&spec(&dir)).await.unwrap();
        let seq = store
            .timelines()
            .append(&inbox, msg(round, 0))
            .await
            .unwrap();
        assert_eq!(seq, round);
        let ids: Vec<u64> = store
            .timelines()
            .read(&inbox, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, (1..=round).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_directory_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Store::open(&spec(tmp.path())).await.unwrap();
    let err = Store::open(&spec(tmp.path())).await.unwrap_err();
    assert!(
        err.is_refused() && err.to_string().contains("another process"),
        "{err}"
    );
}

/// The nice value in a `/proc/.../stat` file.
#[cfg(target_os = "linux")]
fn nice_in(stat: &Path) -> i32 {
    let stat = fs::read_to_string(stat).unwrap();
    // After the command name's closing parenthesis, nice is the 17th field.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[16].parse().unwrap()
}

/// The nice value of every thread of this process named `name`.
#[cfg(target_os = "linux")]
fn nice_of_threads(name: &str) -> Vec<i32> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().path())
        .filter(|t| fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim_end() == name))
        .map(|t| nice_in(&t.join("stat")))
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_engines_background_threads_run_at_a_lower_priority() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&spec(dir.path())).await.unwrap();
    // A new thread names itself once it runs: give fjall's a moment (bounded).
    let mut workers = Vec::new();
    for _ in 0..200 {
        workers = nice_of_threads("fjall:worker");
        if !workers.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!workers.is_empty(), "fjall's workers are running");
    assert!(workers.iter().all(|n| *n == 5), "{workers:?}");
    assert_eq!(
        nice_in(Path::new("/proc/thread-self/stat")),
        0,
        "the thread that opened the store keeps its priority"
    );
    drop(store);
}
