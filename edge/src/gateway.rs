//! The edge's runtime: its link to core, the comet, and what every connection shares.
//!
//! [`Gateway::start`] connects to core ([`crate::link`]), then runs two tasks until
//! shutdown: the *link reader* applies what core sends (AUTH results to the waiting
//! connection, deliveries to the comet, op replies, kicks), and the *heartbeat* reports load
//! and rooms every period core asked for. If the link breaks, every client connection is
//! closed with DISCONNECT (reconnect) — core has forgotten them — and the gateway reconnects.
//! Room and broadcast deliveries pass through the `Batcher` (goim's room batch): a third
//! task fans each batch out when its window ends.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::{self as link, EdgeUp, deliver, edge_down, edge_up};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admission::{Admission, AdmissionConfig};
use crate::batch::{Batch, BatchConfig, BatchKey, Batcher};
use crate::comet::{Comet, Fanout};
use crate::conn::Transport;
use crate::link::{CoreLink, EdgeIdentity, LinkError};
use crate::metrics::EdgeMetrics;
use crate::outbox::CloseReason;
use crate::session::SessionConfig;

/// Tunables shared by every connection of the edge.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The client protocol state machine's limits.
    pub session: SessionConfig,
    /// Deliveries queued per connection (each a frame, a reply or a room batch) before it is
    /// closed as slow.
    pub outbox: usize,
    /// Largest client frame.
    pub max_packet: usize,
    /// Connections beyond this are refused (503 / DISCONNECT(limit)): one slot per TCP
    /// connection from accept, and one per virtual connection before its AUTH goes to core.
    pub max_connections: usize,
    /// Sessions one connection may carry at once (WebSockets and gRPC streams over HTTP/2,
    /// virtual connections while on it; 0: no cap).
    pub max_sessions_per_conn: u32,
    /// Of those, sessions not yet authenticated (0: no cap).
    pub max_unauthenticated_per_conn: u32,
    /// TLS handshakes in flight at once on the client and raw ports (0: no cap).
    pub max_handshakes: usize,
    /// Connections at once from one source address (0: no cap).
    pub max_conns_per_ip: usize,
    /// TLS handshakes in flight at once from one source address (0: no cap).
    pub max_handshakes_per_ip: usize,
    /// Rooms one connection may be in (ROOM_JOIN beyond it is refused; AUTH's list is cut).
    pub max_rooms_per_conn: usize,
    /// Comet buckets.
    pub buckets: usize,
    /// A write to a client that takes longer than this closes the connection as slow.
    pub write_timeout: Duration,
    /// How room and broadcast deliveries are batched.
    pub batch: BatchConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            session: SessionConfig::default(),
            outbox: 256,
            max_packet: roam_proto::DEFAULT_MAX_PACKET,
            max_connections: 100_000,
            max_sessions_per_conn: 100,
            max_unauthenticated_per_conn: 8,
            max_handshakes: 4096,
            max_conns_per_ip: 1000,
            max_handshakes_per_ip: 64,
            max_rooms_per_conn: 64,
            buckets: std::thread::available_parallelism().map_or(4, |n| n.get() * 4),
            write_timeout: Duration::from_secs(10),
            batch: BatchConfig::default(),
        }
    }
}

/// How long a connection's message may wait for room on the link to core.
const UP_WAIT: Duration = Duration::from_secs(5);

/// Transports the edge reports connections for.
pub(crate) const TRANSPORTS: &[&str] = &["ws", "stream", "poll", "grpc", "raw"];

/// The edge's shared state.
#[derive(Debug)]
pub struct Gateway {
    /// Authenticated connections.
    pub(crate) comet: Comet,
    /// Tunables.
    pub(crate) config: GatewayConfig,
    /// Metrics.
    pub(crate) metrics: EdgeMetrics,
    /// Fires on shutdown: connections drain.
    pub(crate) shutdown: CancellationToken,
    up: Mutex<Option<mpsc::Sender<EdgeUp>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<link::ConnectResult>>>,
    /// Admission of the client and raw ports: source shares, slots, handshakes.
    pub admission: Arc<Admission>,
    /// `config.session`, shared by every connection's session (not copied into each).
    pub(crate) session: Arc<SessionConfig>,
    by_transport: [AtomicU64; TRANSPORTS.len()],
    batcher: Mutex<Batcher>,
    /// Wakes the batch task when a batch opens while none was pending.
    batch_opened: Notify,
}

