//! `roam serve`: binds every listener of the configured roles, reports them, runs until
//! SIGINT/SIGTERM, then drains and exits 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::HeaderValue;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::{admin, metrics};

/// The bound addresses, as written to `--ready-file` (only the listeners this process runs).
#[derive(Debug, Default, Serialize)]
struct Ready {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_tcp: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_quic: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_quic: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    internal: Option<SocketAddr>,
}

/// File name of the business API key inside the data directory.
const API_KEY_FILE: &str = "api-key";
/// Deadline of a call to a remote ID service (and of connecting to it).
const IDS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the configured roles until a shutdown signal.
pub(crate) async fn serve(config: Config, ready_file: Option<PathBuf>) -> Result<()> {
    roam_tls::install_crypto_provider();
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create data directory {}", config.data.display()))?;
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics::ProcessCollector));
    // Admission refusals of every listener (edge and admin ports): one counter by reason.
    let refusals = roam_edge::admission::Refusals::register(&mut registry);
    let mut tasks = JoinSet::new();
    let mut ready = Ready::default();
    // Every role speaks on the internal port (serves it or calls it): one shared key.
    let internal_key = config.internal_key()?;
    let mut business_api: Option<axum::Router> = None;
    let mut banner = vec![format!(
        "roam {} (role {})",
        env!("CARGO_PKG_VERSION"),
        config.role
    )];

    // Core and the ID service share the store, the API key, the admin API and the internal
    // gRPC port.
    let store = if config.role.runs_core() || config.role.runs_idsvc() {
        Some(
            roam_store::Store::open(&config.store)
                .await
                .with_context(|| format!("cannot open the store {}", config.store))?,
        )
    } else {
        None
    };
    let mut ids_handle = None;
    let mut core_handle = None;
    if let Some(store) = &store {
        let mut business = axum::Router::new();
        let mut grpc_services = Vec::new();
        if config.role.runs_idsvc() {
            let metrics = roam_idsvc::IdMetrics::register(&mut registry);
            let ids = roam_idsvc::IdService::start(store.clone(), config.ids.clone(), metrics)
                .await
                .context("cannot start the ID service")?;
            grpc_services.push("ID service");
            ids_handle = Some(ids);
        }
        if config.role.runs_core() {
            let verifier = config.auth.verifier(&config.data)?;
            let metrics = roam_core::metrics::CoreMetrics::register(&mut registry);
            let core = roam_core::Core::new(
                store.clone(),
                verifier,
                config.core.options(config.limits.max_packet),
                metrics,
            );
            core.sessions
                .upgrade()
                .await
                .context("cannot upgrade the sessions' key layout")?;
            tasks.spawn(core.clone().run_reaper(shutdown.clone()));
            business = business.merge(roam_core::api::router(core.clone()));
            grpc_services.push("edge link");
            banner.push(format!(
                "token       roam token --user alice --data {}",
                config.data.display()
            ));
            core_handle = Some(core);
        }
        // The ID routes of the business API: this process's ID service, or (role `core`)
        // another process's over gRPC, connected on first use.
        let ids_source = match &ids_handle {
            Some(ids) => Some(roam_idsvc::IdSource::local(ids.clone())),
            None if config.role.runs_core() => {
                let address = config.core.ids_address();
                banner.push(format!("ids         the ID service at {address}"));
                Some(
                    roam_idsvc::IdSource::connect_lazy(
                        &address,
                        IDS_TIMEOUT,
                        Some(internal_key.clone()),
                    )
                    .with_context(|| format!("core.ids {address:?}"))?,
                )
            }
            None => None,
        };
        if let Some(source) = ids_source {
            business = business.merge(roam_idsvc::http::router(source));
        }

        let key_path = config.data.join(API_KEY_FILE);
        let key = roam_core::secret_file::load_or_create(&key_path, 32)?;
        let key: Arc<str> = Arc::from(hex::encode(key));
        business_api = Some(business.layer(axum::middleware::from_fn_with_state(
            key,
            roam_core::api::require_api_key,
        )));
        banner.push(format!(
            "api key     {}  (Authorization: Bearer <key> on /api/v1)",
            key_path.display()
        ));

        let addr = config.listen.internal;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind listen.internal on {addr}"))?;
        let bound = listener.local_addr()?;
        ready.internal = Some(bound);
        let grpc = tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(require_internal_key(
                internal_key.clone(),
                &mut registry,
            )))
            .add_optional_service(core_handle.as_ref().map(|c| c.link_service()))
            .add_optional_service(
                ids_handle
                    .as_ref()
                    .map(|ids| roam_idsvc::grpc::grpc_service(ids.clone())),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tasks.spawn(async move {
            if let Err(e) = grpc.await {
                tracing::error!(error = %e, "internal gRPC listener failed");
            }
        });
        banner.push(format!(
            "internal    http://{bound}  (gRPC: {})",
            grpc_services.join(", ")
        ));
    }

    if config.role.runs_edge() {
        let (cert, generated) = certificate(&config)?;
        let mut edge_metrics = roam_edge::EdgeMetrics::register(&mut registry);
        edge_metrics.refusals = refusals.clone();
        let handshake_timeout = Duration::from_secs(config.limits.handshake_timeout_secs);
        let drain_timeout = Duration::from_secs(config.shutdown.drain_timeout_secs);

        let addr = config.listen.client_tcp;
        let tls = roam_tls::server_config(&cert, roam_tls::ALPN_TCP)?;
        let options = roam_edge::TcpOptions {
            handshake_timeout,
            drain_timeout,
            header_timeout: Duration::from_secs(config.limits.http_header_timeout_secs),
            max_streams: config.limits.http2_max_streams,
            first_request: Duration::from_secs(config.limits.first_request_secs),
        };
        let server = roam_edge::ClientTcpServer::bind(addr, tls, options, edge_metrics.clone())
            .await
            .with_context(|| format!("cannot bind listen.client_tcp on {addr}"))?;
        let client_tcp = server.local_addr()?;
        ready.client_tcp = Some(client_tcp);

        let addr = config.listen.raw;
        let tls = roam_tls::server_config(&cert, roam_tls::ALPN_RAW)?;
        let raw = roam_edge::raw::RawServer::bind(
            addr,
            tls,
            handshake_timeout,
            drain_timeout,
            edge_metrics.clone(),
        )
        .await
        .with_context(|| format!("cannot bind listen.raw on {addr}"))?;
        let raw_addr = raw.local_addr()?;
        ready.raw = Some(raw_addr);
        let quic = bind_quic(&config, &cert, &edge_metrics)?;
        if let Some(q) = &quic {
            ready.client_quic = Some(q.client_quic);
            ready.raw_quic = Some(q.raw_quic);
        }

        let core_address = match (&config.edge.core, ready.internal) {
            (configured, _) if !configured.is_empty() => configured.clone(),
            (_, Some(own)) => format!("http://{own}"),
            _ => format!("http://{}", config.listen.internal),
        };
        let public = |configured: &str, bound: SocketAddr| {
            if configured.is_empty() {
                bound.to_string()
            } else {
                configured.to_owned()
            }
        };
        let edge_id = config.edge.id_or_derived(client_tcp);
        let identity = roam_edge::link::EdgeIdentity {
            key: Some(internal_key.clone()),
            edge_id: edge_id.clone(),
            addresses: [
                (
                    "client_tcp".to_owned(),
                    public(&config.edge.public_client_tcp, client_tcp),
                ),
                ("raw".to_owned(), public(&config.edge.public_raw, raw_addr)),
            ]
            .into_iter()
            .chain(quic.iter().flat_map(|q| {
                [
                    ("client_quic".to_owned(), q.client_quic.to_string()),
                    ("raw_quic".to_owned(), q.raw_quic.to_string()),
                ]
            }))
            .collect(),
            region: config.edge.region.clone(),
            lat: config.edge.lat,
            lon: config.edge.lon,
            weight: config.edge.weight,
            // A new instance: core lets this process replace its own stale link.
            ..Default::default()
        };
        let gateway = roam_edge::gateway::Gateway::start(
            core_address.clone(),
            identity,
            config.edge.gateway(&config.limits),
            edge_metrics,
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("edge {edge_id}: cannot link to core at {core_address}"))?;
        let http = roam_edge::http::HttpOptions {
            // Only when HTTP/3 is served, with the port it is bound to.
            alt_svc: quic.as_ref().and_then(|q| {
                HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", q.client_quic.port())).ok()
            }),
            web_dir: Some(config.edge.web_dir.clone()),
            tracker: tokio_util::task::TaskTracker::new(),
        };
        let tracker = http.tracker.clone();
        let router = roam_edge::http::router(gateway.clone(), http);
        if let Some(q) = quic {
            banner.push(format!(
                "HTTP/3      https://{}  (QUIC, UDP)",
                q.client_quic
            ));
            banner.push(format!(
                "raw QUIC    {}  (QUIC, UDP, ALPN roam/1)",
                q.raw_quic
            ));
            q.spawn(&mut tasks, &gateway, &router, &tracker);
        }
        tasks.spawn(server.run(router, gateway.admission.clone(), tracker, shutdown.clone()));
        tasks.spawn(raw.run(gateway));
        banner.push(format!(
            "client API  https://{client_tcp}  (TLS 1.3, HTTP/2 + HTTP/1.1)"
        ));
        banner.push(format!("raw frames  {raw_addr}  (TLS 1.3, ALPN roam/1)"));
        banner.push(format!(
            "certificate {}{}",
            cert.cert_path.display(),
            if config.tls.cert.is_none() {
                if generated {
                    "  (self-signed development certificate, generated now)"
                } else {
                    "  (self-signed development certificate)"
                }
            } else {
                ""
            }
        ));
        banner.push(format!(
            "edge        {edge_id} linked to core at {core_address}"
        ));
    }

    let addr = config.listen.admin;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind listen.admin on {addr}"))?;
    let bound = listener.local_addr()?;
    ready.admin = Some(bound);
    let mut router = admin::router(Arc::new(registry));
    if let Some(business) = business_api {
        router = router.merge(business);
    }
    let options = admin::AdminOptions {
        header_timeout: Duration::from_secs(config.limits.http_header_timeout_secs),
        max_connections: config.limits.admin_max_connections,
        drain_timeout: Duration::from_secs(config.shutdown.drain_timeout_secs),
    };
    tasks.spawn(admin::serve(
        listener,
        router,
        options,
        refusals,
        shutdown.clone(),
    ));
    banner.push(format!(
        "admin API   http://{bound}  (/healthz, /metrics, /api/v1)"
    ));
    banner.push(format!(
        "data        {}  (store {})",
        config.data.display(),
        config.store
    ));

    if let Some(path) = &ready_file {
        write_ready(path, &ready)?;
    }
    for line in &banner {
        println!("{line}");
    }
    info!(?ready, "listening");

    tokio::select! {
        signal = shutdown_signal() => {
            let name = signal?;
            info!(signal = name, "shutting down: draining connections");
        }
        // A listener task that ends on its own is a fault: stop the others too.
        Some(_) = tasks.join_next() => {
            tracing::error!("a listener stopped unexpectedly; shutting down");
        }
    }
    shutdown.cancel();
    // Edge links are long-lived streams: end them so the gRPC server can stop.
    if let Some(core) = &core_handle {
        core.edges.close_all();
    }
    let drain = Duration::from_secs(config.shutdown.drain_timeout_secs + 1);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("listeners did not stop within the drain timeout");
    }
    // Releases the worker leases with the last issued time, before the store closes.
    if let Some(ids) = ids_handle {
        ids.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

/// The internal port's one interceptor: every call must carry the shared key (else
/// `UNAUTHENTICATED`, counted in `roam_internal_unauthenticated_total`).
fn require_internal_key(
    key: roam_proto::internal_auth::InternalKey,
    registry: &mut Registry,
) -> impl tonic::service::Interceptor + Clone + use<> {
    let refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "roam_internal_unauthenticated",
        "Calls to the internal gRPC port refused for a missing or wrong key",
        refused.clone(),
    );
    move |request: tonic::Request<()>| match key.check(request.metadata()) {
        Ok(()) => Ok(request),
        Err(status) => {
            refused.inc();
            tracing::debug!(peer = ?request.remote_addr(), "internal call without the right key");
            Err(status)
        }
    }
}

