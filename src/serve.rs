//! `roam serve`: binds every listener of the configured roles, reports them, runs until
//! SIGINT/SIGTERM, then drains and exits 0.
//!
//! One function per role (`start_store`, `start_idsvc`, `start_core`, `start_edge`) and one
//! per listener (`start_internal`, `start_client_tcp`, `start_raw`, `start_admin`), called in
//! that order by [`serve`]. Each listener's per-request tower stack is built in one place
//! (in `start_internal`, `client_tcp_stack`, `admin_stack`), its layers listed outermost first.
//! Per-connection concerns — admission (connection caps), TLS handshake and header timeouts,
//! the drain — belong to the listeners themselves (`roam_edge::ClientTcpServer`,
//! `roam_edge::raw::RawServer`, `admin::serve`), not to these stacks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::ALT_SVC;
use prometheus_client::registry::Registry;
use roam_core::Core;
use roam_edge::admission::Refusals;
use roam_edge::gateway::Gateway;
use roam_idsvc::{IdService, IdSource};
use roam_proto::internal_auth::InternalKey;
use roam_store::Store;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
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
const IDS_TIMEOUT: Duration = Duration::from_secs(5);

/// What every role and listener of this process shares while starting: the configuration,
/// the shutdown signal, the metrics registry, the listener tasks and what is reported once
/// everything is bound (ready file and banner).
struct Process {
    config: Config,
    shutdown: CancellationToken,
    registry: Registry,
    /// Admission refusals of every listener (edge and admin ports): one counter by reason.
    refusals: Refusals,
    /// Every role speaks on the internal port (serves it or calls it): one shared key.
    internal_key: InternalKey,
    /// With `internal.tls`: the internal port's mutual TLS files (its server and callers).
    internal_pki: Option<roam_tls::internal::Pki>,
    /// Listener and background tasks; one ending on its own shuts the process down.
    tasks: JoinSet<()>,
    ready: Ready,
    banner: Vec<String>,
}

/// Runs the configured roles until a shutdown signal.
pub(crate) async fn serve(config: Config, ready_file: Option<PathBuf>) -> Result<()> {
    roam_tls::install_crypto_provider();
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create data directory {}", config.data.display()))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics::ProcessCollector));
    let refusals = Refusals::register(&mut registry);
    let internal_key = config.internal_key()?;
    let internal_pki = config.internal_pki()?;
    let banner = vec![format!(
        "roam {} (role {})",
        env!("CARGO_PKG_VERSION"),
        config.role
    )];
    let mut p = Process {
        config,
        shutdown: CancellationToken::new(),
        registry,
        refusals,
        internal_key,
        internal_pki,
        tasks: JoinSet::new(),
        ready: Ready::default(),
        banner,
    };

    // Core and the ID service share the store, the API key, the admin API and the internal
    // gRPC port.
    let store = start_store(&p.config).await?;
    let mut ids = None;
    let mut core = None;
    let mut business = None;
    if let Some(store) = &store {
        if p.config.role.runs_idsvc() {
            ids = Some(start_idsvc(&mut p, store).await?);
        }
        let ids_source = id_source(&mut p, ids.as_ref())?;
        if p.config.role.runs_core()
            && let Some(source) = &ids_source
        {
            core = Some(start_core(&mut p, store, source.clone()).await?);
        }
        business = Some(business_routes(&mut p, core.as_ref(), ids_source)?);
        start_internal(&mut p, core.as_ref(), ids.as_ref()).await?;
    }
    if p.config.role.runs_edge() {
        start_edge(&mut p).await?;
    }
    start_admin(&mut p, business).await?;

    if let Some(path) = &ready_file {
        write_ready(path, &p.ready)?;
    }
    for line in &p.banner {
        println!("{line}");
    }
    info!(ready = ?p.ready, "listening");
    run_until_shutdown(p, core, ids).await
}

