//! The sequencer: groups concurrent appends into batch transactions so that appends to one
//! (hot) timeline never conflict with each other.
//!
//! Appends to one timeline must be serialized (each reads and bumps the timeline's head), so
//! running them as independent transactions makes them conflict and retry, and throughput
//! collapses as writers pile up. Instead each append is queued here, and *rounds* run:
//!
//! - a round is one transaction applying a batch of queued appends in order
//!   ([`super::append::apply_batch`]); later appends in the batch see earlier ones (read your
//!   writes), so 256 appends to one timeline cost one commit;
//! - a timeline is in at most one round in flight, so rounds never conflict with each other
//!   in this process; appends to one timeline run in arrival order;
//! - at most `max_rounds_in_flight` rounds run at once, each at most `max_batch` appends or
//!   `max_batch_bytes` bytes. An append arriving when a slot is free and its timelines are
//!   idle starts a round of its own at once (no added latency when quiet); otherwise it
//!   waits, and when a round ends the queue is scanned in order to form the next rounds.
//!
//! On an exclusive store (embedded: no other process writes it) the sequencer also caches
//! the heads of the timelines it appended to ([`HeadCache`]): since a timeline is in one
//! round at a time, a round reads only the heads it does not know.
//!
//! Several processes sharing one FoundationDB cluster each run their own sequencer; their
//! rounds can conflict with each other and are then retried by `transact` like any other
//! transaction. Rounds are spawned tasks, so a caller that stops waiting does not abort
//! other callers' appends; there is no long-lived task to shut down.

use super::{Appended, MultiAppend, TimelineId, append};
use crate::{SequencerOptions, Store, StoreError, idempotency::IdempotencyKey};
use parking_lot::Mutex;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    mem,
};
use tokio::sync::oneshot;

pub(crate) struct Sequencer {
    options: SequencerOptions,
    state: Mutex<State>,
    /// The heads of timelines appended to, on an exclusive store: `None` on a shared one.
    heads: Option<Mutex<HeadCache>>,
}

/// Most timeline heads the cache holds; when full it starts over (a miss only costs the
/// read the cache saves). About 100 B an entry.
const HEAD_CACHE_ENTRIES: usize = 100_000;

/// The heads of timelines this process appended to. Valid only when no other process
/// writes the store: a timeline is in one round at a time, so at a round's start its
/// entry here is the head in the store. Filled after a round commits, dropped for the
/// round's timelines when its outcome is unknown (a failed commit may still have applied).
#[derive(Default)]
struct HeadCache {
    heads: HashMap<TimelineId, u64>,
}

impl HeadCache {
    /// The cached heads of `timelines`.
    fn known<'a>(
        &self,
        timelines: impl Iterator<Item = &'a TimelineId>,
    ) -> HashMap<TimelineId, u64> {
        timelines
            .filter_map(|t| Some((t.clone(), *self.heads.get(t)?)))
            .collect()
    }

    /// Records the seqs a committed round gave out.
    fn committed(&mut self, results: &[Result<Appended, StoreError>]) {
        for appended in results.iter().flatten().filter(|a| !a.duplicate) {
            for (t, seq) in &appended.seqs {
                if self.heads.len() >= HEAD_CACHE_ENTRIES && !self.heads.contains_key(t) {
                    self.heads.clear();
                }
                let head = self.heads.entry(t.clone()).or_insert(0);
                *head = (*head).max(*seq);
            }
        }
    }

    /// Forgets `timelines` (their round's outcome is unknown).
    fn forget(&mut self, timelines: &HashSet<TimelineId>) {
        for t in timelines {
            self.heads.remove(t);
        }
    }
}

struct Pending {
    append: MultiAppend,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

impl Pending {
    fn timelines(&self) -> impl Iterator<Item = &TimelineId> {
        std::iter::once(&self.append.home).chain(&self.append.fanout)
    }

    fn size(&self) -> usize {
        let timelines = 1 + self.append.fanout.len();
        self.append.message.body.len()
            + timelines * super::keys::ENTRY_OVERHEAD
            + self
                .append
                .idempotency
                .as_ref()
                .map_or(0, IdempotencyKey::approximate_size)
            + self
                .append
                .extra
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.append.require.iter().map(Vec::len).sum::<usize>()
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Timelines of the rounds in flight.
    busy: HashSet<TimelineId>,
    /// Timeline -> number of queued appends touching it.
    queued: HashMap<TimelineId, usize>,
    in_flight: usize,
}

impl Sequencer {
    /// `exclusive`: no other process writes the store, so heads may be cached.
    pub(crate) fn new(options: SequencerOptions, exclusive: bool) -> Self {
        Self {
            options,
            state: Mutex::default(),
            heads: exclusive.then(Mutex::default),
        }
    }

