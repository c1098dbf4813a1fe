//! Shared test harness: a store on each backend, isolated per test.
#![allow(dead_code)] // each test crate uses a different part of the harness

use roam_store::{NewMessage, Store, StoreOptions, StoreSpec, TimelineId, Tx, TxError};
use std::sync::atomic::{AtomicU64, Ordering};

/// A store for one test, plus a key prefix and a name tag unique to that test, so tests can
/// share one FoundationDB cluster.
pub(crate) struct Harness {
    pub(crate) store: Store,
    tag: String,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// `key` inside this test's private prefix.
    pub(crate) fn k(&self, key: &str) -> Vec<u8> {
        format!("test/{}/{key}", self.tag).into_bytes()
    }

    /// A user/group name unique to this test.
    pub(crate) fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    pub(crate) fn inbox(&self, user: &str) -> TimelineId {
        TimelineId::inbox(self.name(user))
    }

    pub(crate) fn outbox(&self, user: &str) -> TimelineId {
        TimelineId::outbox(self.name(user))
    }
}

/// Which backend a test instance runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Embedded,
    Fdb,
}

/// Opens a store for one test, or `None` (with a note on stderr) when the backend is not
/// available here.
pub(crate) async fn open(backend: Backend, options: StoreOptions) -> Option<Harness> {
    let tag = unique_tag();
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().expect("temp dir");
            let spec = StoreSpec::Embedded(dir.path().join("store"));
            let store = Store::open_with(spec, options)
                .await
                .expect("open embedded store");
            Some(Harness {
                store,
                tag,
                _dir: Some(dir),
            })
        }
        Backend::Fdb => {
            let Some(cluster_file) = std::env::var_os("FDB_CLUSTER_FILE") else {
                eprintln!(
                    "skipped: FDB_CLUSTER_FILE is not set (point it at a test cluster to run this)"
                );
                return None;
            };
            let store = Store::open_with(StoreSpec::Fdb(cluster_file.into()), options)
                .await
                .expect("open FoundationDB store");
            Some(Harness {
                store,
                tag,
                _dir: None,
            })
        }
    }
}

/// A tag unique across processes and runs (tests on one cluster must not collide).
fn unique_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}-{}-{}",
        nanos,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Commits `f` from another thread with its own runtime, and waits for it: how a test makes
/// "another client" commit while a transaction closure is in the middle of an attempt.
pub(crate) fn commit_elsewhere<T, F>(store: &Store, f: F) -> T
where
    F: FnMut(&mut Tx<'_>) -> Result<T, TxError> + Send + 'static,
    T: Send + 'static,
{
    let store = store.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(store.transact(f))
            .expect("concurrent commit")
    })
    .join()
    .expect("concurrent commit thread")
}

/// A small message with a recognisable body.
pub(crate) fn msg(id: u64, created_at_ms: u64) -> NewMessage {
    NewMessage {
        id,
        created_at_ms,
        body: format!("message {id}").into(),
    }
}

/// A pseudo-random u64 (splitmix64 over the clock): enough to vary kill points.
pub(crate) fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut z = u64::from(nanos).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Declares one `#[tokio::test]` per listed case and backend: `cases!(case_a, case_b)`
/// where each case is an `async fn(&Harness)` of the calling test crate. The FoundationDB
/// instances exist with the `fdb` feature; built without `FDB_CLUSTER_FILE` they are
/// ignored, so the runner reports them skipped (store/build.rs).
#[macro_export]
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = $crate::common::open($crate::common::Backend::Embedded, Default::default())
                        .await
                        .expect("the embedded backend is always available");
                    super::$case(&h).await;
                }
            )*
        }
        #[cfg(feature = "fdb")]
        mod fdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(fdb_cluster), ignore = "needs a FoundationDB cluster: build and run with FDB_CLUSTER_FILE set")]
                async fn $case() {
                    let h = $crate::common::open($crate::common::Backend::Fdb, Default::default())
                        .await
                        .expect("FDB_CLUSTER_FILE is set");
                    super::$case(&h).await;
                }
            )*
        }
    };
}
