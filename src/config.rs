//! Configuration: one TOML file, `ROAM_<SECTION>_<KEY>` environment overrides, then flags.
//!
//! Load → validate → resolve, in that order and in this file only. Every key has its default
//! in the `Default` impls below (the one table of defaults); `roam serve --print-config` prints
//! the effective result. Precedence: defaults < file < environment < command-line flags.
//! Unknown keys are errors, in the file and in the environment alike, so a typo never passes
//! silently.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Which parts of Roam this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Edge, core and idsvc in one process (the default).
    All,
    /// The connection gateway only.
    Edge,
    /// Core (auth, sessions, messaging, business API) only.
    Core,
    /// The ID service only.
    Idsvc,
}

impl Role {
    /// Whether this process terminates client connections.
    pub(crate) fn runs_edge(self) -> bool {
        matches!(self, Role::All | Role::Edge)
    }

    /// Whether this process runs core (auth, sessions, messaging, business API).
    pub(crate) fn runs_core(self) -> bool {
        matches!(self, Role::All | Role::Core)
    }

    /// Whether this process runs the ID service.
    pub(crate) fn runs_idsvc(self) -> bool {
        matches!(self, Role::All | Role::Idsvc)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Edge => "edge",
            Role::Core => "core",
            Role::Idsvc => "idsvc",
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Data directory: the embedded store, the development certificate, secrets.
    pub data: PathBuf,
    /// `embedded:<dir>` or `fdb:<cluster file>`; empty means `embedded:<data>/store`.
    pub store: String,
    /// Which roles this process runs.
    pub role: Role,
    /// Listening addresses.
    pub listen: Listen,
    /// Certificates.
    pub tls: Tls,
    /// Protocol limits.
    pub limits: Limits,
    /// Shutdown behaviour.
    pub shutdown: Shutdown,
    /// Core: edge links, client heartbeats.
    pub core: CoreSection,
    /// Client token verification.
    pub auth: Auth,
    /// The edge: its identity for the node list, its link to core, its connection limits.
    pub edge: EdgeSection,
    /// The ID service (docs/ids.md).
    pub ids: roam_idsvc::IdsConfig,
    /// The internal gRPC port's credential.
    pub internal: InternalSection,
    /// The offline-notification webhook.
    pub webhook: WebhookSection,
    /// Stored messaging: fan-out, limits.
    pub messaging: MessagingSection,
    /// The QUIC listeners (HTTP/3, raw frames over QUIC): issue 12.
    pub quic: QuicSection,
}

// ---- [messaging] (stored messaging, issue 11): keys, defaults, validation, options ----

/// Stored messaging's tunables (docs/config.md, `messaging.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MessagingSection {
    /// Groups up to this many members get write fan-out; larger ones read fan-out.
    pub fanout_threshold: usize,
    /// Largest message content, bytes (also capped by what fits a client frame).
    pub max_content_bytes: usize,
    /// Most members of one group.
    pub max_group_members: usize,
    /// Most groups one user may be in.
    pub max_groups_per_user: usize,
    /// Sends per second per user, sustained; 0: no limit.
    pub send_rate: u32,
    /// Sends one user may make at once above the rate.
    pub send_burst: u32,
    /// Most SENDs stored as one batch (group commit).
    pub batch_max: usize,
    /// Microseconds a batch that is not full waits for more SENDs; 0: none.
    pub batch_wait_us: u64,
    /// Send batches in the store at once.
    pub batches_in_flight: usize,
}

impl Default for MessagingSection {
    fn default() -> Self {
        let d = roam_messaging::MessagingOptions::default();
        MessagingSection {
            fanout_threshold: d.fanout_threshold,
            max_content_bytes: d.max_content_bytes,
            max_group_members: d.max_group_members,
            max_groups_per_user: d.max_groups_per_user,
            send_rate: d.send_rate,
            send_burst: d.send_burst,
            batch_max: d.batch_max,
            batch_wait_us: d.batch_wait.as_micros() as u64,
            batches_in_flight: d.batches_in_flight,
        }
    }
}

/// Bytes a PUSH frame adds around a message's content (header, envelope, ids, names).
const MESSAGE_FRAME_OVERHEAD: usize = 1024;
/// The largest `messaging.batch_max` (message ids for a batch come in one ID-service call,
/// whose count is at least 10,000).
const MAX_SEND_BATCH: usize = 4096;
/// The longest `messaging.batch_wait_us` (10 ms).
const MAX_BATCH_WAIT_US: u64 = 10_000;

impl MessagingSection {
    fn validate(&self) -> Result<()> {
        if self.max_content_bytes == 0
            || self.max_group_members == 0
            || self.max_groups_per_user == 0
        {
            bail!(
                "messaging.max_content_bytes, messaging.max_group_members and messaging.max_groups_per_user must be above 0"
            );
        }
        if self.send_rate > 0 && self.send_burst == 0 {
            bail!("messaging.send_burst must be above 0 when messaging.send_rate is");
        }
        if !(1..=MAX_SEND_BATCH).contains(&self.batch_max) {
            bail!(
                "messaging.batch_max = {}: must be 1 to {MAX_SEND_BATCH}",
                self.batch_max
            );
        }
        if self.batch_wait_us > MAX_BATCH_WAIT_US {
            bail!(
                "messaging.batch_wait_us = {}: at most {MAX_BATCH_WAIT_US} (a SEND waits that long for batch-mates)",
                self.batch_wait_us
            );
        }
        if !(1..=64).contains(&self.batches_in_flight) {
            bail!(
                "messaging.batches_in_flight = {}: must be 1 to 64",
                self.batches_in_flight
            );
        }
        Ok(())
    }