/// Waits for a signal (or a listener that stops on its own), then stops every listener,
/// lets them drain, and releases the ID service's leases.
async fn run_until_shutdown(
    mut p: Process,
    core: Option<Arc<Core>>,
    ids: Option<Arc<IdService>>,
) -> Result<()> {
    tokio::select! {
        signal = shutdown_signal() => {
            let name = signal?;
            info!(signal = name, "shutting down: draining connections");
        }
        // A listener task that ends on its own is a fault: stop the others too.
        Some(_) = p.tasks.join_next() => {
            tracing::error!("a listener stopped unexpectedly; shutting down");
        }
    }
    p.shutdown.cancel();
    // Edge links are long-lived streams: end them so the gRPC server can stop.
    if let Some(core) = &core {
        core.close_edge_links();
    }
    let drain = Duration::from_secs(p.config.shutdown.drain_timeout_secs + 1);
    if tokio::time::timeout(drain, async {
        while p.tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("listeners did not stop within the drain timeout");
    }
    // Releases the worker leases with the last issued time, before the store closes.
    if let Some(ids) = ids {
        ids.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

/// Opens the store where core or the ID service runs (an edge alone has none).
async fn start_store(config: &Config) -> Result<Option<Store>> {
    if !(config.role.runs_core() || config.role.runs_idsvc()) {
        return Ok(None);
    }
    let store = Store::open(&config.store)
        .await
        .with_context(|| format!("cannot open the store {}", config.store))?;
    Ok(Some(store))
}

/// Starts the ID service: claims its worker leases and starts their heartbeat.
async fn start_idsvc(p: &mut Process, store: &Store) -> Result<Arc<IdService>> {
    let metrics = roam_idsvc::IdMetrics::register(&mut p.registry);
    IdService::start(store.clone(), p.config.ids.clone(), metrics)
        .await
        .context("cannot start the ID service")
}

/// Starts core: upgrades the sessions' key layout and spawns the session reaper.
async fn start_core(p: &mut Process, store: &Store, ids: IdSource) -> Result<Arc<Core>> {
    let config = &p.config;
    let verifier = config.auth.verifier(&config.data)?;
    let metrics = roam_core::metrics::CoreMetrics::register(&mut p.registry);
    let webhook = match config.webhook()? {
        Some(w) => {
            p.banner.push(format!("webhook     {}", w.url));
            let m = roam_core::webhook::WebhookMetrics::register(&mut p.registry);
            let (webhook, worker) = roam_core::webhook::Webhook::start(w, m, p.shutdown.clone());
            p.tasks.spawn(worker);
            webhook
        }
        None => roam_core::webhook::Webhook::disabled(),
    };
    let mut options = config.core.options(config.limits.max_packet);
    options.messaging = config.messaging.options(config.limits.max_packet);
    let core = Core::new(store.clone(), ids, verifier, options, metrics, webhook);
    core.upgrade_sessions()
        .await
        .context("cannot upgrade the sessions' key layout")?;
    p.tasks.spawn(core.clone().run_reaper(p.shutdown.clone()));
    p.banner.push(format!(
        "token       roam token --user alice --data {}",
        config.data.display()
    ));
    Ok(core)
}

/// Where IDs come from (message ids, and the ID routes of the business API): this
/// process's ID service, or (role `core`) another process's over gRPC, connected on first
/// use.
fn id_source(p: &mut Process, ids: Option<&Arc<IdService>>) -> Result<Option<IdSource>> {
    let config = &p.config;
    Ok(match ids {
        Some(ids) => Some(IdSource::local(ids.clone())),
        None if config.role.runs_core() => {
            let address = config.core.ids_address();
            let key = Some(p.internal_key.clone());
            let source = match &p.internal_pki {
                None => {
                    IdSource::connect_lazy(&address, IDS_TIMEOUT, key).map_err(anyhow::Error::from)
                }
                // `internal.tls`: HTTP/2 inside mutual TLS, this process presenting its
                // internal certificate and checking the service's against the internal CA.
                Some(pki) => {
                    let tls = roam_tls::internal::client_config(pki)
                        .with_context(|| format!("internal.tls for core.ids {address:?}"))?;
                    remote_ids_over_tls(&address, tls, key)
                }
            }
            .with_context(|| format!("core.ids {address:?}"))?;
            p.banner.push(format!(
                "ids         the ID service at {address}{}",
                if p.internal_pki.is_some() {
                    " (mutual TLS)"
                } else {
                    ""
                }
            ));
            Some(source)
        }
        None => None,
    })
}

/// A remote ID service at `address` (`http://host:port`) reached over mutual TLS with
/// `tls` (the internal port's client configuration), connected on first use like
/// [`IdSource::connect_lazy`], every call carrying `key`.
fn remote_ids_over_tls(
    address: &str,
    tls: Arc<rustls::ClientConfig>,
    key: Option<InternalKey>,
) -> Result<IdSource> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
        .map_err(|e| anyhow::anyhow!("not an address: {e}"))?
        .connect_timeout(IDS_TIMEOUT)
        .timeout(IDS_TIMEOUT);
    Ok(IdSource::remote_with_key(
        endpoint.connect_with_connector_lazy(roam_tls::internal::Connector::new(tls)),
        key,
    ))
}

/// The business API (`/api/v1`, served on the admin port): core's routes where core runs,
/// and the ID routes over `ids_source`. Loads (or creates) the API key that guards it.
fn business_routes(
    p: &mut Process,
    core: Option<&Arc<Core>>,
    ids_source: Option<IdSource>,
) -> Result<BusinessApi> {
    let config = &p.config;
    let mut routes = Router::new();
    if let Some(core) = core {
        routes = routes.merge(roam_core::api::router(core.clone()));
    }
    if let Some(source) = ids_source {
        routes = routes.merge(roam_idsvc::http::router(source));
    }
    let key_path = config.data.join(API_KEY_FILE);
    let key = roam_core::secret_file::load_or_create(&key_path, 32)?;
    p.banner.push(format!(
        "api key     {}  (Authorization: Bearer <key> on /api/v1)",
        key_path.display()
    ));
    Ok(BusinessApi {
        routes,
        key: Arc::from(hex::encode(key)),
    })
}

/// The business routes and the key every request to them must carry.
struct BusinessApi {
    routes: Router,
    key: Arc<str>,
}

/// The internal gRPC port (`listen.internal`): core's edge link and the ID service, for
/// the other processes of the deployment.
async fn start_internal(
    p: &mut Process,
    core: Option<&Arc<Core>>,
    ids: Option<&Arc<IdService>>,
) -> Result<()> {
    let addr = p.config.listen.internal;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind listen.internal on {addr}"))?;
    let bound = listener.local_addr()?;
    p.ready.internal = Some(bound);
    let mut services = Vec::new();
    if ids.is_some() {
        services.push("ID service");
    }
    if core.is_some() {
        services.push("edge link");
    }
    // The per-request stack, outermost first.
    let stack = ServiceBuilder::new()
        // Auth: every call must carry the shared internal key; first, so that nothing
        // unauthenticated reaches a service.
        .layer(tonic::service::InterceptorLayer::new(require_internal_key(
            p.internal_key.clone(),
            &mut p.registry,
        )));
    let internal = crate::internal::InternalOptions {
        max_connections: p.config.limits.internal_max_connections,
        max_conns_per_ip: p.config.limits.internal_max_conns_per_ip,
        first_request: Duration::from_secs(p.config.limits.first_request_secs),
    };
    let tls = p
        .internal_pki
        .as_ref()
        .map(roam_tls::internal::server_config)
        .transpose()?;
    let grpc = tonic::transport::Server::builder()
        .layer(stack)
        .add_optional_service(core.map(|c| c.link_service()))
        .add_optional_service(ids.map(|ids| roam_idsvc::grpc::grpc_service(ids.clone())))
        .serve_with_incoming_shutdown(
            crate::internal::incoming(
                listener,
                &internal,
                p.refusals.clone(),
                tls,
                p.shutdown.clone(),
            ),
            p.shutdown.clone().cancelled_owned(),
        );
    p.tasks.spawn(async move {
        if let Err(e) = grpc.await {
            tracing::error!(error = %e, "internal gRPC listener failed");
        }
    });
    p.banner.push(format!(
        "internal    http://{bound}  (gRPC: {}{})",
        services.join(", "),
        match &p.internal_pki {
            Some(pki) => format!("; mutual TLS, CA {}", pki.ca.display()),
            None => String::new(),
        }
    ));
    Ok(())
}

/// The internal port's one interceptor: every call must carry the shared key (else
/// `UNAUTHENTICATED`, counted in `roam_internal_unauthenticated_total`). A call with the key
/// meets its connection's first-request deadline ([`crate::internal`]).
fn require_internal_key(
    key: InternalKey,
    registry: &mut Registry,
) -> impl tonic::service::Interceptor + Clone + use<> {
    let refused = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "roam_internal_unauthenticated",
        "Calls to the internal gRPC port refused for a missing or wrong key",
        refused.clone(),
    );
    move |mut request: tonic::Request<()>| {
        let conn = request
            .extensions()
            .get::<crate::internal::InternalConn>()
            .cloned();
        if let Some(conn) = &conn {
            // For `remote_addr()` in the services' logs.
            request.extensions_mut().insert(conn.tcp.clone());
        }
        match key.check(request.metadata()) {
            Ok(()) => {
                if let Some(conn) = conn {
                    conn.called();
                }
                Ok(request)
            }
            Err(status) => {
                refused.inc();
                tracing::debug!(peer = ?request.remote_addr(), "internal call without the right key");
                Err(status)
            }
        }
    }
}

/// Starts the edge: binds the client TCP and raw ports (their addresses are part of the
/// edge's identity), links to core, then serves both ports over the gateway.
async fn start_edge(p: &mut Process) -> Result<()> {
    let (cert, generated) = certificate(&p.config)?;
    let mut edge_metrics = roam_edge::EdgeMetrics::register(&mut p.registry);
    edge_metrics.refusals = p.refusals.clone();
    let config = &p.config;
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
        http2_idle: Duration::from_secs(config.limits.http2_idle_secs),
    };
    let client_tcp = roam_edge::ClientTcpServer::bind(addr, tls, options, edge_metrics.clone())
        .await
        .with_context(|| format!("cannot bind listen.client_tcp on {addr}"))?;
    let client_tcp_addr = client_tcp.local_addr()?;
    p.ready.client_tcp = Some(client_tcp_addr);

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
    p.ready.raw = Some(raw_addr);
    let quic = bind_quic(config, &cert, &edge_metrics)?;
    if let Some(q) = &quic {
        p.ready.client_quic = Some(q.client_quic);
        p.ready.raw_quic = Some(q.raw_quic);
    }

    let core_address = match (&config.edge.core, p.ready.internal) {
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
    let edge_id = config.edge.id_or_derived(client_tcp_addr);
    let identity = roam_edge::link::EdgeIdentity {
        key: Some(p.internal_key.clone()),
        edge_id: edge_id.clone(),
        addresses: [
            (
                "client_tcp".to_owned(),
                public(&config.edge.public_client_tcp, client_tcp_addr),
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
        tls: p
            .internal_pki
            .as_ref()
            .map(roam_tls::internal::client_config)
            .transpose()?,
        // A new instance: core lets this process replace its own stale link.
        ..Default::default()
    };
    let gateway = Gateway::start(
        core_address.clone(),
        identity,
        config.edge.gateway(&config.limits),
        edge_metrics,
        p.shutdown.clone(),
    )
    .await
    .with_context(|| format!("edge {edge_id}: cannot link to core at {core_address}"))?;

    let quic_port = quic.as_ref().map(|q| q.client_quic.port());
    let cert_sha256 = roam_tls::cert_sha256_hex(&cert.chain[0]);
    p.banner.push(format!(
        "cert hash   sha-256 {cert_sha256}  (WebTransport serverCertificateHashes; GET /v1/wt-cert-hash)"
    ));
    let (routes, tracker) = start_client_tcp(p, client_tcp, &gateway, quic_port, cert_sha256)?;
    if let Some(quic) = quic {
        start_quic(p, quic, &gateway, routes, tracker);
    }
    start_raw(p, raw, gateway);
    p.banner.push(format!(
        "certificate {}{}",
        cert.cert_path.display(),
        if p.config.tls.cert.is_none() {
            if generated {
                "  (self-signed development certificate, generated now)"
            } else {
                "  (self-signed development certificate)"
            }
        } else {
            ""
        }
    ));
    p.banner.push(format!(
        "edge        {edge_id} linked to core at {core_address}"
    ));
    Ok(())
}

/// Lifetime of a development-login token.
const DEV_LOGIN_TTL_SECS: u64 = 24 * 3600;

/// The web app's development login (`edge.dev_login`), when on and this process holds the
/// token secret (it runs core); says on the banner what the web app and the login are.
fn dev_login(p: &mut Process) -> anyhow::Result<Option<roam_edge::http::DevLogin>> {
    let web = &p.config.edge.web_dir;
    if web.join("index.html").is_file() {
        p.banner.push(format!(
            "web app     / on the client port  (from {})",
            web.display()
        ));
    } else {
        p.banner.push(format!(
            "web app     not built: {} has no index.html (npm ci && npm run build in clients/web)",
            web.display()
        ));
    }
    if p.config.edge.dev_login != Some(true) {
        return Ok(None);
    }
    if !p.config.role.runs_core() {
        p.banner
            .push("dev login   off: it needs the core role in this process".into());
        return Ok(None);
    }
    let secret = roam_core::auth::Secret::load_or_create(&p.config.data)?;
    p.banner.push(
        "dev login   on: POST /v1/dev-login mints a token for any name (edge.dev_login = false to turn off)"
            .into(),
    );
    Ok(Some(roam_edge::http::DevLogin(Arc::new(
        move |user: &str| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            secret
                .mint(user, None, DEV_LOGIN_TTL_SECS, now)
                .map_err(|e| e.to_string())
        },
    ))))
}

/// Serves the client TCP port (`listen.client_tcp`, bound by [`start_edge`]): HTTP/2 and
/// HTTP/1.1 over TLS 1.3. Returns the client routes (without the TCP stack) and their
/// tracker, which HTTP/3 serves too: one registry of virtual connections for both.
fn start_client_tcp(
    p: &mut Process,
    server: roam_edge::ClientTcpServer,
    gateway: &Arc<Gateway>,
    quic_port: Option<u16>,
    cert_sha256: String,
) -> anyhow::Result<(Router, tokio_util::task::TaskTracker)> {
    let bound = p.ready.client_tcp;
    let http = roam_edge::http::HttpOptions {
        web_dir: Some(p.config.edge.web_dir.clone()),
        dev_login: dev_login(p)?,
        tracker: tokio_util::task::TaskTracker::new(),
        cert_sha256: Some(cert_sha256),
    };
    let tracker = http.tracker.clone();
    let routes = roam_edge::http::router(gateway.clone(), http);
    let router = client_tcp_stack(routes.clone(), quic_port);
    p.tasks.spawn(server.run(
        router,
        gateway.admission.clone(),
        tracker.clone(),
        p.shutdown.clone(),
    ));
    if let Some(bound) = bound {
        p.banner.push(format!(
            "client API  https://{bound}  (TLS 1.3, HTTP/2 + HTTP/1.1)"
        ));
    }
    Ok((routes, tracker))
}

/// The client TCP port's per-request stack, outermost first. The listener adds one
/// per-connection layer inside it (`roam_edge::admission::TicketLayer`: marks the
/// connection busy while a request runs), and enforces the connection caps and the
/// handshake and header timeouts itself. Session auth is the protocol's (AUTH frame),
/// not a layer.
fn client_tcp_stack(routes: Router, quic_port: Option<u16>) -> Router {
    // HTTP/3 discovery: every answer, 404s included, advertises the QUIC port actually bound
    // (this port only: a QUIC listener's answers need not point at themselves), and only
    // while HTTP/3 is served.
    let Some(quic_port) = quic_port else {
        return routes;
    };
    match HeaderValue::from_str(&format!("h3=\":{quic_port}\"; ma=86400")) {
        Ok(alt_svc) => routes.layer(SetResponseHeaderLayer::overriding(ALT_SVC, alt_svc)),
        Err(_) => routes,
    }
}

/// The QUIC listeners (issue 12), bound before the edge links to core so that their
/// addresses are part of its identity and `alt-svc` names the bound port.
struct QuicListeners {
    h3: roam_edge::quic::QuicServer,
    /// HTTP/3 on `[::1]` too, same port, when `listen.client_quic` is IPv4 loopback (see
    /// [`bind_quic`]).
    h3_v6_loopback: Option<roam_edge::quic::QuicServer>,
    raw: roam_edge::quic::QuicServer,
    client_quic: SocketAddr,
    raw_quic: SocketAddr,
}

/// Binds HTTP/3 on `listen.client_quic` and raw frames over QUIC on `listen.raw_quic` (the
/// TCP listeners' certificate), unless `quic.enabled` is off.
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
    // Browsers resolve `localhost` to ::1 first and, unlike TCP, do not fall back to
    // 127.0.0.1 for QUIC: Chromium's WebTransport to https://localhost:<port> fails with
    // the listener on 127.0.0.1 alone. So a loopback listener gets an IPv6 loopback twin on
    // the same port (best effort: a host without IPv6 keeps the IPv4 one).
    let h3_v6_loopback = match h3.local_addr()? {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => {
            let twin = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v4.port()));
            match bind(twin, roam_tls::ALPN_QUIC, QuicService::H3, "client_quic") {
                Ok(server) => Some(server),
                Err(e) => {
                    tracing::info!(error = %format!("{e:#}"), "no HTTP/3 on the IPv6 loopback");
                    None
                }
            }
        }
        _ => None,
    };
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
        h3_v6_loopback,
        raw,
    }))
}

