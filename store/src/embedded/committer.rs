//! The committer thread: resolves conflicts, applies commits, and makes them durable with
//! one fsync per group (group commit).
//!
//! Loop: block for the first commit request, take every other request already queued (up to
//! [`MAX_GROUP`]), and for each in arrival order check its reads against the history
//! ([`Resolver`]) and, if clean, apply its writes as one atomic fjall batch (journal append
//! without fsync, then memtable). Then one `persist(SyncData)` covers the whole group, and
//! only then is each committer told "committed". While the fsync runs, new requests queue up
//! and form the next group, so the fsync cost is shared by everything that arrived meanwhile.
//! Being the only writer, the thread can also apply `ADD` and `clear_range` against the
//! latest data, as FoundationDB's storage servers do.
//!
//! Shutdown: the thread ends when every sender is dropped (the store's last handle).

use super::{
    resolver::{ReadConflict, Resolver},
    state::{ActiveRead, Shared},
    writes::{Op, WriteBuffer},
};
use crate::stats::Counters;
use crate::{RetryReason, StoreError, TxError, tx::add_le};
use fjall::PersistMode;
use std::{
    ops::Bound::{Excluded, Included},
    sync::{Arc, mpsc},
    thread,
};
use tokio::sync::oneshot;

/// Most requests applied before one fsync (bounds the latency of the first in a group).
const MAX_GROUP: usize = 4096;
/// Keys written between two trims of the conflict history.
const GC_EVERY: usize = 16 * 1024;

/// A transaction's request to commit.
pub(super) struct CommitRequest {
    pub(super) read_version: ActiveRead,
    pub(super) reads: Vec<ReadConflict>,
    pub(super) writes: WriteBuffer,
    /// Answered once the write is durable, or at once on conflict or error.
    pub(super) reply: oneshot::Sender<Result<(), TxError>>,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
) -> std::io::Result<(mpsc::Sender<CommitRequest>, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("roam-store-commit".into())
        .spawn(move || Committer::new(shared).run(&rx))?;
    Ok((tx, handle))
}

struct Committer {
    shared: Arc<Shared>,
    resolver: Resolver,
    /// Last version given to a commit.
    version: u64,
    /// Last version made durable.
    durable: u64,
    /// Keys recorded in the history since it was last trimmed.
    since_gc: usize,
    /// Replies owed once the current group is durable.
    waiting: Vec<oneshot::Sender<Result<(), TxError>>>,
}

impl Committer {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            resolver: Resolver::default(),
            version: 0,
            durable: 0,
            since_gc: 0,
            waiting: Vec::new(),
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = rx.recv() {
            self.commit(first);
            for _ in 1..MAX_GROUP {
                match rx.try_recv() {
                    Ok(request) => self.commit(request),
                    Err(_) => break,
                }
            }
            self.make_durable();
            if self.since_gc >= GC_EVERY {
                self.since_gc = 0;
                let floor = self.shared.oldest_read(self.version);
                self.resolver.forget_up_to(floor);
            }
        }
        tracing::debug!(version = self.version, "store committer stopped");
    }

    fn commit(&mut self, request: CommitRequest) {
        let CommitRequest {
            read_version,
            reads,
            writes,
            reply,
        } = request;
        if self.resolver.conflicts(read_version.version(), &reads) {
            let _ = reply.send(Err(TxError::Retry(RetryReason::Conflict)));
            return;
        }
        // The read version may be released now: its conflicts are settled.
        drop(read_version);
        // The version is used up even if applying fails (then it names an empty commit), so
        // that readers waiting for it are released by the next fsync.
        self.version += 1;
        let version = self.version;
        self.shared.set_assigned(version);
        let result = apply(&self.shared, &writes);
        self.shared.set_applied(version);
        match result {
            Ok(()) => {
                Counters::add(&self.shared.counters.commits, 1);
                self.since_gc += writes.len();
                self.resolver.record(
                    version,
                    writes.ops().keys().map(Vec::as_slice),
                    writes.clears(),
                );
                self.waiting.push(reply);
            }
            Err(e) => {
                // A failed journal write also poisons fjall: the fsync below then fails
                // and the store reports the failure to everyone.
                tracing::error!(error = %e, "store commit failed");
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn make_durable(&mut self) {
        if self.version == self.durable {
            return;
        }
        let result = self.shared.db.persist(PersistMode::SyncData);
        Counters::add(&self.shared.counters.syncs, 1);
        let outcome = match result {
            Ok(()) => {
                self.durable = self.version;
                self.shared.publish_durable(self.version);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "store fsync failed; the store refuses further writes");
                let failure: Arc<str> = e.to_string().into();
                self.shared.publish_failure(failure.clone());
                Err(TxError::Fatal(StoreError::Durability(failure)))
            }
        };
        for reply in self.waiting.drain(..) {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// Applies one transaction's writes as a single atomic fjall batch (no fsync).
fn apply(shared: &Shared, writes: &WriteBuffer) -> Result<(), StoreError> {
    let kv = &shared.kv;
    let mut batch = shared.db.batch();
    for (begin, end) in writes.clears() {
        for guard in kv.range::<&[u8], _>((Included(begin), Excluded(end))) {
            let key = guard.key()?;
            // A key written after the clear keeps only that write (one entry per key and
            // batch: both would carry the same sequence number).
            if !writes.ops().contains_key(key.as_ref()) {
                batch.remove(kv, key);
            }
        }
    }
    for (key, op) in writes.ops() {
        match op {
            Op::Set(value) => batch.insert(kv, key.as_slice(), value.clone()),
            Op::Clear => batch.remove(kv, key.as_slice()),
            Op::Add(delta) => {
                let base = kv.get(key)?;
                batch.insert(kv, key.as_slice(), add_le(base.as_deref(), *delta).to_vec());
            }
        }
    }
    batch.commit()?;
    Ok(())
}
