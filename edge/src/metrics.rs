//! Prometheus metrics of the edge, registered under the `roam_edge` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

/// Labels of connection metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabel {
    /// `tcp`, later `quic`, `raw`.
    pub(crate) transport: &'static str,
}

/// Labels of authenticated connections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SessionLabel {
    /// `ws`, `stream`, `poll`, `grpc`, `raw`.
    pub(crate) transport: &'static str,
    /// `1.1`, `2`, `3`, `none`.
    pub(crate) http_version: &'static str,
}

impl From<crate::conn::Transport> for SessionLabel {
    fn from(t: crate::conn::Transport) -> Self {
        SessionLabel {
            transport: t.name,
            http_version: t.http,
        }
    }
}

/// Labels of handshake failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// `timeout`, `tls`, `io`.
    pub(crate) reason: &'static str,
}

/// The edge's metrics (cheap to clone: every field is a shared handle).
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    /// Connections open now, by transport.
    pub(crate) open_connections: Family<TransportLabel, Gauge>,
    /// Connections accepted since start (TLS handshake completed), by transport.
    pub(crate) accepted: Family<TransportLabel, Counter>,
    /// Handshakes that failed, by reason.
    pub(crate) handshake_failures: Family<ReasonLabel, Counter>,
    /// Frames received from clients, by transport.
    pub(crate) frames_in: Family<TransportLabel, Counter>,
    /// Bytes received from clients (frame bytes), by transport.
    pub(crate) bytes_in: Family<TransportLabel, Counter>,
    /// Bytes of frames written to clients, by transport.
    pub(crate) bytes_out: Family<TransportLabel, Counter>,
    /// AUTHs core refused, by error code (`auth_failed`, `auth_expired`, `unavailable`, …).
    pub(crate) auth_failures: Family<ReasonLabel, Counter>,
    /// Frames written to clients, by transport.
    pub(crate) frames_out: Family<TransportLabel, Counter>,
    /// Coalesced writes (one per outbox batch), by transport.
    pub(crate) writes: Family<TransportLabel, Counter>,
    /// Connections the edge closed, by reason: `slow` (queue overflow or a write past the
    /// write timeout), `idle`, `kicked`, `drain`, `protocol` (a broken frame stream, a request
    /// before AUTH, or a refused AUTH), `io` (a write failed: the client went away).
    pub(crate) closes: Family<ReasonLabel, Counter>,
    /// Heartbeat intervals told to clients, in seconds.
    pub(crate) heartbeat_interval: Histogram,
    /// Authenticated connections open now, by transport and HTTP version.
    pub(crate) sessions: Family<SessionLabel, Gauge>,
    /// Frames a connection's task found queued when it drained its outbox (queue depth).
    pub(crate) queue_depth: Histogram,
    /// Frames queued to connections' outboxes (deliveries and replies from core).
    pub(crate) queued: Counter,
    /// Pushes per room or broadcast batch fanned out (see `edge.batch_ms`).
    pub(crate) batch_pushes: Histogram,
    /// Connections whose outbox overflowed (each then closes as slow; its frames are dropped).
    pub(crate) overflows: Counter,
    /// Messages for core dropped because the edge link was full or down.
    pub(crate) link_drops: Counter,
    /// Long-polls parked now, waiting for frames (`GET /v1/poll` with `wait`).
    pub(crate) polls_waiting: Gauge,
    /// Connections refused at admission (registered by the process, shared with the admin
    /// port: see [`crate::admission::Refusals::register`]).
    pub refusals: crate::admission::Refusals,
    /// QUIC connections whose client address changed (connection migration), by transport.
    pub(crate) quic_path_changes: Family<TransportLabel, Counter>,
    /// QUIC connection attempts answered with a stateless Retry (address validation under
    /// a handshake flood).
    pub(crate) quic_retries: Counter,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        EdgeMetrics {
            open_connections: Family::default(),
            accepted: Family::default(),
            handshake_failures: Family::default(),
            frames_in: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            auth_failures: Family::default(),
            frames_out: Family::default(),
            writes: Family::default(),
            closes: Family::default(),
            heartbeat_interval: Histogram::new(linear_buckets(60.0, 30.0, 9)),
            sessions: Family::default(),
            queue_depth: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            queued: Counter::default(),
            batch_pushes: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            overflows: Counter::default(),
            link_drops: Counter::default(),
            polls_waiting: Gauge::default(),
            refusals: crate::admission::Refusals::default(),
            quic_path_changes: Family::default(),
            quic_retries: Counter::default(),
        }
    }
}

impl EdgeMetrics {
    /// Creates the metrics and registers them in `registry` under `roam_edge_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = EdgeMetrics::default();
        let r = registry.sub_registry_with_prefix("roam_edge");
        r.register(
            "open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        r.register(
            "accepted_connections",
            "Client connections accepted (TLS handshake completed)",
            m.accepted.clone(),
        );
        r.register(
            "frames_in",
            "Frames received from clients",
            m.frames_in.clone(),
        );
        r.register(
            "bytes_in",
            "Frame bytes received from clients",
            m.bytes_in.clone(),
        );
        r.register(
            "bytes_out",
            "Frame bytes written to clients",
            m.bytes_out.clone(),
        );
        r.register(
            "auth_failures",
            "Client AUTHs refused, by error code",
            m.auth_failures.clone(),
        );
        r.register(
            "frames_out",
            "Frames written to clients",
            m.frames_out.clone(),
        );
        r.register(
            "writes",
            "Coalesced writes to clients (one per outbox batch)",
            m.writes.clone(),
        );
        r.register(
            "closes",
            "Client connections closed by the edge, by reason",
            m.closes.clone(),
        );
        r.register(
            "heartbeat_interval_seconds",
            "Heartbeat intervals told to clients",
            m.heartbeat_interval.clone(),
        );
        r.register(
            "sessions",
            "Authenticated client connections open now, by transport and HTTP version",
            m.sessions.clone(),
        );
        r.register(
            "queue_depth",
            "Frames a connection had queued when its task drained its outbox",
            m.queue_depth.clone(),
        );
        r.register(
            "queued_frames",
            "Frames queued to client connections (deliveries and replies)",
            m.queued.clone(),
        );
        r.register(
            "batch_pushes",
            "Pushes per room or broadcast batch fanned out",
            m.batch_pushes.clone(),
        );
        r.register(
            "queue_overflows",
            "Client connections whose queue overflowed (closed as slow, frames dropped)",
            m.overflows.clone(),
        );
        r.register(
            "polls_waiting",
            "Long-polls parked now, waiting for frames",
            m.polls_waiting.clone(),
        );
        r.register(
            "link_drops",
            "Messages for core dropped because the edge link was full or down",
            m.link_drops.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        r.register(
            "quic_path_changes",
            "QUIC connections whose client address changed (connection migration), by transport",
            m.quic_path_changes.clone(),
        );
        r.register(
            "quic_retries",
            "QUIC connection attempts answered with a stateless Retry (handshake flood)",
            m.quic_retries.clone(),
        );
        m
    }
}
