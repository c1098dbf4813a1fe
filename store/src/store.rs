//! [`Store`]: the handle every caller holds; opens a backend and runs transactions on it.

use crate::{
    StoreError, StoreOptions, StoreSpec, StoreStats, Tx, TxError,
    cursor::Cursors,
    embedded::Embedded,
    timeline::{Sequencer, Timelines},
};
use std::sync::Arc;

/// An open store. Cheap to clone; the backend closes when the last clone is dropped.
///
/// Dropping the last clone of an embedded store waits (blocking, briefly) for the committer
/// thread to answer what is queued and stop, so the directory can be reopened at once.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    spec: StoreSpec,
    options: StoreOptions,
    sequencer: Sequencer,
    backend: Backend,
}

enum Backend {
    Embedded(Embedded),
    #[cfg(feature = "fdb")]
    Fdb(crate::fdb::FdbBackend),
}

impl Store {
    /// Opens the store a spec string names (`embedded:<dir>` or `fdb:<cluster file>`) with
    /// default options.
    pub async fn open(spec: &str) -> Result<Self, StoreError> {
        Self::open_with(spec.parse()?, StoreOptions::default()).await
    }

    /// Opens a store with explicit options.
    ///
    /// An embedded directory is created when absent and refused
    /// ([`StoreError::Refused`]) when it holds anything but a store of this format.
    pub async fn open_with(spec: StoreSpec, options: StoreOptions) -> Result<Self, StoreError> {
        let backend = match &spec {
            StoreSpec::Embedded(dir) => {
                let dir = dir.clone();
                Backend::Embedded(blocking(move || Embedded::open(&dir)).await?)
            }
            #[cfg(feature = "fdb")]
            StoreSpec::Fdb(cluster_file) => {
                let cluster_file = cluster_file.clone();
                Backend::Fdb(blocking(move || crate::fdb::FdbBackend::open(&cluster_file)).await?)
            }
            #[cfg(not(feature = "fdb"))]
            StoreSpec::Fdb(_) => {
                return Err(StoreError::FdbNotCompiled {
                    spec: spec.to_string(),
                });
            }
        };
        // Only this process writes an embedded store (fjall locks its directory), so the
        // sequencer may keep the heads of the timelines it appended to; on FoundationDB
        // other processes append too, and heads are always read in the transaction.
        let exclusive = matches!(backend, Backend::Embedded(_));
        Ok(Self {
            inner: Arc::new(Inner {
                sequencer: Sequencer::new(options.sequencer, exclusive),
                spec,
                options,
                backend,
            }),
        })
    }

    /// Runs `f` as one transaction and commits it; returns `f`'s value once the commit is
    /// durable.
    ///
    /// `f` may run several times: on a conflict (something it read with a plain read was
    /// written by a transaction that committed first) or a retryable backend error, the
    /// attempt is thrown away and `f` runs again on fresh data, after a backoff, up to
    /// [`RetryPolicy::max_attempts`](crate::RetryPolicy) times
    /// ([`StoreError::TooManyRetries`] after that). So `f` must have no side effects outside
    /// the transaction. It is synchronous: on the embedded backend it runs on the calling
    /// task (reads are local); on FoundationDB it runs on a blocking thread, hence `'static`.
    ///
    /// Read-only transactions commit nothing but still return only once the data they saw
    /// is durable. Dropping the returned future after the commit was sent does not take the
    /// commit back (as with FoundationDB, the outcome is then unknown to the caller).
    pub async fn transact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut Tx<'_>) -> Result<T, TxError> + Send + 'static,
        T: Send + 'static,
    {
        let policy = self.inner.options.retry;
        match &self.inner.backend {
            Backend::Embedded(b) => b.transact(f, policy).await,
            #[cfg(feature = "fdb")]
            Backend::Fdb(b) => b.transact(f, policy).await,
        }
    }

    /// The timelines layer over this store.
    pub fn timelines(&self) -> Timelines {
        Timelines::new(self.clone())
    }

    /// The cursors layer over this store.
    pub fn cursors(&self) -> Cursors {
        Cursors::new(self.clone())
    }

    /// What the store did since it was opened.
    pub fn stats(&self) -> StoreStats {
        match &self.inner.backend {
            Backend::Embedded(b) => b.stats(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(b) => b.counters.snapshot(),
        }
    }

    /// The spec this store was opened with.
    pub fn spec(&self) -> &StoreSpec {
        &self.inner.spec
    }

    pub(crate) fn sequencer(&self) -> &Sequencer {
        &self.inner.sequencer
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let location = match &self.inner.backend {
            Backend::Embedded(b) => b.dir().display().to_string(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(_) => "FoundationDB".to_owned(),
        };
        f.debug_struct("Store")
            .field("spec", &self.inner.spec.to_string())
            .field("location", &location)
            .finish()
    }
}

/// Runs blocking open work off the async threads; a panic inside is passed on.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Closed),
    }
}
