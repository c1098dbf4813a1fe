//! The admin listener (plain HTTP/1.1, meant for a private network): `/healthz` and
//! `/metrics` in every role, the business API (docs/contract.md §5) where core runs.
//!
//! Bounded like the client ports: at most `limits.admin_max_connections` connections (one
//! beyond gets a canned 503 and is closed, counted as `roam_refused_connections_total
//! {reason="admin"}`), at most `limits.admin_max_conns_per_ip` from one source (one beyond
//! is closed at accept: `admin_per_ip`), and a request's head must arrive within
//! `limits.http_header_timeout_secs` — from accept for the first one, so a connection that
//! sends nothing is closed then.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use roam_edge::admission::{Admission, AdmissionConfig, Refusals};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Limits of the admin listener.
#[derive(Debug, Clone)]
pub(crate) struct AdminOptions {
    /// A request's head must arrive within this time (the first one: from accept).
    pub header_timeout: Duration,
    /// Connections at once; one beyond gets 503 and is closed.
    pub max_connections: usize,
    /// Connections at once from one source address (0: no cap); one beyond is closed at
    /// accept.
    pub max_conns_per_ip: usize,
    /// On shutdown, how long open connections get to finish.
    pub drain_timeout: Duration,
}

/// The answer to a connection beyond the cap, written without reading the request.
fn busy_answer() -> Arc<[u8]> {
    let body =
        roam_proto::http_error::error_body("unavailable", "too many admin connections; retry");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish for up to
/// the drain timeout.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    options: AdminOptions,
    refusals: Refusals,
    shutdown: CancellationToken,
) {
    let admission = Admission::new(
        AdmissionConfig {
            max_connections: options.max_connections,
            max_handshakes: 0,
            max_conns_per_ip: options.max_conns_per_ip,
            max_handshakes_per_ip: 0,
            slot_reason: "admin",
            per_ip_reason: "admin_per_ip",
            ..AdmissionConfig::default()
        },
        refusals,
    );
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(64 * 1024);
    let graceful = GracefulShutdown::new();
    let busy = busy_answer();
    loop {
        let (mut tcp, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(ticket) = admission.admit(peer.ip()) else {
            // Its source holds its share already (counted as `admin_per_ip`): closed.
            continue;
        };
        if !ticket.has_slot() {
            let busy = busy.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&busy)).await;
            });
            continue;
        }
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(e) = conn.await {
                debug!(error = %e, %peer, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("admin connections still open after the drain timeout");
    }
}

/// The admin routes over the process-wide metrics registry.
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => roam_proto::http_error::error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics encoding failed",
            None,
        )
        .into_response(),
    }
}