    /// Messaging's options; the content cap is also held below what fits a client frame.
    pub(crate) fn options(&self, max_packet: usize) -> roam_messaging::MessagingOptions {
        roam_messaging::MessagingOptions {
            fanout_threshold: self.fanout_threshold,
            max_content_bytes: self
                .max_content_bytes
                .min(max_packet.saturating_sub(MESSAGE_FRAME_OVERHEAD).max(1)),
            max_group_members: self.max_group_members,
            max_groups_per_user: self.max_groups_per_user,
            send_rate: self.send_rate,
            send_burst: self.send_burst,
            batch_max: self.batch_max,
            batch_wait: std::time::Duration::from_micros(self.batch_wait_us),
            batches_in_flight: self.batches_in_flight,
        }
    }
}

// ---- end of [messaging] ----

// ---- QUIC (issue 12): `listen.client_quic`, `listen.raw_quic` and this section. ----

/// The QUIC listeners' tunables (docs/config.md, `[quic]`; docs/edge.md, "QUIC").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct QuicSection {
    /// Run the QUIC listeners (`listen.client_quic`, `listen.raw_quic`); `alt-svc` is sent
    /// only when they run.
    pub enabled: bool,
    /// QUIC connections at once per listener (each also takes an `edge.max_connections`
    /// slot); beyond it a new connection is refused (CONNECTION_REFUSED).
    pub max_connections: usize,
    /// Concurrent bidirectional streams per connection (HTTP/3 requests at once).
    pub max_streams: u32,
    /// Seconds of silence after which a connection is gone (no packet, not even a PING).
    pub idle_timeout_secs: u64,
    /// Seconds of silence after which the edge sends a PING: below common NAT UDP binding
    /// timeouts (30 s), so an idle phone stays reachable. 0: no keep-alive.
    pub keep_alive_secs: u64,
    /// Above this many QUIC handshakes in flight, new clients must prove their address with
    /// a stateless Retry first (0: always).
    pub retry_above_handshakes: usize,
    /// GSO and path MTU discovery; off, datagrams stay at 1,200 B.
    pub gso_and_mtu_discovery: bool,
}

impl Default for QuicSection {
    fn default() -> Self {
        QuicSection {
            enabled: true,
            max_connections: 100_000,
            max_streams: 8,
            idle_timeout_secs: 60,
            keep_alive_secs: 15,
            retry_above_handshakes: 256,
            gso_and_mtu_discovery: true,
        }
    }
}

impl QuicSection {
    fn validate(&self) -> Result<()> {
        if self.max_connections == 0 || self.max_streams == 0 || self.idle_timeout_secs == 0 {
            bail!(
                "quic.max_connections, quic.max_streams and quic.idle_timeout_secs must be above 0"
            );
        }
        // QUIC's idle timeout is a varint of milliseconds below 2^62; keep it humane.
        if self.idle_timeout_secs > 3600 {
            bail!(
                "quic.idle_timeout_secs = {}: at most 3600",
                self.idle_timeout_secs
            );
        }
        if self.keep_alive_secs >= self.idle_timeout_secs {
            bail!(
                "quic.keep_alive_secs = {} must be below quic.idle_timeout_secs = {}",
                self.keep_alive_secs,
                self.idle_timeout_secs
            );
        }
        Ok(())
    }

    /// The edge's options for one QUIC listener.
    pub(crate) fn options(
        &self,
        limits: &Limits,
        shutdown: &Shutdown,
    ) -> roam_edge::quic::QuicOptions {
        roam_edge::quic::QuicOptions {
            max_connections: self.max_connections,
            max_streams: self.max_streams,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            retry_above: self.retry_above_handshakes,
            handshake_timeout: Duration::from_secs(limits.handshake_timeout_secs),
            first_request: Duration::from_secs(limits.first_request_secs),
            drain_timeout: Duration::from_secs(shutdown.drain_timeout_secs),
            gso_and_mtu_discovery: self.gso_and_mtu_discovery,
        }
    }
}

// ---- end of QUIC ----

/// The internal gRPC port's credential (docs/core.md, "The internal port"): a shared key
/// every process of a deployment holds, sent by callers and checked by the port.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct InternalSection {
    /// File with the shared key (hex, mode 0600); empty: `<data>/internal-key`, generated
    /// on first start. Processes on other data directories point this at the same key.
    pub key_file: PathBuf,
    // Mutual TLS (issue 14, second round).
    /// Mutual TLS on the internal port: the port requires a client certificate from the
    /// internal CA, and this process's callers present theirs.
    pub tls: bool,
    /// PEM: the internal CA; empty (with `tls_cert` and `tls_key`): `<data>/internal-tls/`,
    /// a development CA and certificate generated on first start.
    pub tls_ca: PathBuf,
    /// PEM: this process's certificate chain for the internal port.
    pub tls_cert: PathBuf,
    /// PEM: its private key.
    pub tls_key: PathBuf,
}

