//! Prometheus metrics of the edge, registered under the `roam_edge` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, linear_buckets};
use prometheus_client::registry::Registry;

/// Labels of connection metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `tcp`, later `quic`, `raw`.
    pub transport: &'static str,
}

/// Labels of handshake failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `timeout`, `tls`, `io`.
    pub reason: &'static str,
}

/// The edge's metrics (cheap to clone: every field is a shared handle).
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    /// Connections open now, by transport.
    pub open_connections: Family<TransportLabel, Gauge>,
    /// Connections accepted since start (TLS handshake completed), by transport.
    pub accepted: Family<TransportLabel, Counter>,
    /// Handshakes that failed, by reason.
    pub handshake_failures: Family<ReasonLabel, Counter>,
    /// Frames received from clients, by transport.
    pub frames_in: Family<TransportLabel, Counter>,
    /// Bytes received from clients (frame bytes), by transport.
    pub bytes_in: Family<TransportLabel, Counter>,
    /// Frames written to clients, by transport.
    pub frames_out: Family<TransportLabel, Counter>,
    /// Coalesced writes (one per outbox batch), by transport.
    pub writes: Family<TransportLabel, Counter>,
    /// Connections the edge closed, by reason: `slow`, `idle`, `kicked`, `drain`, `protocol`
    /// (a broken frame stream, a request before AUTH, or a refused AUTH).
    pub closes: Family<ReasonLabel, Counter>,
    /// Heartbeat intervals told to clients, in seconds.
    pub heartbeat_interval: Histogram,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        EdgeMetrics {
            open_connections: Family::default(),
            accepted: Family::default(),
            handshake_failures: Family::default(),
            frames_in: Family::default(),
            bytes_in: Family::default(),
            frames_out: Family::default(),
            writes: Family::default(),
            closes: Family::default(),
            heartbeat_interval: Histogram::new(linear_buckets(60.0, 30.0, 9)),
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
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        m
    }
}
