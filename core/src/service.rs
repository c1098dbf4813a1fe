//! [`Core`]: the state every core component shares — sessions, the edge registry, the token
//! verifier, the heartbeat policy, metrics — and the reaper that expires lost edges.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use roam_idsvc::IdSource;
use roam_messaging::{Messaging, MessagingOptions};
use roam_store::{Cursors, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Verifier;
use crate::chat::Release;
use crate::edges::EdgeRegistry;
use crate::heartbeat::HeartbeatPolicy;
use crate::inbox_order::InboxOrder;
use crate::metrics::{CoreMetrics, KindLabel};
use crate::sessions::Sessions;

/// Core's tunables.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// How often edges heartbeat on their link.
    pub edge_heartbeat: Duration,
    /// An edge silent (or disconnected) for longer is dropped and its sessions expire.
    pub edge_timeout: Duration,
    /// Messages queued per edge before pushes that would reach it get 429.
    pub edge_queue: usize,
    /// The client heartbeat policy.
    pub heartbeat: HeartbeatPolicy,
    /// Largest push content, in bytes (it must fit a client frame).
    pub max_content: usize,
    /// Stored messaging's tunables.
    pub messaging: MessagingOptions,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions {
            edge_heartbeat: Duration::from_secs(5),
            edge_timeout: Duration::from_secs(15),
            edge_queue: 4096,
            heartbeat: HeartbeatPolicy::default(),
            max_content: roam_proto::DEFAULT_MAX_PACKET - 1024,
            messaging: MessagingOptions::default(),
        }
    }
}

/// The shared state of core.
#[derive(Debug)]
pub struct Core {
    /// Sessions and presence.
    pub(crate) sessions: Sessions,
    /// Edges connected to this core.
    pub(crate) edges: EdgeRegistry,
    /// Client token verifier.
    pub(crate) verifier: Verifier,
    /// Tunables.
    pub(crate) options: CoreOptions,
    /// Metrics.
    pub(crate) metrics: CoreMetrics,
    /// Offline notifications (disabled without `webhook.url`).
    pub(crate) webhook: crate::webhook::Webhook,
    /// Stored messaging: conversations, groups, sync, read cursors.
    pub(crate) messaging: Messaging,
    /// Per-device delivered cursors (PUSH_ACK).
    pub(crate) store_cursors: Cursors,
    /// When core started (the monotonic origin of the send rate).
    pub(crate) started: Instant,
    /// Stored-message deliveries held until they may go in inbox seq order.
    pub(crate) inbox_order: Mutex<InboxOrder<Release>>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Core {
    /// Core over `store`, with message ids from `ids`.
    pub fn new(
        store: Store,
        ids: IdSource,
        verifier: Verifier,
        options: CoreOptions,
        metrics: CoreMetrics,
        webhook: crate::webhook::Webhook,
    ) -> Arc<Self> {
        Arc::new(Core {
            messaging: Messaging::new(store.clone(), ids, options.messaging.clone()),
            store_cursors: store.cursors(),
            started: Instant::now(),
            inbox_order: Mutex::new(InboxOrder::default()),
            sessions: Sessions::new(store),
            edges: EdgeRegistry::new(options.edge_queue, options.edge_timeout),
            verifier,
            options,
            metrics,
            webhook,
        })
    }

    /// Brings the stored sessions to the current key layout (idempotent); run once before
    /// serving.
    pub async fn upgrade_sessions(&self) -> Result<(), StoreError> {
        self.sessions.upgrade().await
    }

    /// Ends every edge link, so that the internal gRPC server can stop (shutdown).
    pub fn close_edge_links(&self) {
        self.edges.close_all();
    }

    /// Expires the sessions of edges that stopped heartbeating, until `shutdown`.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.options.edge_timeout / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for edge in self.edges.reap(Instant::now()) {
                match self.sessions.expire_edge(&edge, now_ms()).await {
                    Ok(n) => {
                        info!(edge, sessions = n, "edge lost: its sessions expired");
                        self.metrics.sessions_expired.inc_by(n as u64);
                    }
                    Err(e) => {
                        warn!(edge, error = %e, "cannot expire the sessions of a lost edge; retrying");
                        self.edges.expire_again(edge, Instant::now());
                        self.metrics
                            .store_errors
                            .get_or_create(&KindLabel {
                                kind: "expire_edge",
                            })
                            .inc();
                    }
                }
            }
            self.metrics.edges.set(self.edges.live().len() as i64);
        }
    }
}