/// The offline-notification webhook (docs/core.md, "Offline notifications"): a POST to `url`
/// for each stored message whose recipient has no online device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WebhookSection {
    /// Where notices go (`http://` or `https://host:port/path`); empty: no webhook.
    pub url: String,
    /// CA certificates (PEM) an `https://` receiver's certificate must chain to; required
    /// for `https://`.
    pub ca_file: PathBuf,
    /// The HMAC-SHA256 key's file (hex, mode 0600); empty: `<data>/webhook-secret`,
    /// generated on first start.
    pub secret_file: PathBuf,
    /// Notices waiting for delivery; more are shed (and counted).
    pub queue: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts per notice, the first included.
    pub max_attempts: u32,
    /// One attempt's time limit (connect, request, response), milliseconds.
    pub timeout_ms: u64,
    /// The delay before the first retry, milliseconds; doubled for each further one.
    pub backoff_base_ms: u64,
    /// The longest delay between attempts, milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for WebhookSection {
    fn default() -> Self {
        WebhookSection {
            url: String::new(),
            ca_file: PathBuf::new(),
            secret_file: PathBuf::new(),
            queue: 10_000,
            concurrency: 16,
            max_attempts: 6,
            timeout_ms: 5_000,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

impl WebhookSection {
    fn validate(&self) -> Result<()> {
        if !self.url.is_empty() {
            let url = roam_core::webhook::WebhookConfig::parse_url(&self.url)?;
            if url.scheme_str() == Some("https") && self.ca_file.as_os_str().is_empty() {
                bail!(
                    "webhook.url is https://: set webhook.ca_file to the CA certificates (PEM) its certificate chains to"
                );
            }
        }
        if self.queue == 0
            || self.concurrency == 0
            || self.max_attempts == 0
            || self.timeout_ms == 0
            || self.backoff_base_ms == 0
        {
            bail!(
                "webhook.queue, concurrency, max_attempts, timeout_ms and backoff_base_ms must be above 0"
            );
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            bail!("webhook.backoff_max_ms must be at least webhook.backoff_base_ms");
        }
        Ok(())
    }
}

impl Config {
    /// Where the internal port's mutual TLS files are, with `internal.tls`: the configured
    /// three, or the development PKI in `<data>/internal-tls/` (generated if absent).
    pub(crate) fn internal_pki(&self) -> Result<Option<roam_tls::internal::Pki>> {
        let i = &self.internal;
        let set = [&i.tls_ca, &i.tls_cert, &i.tls_key].map(|p| !p.as_os_str().is_empty());
        if !i.tls {
            if set.iter().any(|s| *s) {
                bail!("internal.tls_ca, tls_cert and tls_key are set but internal.tls is not");
            }
            return Ok(None);
        }
        match set {
            [true, true, true] => Ok(Some(roam_tls::internal::Pki {
                ca: i.tls_ca.clone(),
                cert: i.tls_cert.clone(),
                key: i.tls_key.clone(),
            })),
            [false, false, false] => {
                let dir = self.data.join("internal-tls");
                let (pki, _) = roam_tls::internal::dev_pki(&dir)
                    .with_context(|| format!("internal.tls: {}", dir.display()))?;
                Ok(Some(pki))
            }
            _ => bail!("internal.tls_ca, tls_cert and tls_key: set all three or none"),
        }
    }

    /// The webhook's settings, its secret read from (or generated into) its file; `None`
    /// when `webhook.url` is unset.
    pub(crate) fn webhook(&self) -> Result<Option<roam_core::webhook::WebhookConfig>> {
        let w = &self.webhook;
        if w.url.is_empty() {
            return Ok(None);
        }
        let url = roam_core::webhook::WebhookConfig::parse_url(&w.url)?;
        let tls = if url.scheme_str() == Some("https") {
            let roots = roam_tls::roots_from_pem(&w.ca_file)
                .with_context(|| format!("webhook.ca_file {}", w.ca_file.display()))?;
            Some(roam_tls::client_config(roots, &[b"http/1.1"]))
        } else {
            None
        };
        let path = if w.secret_file.as_os_str().is_empty() {
            self.data.join("webhook-secret")
        } else {
            w.secret_file.clone()
        };
        let secret = roam_core::secret_file::load_or_create(&path, 32)
            .with_context(|| "webhook.secret_file (ROAM_WEBHOOK_SECRET_FILE)")?;
        Ok(Some(roam_core::webhook::WebhookConfig {
            url,
            tls,
            secret,
            queue: w.queue,
            concurrency: w.concurrency,
            max_attempts: w.max_attempts,
            timeout: Duration::from_millis(w.timeout_ms),
            backoff_base: Duration::from_millis(w.backoff_base_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms),
        }))
    }

    /// The internal port's key: read from its file, generated there if absent.
    pub(crate) fn internal_key(&self) -> Result<roam_proto::internal_auth::InternalKey> {
        let path = if self.internal.key_file.as_os_str().is_empty() {
            self.data.join("internal-key")
        } else {
            self.internal.key_file.clone()
        };
        let key = roam_core::secret_file::load_or_create(&path, 32)
            .with_context(|| "internal.key_file (ROAM_INTERNAL_KEY_FILE)")?;
        Ok(roam_proto::internal_auth::InternalKey::from_bytes(&key))
    }
}

impl EdgeSection {
    /// This edge's id: `edge.id`, or when empty one unique per process on this host,
    /// `<hostname>@<bound client address>` (two processes cannot bind the same address).
    pub(crate) fn id_or_derived(&self, client_tcp: SocketAddr) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}@{client_tcp}")
    }
}

/// Listening addresses (docs/contract.md §2). Port 0 lets the OS pick (see `--ready-file`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Listen {
    /// TLS 1.3 over TCP: HTTP/1.1 and HTTP/2 client API.
    pub client_tcp: SocketAddr,
    /// QUIC (HTTP/3) client API (UDP).
    pub client_quic: SocketAddr,
    /// TLS 1.3 raw frame protocol.
    pub raw: SocketAddr,
    /// Raw frames over QUIC, ALPN `roam/1` (UDP; issue 12).
    pub raw_quic: SocketAddr,
    /// Plain-HTTP business/admin API, `/metrics`, `/healthz`.
    pub admin: SocketAddr,
    /// Internal gRPC between roles.
    pub internal: SocketAddr,
}

/// Certificates for the TLS listeners. With neither set, a self-signed development
/// certificate is generated into `<data>/tls/`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key of the leaf.
    pub key: Option<PathBuf>,
}

