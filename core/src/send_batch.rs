//! Group commit of SENDs: the SENDs of every connection of one edge link, as they arrive,
//! are stored in batches — one store batch each (one transaction and one fsync for those
//! whose timelines are free, `roam_messaging::Messaging::store_batch`) — and each is still
//! answered with its own SEND_ACK, or its own ERROR, once its batch is durable.
//!
//! - A connection's worker (`link.rs`) hands its SENDs here in order and does not wait for
//!   one to be stored before handing over the next; it answers them in order as their
//!   results come back.
//! - One batcher task per edge link ([`run`]) takes what is waiting (at most
//!   `messaging.batch_max`; for a batch that is not full it waits up to
//!   `messaging.batch_wait` for more), checks each send on its own (a refused one — bad
//!   input, the send rate, a group it may not send to — is answered alone, its batch-mates
//!   go on), takes the batch's message ids in one call, registers the sends with their
//!   inboxes' delivery order and hands the batch to the store. At most
//!   `messaging.batches_in_flight` batches are in the store at once: what arrives meanwhile
//!   forms the next one, so batches grow with the load.
//! - Once a batch is durable, its recipients' sessions are read once for the whole batch,
//!   each message is delivered (in inbox seq order, as for a single send), and each SEND
//!   answered.
//!
//! Batches are handed to the store one after the other, so a sender's messages are stored,
//! and acknowledged, in the order it sent them. The batcher ends when every connection
//! worker of its link has ended (the link closed); batches in flight still finish.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use roam_messaging::{MessagingError, SendRequest, Sent, StoringBatch};
use roam_proto::client::v1 as pb;
use roam_proto::{Op, error_frame, frame_of};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use crate::chat::{Origin, delivery_users, refusal, sessions_by_user};
use crate::edges::Edge;
use crate::service::{Core, now_ms};

/// SENDs waiting for the batcher, across the link's connections.
pub(crate) const QUEUE: usize = 8192;

/// One SEND to store and answer.
#[derive(Debug)]
pub(crate) struct SendJob {
    /// The request (its sender is the connection's authenticated user).
    pub(crate) req: SendRequest,
    /// The connection it came from (its device gets no PUSH of it).
    pub(crate) conn: u64,
    /// The frame seq to answer with.
    pub(crate) seq: u32,
    /// Answered with the SEND_ACK or ERROR frame.
    pub(crate) reply: oneshot::Sender<Bytes>,
}

/// The SEND_ACK of `result`, or the ERROR frame of its refusal (counted where it happened).
pub(crate) fn ack_frame(
    seq: u32,
    client_msg_id: String,
    result: Result<Sent, MessagingError>,
) -> Bytes {
    match result {
        Ok(sent) => {
            let ack = pb::SendAck {
                client_msg_id,
                id: sent.id,
                seq: sent.seq,
                duplicate: sent.duplicate,
            };
            frame_of(Op::SendAck, seq, &ack).unwrap_or_default()
        }
        Err(e) => error_frame(seq, refusal(&e).0, &e.to_string()),
    }
}

/// How batches are formed (`messaging.batch_*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub(crate) max: usize,
    pub(crate) wait: Duration,
    pub(crate) in_flight: usize,
}

/// Takes the next batch from `rx`: waits for a first SEND (`None` once `rx` is closed and
/// empty), then takes what is waiting, up to `limits.max`, and waits up to `limits.wait`
/// for more while the batch is not full.
pub(crate) async fn next_batch(
    rx: &mut mpsc::Receiver<SendJob>,
    limits: BatchLimits,
) -> Option<Vec<SendJob>> {
    let first = rx.recv().await?;
    let max = limits.max.max(1);
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    let deadline = Instant::now() + limits.wait;
    while batch.len() < max {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if limits.wait.is_zero() {
                    break;
                }
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    Some(batch)
}

/// The batcher of one edge link: stores the SENDs arriving on `rx` in batches until `rx`
/// closes (every connection worker of the link ended), then lets the batches in flight
/// finish.
pub(crate) async fn run(core: Arc<Core>, edge: Arc<Edge>, mut rx: mpsc::Receiver<SendJob>) {
    let o = &core.options.messaging;
    let limits = BatchLimits {
        max: o.batch_max,
        wait: o.batch_wait,
        in_flight: o.batches_in_flight.max(1),
    };
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(batch) = next_batch(&mut rx, limits).await else {
            break;
        };
        core.metrics.send_batch_size.observe(batch.len() as f64);
        // Checked, registered and handed to the store here, in arrival order; stored,
        // delivered and answered in a task of its own while the next batch forms.
        let stored = core.submit_batch(&edge.id, batch).await;
        let core = core.clone();
        let edge_id = edge.id.clone();
        tokio::spawn(async move {
            core.finish_batch(&edge_id, stored).await;
            drop(slot);
        });
    }
    // Every batch in flight holds a slot until it is answered.
    let _ = slots.acquire_many(limits.in_flight as u32).await;
    debug!(edge = %edge.id, "send batcher stopped");
}

/// A send of a batch that passed its checks, waiting for its store result.
struct Waiting {
    inboxes: Vec<String>,
    conn: u64,
    seq: u32,
    client_msg_id: String,
    reply: oneshot::Sender<Bytes>,
}

/// A batch handed to the store.
pub(crate) struct Submitted {
    waiting: Vec<Waiting>,
    storing: StoringBatch,
    since: Instant,
}

