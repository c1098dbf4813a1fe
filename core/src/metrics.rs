//! Prometheus metrics of core, registered under the `roam_core` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label with one `&'static str` value, e.g. `{target="users"}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    /// The kind.
    pub(crate) kind: &'static str,
}

/// An edge id label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EdgeLabel {
    /// The edge.
    pub(crate) edge: String,
}

/// A business-API route and response status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    /// The matched route (`/api/v1/push/users`).
    pub(crate) route: String,
    /// The HTTP status.
    pub(crate) status: u16,
}

/// Core's metrics (cheap to clone: shared handles).
#[derive(Debug, Clone)]
pub struct CoreMetrics {
    /// Edges registered and live.
    pub(crate) edges: Gauge,
    /// Messages waiting in each edge's queue (sampled at each push and heartbeat).
    pub(crate) edge_queue_depth: Family<EdgeLabel, Gauge>,
    /// Pushes accepted, by target kind (`devices`, `users`, `rooms`, `all`).
    pub(crate) pushes: Family<KindLabel, Counter>,
    /// Pushes refused because an edge's queue was full.
    pub(crate) pushes_rejected_busy: Counter,
    /// Client connections authenticated.
    pub(crate) connects: Counter,
    /// Client authentications refused, by reason.
    pub(crate) auth_failures: Family<KindLabel, Counter>,
    /// Client connections ended.
    pub(crate) disconnects: Counter,
    /// Sessions expired because their edge stopped heartbeating.
    pub(crate) sessions_expired: Counter,
    /// Store operations that failed, by operation.
    pub(crate) store_errors: Family<KindLabel, Counter>,
    /// Business API requests, by route and status.
    pub(crate) api_requests: Family<RouteLabel, Counter>,
    /// Business API latency in seconds.
    pub(crate) api_latency: Histogram,
    /// Edge links refused, by reason (`edge_id_taken`).
    pub(crate) links_refused: Family<KindLabel, Counter>,
    /// Messages stored, by delivery (`push`: write fan-out, `pull`: read fan-out).
    pub(crate) messages_stored: Family<KindLabel, Counter>,
    /// Sends answered from their idempotency record (retries; nothing stored).
    pub(crate) messages_duplicate: Counter,
    /// Sends, syncs and reads refused, by reason (`invalid`, `too_large`, `not_found`,
    /// `forbidden`, `limit`, `rate_limited`, `unavailable`, `busy`).
    pub(crate) messaging_refused: Family<KindLabel, Counter>,
    /// Stored-message deliveries (PUSH or NOTICE to one user's devices on one edge) not
    /// queued because the edge's queue was full; the devices get them with SYNC.
    pub(crate) deliveries_dropped: Counter,
    /// SENDs stored together in one store batch (group commit), per batch.
    pub(crate) send_batch_size: Histogram,
    /// From a send batch's hand-over to the store until every send in it was durable (or
    /// refused), in seconds.
    pub(crate) send_batch_commit: Histogram,
}

impl CoreMetrics {
    /// Creates the metrics and registers them under `roam_core_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CoreMetrics {
            edges: Gauge::default(),
            edge_queue_depth: Family::default(),
            pushes: Family::default(),
            pushes_rejected_busy: Counter::default(),
            connects: Counter::default(),
            auth_failures: Family::default(),
            disconnects: Counter::default(),
            sessions_expired: Counter::default(),
            store_errors: Family::default(),
            api_requests: Family::default(),
            api_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            links_refused: Family::default(),
            messages_stored: Family::default(),
            messages_duplicate: Counter::default(),
            messaging_refused: Family::default(),
            deliveries_dropped: Counter::default(),
            send_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            send_batch_commit: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("roam_core");
        r.register("edges", "Edges registered and live", m.edges.clone());
        r.register(
            "edge_queue_depth",
            "Messages waiting in an edge's delivery queue",
            m.edge_queue_depth.clone(),
        );
        r.register(
            "pushes",
            "Pushes accepted, by target kind",
            m.pushes.clone(),
        );
        r.register(
            "pushes_rejected_busy",
            "Pushes refused with 429 because an edge's queue was full",
            m.pushes_rejected_busy.clone(),
        );
        r.register(
            "connects",
            "Client connections authenticated",
            m.connects.clone(),
        );
        r.register(
            "auth_failures",
            "Client authentications refused, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "disconnects",
            "Client connections ended",
            m.disconnects.clone(),
        );
        r.register(
            "sessions_expired",
            "Sessions expired because their edge stopped heartbeating",
            m.sessions_expired.clone(),
        );
        r.register(
            "store_errors",
            "Store operations that failed",
            m.store_errors.clone(),
        );
        r.register(
            "api_requests",
            "Business API requests, by route and status",
            m.api_requests.clone(),
        );
        r.register(
            "api_latency_seconds",
            "Business API request latency",
            m.api_latency.clone(),
        );
        r.register(
            "edge_links_refused",
            "Edge links refused, by reason",
            m.links_refused.clone(),
        );
        r.register(
            "messages_stored",
            "Messages stored, by delivery (push: write fan-out, pull: read fan-out)",
            m.messages_stored.clone(),
        );
        r.register(
            "messages_duplicate",
            "Sends answered from their idempotency record (nothing stored)",
            m.messages_duplicate.clone(),
        );
        r.register(
            "messaging_refused",
            "Sends, syncs and reads refused, by reason",
            m.messaging_refused.clone(),
        );
        r.register(
            "deliveries_dropped",
            "Stored-message deliveries not queued because an edge's queue was full (devices SYNC)",
            m.deliveries_dropped.clone(),
        );
        r.register(
            "send_batch_size",
            "SENDs stored together in one store batch (group commit), per batch",
            m.send_batch_size.clone(),
        );
        r.register(
            "send_batch_commit_seconds",
            "From a send batch's hand-over to the store until all of it was durable",
            m.send_batch_commit.clone(),
        );
        m
    }
}