/// Protocol limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Largest frame (header + body) accepted from a client, in bytes.
    pub max_packet: usize,
    /// Seconds a client may take to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds an HTTP/1.1 request's headers may take to arrive (against slowloris).
    pub http_header_timeout_secs: u64,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    // Admission (docs/edge.md, "Admission"): issue 14.
    /// Seconds after its handshake (on 8080: after accept) within which a connection must
    /// have sent a complete request; else it is closed.
    pub first_request_secs: u64,
    /// TLS handshakes in flight at once on the client and raw ports (0: no cap).
    pub max_handshakes: usize,
    /// Connections at once from one source address on the client and raw ports (0: no cap;
    /// tests and benches that open many connections from loopback turn it off).
    pub max_conns_per_ip: usize,
    /// TLS handshakes in flight at once from one source address on the client and raw
    /// ports (0: no cap), so that a few hosts cannot hold every handshake permit.
    pub max_handshakes_per_ip: usize,
    /// Connections at once on the admin port.
    pub admin_max_connections: usize,
    // Hardening, second round (issue 14; docs/edge.md "Admission").
    /// Seconds an HTTP/2 client connection may have no open stream before it gets GOAWAY
    /// and is closed.
    pub http2_idle_secs: u64,
    /// Connections at once from one source address on the admin port (0: no cap).
    pub admin_max_conns_per_ip: usize,
    /// Connections at once on the internal port.
    pub internal_max_connections: usize,
    /// Connections at once from one source address on the internal port (0: no cap).
    pub internal_max_conns_per_ip: usize,
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Shutdown {
    /// Seconds to wait for connections to finish after SIGTERM or Ctrl-C.
    pub drain_timeout_secs: u64,
}

/// Core's tunables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CoreSection {
    /// How often edges heartbeat on their link, milliseconds.
    pub edge_heartbeat_ms: u64,
    /// An edge silent (or disconnected) for longer is dropped and its sessions expire.
    pub edge_timeout_ms: u64,
    /// Messages queued per edge before pushes that would reach it are refused with 429.
    pub edge_queue: usize,
    /// The shortest adaptive client heartbeat interval, seconds.
    pub heartbeat_min_secs: u32,
    /// The longest adaptive client heartbeat interval, seconds.
    pub heartbeat_max_secs: u32,
    /// How far one success or failure moves the interval, seconds.
    pub heartbeat_step_secs: u32,
    /// The ID service's internal gRPC address (`http://host:port`) for a process that runs
    /// core but not the ID service (role `core`); empty: `http://127.0.0.1:9090`.
    pub ids: String,
}

/// Client token verification. HS256 tokens signed with `<data>/jwt-secret` are accepted
/// while no public key is set; a public key accepts EdDSA or ES256 tokens signed by the
/// business backend instead (HS256 too only with `accept_hs256 = true`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Auth {
    /// PEM public key (SPKI) of the backend's signing key.
    pub public_key: Option<PathBuf>,
    /// `EdDSA` or `ES256`; required with `public_key`.
    pub public_key_algorithm: Option<roam_core::auth::PublicKeyAlgorithm>,
    /// Whether HS256 tokens are accepted; unset: yes without `public_key`, no with it.
    pub accept_hs256: Option<bool>,
    /// Tokens valid for longer than this (`exp` − `iat`) are refused; 0: no maximum.
    pub max_token_lifetime_secs: u64,
}

impl Auth {
    /// The token verifier this section describes, over the data dir's HS256 secret.
    pub(crate) fn verifier(&self, data: &Path) -> Result<roam_core::auth::Verifier> {
        let secret = roam_core::auth::Secret::load_or_create(data)?;
        let mut verifier = roam_core::auth::Verifier::new(&secret)
            .accept_hs256(self.accept_hs256)
            .max_lifetime(Some(self.max_token_lifetime_secs).filter(|&s| s > 0));
        if let (Some(path), Some(alg)) = (&self.public_key, self.public_key_algorithm) {
            verifier = verifier.with_public_key(alg, path)?;
        }
        Ok(verifier)
    }
}

/// The edge role's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EdgeSection {
    /// Unique id of this edge in the node list; empty: `<hostname>@<client_tcp address>`.
    pub id: String,
    /// Core's internal gRPC address (`http://host:port`); empty: this process's own core
    /// (role `all`) or `http://127.0.0.1:9090`.
    pub core: String,
    /// Region name, for the node list.
    pub region: String,
    /// Latitude of the edge, degrees.
    pub lat: f64,
    /// Longitude of the edge, degrees.
    pub lon: f64,
    /// Relative capacity (0: draining, listed last).
    pub weight: u32,
    /// Public address clients should use for the client port; empty: the bound address.
    pub public_client_tcp: String,
    /// Public address clients should use for the raw port; empty: the bound address.
    pub public_raw: String,
    /// Connections beyond this are refused (DISCONNECT `REASON_LIMIT` / 503): one slot per
    /// TCP connection from accept, one per virtual connection once authenticated.
    pub max_connections: usize,
    /// Rooms one connection may be in (ROOM_JOIN beyond it is refused; AUTH's list is cut).
    pub max_rooms_per_conn: usize,
    // Hardening, second round (issue 14).
    /// Sessions one client connection may carry at once (WebSockets and gRPC streams over
    /// HTTP/2, virtual connections while on it; 0: no cap).
    pub max_sessions_per_conn: u32,
    /// Of those, sessions that have not authenticated yet (0: no cap).
    pub max_unauthenticated_per_conn: u32,
    /// Deliveries queued per connection (each a frame, a reply or a room batch) before it is
    /// closed as slow.
    pub outbox: usize,
    /// Comet buckets (0: four per core).
    pub buckets: usize,
    /// Seconds a client has to authenticate.
    pub auth_timeout_secs: u64,
    /// Requests a client may send in a burst.
    pub rate_burst: u32,
    /// Requests per second a client may sustain.
    pub rate_per_sec: u32,
    /// Frames a client may send after AUTH before AUTH_REPLY (held, then handled in order).
    pub max_held_frames: usize,
    /// Bytes of those held frames (headers included).
    pub max_held_bytes: usize,
    /// A write to a client that takes longer than this (it stopped reading) closes it as slow.
    pub write_timeout_secs: u64,
    /// Milliseconds a room or broadcast batch collects pushes before it is fanned out
    /// (goim's room batch; 0: every push goes out alone).
    pub batch_ms: u64,
    /// Pushes that make a batch full (it goes out at once).
    pub batch_max: usize,
    /// clients/web's build, served at `GET /` when it holds an index.html.
    pub web_dir: PathBuf,
    /// `POST /v1/dev-login` mints a client token for any name (the web app's development
    /// login). Unset: on without a config file (the local development default), off with one.
    pub dev_login: Option<bool>,
}

