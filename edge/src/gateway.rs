//! The edge's runtime: its link to core, the comet, and what every connection shares.
//!
//! [`Gateway::start`] connects to core ([`crate::link`]), then runs two tasks until
//! shutdown: the *link reader* applies what core sends (AUTH results to the waiting
//! connection, deliveries to the comet, op replies, kicks), and the *heartbeat* reports load
//! and rooms every period core asked for. If the link breaks, every client connection is
//! closed with DISCONNECT (reconnect) — core has forgotten them — and the gateway reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::{self as link, EdgeUp, deliver, edge_down, edge_up};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// Frames queued per connection before it is closed as slow.
    pub outbox: usize,
    /// Largest client frame.
    pub max_packet: usize,
    /// Connections beyond this are refused (503 / DISCONNECT(limit)).
    pub max_connections: usize,
    /// Comet buckets.
    pub buckets: usize,
    /// A write to a client that takes longer than this closes the connection as slow.
    pub write_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            session: SessionConfig::default(),
            outbox: 256,
            max_packet: roam_proto::DEFAULT_MAX_PACKET,
            max_connections: 100_000,
            buckets: std::thread::available_parallelism().map_or(4, |n| n.get() * 4),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a connection's message may wait for room on the link to core.
const UP_WAIT: Duration = Duration::from_secs(5);

/// Transports the edge reports connections for.
pub const TRANSPORTS: &[&str] = &["ws", "stream", "poll", "grpc", "raw"];

/// The edge's shared state.
#[derive(Debug)]
pub struct Gateway {
    /// Authenticated connections.
    pub comet: Comet,
    /// Tunables.
    pub config: GatewayConfig,
    /// Metrics.
    pub metrics: EdgeMetrics,
    /// Fires on shutdown: connections drain.
    pub shutdown: CancellationToken,
    up: Mutex<Option<mpsc::Sender<EdgeUp>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<link::ConnectResult>>>,
    open: AtomicUsize,
    by_transport: [AtomicU64; TRANSPORTS.len()],
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A slot in the connection limit, released on drop.
#[derive(Debug)]
pub struct ConnPermit {
    gateway: Arc<Gateway>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.gateway.open.fetch_sub(1, Ordering::Relaxed);
    }
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
        let gateway = Arc::new(Gateway {
            comet: Comet::new(config.buckets),
            config,
            metrics,
            shutdown,
            up: Mutex::new(Some(link.sender())),
            pending: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            by_transport: Default::default(),
        });
        tokio::spawn(gateway.clone().run_link(link, core, identity));
        Ok(gateway)
    }

    /// A gateway with no link to core (for tests of what runs beneath it).
    #[cfg(test)]
    pub(crate) fn detached(config: GatewayConfig) -> Arc<Gateway> {
        Arc::new(Gateway {
            comet: Comet::new(config.buckets),
            config,
            metrics: EdgeMetrics::default(),
            shutdown: CancellationToken::new(),
            up: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            by_transport: Default::default(),
        })
    }

    /// Takes a slot for a new connection, or `None` at the limit.
    pub fn admit(self: &Arc<Self>) -> Option<ConnPermit> {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        let permit = ConnPermit {
            gateway: self.clone(),
        };
        (n < self.config.max_connections).then_some(permit)
    }

    /// Counts an authenticated connection over `transport` (until [`Gateway::left`]).
    pub fn joined(&self, transport: Transport) {
        if let Some(i) = TRANSPORTS.iter().position(|t| *t == transport.name) {
            self.by_transport[i].fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.sessions.get_or_create(&transport.into()).inc();
    }

    /// The authenticated connection over `transport` ended.
    pub fn left(&self, transport: Transport) {
        if let Some(i) = TRANSPORTS.iter().position(|t| *t == transport.name) {
            self.by_transport[i].fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.sessions.get_or_create(&transport.into()).dec();
    }

    /// Offers a periodic report to the link; dropped if the link is full (the next one
    /// repeats it).
    fn offer_up(&self, msg: edge_up::Msg) {
        let up = lock(&self.up).clone();
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
        let up = lock(&self.up).clone();
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
    pub async fn authenticate(
        &self,
        conn_id: u64,
        auth: pb::Auth,
        transport: &str,
    ) -> oneshot::Receiver<link::ConnectResult> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(conn_id, tx);
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
    pub async fn to_core(&self, conn_id: u64, op: u32, seq: u32, body: Bytes) {
        self.send_up(edge_up::Msg::ClientOp(link::ClientOp {
            conn_id,
            op,
            seq,
            body,
        }))
        .await;
    }

    /// Tells core a room's membership on this edge changed to `members`.
    pub async fn room_change(&self, room: String, members: u64) {
        self.send_up(edge_up::Msg::RoomChange(link::RoomChange { room, members }))
            .await;
    }

    /// A connection ended (`idle`: lost to a heartbeat timeout).
    pub async fn disconnect(&self, conn_id: u64, idle: bool) {
        lock(&self.pending).remove(&conn_id);
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
                if let Some(tx) = lock(&self.pending).remove(&r.conn_id) {
                    let _ = tx.send(r);
                }
            }
            edge_down::Msg::Deliver(d) => {
                let fanout = match d.target {
                    Some(deliver::Target::Conns(ids)) => self.comet.send_many(&ids.ids, &d.frames),
                    Some(deliver::Target::Room(room)) => self.comet.send_room(&room, &d.frames),
                    Some(deliver::Target::All(_)) => self.comet.send_all(&d.frames),
                    None => return,
                };
                self.count(fanout);
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
            *lock(&self.up) = None;
            self.comet.close_all(CloseReason::Kicked(
                pb::disconnect::Reason::Unspecified as i32,
            ));
            lock(&self.pending).clear();
            let mut backoff = Duration::from_millis(100);
            link = loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match CoreLink::connect(&core, identity.clone()).await {
                    Ok(l) => break l,
                    Err(e) => {
                        warn!(error = %e, "cannot reach core yet");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            info!("link to core restored");
            *lock(&self.up) = Some(link.sender());
        }
    }
}
