//! `roam-store`: Roam's ordered, transactional key-value store, its two backends, and the
//! data-model layers over it.
//!
//! The store has FoundationDB's shape: one ordered key space, transactions with snapshot
//! isolation and serializable commits, retried on conflict. Layers are written once against
//! that shape and run unchanged on either backend:
//!
//! - **embedded** (default, `embedded:<dir>`): fjall (a pure-Rust LSM) with FoundationDB's
//!   transaction semantics implemented on top: read-your-writes, conflict detection at commit,
//!   snapshot reads, non-conflicting atomic add. A commit returns once it is on disk;
//!   concurrent commits share one fsync (group commit). See `docs/store.md`.
//! - **FoundationDB** (cargo feature `fdb`, `fdb:<cluster file>`): the same trait over a
//!   FoundationDB cluster, for deployments that outgrow one machine.
//!
//! Keys are tuple-encoded (`foundationdb-tuple`), so both backends hold byte-identical data.
//! Each layer writes its key schema next to its code; `docs/data-model.md` collects them.
//!
//! # Main types
//!
//! - [`Store`]: an open store. [`Store::open`] takes the configuration's spec string;
//!   [`Store::transact`] runs a closure as a transaction, handing it a [`Tx`] (get, range
//!   reads, set, clear, clear-range, atomic add, snapshot reads), and retries it on conflict
//!   within the [`RetryPolicy`] bound.
//! - [`Timelines`] ([`Store::timelines`]): gap-free per-timeline seqs, atomic multi-timeline
//!   appends, idempotent sends ([`IdempotencyKey`]), reads, retention. Appends are batched by
//!   a per-process sequencer so a hot timeline does not turn into conflict retries.
//! - [`Cursors`] ([`Store::cursors`]): delivered/read positions per device, unread counts.
//!
//! What this crate does not own: message ids (the caller brings them, from the ID service),
//! message encoding (bodies are opaque bytes), and groups or membership (the caller passes
//! the fan-out list).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), roam_store::StoreError> {
//! use roam_store::{NewMessage, Store, TimelineId};
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(&format!("embedded:{}", dir.path().display())).await?;
//! let inbox = TimelineId::inbox("alice");
//! let msg = NewMessage { id: 42, created_at_ms: 1, body: "hello".into() };
//! let seq = store.timelines().append(&inbox, msg).await?; // durable on return
//! let entries = store.timelines().read(&inbox, 0, 100).await?;
//! assert_eq!((seq, entries[0].id), (1, 42));
//!
//! // Raw transactions, FoundationDB style:
//! let n = store
//!     .transact(|tx| {
//!         tx.atomic_add(b"counter", 1)?;
//!         tx.get(b"counter")
//!     })
//!     .await?;
//! assert_eq!(n.as_deref(), Some(&1i64.to_le_bytes()[..]));
//! # Ok(()) }
//! ```

pub mod codec;
pub mod cursor;
mod embedded;
mod error;
#[cfg(feature = "fdb")]
// The one FFI reason for unsafe code in Roam: starting and stopping FoundationDB's client
// network (each block carries its SAFETY note). Every other crate forbids unsafe code but
// roam_quic, which registers its UDP socket with tokio by hand (docs/testing.md, Lints).
#[allow(unsafe_code)]
mod fdb;
mod idempotency;
mod options;
mod range;
mod retry;
mod spec;
mod stats;
mod store;
pub mod timeline;
mod tx;

pub use cursor::{Cursor, Cursors};
pub use error::{Printable, RetryReason, StoreError, TxError};
pub use foundationdb_tuple as tuple;
pub use idempotency::IdempotencyKey;
pub use options::{RetryPolicy, SequencerOptions, StoreOptions};
pub use range::{
    KEY_SPACE_END, KeySelector, KeyValue, MAX_KEY_SIZE, MAX_VALUE_SIZE, RangeOption, strinc,
};
pub use spec::StoreSpec;
pub use stats::StoreStats;
pub use store::Store;
pub use timeline::{
    Appended, MultiAppend, NewMessage, TimelineEntry, TimelineId, TimelineKind, Timelines,
};
pub use tx::Tx;