    /// Queues `append` and waits for its result.
    pub(crate) async fn submit(
        &self,
        store: &Store,
        append: MultiAppend,
    ) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let now = self
            .state
            .lock()
            .admit(Pending { append, reply }, &self.options);
        if let Some(round) = now {
            spawn_round(store.clone(), round);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues every append of `batch` at once, in order, and returns their answers in
    /// order. Queued together, they form rounds together: a batch whose timelines are free
    /// is one transaction (up to `max_batch` appends or `max_batch_bytes`), where appends
    /// submitted one by one would each start a round of their own while slots are free.
    /// The appends are queued before this returns (not when the future is first polled), so
    /// batches submitted one after the other keep their order on every timeline.
    pub(crate) fn submit_batch(
        &self,
        store: &Store,
        batch: Vec<MultiAppend>,
    ) -> impl Future<Output = Vec<Result<Appended, StoreError>>> + use<> {
        let mut answers = Vec::with_capacity(batch.len());
        let rounds = {
            let mut state = self.state.lock();
            for append in batch {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                state.enqueue(Pending { append, reply });
            }
            state.form_rounds(&self.options)
        };
        for round in rounds {
            spawn_round(store.clone(), round);
        }
        async move {
            let mut results = Vec::with_capacity(answers.len());
            for answer in answers {
                results.push(answer.await.unwrap_or(Err(StoreError::Closed)));
            }
            results
        }
    }
}

fn spawn_round(store: Store, round: Vec<Pending>) {
    tokio::spawn(run_round(store, round));
}

/// Runs a round, answers its callers, then runs (or spawns) the rounds its end unblocks.
async fn run_round(store: Store, mut round: Vec<Pending>) {
    loop {
        let timelines: HashSet<TimelineId> =
            round.iter().flat_map(Pending::timelines).cloned().collect();
        let (batch, replies): (Vec<MultiAppend>, Vec<_>) =
            round.into_iter().map(|p| (p.append, p.reply)).unzip();
        tracing::trace!(
            appends = batch.len(),
            timelines = timelines.len(),
            "append round"
        );
        let sequencer = store.sequencer();
        let known = sequencer
            .heads
            .as_ref()
            .map(|h| h.lock().known(timelines.iter()))
            .unwrap_or_default();
        // In a task of its own, so that even a panic in the transaction is answered and the
        // round's timelines are released below.
        let tx_store = store.clone();
        let outcome = tokio::spawn(async move {
            tx_store
                .transact(move |tx| append::apply_batch(tx, &batch, &known))
                .await
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "append round failed");
            Err(StoreError::Aborted(format!("append round failed: {e}")))
        });
        if let Some(heads) = &sequencer.heads {
            match &outcome {
                Ok(results) => heads.lock().committed(results),
                Err(_) => heads.lock().forget(&timelines),
            }
        }
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        let mut next = sequencer
            .state
            .lock()
            .finish(&timelines, &sequencer.options);
        let Some(first) = next.pop() else { return };
        for other in next {
            spawn_round(store.clone(), other);
        }
        round = first;
    }
}

impl State {
    /// Starts `p` as a round of its own when that keeps the rules, else queues it.
    fn admit(&mut self, p: Pending, options: &SequencerOptions) -> Option<Vec<Pending>> {
        let idle = p
            .timelines()
            .all(|t| !self.busy.contains(t) && !self.queued.contains_key(t));
        if idle && self.in_flight < options.max_rounds_in_flight.max(1) {
            self.busy.extend(p.timelines().cloned());
            self.in_flight += 1;
            return Some(vec![p]);
        }
        self.enqueue(p);
        None
    }

    /// Queues `p` behind everything already waiting.
    fn enqueue(&mut self, p: Pending) {
        for t in p.timelines() {
            *self.queued.entry(t.clone()).or_insert(0) += 1;
        }
        self.queue.push_back(p);
    }

