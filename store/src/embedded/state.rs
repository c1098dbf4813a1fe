//! State shared by embedded transactions and the committer: the engine handles, the version
//! counters, the live read versions and the durable watermark.
//!
//! Versions are process-local commit counters (1, 2, ...), not stored. The committer bumps
//! `assigned` before applying a commit and `applied` after, so:
//! - a snapshot opened after reading `applied = v` contains every commit `<= v` (the read
//!   version used for conflict checks);
//! - a snapshot contains no commit above the `assigned` read after opening it (the version a
//!   read-only transaction waits to be durable before it returns, so nobody acts on data a
//!   crash could still take back).

use crate::StoreError;
use parking_lot::Mutex;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio::sync::watch;

use crate::stats::Counters;

pub(super) struct Shared {
    pub(super) db: fjall::Database,
    pub(super) kv: fjall::Keyspace,
    assigned: AtomicU64,
    applied: AtomicU64,
    /// Read version -> number of live transactions holding it.
    active: Mutex<BTreeMap<u64, usize>>,
    durable: watch::Sender<Durable>,
    /// What the store did (commits, fsyncs, retries).
    pub(super) counters: Counters,
}

/// The durable watermark, or why it stopped moving.
#[derive(Debug, Clone, Default)]
pub(super) struct Durable {
    pub(super) version: u64,
    pub(super) failure: Option<Arc<str>>,
}

impl Shared {
    pub(super) fn new(db: fjall::Database, kv: fjall::Keyspace) -> Self {
        Self {
            db,
            kv,
            assigned: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            active: Mutex::new(BTreeMap::new()),
            durable: watch::Sender::new(Durable::default()),
            counters: Counters::default(),
        }
    }

    /// Registers a new transaction's read version (the latest applied commit).
    pub(super) fn register_read(self: &Arc<Self>) -> ActiveRead {
        let mut active = self.active.lock();
        // Read under the lock, so the committer's history floor can never pass it.
        let version = self.applied.load(Ordering::Acquire);
        *active.entry(version).or_insert(0) += 1;
        ActiveRead {
            shared: self.clone(),
            version,
        }
    }

    /// The oldest read version still in use, or `latest` when none is.
    pub(super) fn oldest_read(&self, latest: u64) -> u64 {
        self.active.lock().keys().next().copied().unwrap_or(latest)
    }

    pub(super) fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::Acquire)
    }

    pub(super) fn set_assigned(&self, version: u64) {
        self.assigned.store(version, Ordering::Release);
    }

    pub(super) fn set_applied(&self, version: u64) {
        self.applied.store(version, Ordering::Release);
    }

    pub(super) fn publish_durable(&self, version: u64) {
        self.durable
            .send_modify(|d| d.version = d.version.max(version));
    }

    pub(super) fn publish_failure(&self, failure: Arc<str>) {
        self.durable.send_modify(|d| d.failure = Some(failure));
    }

    /// Waits until every commit `<= version` is on disk.
    pub(super) async fn wait_durable(&self, version: u64) -> Result<(), StoreError> {
        let reached = |d: &Durable| d.version >= version || d.failure.is_some();
        let state = if reached(&self.durable.borrow()) {
            self.durable.borrow().clone()
        } else {
            let mut rx = self.durable.subscribe();
            let state = rx.wait_for(reached).await.map_err(|_| StoreError::Closed)?;
            state.clone()
        };
        match state.failure {
            Some(failure) => Err(StoreError::Durability(failure)),
            None => Ok(()),
        }
    }
}

/// Keeps a read version registered (so the conflict history it needs is kept) until dropped.
pub(super) struct ActiveRead {
    shared: Arc<Shared>,
    version: u64,
}

impl ActiveRead {
    pub(super) fn version(&self) -> u64 {
        self.version
    }
}

impl Drop for ActiveRead {
    fn drop(&mut self) {
        let mut active = self.shared.active.lock();
        if let Some(n) = active.get_mut(&self.version) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.version);
            }
        }
    }
}