impl Core {
    /// Checks each send of `batch` (answering refusals at once), registers the rest with
    /// their inboxes and hands them to the store as one batch.
    async fn submit_batch(&self, edge: &str, batch: Vec<SendJob>) -> Submitted {
        let mut reqs = Vec::with_capacity(batch.len());
        let mut jobs = Vec::with_capacity(batch.len());
        for job in batch {
            let SendJob {
                req,
                conn,
                seq,
                reply,
            } = job;
            jobs.push((conn, seq, req.client_msg_id.clone(), reply));
            reqs.push(req);
        }
        let plans = self
            .messaging
            .plan_batch(reqs, now_ms(), self.started.elapsed())
            .await;
        let mut planned = Vec::with_capacity(plans.len());
        let mut waiting = Vec::with_capacity(plans.len());
        for ((conn, seq, client_msg_id, reply), plan) in jobs.into_iter().zip(plans) {
            match plan {
                Ok(p) => {
                    waiting.push(Waiting {
                        inboxes: p.inboxes().to_vec(),
                        conn,
                        seq,
                        client_msg_id,
                        reply,
                    });
                    planned.push(p);
                }
                Err(e) => {
                    self.refused(&e);
                    let _ = reply.send(ack_frame(seq, client_msg_id, Err(e)));
                }
            }
        }
        for w in &waiting {
            self.begin_inboxes(&w.inboxes).await;
        }
        let storing = self.messaging.store_batch(planned);
        debug!(
            edge,
            sends = waiting.len(),
            "send batch handed to the store"
        );
        Submitted {
            waiting,
            storing,
            since: Instant::now(),
        }
    }

    /// Waits for a submitted batch to be durable, then delivers and answers each send.
    async fn finish_batch(&self, edge: &str, submitted: Submitted) {
        let Submitted {
            waiting,
            storing,
            since,
        } = submitted;
        let results = self.messaging.finish_batch(storing).await;
        self.metrics
            .send_batch_commit
            .observe(since.elapsed().as_secs_f64());
        let mut done = Vec::with_capacity(waiting.len());
        for (w, result) in waiting.into_iter().zip(results) {
            let result = self.stored(result, &w.inboxes);
            done.push((w, result));
        }
        // One read of the recipients' sessions for the whole batch.
        let mut users: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (_, result) in &done {
            if let Ok(sent) = result
                && !sent.duplicate
            {
                for u in delivery_users(sent) {
                    if seen.insert(u.clone()) {
                        users.push(u);
                    }
                }
            }
        }
        let sessions = if users.is_empty() {
            Ok(Vec::new())
        } else {
            self.sessions.sessions_of_users(&users).await
        };
        let by_user = sessions
            .as_ref()
            .map(|s| sessions_by_user(s))
            .unwrap_or_default();
        for (w, result) in done {
            if let Ok(sent) = &result
                && !sent.duplicate
            {
                match &sessions {
                    Ok(_) => {
                        let origin = Origin { edge, conn: w.conn };
                        let offline = self.deliver_to(sent, &w.inboxes, Some(origin), &by_user);
                        self.notify_offline(sent, offline);
                    }
                    Err(e) => self.sessions_unknown(e, &w.inboxes),
                }
            }
            let _ = w.reply.send(ack_frame(w.seq, w.client_msg_id, result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: usize) -> (SendJob, oneshot::Receiver<Bytes>) {
        let (reply, rx) = oneshot::channel();
        let job = SendJob {
            req: SendRequest {
                from: "alice".into(),
                to: "bob".into(),
                client_msg_id: format!("c{i}"),
                content: Bytes::new(),
                content_type: String::new(),
            },
            conn: 1,
            seq: i as u32,
            reply,
        };
        (job, rx)
    }

    fn limits(max: usize, wait_ms: u64) -> BatchLimits {
        BatchLimits {
            max,
            wait: Duration::from_millis(wait_ms),
            in_flight: 1,
        }
    }

    fn seqs(batch: &[SendJob]) -> Vec<u32> {
        batch.iter().map(|j| j.seq).collect()
    }

    /// A queue holding jobs `0..n`, and their answers (kept, so no reply is dropped).
    type Queued = (
        mpsc::Sender<SendJob>,
        mpsc::Receiver<SendJob>,
        Vec<oneshot::Receiver<Bytes>>,
    );

    async fn queued(n: usize) -> Queued {
        let (tx, rx) = mpsc::channel(100);
        let mut answers = Vec::new();
        for i in 0..n {
            let (j, a) = job(i);
            tx.send(j).await.unwrap();
            answers.push(a);
        }
        (tx, rx, answers)
    }

    #[tokio::test]
    async fn a_batch_is_what_waits_in_order_up_to_its_max() {
        let (tx, mut rx, _answers) = queued(10).await;
        let first = next_batch(&mut rx, limits(4, 0)).await.unwrap();
        assert_eq!(seqs(&first), [0, 1, 2, 3]);
        let second = next_batch(&mut rx, limits(100, 0)).await.unwrap();
        assert_eq!(seqs(&second), [4, 5, 6, 7, 8, 9], "no wait: what is there");
        drop(tx);
        assert!(next_batch(&mut rx, limits(4, 0)).await.is_none(), "closed");
    }

    #[tokio::test]
    async fn a_full_batch_does_not_wait() {
        let (_tx, mut rx, _answers) = queued(3).await;
        // A wait of an hour: the test only ends because a full batch does not wait.
        let batch = next_batch(&mut rx, limits(3, 3_600_000)).await.unwrap();
        assert_eq!(seqs(&batch), [0, 1, 2]);
    }
}