    /// A round over `timelines` ended: frees them and forms the rounds to run next.
    fn finish(
        &mut self,
        timelines: &HashSet<TimelineId>,
        options: &SequencerOptions,
    ) -> Vec<Vec<Pending>> {
        for t in timelines {
            self.busy.remove(t);
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.form_rounds(options)
    }

    /// Scans the queue in order and takes what may run: appends whose timelines are neither
    /// busy nor touched by an earlier append still waiting (per-timeline order).
    fn form_rounds(&mut self, options: &SequencerOptions) -> Vec<Vec<Pending>> {
        let slots = options
            .max_rounds_in_flight
            .max(1)
            .saturating_sub(self.in_flight);
        let mut rounds = Vec::new();
        if slots == 0 || self.queue.is_empty() {
            return rounds;
        }
        let mut queue = mem::take(&mut self.queue);
        let mut current = Round::default();
        let mut blocked: HashSet<TimelineId> = HashSet::new();
        while let Some(p) = queue.pop_front() {
            if !joinable(&p, &self.busy, &blocked, &current) {
                blocked.extend(p.timelines().cloned());
                self.queue.push_back(p);
                continue;
            }
            if current.is_full(p.size(), options) {
                self.busy.extend(current.timelines.drain());
                rounds.push(mem::take(&mut current.appends));
                current.bytes = 0;
                if rounds.len() == slots {
                    self.queue.push_back(p);
                    self.queue.extend(queue.drain(..));
                    break;
                }
                if !joinable(&p, &self.busy, &blocked, &current) {
                    blocked.extend(p.timelines().cloned());
                    self.queue.push_back(p);
                    continue;
                }
            }
            for t in p.timelines() {
                if let Some(n) = self.queued.get_mut(t) {
                    *n -= 1;
                    if *n == 0 {
                        self.queued.remove(t);
                    }
                }
            }
            current.add(p);
        }
        if !current.appends.is_empty() {
            self.busy.extend(current.timelines.drain());
            rounds.push(current.appends);
        }
        self.in_flight += rounds.len();
        rounds
    }
}

/// `p` may join `current`: none of its timelines waits behind an earlier append or is held
/// by another round.
fn joinable(
    p: &Pending,
    busy: &HashSet<TimelineId>,
    blocked: &HashSet<TimelineId>,
    current: &Round,
) -> bool {
    p.timelines()
        .all(|t| !blocked.contains(t) && (current.timelines.contains(t) || !busy.contains(t)))
}

#[derive(Default)]
struct Round {
    appends: Vec<Pending>,
    timelines: HashSet<TimelineId>,
    bytes: usize,
}

impl Round {
    fn is_full(&self, next: usize, options: &SequencerOptions) -> bool {
        !self.appends.is_empty()
            && (self.appends.len() >= options.max_batch
                || self.bytes + next > options.max_batch_bytes)
    }