impl Default for EdgeSection {
    fn default() -> Self {
        EdgeSection {
            id: String::new(),
            core: String::new(),
            region: "local".into(),
            lat: 0.0,
            lon: 0.0,
            weight: 100,
            public_client_tcp: String::new(),
            public_raw: String::new(),
            max_connections: 100_000,
            max_rooms_per_conn: 64,
            max_sessions_per_conn: 100,
            max_unauthenticated_per_conn: 8,
            outbox: 256,
            buckets: 0,
            auth_timeout_secs: 10,
            rate_burst: 50,
            rate_per_sec: 20,
            max_held_frames: 32,
            max_held_bytes: 64 * 1024,
            write_timeout_secs: 10,
            batch_ms: 50,
            batch_max: 64,
            web_dir: PathBuf::from("clients/web/dist"),
            dev_login: None,
        }
    }
}

impl EdgeSection {
    /// The gateway's tunables from this section and the protocol limits.
    pub(crate) fn gateway(&self, limits: &Limits) -> roam_edge::gateway::GatewayConfig {
        let max_packet = limits.max_packet;
        let defaults = roam_edge::gateway::GatewayConfig::default();
        roam_edge::gateway::GatewayConfig {
            session: roam_edge::session::SessionConfig {
                auth_timeout: Duration::from_secs(self.auth_timeout_secs),
                rate_burst: self.rate_burst,
                rate_per_sec: self.rate_per_sec,
                max_held_frames: self.max_held_frames,
                max_held_bytes: self.max_held_bytes,
            },
            outbox: self.outbox,
            max_packet,
            max_connections: self.max_connections,
            max_handshakes: limits.max_handshakes,
            max_conns_per_ip: limits.max_conns_per_ip,
            max_handshakes_per_ip: limits.max_handshakes_per_ip,
            max_rooms_per_conn: self.max_rooms_per_conn,
            max_sessions_per_conn: self.max_sessions_per_conn,
            max_unauthenticated_per_conn: self.max_unauthenticated_per_conn,
            buckets: if self.buckets == 0 {
                defaults.buckets
            } else {
                self.buckets
            },
            write_timeout: Duration::from_secs(self.write_timeout_secs),
            batch: roam_edge::batch::BatchConfig {
                window: Duration::from_millis(self.batch_ms),
                max_frames: self.batch_max,
                ..defaults.batch
            },
        }
    }
}

impl Default for CoreSection {
    fn default() -> Self {
        CoreSection {
            edge_heartbeat_ms: 5_000,
            edge_timeout_ms: 15_000,
            edge_queue: 4096,
            heartbeat_min_secs: 60,
            heartbeat_max_secs: 300,
            heartbeat_step_secs: 30,
            ids: String::new(),
        }
    }
}

impl CoreSection {
    /// Core's options from this section and the frame limit.
    /// Where a core-only process finds the ID service.
    pub(crate) fn ids_address(&self) -> String {
        if self.ids.is_empty() {
            "http://127.0.0.1:9090".to_owned()
        } else {
            self.ids.clone()
        }
    }