/// Serves the QUIC listeners (bound by [`bind_quic`]): HTTP/3 over the client routes (the
/// TCP port's, without its TCP stack) on their tracker; raw frames over the gateway.
fn start_quic(
    p: &mut Process,
    quic: QuicListeners,
    gateway: &Arc<Gateway>,
    routes: Router,
    tracker: tokio_util::task::TaskTracker,
) {
    if let Some(twin) = quic.h3_v6_loopback {
        p.tasks
            .spawn(twin.run(gateway.clone(), routes.clone(), tracker.clone()));
    }
    p.tasks
        .spawn(quic.h3.run(gateway.clone(), routes.clone(), tracker));
    p.tasks.spawn(quic.raw.run(
        gateway.clone(),
        routes,
        tokio_util::task::TaskTracker::new(),
    ));
    p.banner.push(format!(
        "HTTP/3      https://{}  (QUIC, UDP)",
        quic.client_quic
    ));
    p.banner.push(format!(
        "raw QUIC    {}  (QUIC, UDP, ALPN roam/1)",
        quic.raw_quic
    ));
}

/// Serves the raw port (`listen.raw`, bound by [`start_edge`]): frames over TLS 1.3, no
/// HTTP and so no tower stack.
fn start_raw(p: &mut Process, server: roam_edge::raw::RawServer, gateway: Arc<Gateway>) {
    p.tasks.spawn(server.run(gateway));
    if let Some(bound) = p.ready.raw {
        p.banner
            .push(format!("raw frames  {bound}  (TLS 1.3, ALPN roam/1)"));
    }
}