    fn add(&mut self, p: Pending) {
        self.timelines.extend(p.timelines().cloned());
        self.bytes += p.size();
        self.appends.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::NewMessage;
    use bytes::Bytes;

    fn pending(
        home: &str,
        fanout: &[&str],
    ) -> (Pending, oneshot::Receiver<Result<Appended, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let append = MultiAppend {
            home: TimelineId::outbox(home),
            fanout: fanout.iter().map(|u| TimelineId::inbox(*u)).collect(),
            message: NewMessage {
                id: 1,
                created_at_ms: 0,
                body: Bytes::from_static(b"x"),
            },
            idempotency: None,
            extra: Vec::new(),
            require: Vec::new(),
        };
        (Pending { append, reply }, rx)
    }

    fn homes(round: &[Pending]) -> Vec<String> {
        round.iter().map(|p| p.append.home.owner.clone()).collect()
    }

    fn options(max_batch: usize, rounds: usize) -> SequencerOptions {
        SequencerOptions {
            max_batch,
            max_batch_bytes: 1 << 20,
            max_rounds_in_flight: rounds,
        }
    }

    #[test]
    fn idle_appends_start_at_once_busy_ones_queue() {
        let opts = options(10, 2);
        let mut s = State::default();
        assert!(s.admit(pending("a", &[]).0, &opts).is_some());
        assert!(s.admit(pending("a", &[]).0, &opts).is_none(), "a is busy");
        assert!(s.admit(pending("b", &[]).0, &opts).is_some());
        assert!(
            s.admit(pending("c", &[]).0, &opts).is_none(),
            "no slot left"
        );
        assert_eq!(s.in_flight, 2);
    }

    #[test]
    fn a_finished_round_releases_a_batch_in_arrival_order() {
        let opts = options(10, 1);
        let mut s = State::default();
        let first = s.admit(pending("a", &[]).0, &opts).unwrap();
        for home in ["a", "b", "a", "c"] {
            assert!(s.admit(pending(home, &[]).0, &opts).is_none());
        }
        let done: HashSet<_> = first.iter().flat_map(Pending::timelines).cloned().collect();
        let next = s.finish(&done, &opts);
        assert_eq!(next.len(), 1);
        assert_eq!(homes(&next[0]), ["a", "b", "a", "c"]);
        assert!(s.queue.is_empty() && s.queued.is_empty());
    }

    #[test]
    fn a_blocked_append_blocks_later_ones_on_the_same_timeline() {
        let opts = options(10, 2);
        let mut s = State::default();
        // Round 1 holds outbox:x and inbox:y.
        let r1 = s.admit(pending("x", &["y"]).0, &opts).unwrap();
        // Waits: its fan-out inbox:y is busy.
        assert!(s.admit(pending("z", &["y"]).0, &opts).is_none());
        // Could run (outbox:z is free), but must stay behind the append above on outbox:z.
        assert!(s.admit(pending("z", &[]).0, &opts).is_none());
        let next = s.form_rounds(&opts);
        assert!(next.is_empty(), "everything waits behind round 1");
        let done: HashSet<_> = r1.iter().flat_map(Pending::timelines).cloned().collect();
        let next = s.finish(&done, &opts);
        assert_eq!(next.len(), 1);
        assert_eq!(homes(&next[0]), ["z", "z"]);
    }

    fn appended(seqs: &[(&str, u64)], duplicate: bool) -> Result<Appended, StoreError> {
        Ok(Appended {
            id: 1,
            created_at_ms: 0,
            seqs: seqs
                .iter()
                .map(|(u, s)| (TimelineId::inbox(*u), *s))
                .collect(),
            duplicate,
        })
    }

    #[test]
    fn the_head_cache_keeps_what_committed_rounds_wrote() {
        let mut cache = HeadCache::default();
        cache.committed(&[
            appended(&[("a", 5), ("b", 1)], false),
            appended(&[("a", 6)], false),
            // A duplicate's seqs are the first send's: never newer than what is cached.
            appended(&[("a", 2), ("c", 9)], true),
            Err(StoreError::Closed),
        ]);
        let all = [
            TimelineId::inbox("a"),
            TimelineId::inbox("b"),
            TimelineId::inbox("c"),
        ];
        let known = cache.known(all.iter());
        assert_eq!(known.get(&all[0]), Some(&6));
        assert_eq!(known.get(&all[1]), Some(&1));
        assert_eq!(known.get(&all[2]), None, "a duplicate wrote nothing");
        cache.forget(&HashSet::from([all[0].clone()]));
        assert_eq!(cache.known(all.iter()).len(), 1, "only b is left");
    }

    #[test]
    fn a_full_head_cache_starts_over() {
        let mut cache = HeadCache::default();
        for i in 0..HEAD_CACHE_ENTRIES {
            cache.heads.insert(TimelineId::inbox(i.to_string()), 1);
        }
        cache.committed(&[appended(&[("0", 2)], false)]);
        assert_eq!(
            cache.heads.len(),
            HEAD_CACHE_ENTRIES,
            "a cached one is updated"
        );
        cache.committed(&[appended(&[("new", 1)], false)]);
        assert_eq!(
            cache.heads.len(),
            1,
            "a new one into a full cache clears it"
        );
    }

    #[tokio::test]
    async fn a_round_takes_cached_heads_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("embedded:{}", dir.path().display()))
            .await
            .unwrap();
        let (append, _) = pending("a", &["b"]);
        let a = TimelineId::outbox("a");
        let b = TimelineId::inbox("b");
        // The store has neither timeline; the cache says `a` is at 41.
        let known = HashMap::from([(a.clone(), 41)]);
        let batch = vec![append.append.clone(), append.append];
        let results = store
            .transact(move |tx| super::append::apply_batch(tx, &batch, &known))
            .await
            .unwrap();
        let seqs: Vec<_> = results.into_iter().map(|r| r.unwrap().seqs).collect();
        assert_eq!(
            seqs,
            [vec![(a.clone(), 42), (b.clone(), 1)], vec![(a, 43), (b, 2)]],
            "the cached head is used, the other is read, and the batch sees its own writes"
        );
    }

    #[test]
    fn full_rounds_split_and_respect_the_slot_count() {
        let one_slot = options(2, 1);
        let opts = options(2, 2);
        let mut s = State::default();
        let r = s.admit(pending("busy", &[]).0, &one_slot).unwrap();
        for home in ["busy", "a", "b", "c", "d", "e"] {
            assert!(s.admit(pending(home, &[]).0, &one_slot).is_none());
        }
        let done: HashSet<_> = r.iter().flat_map(Pending::timelines).cloned().collect();
        let next = s.finish(&done, &opts);
        assert_eq!(
            next.iter().map(|r| homes(r)).collect::<Vec<_>>(),
            [vec!["busy", "a"], vec!["b", "c"]]
        );
        assert_eq!(s.in_flight, 2);
        assert_eq!(s.queue.len(), 2);
    }
}
