//! Prometheus metrics of the edge, registered under the `roam_edge` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
#[derive(Debug, Clone, Default)]
pub struct EdgeMetrics {
    /// Connections open now, by transport.
    pub open_connections: Family<TransportLabel, Gauge>,
    /// Connections accepted since start (TLS handshake completed), by transport.
    pub accepted: Family<TransportLabel, Counter>,
    /// Handshakes that failed, by reason.
    pub handshake_failures: Family<ReasonLabel, Counter>,
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
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        m
    }
}