    /// Core's options from this section and the frame limit.
    pub(crate) fn options(&self, max_packet: usize) -> roam_core::CoreOptions {
        roam_core::CoreOptions {
            edge_heartbeat: Duration::from_millis(self.edge_heartbeat_ms),
            edge_timeout: Duration::from_millis(self.edge_timeout_ms),
            edge_queue: self.edge_queue,
            heartbeat: roam_core::heartbeat::HeartbeatPolicy {
                min: self.heartbeat_min_secs,
                max: self.heartbeat_max_secs,
                step: self.heartbeat_step_secs,
            },
            // Room for the PUSH frame's header and envelope around the content.
            max_content: max_packet.saturating_sub(256),
            // Set from [messaging] by `serve` (MessagingSection::options).
            messaging: roam_messaging::MessagingOptions::default(),
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("./data"),
            store: String::new(),
            role: Role::All,
            listen: Listen::default(),
            tls: Tls::default(),
            limits: Limits::default(),
            shutdown: Shutdown::default(),
            core: CoreSection::default(),
            auth: Auth::default(),
            edge: EdgeSection::default(),
            ids: roam_idsvc::IdsConfig::default(),
            internal: InternalSection::default(),
            webhook: WebhookSection::default(),
            messaging: MessagingSection::default(),
            quic: QuicSection::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            client_tcp: local(8443),
            client_quic: local(8443),
            raw: local(8444),
            raw_quic: local(8444),
            admin: local(8080),
            internal: local(9090),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet: roam_proto::DEFAULT_MAX_PACKET,
            handshake_timeout_secs: 10,
            http_header_timeout_secs: 10,
            http2_max_streams: 256,
            first_request_secs: 10,
            max_handshakes: 4096,
            max_conns_per_ip: 1000,
            max_handshakes_per_ip: 64,
            admin_max_connections: 256,
            http2_idle_secs: 120,
            admin_max_conns_per_ip: 32,
            internal_max_connections: 1024,
            internal_max_conns_per_ip: 256,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain_timeout_secs: 10,
        }
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `--data`.
    pub data: Option<PathBuf>,
    /// `--role`.
    pub role: Option<Role>,
}

/// Largest `limits.max_packet` accepted (16 MiB): beyond it one frame could hold a
/// connection's worth of memory hostage.
const MAX_PACKET_CEILING: usize = 16 * 1024 * 1024;

impl Config {
    /// Loads the effective configuration: defaults, then `file` (if any), then the `ROAM_*`
    /// variables of `env`, then `flags`; validates and resolves it.
    pub(crate) fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                // Parse once as `Config` for errors that point at the line and name the key.
                toml::from_str::<Config>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e)))?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e)))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("configuration: {}", one_line(&e)))?;
        if let Some(data) = &flags.data {
            config.data = data.clone();
        }
        if let Some(role) = flags.role {
            config.role = role;
        }
        config.validate()?;
        config.resolve();
        // The development login is for `cargo run` on a laptop: any configured deployment
        // (a config file) has it off unless it says otherwise.
        config.edge.dev_login.get_or_insert(file.is_none());
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.messaging.validate()?;
        self.quic.validate()?;
        let max = self.limits.max_packet;
        if !(roam_proto::HEADER_LEN..=MAX_PACKET_CEILING).contains(&max) {
            bail!(
                "limits.max_packet = {max}: must be between {} and {MAX_PACKET_CEILING}",
                roam_proto::HEADER_LEN
            );
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => bail!("tls.cert is set but tls.key is not: set both or neither"),
            (None, Some(_)) => bail!("tls.key is set but tls.cert is not: set both or neither"),
            _ => {}
        }
        if self.limits.http_header_timeout_secs == 0 || self.limits.http2_max_streams == 0 {
            bail!("limits.http_header_timeout_secs and limits.http2_max_streams must be above 0");
        }
        if self.limits.first_request_secs == 0
            || self.limits.admin_max_connections == 0
            || self.edge.max_rooms_per_conn == 0
        {
            bail!(
                "limits.first_request_secs, limits.admin_max_connections and edge.max_rooms_per_conn must be above 0"
            );
        }
        if self.limits.http2_idle_secs == 0 || self.limits.internal_max_connections == 0 {
            bail!("limits.http2_idle_secs and limits.internal_max_connections must be above 0");
        }
        let c = &self.core;
        if c.heartbeat_min_secs == 0 || c.heartbeat_min_secs > c.heartbeat_max_secs {
            bail!(
                "core.heartbeat_min_secs = {} and heartbeat_max_secs = {}: need 0 < min <= max",
                c.heartbeat_min_secs,
                c.heartbeat_max_secs
            );
        }
        if c.heartbeat_step_secs == 0 {
            bail!("core.heartbeat_step_secs must be above 0");
        }
        if c.edge_heartbeat_ms == 0 || c.edge_timeout_ms <= c.edge_heartbeat_ms {
            bail!(
                "core.edge_timeout_ms = {} must be above core.edge_heartbeat_ms = {} (> 0)",
                c.edge_timeout_ms,
                c.edge_heartbeat_ms
            );
        }
        if c.edge_queue == 0 {
            bail!("core.edge_queue must be above 0");
        }
        let e = &self.edge;
        if e.outbox == 0
            || e.max_connections == 0
            || e.rate_burst == 0
            || e.rate_per_sec == 0
            || e.write_timeout_secs == 0
        {
            bail!(
                "edge.outbox, max_connections, rate_burst, rate_per_sec and write_timeout_secs must be above 0"
            );
        }
        if e.batch_max == 0 || e.batch_ms > 10_000 {
            bail!("edge.batch_max must be above 0 and edge.batch_ms at most 10000");
        }
        if !(-90.0..=90.0).contains(&e.lat) || !(-180.0..=180.0).contains(&e.lon) {
            bail!("edge.lat must be within [-90, 90] and edge.lon within [-180, 180]");
        }
        self.ids
            .validate()
            .map_err(|e| anyhow::anyhow!("[ids]: {e}"))?;
        self.webhook.validate()?;
        if self.auth.public_key.is_some() != self.auth.public_key_algorithm.is_some() {
            bail!("auth.public_key and auth.public_key_algorithm go together: set both or neither");
        }
        if self.auth.accept_hs256 == Some(false) && self.auth.public_key.is_none() {
            bail!(
                "auth.accept_hs256 = false needs auth.public_key: without either, no token could be verified"
            );
        }
        if !self.store.is_empty()
            && !self.store.starts_with("embedded:")
            && !self.store.starts_with("fdb:")
        {
            bail!(
                "store = {:?}: expected \"embedded:<dir>\" or \"fdb:<cluster file>\"",
                self.store
            );
        }
        Ok(())
    }

    fn resolve(&mut self) {
        if self.store.is_empty() {
            self.store = format!("embedded:{}", self.data.join("store").display());
        }
    }

    /// The effective configuration as TOML.
    pub(crate) fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Directory of the development certificate.
    pub(crate) fn dev_tls_dir(&self) -> PathBuf {
        self.data.join("tls")
    }
}

fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        // Drop the source excerpt (`2 | colour = "blue"`, `  |   ^^^`): the message names
        // the line and the key already.
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies `ROAM_<SECTION>_<KEY>` (or `ROAM_<KEY>` for top-level keys) to `table`.
/// A value is read as a TOML value when it parses as one (`1024`, `true`), else as a string.
/// Each variable is checked as it is applied, so an error names the variable at fault.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    let defaults = toml::Table::try_from(Config::default())?;
    let sections: Vec<&String> = defaults
        .iter()
        .filter(|(_, v)| v.is_table())
        .map(|(k, _)| k)
        .collect();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("ROAM_"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let name = var["ROAM_".len()..].to_ascii_lowercase();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw.clone()));
        match sections.iter().find(|s| name.starts_with(&format!("{s}_"))) {
            Some(section) => {
                let key = &name[section.len() + 1..];
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(t) = entry.as_table_mut() else {
                    bail!("{var}: [{section}] in the config file is not a table");
                };
                t.insert(key.to_owned(), value);
            }
            None => {
                table.insert(name, value);
            }
        }
        if let Err(e) = Config::deserialize(toml::Value::Table(table.clone())) {
            bail!("{var}: {}", one_line(&e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.client_tcp, local(8443));
        assert_eq!(c.listen.raw, local(8444));
        assert_eq!(c.listen.admin, local(8080));
        assert_eq!(c.listen.internal, local(9090));
        assert_eq!(c.limits.max_packet, 64 * 1024);
        assert_eq!(c.role, Role::All);
        assert_eq!(c.store, "embedded:./data/store");
        assert_eq!(c.limits.first_request_secs, 10);
        assert_eq!(c.limits.max_conns_per_ip, 1000);
        assert_eq!(c.edge.max_rooms_per_conn, 64);
    }

    #[test]
    fn quic_gso_and_mtu_discovery_is_on_unless_switched_off() {
        let none = Overrides {
            data: None,
            role: None,
        };
        let c = Config::load(None, env(&[]), &none).unwrap();
        assert!(c.quic.gso_and_mtu_discovery);
        let vars = env(&[("ROAM_QUIC_GSO_AND_MTU_DISCOVERY", "false")]);
        let c = Config::load(None, vars, &none).unwrap();
        assert!(!c.quic.gso_and_mtu_discovery);
        let limits = Limits::default();
        let shutdown = Shutdown::default();
        assert!(!c.quic.options(&limits, &shutdown).gso_and_mtu_discovery);
    }

    #[test]
    fn file_then_env_then_flags() {
        let f = file(
            "data = \"/from/file\"\nrole = \"core\"\n[listen]\nadmin = \"127.0.0.1:1111\"\nraw = \"127.0.0.1:2222\"\n[limits]\nmax_packet = 1000\n",
        );
        let vars = env(&[
            ("ROAM_LISTEN_ADMIN", "127.0.0.1:3333"),
            ("ROAM_LIMITS_MAX_PACKET", "2000"),
            ("ROAM_ROLE", "edge"),
            ("ROAM_DATA", "/from/env"),
            ("HOME", "/ignored"),
        ]);
        let flags = Overrides {
            data: Some("/from/flag".into()),
            role: None,
        };
        let c = Config::load(Some(f.path()), vars, &flags).unwrap();
        assert_eq!(c.listen.raw, local(2222), "file beats default");
        assert_eq!(c.listen.admin, local(3333), "env beats file");
        assert_eq!(c.limits.max_packet, 2000, "env values are typed");
        assert_eq!(c.role, Role::Edge, "env beats file, no flag given");
        assert_eq!(c.data, PathBuf::from("/from/flag"), "flag beats env");
        assert_eq!(
            c.store, "embedded:/from/flag/store",
            "store follows the data dir"
        );
    }

    #[test]
    fn dev_login_is_on_only_for_the_local_default() {
        let none = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            none.edge.dev_login,
            Some(true),
            "no config file: local development"
        );
        let f = file("[edge]\nrate_burst = 60\n");
        let configured = Config::load(Some(f.path()), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            configured.edge.dev_login,
            Some(false),
            "a configured deployment"
        );
        let on = file("[edge]\ndev_login = true\n");
        let c = Config::load(Some(on.path()), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.edge.dev_login, Some(true), "switched on explicitly");
        let vars = env(&[("ROAM_EDGE_DEV_LOGIN", "false")]);
        let c = Config::load(None, vars, &Overrides::default()).unwrap();
        assert_eq!(
            c.edge.dev_login,
            Some(false),
            "switched off by the environment"
        );
    }

    /// A config file, environment variables, and a fragment the error must contain.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn bad_input_is_one_line_naming_the_fault() {
        let cases: &[Case] = &[
            ("bogus = 1\n", &[], "bogus"),
            (
                "[listen]\nadmin = \"127.0.0.1:99999\"\n",
                &[],
                "invalid socket address",
            ),
            ("[listen]\nnope = \"x\"\n", &[], "nope"),
            (
                "[quic]\nkeep_alive_secs = 90\n",
                &[],
                "quic.keep_alive_secs",
            ),
            ("", &[("ROAM_QUIC_MAX_STREAMS", "0")], "quic.max_streams"),
            ("role = \"everything\"\n", &[], "everything"),
            ("", &[("ROAM_LISTEN_NOPE", "1")], "ROAM_LISTEN_NOPE"),
            ("", &[("ROAM_BOGUS", "1")], "ROAM_BOGUS"),
            (
                "",
                &[("ROAM_LISTEN_ADMIN", "localhost:http")],
                "invalid socket address",
            ),
            ("", &[("ROAM_LIMITS_MAX_PACKET", "8")], "max_packet"),
            ("[tls]\ncert = \"/x.pem\"\n", &[], "tls.key"),
            ("store = \"redis:x\"\n", &[], "embedded:"),
            (
                "[core]\nheartbeat_min_secs = 400\n",
                &[],
                "heartbeat_min_secs",
            ),
            ("[core]\nedge_timeout_ms = 10\n", &[], "edge_timeout_ms"),
            (
                "[limits]\nfirst_request_secs = 0\n",
                &[],
                "first_request_secs",
            ),
            (
                "",
                &[("ROAM_EDGE_MAX_ROOMS_PER_CONN", "0")],
                "max_rooms_per_conn",
            ),
            (
                "[auth]\npublic_key = \"/k.pem\"\n",
                &[],
                "public_key_algorithm",
            ),
            (
                "",
                &[("ROAM_WEBHOOK_URL", "https://push.example.com/roam")],
                "webhook.ca_file",
            ),
            ("[webhook]\nqueue = 0\n", &[], "webhook.queue"),
            (
                "[webhook]\nbackoff_max_ms = 10\n",
                &[],
                "webhook.backoff_max_ms",
            ),
            (
                "[auth]\naccept_hs256 = false\n",
                &[],
                "accept_hs256 = false needs auth.public_key",
            ),
        ];
        for (text, vars, needle) in cases {
            let f = file(text);
            let err = Config::load(Some(f.path()), env(vars), &Overrides::default())
                .map(|_| ())
                .unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{text:?} {vars:?}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn internal_key_file_and_token_policy_keys_load_from_file_and_env() {
        let f = file("[auth]\naccept_hs256 = true\nmax_token_lifetime_secs = 3600\n");
        let vars = env(&[("ROAM_INTERNAL_KEY_FILE", "/etc/roam/internal-key")]);
        let c = Config::load(Some(f.path()), vars, &Overrides::default()).unwrap();
        assert_eq!(c.internal.key_file, PathBuf::from("/etc/roam/internal-key"));
        assert_eq!(c.auth.accept_hs256, Some(true));
        assert_eq!(c.auth.max_token_lifetime_secs, 3600);
        let d = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(d.auth.accept_hs256, None, "unset: follows auth.public_key");
    }

    #[test]
    fn webhook_keys_load_from_file_and_env_and_its_secret_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = file("[webhook]\nmax_attempts = 3\n");
        let vars = env(&[
            ("ROAM_WEBHOOK_URL", "http://127.0.0.1:9000/hook"),
            ("ROAM_DATA", dir.path().to_str().unwrap()),
        ]);
        let c = Config::load(Some(f.path()), vars, &Overrides::default()).unwrap();
        let w = c.webhook().unwrap().expect("a url: enabled");
        assert_eq!((w.max_attempts, w.queue), (3, 10_000));
        assert_eq!(w.url, "http://127.0.0.1:9000/hook");
        assert_eq!(w.secret.len(), 32);
        assert_eq!(c.webhook().unwrap().unwrap().secret, w.secret, "read back");
        assert!(dir.path().join("webhook-secret").exists());
        let off = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert!(off.webhook().unwrap().is_none(), "no url: no webhook");
    }

    #[test]
    fn messaging_keys_load_from_file_and_env_and_are_checked() {
        let d = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        let o = d.messaging.options(d.limits.max_packet);
        assert_eq!((o.fanout_threshold, o.send_rate), (100, 200));
        assert_eq!(
            o.max_content_bytes,
            64 * 1024 - MESSAGE_FRAME_OVERHEAD,
            "64 KiB, held below what fits a frame"
        );
        assert_eq!(
            (o.batch_max, o.batch_wait, o.batches_in_flight),
            (256, std::time::Duration::ZERO, 4)
        );
        let f =
            file("[messaging]\nfanout_threshold = 5\nmax_content_bytes = 1000\nbatch_max = 64\n");
        let vars = env(&[
            ("ROAM_MESSAGING_SEND_RATE", "0"),
            ("ROAM_MESSAGING_BATCH_WAIT_US", "300"),
        ]);
        let c = Config::load(Some(f.path()), vars, &Overrides::default()).unwrap();
        let o = c.messaging.options(c.limits.max_packet);
        assert_eq!(
            (o.fanout_threshold, o.max_content_bytes, o.send_rate),
            (5, 1000, 0)
        );
        assert_eq!(
            (o.batch_max, o.batch_wait),
            (64, std::time::Duration::from_micros(300))
        );
        for bad in [
            "max_content_bytes = 0",
            "max_group_members = 0",
            "send_burst = 0",
            "batch_max = 0",
            "batch_max = 5000",
            "batch_wait_us = 20000",
            "batches_in_flight = 0",
        ] {
            let f = file(&format!("[messaging]\n{bad}\n"));
            let e = Config::load(Some(f.path()), env(&[]), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("messaging."), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_edge_id_differs_per_client_address() {
        let e = EdgeSection::default();
        let a = e.id_or_derived(local(8443));
        let b = e.id_or_derived(local(9443));
        assert!(a.ends_with("@127.0.0.1:8443"), "{a}");
        assert_ne!(a, b);
        let named = EdgeSection {
            id: "paris-1".into(),
            ..EdgeSection::default()
        };
        assert_eq!(named.id_or_derived(local(8443)), "paris-1");
    }

    #[test]
    fn printed_config_loads_back_identically() {
        let c = Config::load(
            None,
            env(&[("ROAM_TLS_CERT", "/c.pem"), ("ROAM_TLS_KEY", "/k.pem")]),
            &Overrides::default(),
        )
        .unwrap();
        let text = c.to_toml().unwrap();
        let f = file(&text);
        let again = Config::load(Some(f.path()), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(again.to_toml().unwrap(), text);
        assert_eq!(again.tls.cert, Some(PathBuf::from("/c.pem")));
    }
}