/// The admin port (`listen.admin`, plain HTTP/1.1 for a private network): health and
/// metrics in every role, the business API where core or the ID service runs.
async fn start_admin(p: &mut Process, business: Option<BusinessApi>) -> Result<()> {
    let config = &p.config;
    let addr = config.listen.admin;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind listen.admin on {addr}"))?;
    let bound = listener.local_addr()?;
    p.ready.admin = Some(bound);
    let options = admin::AdminOptions {
        header_timeout: Duration::from_secs(config.limits.http_header_timeout_secs),
        max_connections: config.limits.admin_max_connections,
        max_conns_per_ip: config.limits.admin_max_conns_per_ip,
        drain_timeout: Duration::from_secs(config.shutdown.drain_timeout_secs),
    };
    // Last to start: every role has registered its metrics by now.
    let registry = std::mem::take(&mut p.registry);
    p.tasks.spawn(admin::serve(
        listener,
        admin_stack(Arc::new(registry), business),
        options,
        p.refusals.clone(),
        p.shutdown.clone(),
    ));
    p.banner.push(format!(
        "admin API   http://{bound}  (/healthz, /metrics, /api/v1)"
    ));
    p.banner.push(format!(
        "data        {}  (store {})",
        p.config.data.display(),
        p.config.store
    ));
    Ok(())
}

/// The admin port's per-request stack. The listener enforces the connection cap and the
/// header timeout itself.
fn admin_stack(registry: Arc<Registry>, business: Option<BusinessApi>) -> Router {
    // `/healthz` and `/metrics` stay open: probes and scrapers on the private network
    // carry no key.
    let mut router = admin::router(registry);
    if let Some(BusinessApi { routes, key }) = business {
        // Auth, on `/api/v1` only: a request without the API key gets 401 before any
        // handler (or core's request metrics, a layer inside `roam_core::api::router`)
        // sees it.
        let guarded = routes.layer(axum::middleware::from_fn_with_state(
            key,
            roam_core::api::require_api_key,
        ));
        router = router.merge(guarded);
    }
    router
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
