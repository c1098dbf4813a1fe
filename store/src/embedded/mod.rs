//! The embedded backend: FoundationDB's transaction model on fjall, in one process.
//!
//! - Reads run on the caller's task against a fjall [`Snapshot`](fjall::Snapshot) overlaid
//!   with the transaction's own writes ([`writes`]); plain reads record read conflicts.
//! - Commits go to one committer thread ([`committer`]) that checks conflicts the way
//!   FoundationDB's resolvers do ([`resolver`]), applies each commit as one atomic fjall
//!   batch, and fsyncs once per group of commits before answering any of them.
//! - The data directory is recognised by its marker file ([`meta`]).
//!
//! Why not fjall's own `OptimisticTxDatabase`: its transactions mark every read for conflict
//! checking (no snapshot reads at the transaction's version), have no non-conflicting atomic
//! add and no range clear, and its commit path scans every transaction committed since the
//! snapshot and re-filters the whole committed set on every commit under one lock. The
//! conformance suite holds both backends to FoundationDB's semantics, so this backend
//! implements them directly on fjall's snapshots and atomic write batches.

mod committer;
mod meta;
mod resolver;
mod state;
mod tx;
mod writes;

use crate::{RetryPolicy, StoreError, Tx, TxError, retry::Backoff};
use state::Shared;
use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
};
use tokio::sync::oneshot;
use tx::EmbeddedTx;

/// The fjall keyspace holding every key (one ordered key space, as in FoundationDB).
const KEYSPACE: &str = "kv";

pub(crate) struct Embedded {
    dir: PathBuf,
    shared: Arc<Shared>,
    commits: Option<mpsc::Sender<committer::CommitRequest>>,
    committer: Option<thread::JoinHandle<()>>,
}

impl Embedded {
    /// Opens (or creates) the store in `dir`. Blocking: recovery replays the journal.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        let prepared = meta::prepare(dir)?;
        let refuse = |reason: String| StoreError::Refused {
            path: dir.to_path_buf(),
            reason,
        };
        let builder = fjall::Database::builder(&prepared.engine_dir).manual_journal_persist(true);
        let db = open_with_background_priority(builder).map_err(|e| match e {
            fjall::Error::Locked => refuse("another process has it open".into()),
            e => refuse(format!(
                "the embedded engine cannot open {}: {e}",
                prepared.engine_dir.display()
            )),
        })?;
        if !prepared.fresh && !db.keyspace_exists(KEYSPACE) {
            return Err(refuse(format!(
                "the engine in {} has no {KEYSPACE:?} keyspace",
                prepared.engine_dir.display()
            )));
        }
        let kv = db.keyspace(KEYSPACE, fjall::KeyspaceCreateOptions::default)?;
        if prepared.fresh {
            db.persist(fjall::PersistMode::SyncAll)?;
            meta::mark_initialized(dir)?;
        }
        let shared = Arc::new(Shared::new(db, kv));
        let (commits, committer) =
            committer::spawn(shared.clone()).map_err(|e| StoreError::io(dir, e))?;
        tracing::info!(dir = %dir.display(), fresh = prepared.fresh, "embedded store open");
        Ok(Self {
            dir: dir.to_path_buf(),
            shared,
            commits: Some(commits),
            committer: Some(committer),
        })
    }

    pub(crate) fn stats(&self) -> crate::StoreStats {
        self.shared.counters.snapshot()
    }

    pub(crate) async fn transact<T, F>(
        &self,
        mut f: F,
        policy: RetryPolicy,
    ) -> Result<T, StoreError>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T, TxError>,
    {
        let mut backoff = Backoff::new(policy, &self.shared.counters);
        loop {
            match self.attempt(&mut f).await {
                Ok(value) => return Ok(value),
                Err(TxError::Retry(reason)) => backoff.retry(reason).await?,
                Err(TxError::Fatal(e)) => return Err(e),
            }
        }
    }

    async fn attempt<T, F>(&self, f: &mut F) -> Result<T, TxError>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T, TxError>,
    {
        let mut tx = EmbeddedTx::begin(&self.shared);
        let value = f(&mut Tx::new(&mut tx))?;
        let finished = tx.finish();
        if finished.writes.is_empty() {
            // Read-only: nothing to commit, but return only once what it saw is durable.
            drop(finished.active);
            self.shared.wait_durable(finished.visible_upper).await?;
            return Ok(value);
        }
        let commits = self.commits.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tracing::trace!(writes = finished.writes.len(), "commit");
        commits
            .send(committer::CommitRequest {
                read_version: finished.active,
                reads: finished.reads,
                writes: finished.writes,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)??;
        Ok(value)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Embedded {
    /// Stops the committer (it answers what is queued first) and waits for it, so the
    /// directory is released when the store is gone.
    fn drop(&mut self) {
        drop(self.commits.take());
        if let Some(handle) = self.committer.take()
            && handle.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "store committer panicked");
        }
    }
}

/// The nice value of the engine's background threads (request handling runs at 0).
const BACKGROUND_NICE: i32 = 5;

/// Opens the fjall database on a thread of its own whose CPU priority is lowered first, so
/// that the background threads fjall starts (memtable flushes, compactions) inherit it —
/// a thread's nice value is its own on Linux and passes to the threads it creates — while
/// the threads serving requests keep theirs, as with RocksDB's low-priority pool. A flush
/// is a burst of CPU that otherwise takes a whole core from the tokio workers and the
/// committer, and every message in flight waits for it (send-to-deliver p99). Lowered, it
/// gets what the request threads leave, and a backlog of sealed memtables throttles
/// writers, so it cannot fall behind for long. Elsewhere than Linux, and when the priority
/// cannot be changed (logged), the database opens as usual.
fn open_with_background_priority(
    builder: fjall::DatabaseBuilder<fjall::Database>,
) -> Result<fjall::Database, fjall::Error> {
    std::thread::scope(|s| {
        let opening = std::thread::Builder::new()
            .name("roam-store-open".into())
            .spawn_scoped(s, move || {
                #[cfg(target_os = "linux")]
                if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
                    tracing::warn!(error = %e, "cannot lower the store's background priority");
                }
                builder.open()
            });
        match opening {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(fjall::Error::Io(e)),
        }
    })
}