/// Now, on tokio's clock (which tests can pause and advance).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Gateway {
    /// Connects to core at `core` (`http://host:port`), registers as `identity`, and runs the
    /// link until `shutdown`.
    pub async fn start(
        core: String,
        identity: EdgeIdentity,
        config: GatewayConfig,
        metrics: EdgeMetrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Gateway>, LinkError> {
        let link = CoreLink::connect(&core, identity.clone()).await?;
        let gateway = Gateway::new(config, metrics, shutdown, Some(link.sender()));
        tokio::spawn(gateway.clone().run_link(link, core, identity));
        tokio::spawn(gateway.clone().run_batches());
        Ok(gateway)
    }

    fn new(
        config: GatewayConfig,
        metrics: EdgeMetrics,
        shutdown: CancellationToken,
        up: Option<mpsc::Sender<EdgeUp>>,
    ) -> Arc<Gateway> {
        let admission = Admission::new(
            AdmissionConfig {
                max_connections: config.max_connections,
                max_handshakes: config.max_handshakes,
                max_conns_per_ip: config.max_conns_per_ip,
                max_handshakes_per_ip: config.max_handshakes_per_ip,
                max_sessions_per_conn: config.max_sessions_per_conn,
                max_unauthenticated_per_conn: config.max_unauthenticated_per_conn,
                ..AdmissionConfig::default()
            },
            metrics.refusals.clone(),
        );
        Arc::new(Gateway {
            comet: Comet::new(config.buckets),
            batcher: Mutex::new(Batcher::new(config.batch)),
            batch_opened: Notify::new(),
            session: Arc::new(config.session.clone()),
            config,
            metrics,
            shutdown,
            up: Mutex::new(up),
            pending: Mutex::new(HashMap::new()),
            admission,
            by_transport: Default::default(),
        })
    }

    /// A gateway with no link to core (for tests of what runs beneath it).
    #[cfg(test)]
    pub(crate) fn detached(config: GatewayConfig) -> Arc<Gateway> {
        Gateway::new(
            config,
            EdgeMetrics::default(),
            CancellationToken::new(),
            None,
        )
    }

    /// Counts an authenticated connection over `transport` (until [`Gateway::left`]).
    pub(crate) fn joined(&self, transport: Transport) {
        if let Some(i) = TRANSPORTS.iter().position(|t| *t == transport.name) {
            self.by_transport[i].fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.sessions.get_or_create(&transport.into()).inc();
    }

    /// The authenticated connection over `transport` ended.
    pub(crate) fn left(&self, transport: Transport) {
        if let Some(i) = TRANSPORTS.iter().position(|t| *t == transport.name) {
            self.by_transport[i].fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.sessions.get_or_create(&transport.into()).dec();
    }

    /// Offers a periodic report to the link; dropped if the link is full (the next one
    /// repeats it).
    fn offer_up(&self, msg: edge_up::Msg) {
        let up = self.up.lock().clone();
        if let Some(up) = up
            && up.try_send(EdgeUp { msg: Some(msg) }).is_err()
        {
            self.metrics.link_drops.inc();
        }
    }

    /// Sends a connection's message up the link, waiting for room: a burst (a reconnect
    /// storm, synchronised heartbeats) slows the connections' tasks down instead of losing
    /// their requests. After [`UP_WAIT`] — core is not reading — the message is dropped and
    /// counted (`roam_edge_link_drops_total`); AUTH then times out, a request goes unanswered.
    async fn send_up(&self, msg: edge_up::Msg) {
        let up = self.up.lock().clone();
        let Some(up) = up else {
            self.metrics.link_drops.inc();
            return;
        };
        // Boxed: the send's state exists only while it waits, not in every connection's task.
        let sent = Box::pin(tokio::time::timeout(
            UP_WAIT,
            up.send(EdgeUp { msg: Some(msg) }),
        ))
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            self.metrics.link_drops.inc();
            warn!("the link to core is full or down: dropped a connection's message");
        }
    }

    /// Asks core to authenticate connection `conn_id`; the answer arrives on the receiver.
    pub(crate) async fn authenticate(
        &self,
        conn_id: u64,
        auth: pb::Auth,
        transport: &str,
    ) -> oneshot::Receiver<link::ConnectResult> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(conn_id, tx);
        self.send_up(edge_up::Msg::Connect(link::Connect {
            conn_id,
            token: auth.token,
            device_id: auth.device_id,
            platform: auth.platform,
            transport: transport.to_owned(),
            rooms: auth.rooms,
        }))
        .await;
        rx
    }

    /// Passes a client request to core.
    pub(crate) async fn to_core(&self, conn_id: u64, op: u32, seq: u32, body: Bytes) {
        self.send_up(edge_up::Msg::ClientOp(link::ClientOp {
            conn_id,
            op,
            seq,
            body,
        }))
        .await;
    }

    /// Tells core a room's membership on this edge changed to `members`.
    pub(crate) async fn room_change(&self, room: String, members: u64) {
        self.send_up(edge_up::Msg::RoomChange(link::RoomChange { room, members }))
            .await;
    }

    /// A connection ended (`idle`: lost to a heartbeat timeout).
    pub(crate) async fn disconnect(&self, conn_id: u64, idle: bool) {
        self.pending.lock().remove(&conn_id);
        for room in self.comet.remove(conn_id) {
            self.room_change(room, 0).await;
        }
        let reason = if idle { "idle" } else { "closed" };
        self.send_up(edge_up::Msg::Disconnect(link::Disconnect {
            conn_id,
            reason: reason.into(),
        }))
        .await;
    }

    fn heartbeat(&self) -> edge_up::Msg {
        let connections = TRANSPORTS
            .iter()
            .zip(&self.by_transport)
            .map(|(t, n)| (t.to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        edge_up::Msg::Heartbeat(link::EdgeHeartbeat {
            connections,
            rooms: self.comet.room_totals(),
        })
    }

    fn count(&self, fanout: Fanout) {
        self.metrics.queued.inc_by(fanout.queued);
        if fanout.overflowed > 0 {
            self.metrics.overflows.inc_by(fanout.overflowed);
        }
    }

    fn apply(&self, msg: edge_down::Msg) {
        match msg {
            edge_down::Msg::ConnectResult(r) => {
                if let Some(tx) = self.pending.lock().remove(&r.conn_id) {
                    let _ = tx.send(r);
                }
            }
            edge_down::Msg::Deliver(d) => {
                let key = match d.target {
                    Some(deliver::Target::Conns(ids)) => {
                        let fanout = self.comet.send_many(&ids.ids, &d.frames);
                        return self.count(fanout);
                    }
                    Some(deliver::Target::Room(room)) => BatchKey::Room(room),
                    Some(deliver::Target::All(_)) => BatchKey::All,
                    None => return,
                };
                self.batch(key, d.frames);
            }
            edge_down::Msg::OpReply(r) => {
                let fanout = self.comet.send(r.conn_id, r.frames);
                self.count(fanout);
            }
            edge_down::Msg::Kick(k) => {
                self.comet.close(k.conn_id, CloseReason::Kicked(k.reason));
            }
            edge_down::Msg::Registered(_) => {}
        }
    }

    /// Adds a room or broadcast delivery to its batch; fans out what is ready.
    ///
    /// Batches are fanned out with the batcher's lock held, here and in the batch task, so
    /// two batches of one room can never overtake each other.
    fn batch(&self, key: BatchKey, frames: Bytes) {
        let mut b = self.batcher.lock();
        let idle = b.next_due().is_none();
        for batch in b.push(key, frames, now()) {
            self.fan_out(batch);
        }
        if idle && b.next_due().is_some() {
            self.batch_opened.notify_one();
        }
    }

    fn fan_out(&self, batch: Batch) {
        let fanout = match &batch.key {
            BatchKey::Room(room) => self.comet.send_room(room, &batch.frames),
            BatchKey::All => self.comet.send_all(&batch.frames),
        };
        self.metrics.batch_pushes.observe(batch.pushes as f64);
        self.count(fanout);
    }

    /// Fans out each batch when its window ends; on shutdown, what is pending goes out at
    /// once (ahead of the connections' DISCONNECT(drain)).
    async fn run_batches(self: Arc<Self>) {
        loop {
            let next = self.batcher.lock().next_due();
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => self.batch_opened.notified().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = wait => {}
            }
            let mut b = self.batcher.lock();
            for batch in b.take_due(now()) {
                self.fan_out(batch);
            }
        }
        let mut b = self.batcher.lock();
        for batch in b.take_all() {
            self.fan_out(batch);
        }
    }

    async fn run_link(self: Arc<Self>, mut link: CoreLink, core: String, identity: EdgeIdentity) {
        loop {
            let mut beat = tokio::time::interval(link.heartbeat_interval());
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ended = loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = beat.tick() => self.offer_up(self.heartbeat()),
                    msg = link.next() => match msg {
                        Ok(Some(msg)) => self.apply(msg),
                        Ok(None) => break "core ended the link".to_owned(),
                        Err(e) => break e.to_string(),
                    },
                }
            };
            warn!(reason = %ended, "link to core lost: closing client connections, reconnecting");
            *self.up.lock() = None;
            // Pending batches were for the connections about to be closed; the clients that
            // reconnect must not get them on top of what they SYNC.
            drop(self.batcher.lock().take_all());
            self.comet.close_all(CloseReason::Kicked(
                pb::disconnect::Reason::Unspecified as i32,
            ));
            self.pending.lock().clear();
            let mut backoff = Duration::from_millis(100);
            link = loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match CoreLink::connect(&core, identity.clone()).await {
                    Ok(l) => break l,
                    // Core answered and said no (a wrong internal key, or this edge's id
                    // taken by another process meanwhile): no retry changes that by itself.
                    Err(e @ LinkError::Refused { .. }) => {
                        error!(error = %e, "core refused the edge link; retrying");
                        backoff = Duration::from_secs(5);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot reach core yet");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            info!("link to core restored");
            *self.up.lock() = Some(link.sender());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use roam_proto::{FrameDecoder, Op, frame_of};

    fn deliver(target: deliver::Target, seq: u32) -> edge_down::Msg {
        edge_down::Msg::Deliver(link::Deliver {
            target: Some(target),
            frames: frame_of(Op::Push, seq, &pb::Push::default()).expect("a push encodes"),
        })
    }

    fn frames_in(batch: &[Bytes]) -> Vec<u32> {
        let decoder = FrameDecoder::new(usize::MAX);
        let mut seqs = Vec::new();
        for b in batch {
            let mut b = b.clone();
            while let Ok(Some(f)) = decoder.decode_bytes(&mut b) {
                seqs.push(f.seq);
            }
        }
        seqs
    }

    #[tokio::test(start_paused = true)]
    async fn room_pushes_reach_members_as_one_batch_after_the_window() {
        let config = GatewayConfig {
            batch: BatchConfig {
                window: Duration::from_millis(50),
                max_frames: 3,
                max_bytes: 32 * 1024,
            },
            ..GatewayConfig::default()
        };
        let gw = Gateway::detached(config);
        tokio::spawn(gw.clone().run_batches());
        let member = Arc::new(Outbox::new(16));
        let id = gw.comet.allocate("phone");
        gw.comet.insert(id, member.clone());
        gw.comet.join(id, "lobby");
        let room = || deliver::Target::Room("lobby".into());

        gw.apply(deliver(room(), 1));
        gw.apply(deliver(room(), 2));
        tokio::time::sleep(Duration::from_millis(49)).await;
        assert!(member.is_empty(), "the batch waits for its window");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut batch = Vec::new();
        member.take(&mut batch);
        assert_eq!(batch.len(), 1, "one buffer for the whole batch");
        assert_eq!(frames_in(&batch), vec![1, 2]);

        // A full batch goes out at once; broadcasts batch too; pushes to connections do not.
        batch.clear();
        for seq in 3..=5 {
            gw.apply(deliver(room(), seq));
        }
        gw.apply(deliver(
            deliver::Target::Conns(link::ConnIds { ids: vec![id] }),
            6,
        ));
        gw.apply(deliver(deliver::Target::All(true), 7));
        member.take(&mut batch);
        assert_eq!(frames_in(&batch), vec![3, 4, 5, 6]);
        batch.clear();
        tokio::time::sleep(Duration::from_millis(51)).await;
        member.take(&mut batch);
        assert_eq!(frames_in(&batch), vec![7]);
        gw.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn pending_batches_go_out_on_shutdown() {
        let gw = Gateway::detached(GatewayConfig::default());
        let batches = tokio::spawn(gw.clone().run_batches());
        let member = Arc::new(Outbox::new(16));
        let id = gw.comet.allocate("phone");
        gw.comet.insert(id, member.clone());
        gw.comet.join(id, "lobby");
        gw.apply(deliver(deliver::Target::Room("lobby".into()), 9));
        tokio::task::yield_now().await;
        assert!(member.is_empty(), "the window has not passed");
        gw.shutdown.cancel();
        batches.await.unwrap();
        let mut batch = Vec::new();
        member.take(&mut batch);
        assert_eq!(frames_in(&batch), vec![9]);
    }
}