/// The QUIC listeners (issue 12), bound before the router so `alt-svc` names their port.
struct QuicListeners {
    h3: roam_edge::quic::QuicServer,
    raw: roam_edge::quic::QuicServer,
    client_quic: SocketAddr,
    raw_quic: SocketAddr,
}

/// Binds HTTP/3 on `listen.client_quic` and raw frames over QUIC on `listen.raw_quic` (same
/// certificate as TCP), unless `quic.enabled` is off.
fn bind_quic(
    config: &Config,
    cert: &roam_tls::CertKey,
    metrics: &roam_edge::EdgeMetrics,
) -> Result<Option<QuicListeners>> {
    use roam_edge::quic::{QuicServer, QuicService};
    if !config.quic.enabled {
        return Ok(None);
    }
    let options = config.quic.options(&config.limits, &config.shutdown);
    let bind = |addr: SocketAddr, alpn: &[&[u8]], service, key: &str| -> Result<QuicServer> {
        let tls = roam_tls::quic_server_config(cert, alpn)?;
        QuicServer::bind(addr, tls, service, options.clone(), metrics.clone())
            .with_context(|| format!("cannot bind listen.{key} on {addr}/udp"))
    };
    let h3 = bind(
        config.listen.client_quic,
        roam_tls::ALPN_QUIC,
        QuicService::H3,
        "client_quic",
    )?;
    let raw = bind(
        config.listen.raw_quic,
        roam_tls::ALPN_RAW,
        QuicService::Raw,
        "raw_quic",
    )?;
    Ok(Some(QuicListeners {
        client_quic: h3.local_addr()?,
        raw_quic: raw.local_addr()?,
        h3,
        raw,
    }))
}

impl QuicListeners {
    /// Runs both listeners: HTTP/3 serves the client port's router (one registry of
    /// virtual connections for TCP and QUIC), on its tracker.
    fn spawn(
        self,
        tasks: &mut JoinSet<()>,
        gateway: &Arc<roam_edge::gateway::Gateway>,
        router: &axum::Router,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        tasks.spawn(
            self.h3
                .run(gateway.clone(), router.clone(), tracker.clone()),
        );
        tasks.spawn(self.raw.run(
            gateway.clone(),
            router.clone(),
            tokio_util::task::TaskTracker::new(),
        ));
    }
}

fn certificate(config: &Config) -> Result<(roam_tls::CertKey, bool)> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Ok((roam_tls::load_pem(cert, key)?, false)),
        _ => Ok(roam_tls::dev_cert(&config.dev_tls_dir())?),
    }
}

/// Writes the ready file atomically (a reader never sees half of it).
fn write_ready(path: &Path, ready: &Ready) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_string(ready)?;
    std::fs::write(&tmp, json + "\n")
        .with_context(|| format!("cannot write ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write ready file {}", path.display()))?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM with the signal's name.
async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
