//! The FoundationDB backend (cargo feature `fdb`): the same [`Tx`] over a FoundationDB
//! cluster, API version 7.3.
//!
//! - The client network starts once per process, on the first open, and is stopped by an
//!   `atexit` hook (FoundationDB requires it to stop before the process exits, and it cannot
//!   start twice).
//! - A transaction closure is synchronous but FoundationDB reads are futures, so each attempt
//!   runs on a blocking thread (`spawn_blocking`) that waits for its reads; the commit is
//!   awaited on the caller's task.
//! - Errors: retryable-and-not-committed ones (`not_committed` 1020 is a conflict,
//!   `transaction_too_old`, `future_version`, ...) retry with our backoff and bound;
//!   `commit_unknown_result` becomes [`StoreError::CommitUnknown`] (a blind retry could apply
//!   the transaction twice); everything else is [`StoreError::Fdb`].

mod tx;

use crate::stats::Counters;
use crate::{RetryPolicy, RetryReason, StoreError, Tx, TxError, retry::Backoff};
use foundationdb::{FdbError, api::NetworkAutoStop};
use parking_lot::Mutex;
use std::{path::Path, sync::OnceLock};
use tx::FdbTx;

/// FoundationDB's `not_committed`: the transaction conflicted.
const NOT_COMMITTED: i32 = 1020;

pub(crate) struct FdbBackend {
    db: foundationdb::Database,
    /// What the store did (commits, retries; fsyncs are the cluster's).
    pub(crate) counters: Counters,
}

impl FdbBackend {
    /// Connects to the cluster named by `cluster_file`. Blocking.
    pub(crate) fn open(cluster_file: &Path) -> Result<Self, StoreError> {
        start_network()?;
        if !cluster_file.is_file() {
            return Err(StoreError::io(
                cluster_file,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "FoundationDB cluster file not found",
                ),
            ));
        }
        let path = cluster_file
            .to_str()
            .ok_or_else(|| StoreError::InvalidSpec {
                spec: cluster_file.display().to_string(),
                reason: "the cluster file path is not UTF-8",
            })?;
        let db = foundationdb::Database::new(Some(path)).map_err(fatal)?;
        tracing::info!(cluster_file = path, "FoundationDB store open");
        Ok(Self {
            db,
            counters: Counters::default(),
        })
    }

    pub(crate) async fn transact<T, F>(
        &self,
        mut f: F,
        policy: RetryPolicy,
    ) -> Result<T, StoreError>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T, TxError> + Send + 'static,
        T: Send + 'static,
    {
        let mut backoff = Backoff::new(policy, &self.counters);
        loop {
            let trx = self.db.create_trx().map_err(fatal)?;
            let handle = tokio::runtime::Handle::current();
            let attempt = tokio::task::spawn_blocking(move || {
                let mut tx = FdbTx::new(trx, handle);
                let outcome = f(&mut Tx::new(&mut tx));
                (f, tx.into_inner(), outcome)
            })
            .await;
            let (closure, trx, outcome) = match attempt {
                Ok(parts) => parts,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(StoreError::Closed),
            };
            f = closure;
            let error = match outcome {
                Ok(value) => match trx.commit().await {
                    Ok(committed) => {
                        // A read-only transaction has no committed version (-1).
                        if committed.committed_version().is_ok_and(|v| v >= 0) {
                            Counters::add(&self.counters.commits, 1);
                        }
                        return Ok(value);
                    }
                    Err(e) => classify(*e),
                },
                Err(e) => e,
            };
            match error {
                TxError::Retry(reason) => backoff.retry(reason).await?,
                TxError::Fatal(e) => return Err(e),
            }
        }
    }
}

/// Maps a FoundationDB error onto retry-or-fail.
pub(crate) fn classify(e: FdbError) -> TxError {
    if e.is_retryable_not_committed() {
        TxError::Retry(if e.code() == NOT_COMMITTED {
            RetryReason::Conflict
        } else {
            RetryReason::Backend {
                code: e.code(),
                message: e.message().to_owned(),
            }
        })
    } else if e.is_maybe_committed() {
        TxError::Fatal(StoreError::CommitUnknown)
    } else {
        TxError::Fatal(fatal(e))
    }
}

fn fatal(e: FdbError) -> StoreError {
    StoreError::Fdb {
        code: e.code(),
        message: e.message().to_owned(),
    }
}

/// The running client network; taken and stopped at process exit.
static NETWORK: Mutex<Option<NetworkAutoStop>> = Mutex::new(None);

/// Starts the client network the first time it is called; later calls return the first
/// outcome.
fn start_network() -> Result<(), StoreError> {
    static STARTED: OnceLock<Result<(), StoreError>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            let builder = foundationdb::api::FdbApiBuilder::default()
                .build()
                .map_err(fatal)?;
            // SAFETY: the guard is dropped (the network stopped) by `stop_network_at_exit`,
            // registered below, before the process exits normally; `boot` requires exactly
            // that (an aborted process needs nothing).
            let guard = unsafe { builder.boot() }.map_err(fatal)?;
            *NETWORK.lock() = Some(guard);
            // SAFETY: registering a plain `extern "C" fn` with no captured state.
            if unsafe { libc::atexit(stop_network_at_exit) } != 0 {
                tracing::warn!("could not register the FoundationDB network stop at exit");
            }
            Ok(())
        })
        .clone()
}

extern "C" fn stop_network_at_exit() {
    let guard = NETWORK.lock().take();
    drop(guard);
}
