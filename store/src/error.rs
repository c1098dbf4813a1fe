//! Errors: [`StoreError`] for what a store call returns, [`TxError`] for what a transaction
//! closure returns (so `?` works on every [`Tx`](crate::Tx) operation inside it).

use std::{fmt, io, path::PathBuf, sync::Arc};

/// Everything a store operation can fail with.
///
/// Cheap to clone (sources sit behind `Arc`), so one failed batch can answer every waiter.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store spec string (`embedded:<dir>` or `fdb:<cluster file>`) could not be parsed.
    #[error("invalid store spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An `fdb:` spec in a build without the `fdb` cargo feature.
    #[error("store spec {spec:?} needs the FoundationDB backend: rebuild with `--features fdb`")]
    FdbNotCompiled {
        /// The spec as given.
        spec: String,
    },
    /// The data directory is not one this store may open: foreign, corrupt, from another
    /// format version, or locked by another process. Nothing in it was changed.
    #[error("refusing to open store at {}: {reason}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// The fault found.
        reason: String,
    },
    /// A file-system operation on the data directory failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The embedded engine (fjall) reported an error.
    #[error("embedded engine error: {0}")]
    Engine(#[source] Arc<fjall::Error>),
    /// FoundationDB reported an error that is not retryable.
    #[error("FoundationDB error {code}: {message}")]
    Fdb {
        /// FoundationDB's error code.
        code: i32,
        /// FoundationDB's description of it.
        message: String,
    },
    /// A write could not be made durable (fsync failed). The embedded engine refuses every
    /// later write: restart the process and let recovery replay the journal.
    #[error("write not made durable: {0}")]
    Durability(Arc<str>),
    /// The transaction kept conflicting (or hitting retryable errors) past the retry bound.
    #[error("transaction gave up after {attempts} attempts; last cause: {last}")]
    TooManyRetries {
        /// How many times the closure ran.
        attempts: u32,
        /// Why the last attempt had to be retried.
        last: RetryReason,
    },
    /// FoundationDB could not tell whether the commit happened (`commit_unknown_result`).
    /// Not retried automatically, because a blind retry could apply a non-idempotent
    /// transaction twice; retry with an idempotency key.
    #[error("commit outcome unknown (FoundationDB commit_unknown_result); retry idempotently")]
    CommitUnknown,
    /// A key or value broke the size limits FoundationDB imposes (enforced on both backends).
    #[error("{what} of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A write to a key at or after `\xff` (FoundationDB's system key space).
    #[error("key {0:?} is outside the writable key space (keys must sort before \\xff)")]
    KeyOutsideLegalRange(Printable),
    /// A stored value could not be decoded.
    #[error("corrupt value at key {key:?}: {reason}")]
    Corrupt {
        /// The key whose value is bad.
        key: Printable,
        /// What is wrong with it.
        reason: String,
    },
    /// A request a layer rejects before touching the store.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A key an append requires ([`crate::MultiAppend::require`]) was missing at commit:
    /// nothing was written.
    #[error("required key {0:?} is missing; nothing was written")]
    Precondition(Printable),
    /// The transaction closure asked to abort.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// The store has been shut down (or its committer thread is gone).
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// True when the error says the data directory was refused at open.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// True when the retry bound was hit.
    pub fn is_too_many_retries(&self) -> bool {
        matches!(self, Self::TooManyRetries { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// A [`StoreError::Corrupt`] for `key`: stored data this build cannot read.
    pub fn corrupt(key: &[u8], reason: impl fmt::Display) -> Self {
        Self::Corrupt {
            key: Printable(key.to_vec()),
            reason: reason.to_string(),
        }
    }
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        Self::Engine(Arc::new(e))
    }
}

/// Why an attempt had to start over.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// Another transaction wrote something this one read.
    Conflict,
    /// A retryable backend error (FoundationDB's `transaction_too_old`, `future_version`, ...).
    Backend {
        /// The backend's error code.
        code: i32,
        /// The backend's description.
        message: String,
    },
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict => f.write_str("conflict"),
            Self::Backend { code, message } => write!(f, "backend error {code}: {message}"),
        }
    }
}

/// What a transaction closure (and every [`Tx`](crate::Tx) operation) returns on failure.
///
/// [`TxError::Retry`] makes [`Store::transact`](crate::Store::transact) run the closure again
/// (with backoff, up to the bound); [`TxError::Fatal`] ends the call with that error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxError {
    /// Start the transaction over.
    #[error("transaction must be retried: {0}")]
    Retry(RetryReason),
    /// Give up with this error.
    #[error(transparent)]
    Fatal(#[from] StoreError),
}

impl TxError {
    /// Abort the transaction with a message; `transact` returns [`StoreError::Aborted`].
    pub fn abort(message: impl Into<String>) -> Self {
        Self::Fatal(StoreError::Aborted(message.into()))
    }
}

/// A key shown with non-printable bytes escaped, for error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Printable(pub Vec<u8>);

impl fmt::Debug for Printable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in &self.0 {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}
