//! The offline-notification webhook: when a stored message's recipient has no online device,
//! core POSTs a JSON notice to a URL the business runs, which turns it into an APNs or FCM
//! push (docs/core.md, "Offline notifications").
//!
//! `Webhook::offline` never waits: it puts the notice on a bounded queue, or sheds it (and
//! counts it) when the queue is full. A worker task takes notices off the queue, at most
//! `concurrency` deliveries at once; each delivery is a POST with the body signed by
//! HMAC-SHA256 (header `x-roam-signature: sha256=<hex>`), retried after a connection error, a
//! timeout, a 429 or a 5xx with exponential backoff and full jitter, up to `max_attempts`
//! attempts; any other status fails it at once. `https://` URLs are reached over TLS 1.3,
//! trusting the CA certificates of `webhook.ca_file`. At shutdown the worker stops: notices still
//! queued or in flight are counted as shed (`reason="shutdown"`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::KindLabel;

/// The header carrying the body's signature: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub(crate) const SIGNATURE_HEADER: &str = "x-roam-signature";

/// A stored message whose recipient has no online device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OfflineNotice {
    pub(crate) user: String,
    pub(crate) from: String,
    pub(crate) conversation: String,
    pub(crate) message_id: u64,
    pub(crate) seq: u64,
    pub(crate) created_at_ms: u64,
}

/// The JSON body of one POST.
#[derive(Debug, Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    from: &'a str,
    conversation: &'a str,
    message_id: u64,
    seq: u64,
    created_at_ms: u64,
    /// 1 for the first attempt.
    attempt: u32,
    /// When this attempt was sent: lets a receiver refuse old replays.
    sent_at_ms: u64,
}

/// How the webhook delivers.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where notices go (`http://` or `https://host:port/path`).
    pub url: http::Uri,
    /// How `https://` URLs are reached (the roots of `webhook.ca_file`); `None` for `http://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The HMAC-SHA256 key.
    pub secret: Vec<u8>,
    /// Notices waiting beyond the ones in flight; more are shed.
    pub queue: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts per notice (the first included).
    pub max_attempts: u32,
    /// One attempt's limit: connect, request and response.
    pub timeout: Duration,
    /// The delay before the first retry; doubled for each further one.
    pub backoff_base: Duration,
    /// The longest delay between attempts.
    pub backoff_max: Duration,
}

/// Why a webhook URL cannot be used.
#[derive(Debug, Error)]
pub enum WebhookError {
    /// Not a URL with an `http` or `https` scheme and a host.
    #[error("webhook.url {0:?} must be an http:// or https:// URL with a host")]
    Url(String),
}

impl WebhookConfig {
    /// Parses and checks `url`.
    pub fn parse_url(url: &str) -> Result<http::Uri, WebhookError> {
        let uri: http::Uri = url.parse().map_err(|_| WebhookError::Url(url.into()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(WebhookError::Url(url.into()));
        }
        Ok(uri)
    }
}

/// The webhook's metrics, under `roam_core_webhook_`.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// Notices delivered (a 2xx answer).
    pub(crate) sent: Counter,
    /// Notices given up: a status that is not retried, or the last attempt failed.
    pub(crate) failed: Counter,
    /// Attempts after the first.
    pub(crate) retried: Counter,
    /// Notices dropped without delivery, by reason (`queue_full`, `shutdown`).
    pub(crate) shed: Family<KindLabel, Counter>,
    /// Notices waiting in the queue.
    pub(crate) queue_depth: Gauge,
    /// One attempt's duration, in seconds (whatever its outcome).
    pub(crate) latency: Histogram,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            sent: Counter::default(),
            failed: Counter::default(),
            retried: Counter::default(),
            shed: Family::default(),
            queue_depth: Gauge::default(),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl WebhookMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = WebhookMetrics::default();
        let r = registry.sub_registry_with_prefix("roam_core_webhook");
        r.register("sent", "Offline notices delivered (2xx)", m.sent.clone());
        r.register(
            "failed",
            "Offline notices given up (a status not retried, or attempts exhausted)",
            m.failed.clone(),
        );
        r.register(
            "retried",
            "Webhook attempts after the first",
            m.retried.clone(),
        );
        r.register(
            "shed",
            "Offline notices dropped undelivered, by reason (queue_full, shutdown)",
            m.shed.clone(),
        );
        r.register(
            "queue_depth",
            "Offline notices waiting for delivery",
            m.queue_depth.clone(),
        );
        r.register(
            "latency_seconds",
            "Duration of one webhook attempt",
            m.latency.clone(),
        );
        m
    }
}

/// The handle core calls; cheap to clone. A disabled webhook (no URL) drops every notice
/// without counting it.
#[derive(Debug, Clone)]
pub struct Webhook {
    tx: Option<mpsc::Sender<OfflineNotice>>,
    metrics: WebhookMetrics,
}

impl Webhook {
    /// A webhook that sends nothing (`webhook.url` unset).
    pub fn disabled() -> Self {
        Webhook {
            tx: None,
            metrics: WebhookMetrics::default(),
        }
    }

    /// Starts delivering to `config.url`; the returned task ends once `shutdown` is
    /// cancelled (counting what was left undelivered as shed).
    pub fn start(
        config: WebhookConfig,
        metrics: WebhookMetrics,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let connector = Connector::new(config.tls.clone());
        let worker = Worker {
            config: Arc::new(config),
            metrics: metrics.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        };
        (
            Webhook {
                tx: Some(tx),
                metrics,
            },
            worker.run(rx, shutdown),
        )
    }

    /// Queues a notice for `notice.user`, without waiting; sheds it when the queue is full.
    pub(crate) fn offline(&self, notice: OfflineNotice) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(notice) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
            }
            Err(mpsc::error::TrySendError::Full(n)) => {
                count_shed(&self.metrics, "queue_full");
                debug!(
                    user = n.user,
                    message_id = n.message_id,
                    "webhook queue full: notice shed"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => count_shed(&self.metrics, "shutdown"),
        }
    }
}

fn count_shed(metrics: &WebhookMetrics, reason: &'static str) {
    metrics
        .shed
        .get_or_create(&KindLabel { kind: reason })
        .inc();
}

/// `sha256=<hex>` of `body` under `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

/// The delay before attempt `attempt + 1` (after `attempt` failed): `base · 2^(attempt−1)`,
/// capped at `max`, then a uniformly random point of its upper half (jitter, so that
/// notices that failed together do not retry together). `unit` is a random number in [0, 1).
fn backoff(base: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let exp = base
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(max);
    exp / 2 + exp.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth another attempt (connection error, timeout, 429, 5xx).
    Retry,
    /// Not worth another (any other status).
    GiveUp,
}

struct Worker {
    config: Arc<WebhookConfig>,
    metrics: WebhookMetrics,
    client: Client<Connector, Full<Bytes>>,
}

/// Opens TCP connections, with TLS for `https://` URLs.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        Connector {
            http,
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (mut http, tls) = (self.http.clone(), self.tls.clone());
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let tcp = http.call(uri).await?;
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let tls = tls.ok_or("an https:// webhook needs webhook.ca_file")?;
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp.into_inner()).await?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to the receiver.
enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<OfflineNotice>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut deliveries = JoinSet::new();
        let this = Arc::new(self);
        loop {
            // A permit first, then a notice: while every delivery slot is busy, notices stay
            // in the queue (and the queue's bound sheds the excess).
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => continue,
            };
            let notice = tokio::select! {
                _ = shutdown.cancelled() => break,
                n = rx.recv() => match n {
                    Some(n) => n,
                    None => break,
                },
            };
            this.metrics.queue_depth.dec();
            let w = this.clone();
            deliveries.spawn(async move {
                w.deliver(notice).await;
                drop(permit);
            });
        }
        // Shutdown: what is in flight or queued is not delivered.
        deliveries.abort_all();
        let mut in_flight = 0;
        while let Some(done) = deliveries.join_next().await {
            if done.is_err_and(|e| e.is_cancelled()) {
                in_flight += 1;
            }
        }
        rx.close();
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
            this.metrics.queue_depth.dec();
        }
        let left = (in_flight + queued) as u64;
        if left > 0 {
            warn!(left, "webhook stopped with notices undelivered");
            this.metrics
                .shed
                .get_or_create(&KindLabel { kind: "shutdown" })
                .inc_by(left);
        }
    }

    async fn deliver(&self, notice: OfflineNotice) {
        let c = &self.config;
        for attempt in 1..=c.max_attempts.max(1) {
            if attempt > 1 {
                self.metrics.retried.inc();
            }
            let started = Instant::now();
            let outcome = self.attempt(&notice, attempt).await;
            self.metrics
                .latency
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                Outcome::Delivered => {
                    self.metrics.sent.inc();
                    return;
                }
                Outcome::GiveUp => break,
                Outcome::Retry if attempt < c.max_attempts => {
                    let delay = backoff(c.backoff_base, c.backoff_max, attempt, rand::random());
                    tokio::time::sleep(delay).await;
                }
                Outcome::Retry => {}
            }
        }
        self.metrics.failed.inc();
        warn!(
            user = notice.user,
            message_id = notice.message_id,
            "webhook: offline notice not delivered"
        );
    }

    async fn attempt(&self, n: &OfflineNotice, attempt: u32) -> Outcome {
        let body = Body {
            kind: "message.offline",
            user: &n.user,
            from: &n.from,
            conversation: &n.conversation,
            message_id: n.message_id,
            seq: n.seq,
            created_at_ms: n.created_at_ms,
            attempt,
            sent_at_ms: crate::service::now_ms(),
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return Outcome::GiveUp;
        };
        let request = http::Request::post(self.config.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&self.config.secret, &body))
            .header("x-roam-delivery", format!("{}-{}", n.message_id, n.user))
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            return Outcome::GiveUp;
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read (a bounded amount of) the answer so the connection can be reused.
            let _ = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(Ok(status)) if status.is_success() => Outcome::Delivered,
            Ok(Ok(status))
                if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                debug!(%status, attempt, "webhook: receiver failed; retrying");
                Outcome::Retry
            }
            Ok(Ok(status)) => {
                warn!(%status, "webhook: receiver refused the notice; not retried");
                Outcome::GiveUp
            }
            Ok(Err(e)) => {
                debug!(error = %e, attempt, "webhook: request failed; retrying");
                Outcome::Retry
            }
            Err(_) => {
                debug!(attempt, "webhook: attempt timed out; retrying");
                Outcome::Retry
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use hmac::Mac;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Seen = mpsc::UnboundedReceiver<(HeaderMap, Bytes)>;

    /// A receiver on 127.0.0.1:0 answering its `n`-th request (from 0) with `respond(n)`;
    /// with `hold`, each request first waits for a permit of it.
    async fn receiver(
        respond: impl Fn(usize) -> StatusCode + Clone + Send + Sync + 'static,
        hold: Option<Arc<Semaphore>>,
    ) -> (http::Uri, Seen) {
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let handler = move |headers: HeaderMap, body: Bytes| {
            let (tx, count, hold, respond) =
                (tx.clone(), count.clone(), hold.clone(), respond.clone());
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((headers, body));
                if let Some(hold) = hold {
                    let _ = hold.acquire().await.map(|p| p.forget());
                }
                respond(n)
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = WebhookConfig::parse_url(&format!("http://{addr}/hook")).unwrap();
        (url, rx)
    }

    fn config(url: http::Uri) -> WebhookConfig {
        WebhookConfig {
            url,
            tls: None,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            queue: 16,
            concurrency: 1,
            max_attempts: 5,
            timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
        }
    }

    fn notice(message_id: u64) -> OfflineNotice {
        OfflineNotice {
            user: "bob".into(),
            from: "alice".into(),
            conversation: "alice".into(),
            message_id,
            seq: 7,
            created_at_ms: 1_790_000_000_000,
        }
    }

    async fn next(seen: &mut Seen) -> (HeaderMap, serde_json::Value) {
        let (headers, body) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("no request within 10 s")
            .expect("the receiver stopped");
        (headers, serde_json::from_slice(&body).unwrap())
    }

    fn start(config: WebhookConfig) -> (Webhook, CancellationToken, tokio::task::JoinHandle<()>) {
        let shutdown = CancellationToken::new();
        let (hook, task) = Webhook::start(config, WebhookMetrics::default(), shutdown.clone());
        (hook, shutdown, tokio::spawn(task))
    }

    fn shed(hook: &Webhook, reason: &'static str) -> u64 {
        hook.metrics
            .shed
            .get_or_create(&KindLabel { kind: reason })
            .get()
    }

    #[tokio::test]
    async fn retries_survive_a_receiver_that_fails_at_first_and_the_signature_verifies() {
        let (url, mut seen) = receiver(
            |n| {
                if n < 2 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            },
            None,
        )
        .await;
        let config = config(url);
        let secret = config.secret.clone();
        let (hook, shutdown, task) = start(config);
        hook.offline(notice(41));
        // One delivery at a time: the second notice's request means the first is settled.
        hook.offline(notice(42));
        let mut attempts = Vec::new();
        for _ in 0..4 {
            let (headers, body) = next(&mut seen).await;
            let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
            let hex_mac = signature.strip_prefix("sha256=").expect("sha256=<hex>");
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
            let raw = serde_json::to_vec(&body).unwrap();
            mac.update(&raw);
            mac.verify_slice(&hex::decode(hex_mac).unwrap())
                .expect("the signature verifies with the shared secret");
            let mut other = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"another secret").unwrap();
            other.update(&raw);
            assert!(other.verify_slice(&hex::decode(hex_mac).unwrap()).is_err());
            assert_eq!(headers["content-type"], "application/json");
            attempts.push((body["message_id"].as_u64(), body["attempt"].as_u64()));
            if attempts.len() == 1 {
                assert_eq!(body["type"], "message.offline");
                assert_eq!(body["user"], "bob");
                assert_eq!(body["from"], "alice");
                assert_eq!(body["conversation"], "alice");
                assert_eq!(body["seq"], 7);
                assert_eq!(body["created_at_ms"], 1_790_000_000_000u64);
            }
        }
        assert_eq!(
            attempts,
            [
                (Some(41), Some(1)),
                (Some(41), Some(2)),
                (Some(41), Some(3)),
                (Some(42), Some(1))
            ]
        );
        assert_eq!(hook.metrics.sent.get(), 1);
        assert_eq!(hook.metrics.retried.get(), 2);
        assert_eq!(hook.metrics.failed.get(), 0);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_exhausted_attempts_fail() {
        let (url, mut seen) = receiver(
            |n| {
                if n == 0 {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::BAD_GATEWAY
                }
            },
            None,
        )
        .await;
        let (hook, shutdown, task) = start(WebhookConfig {
            max_attempts: 2,
            ..config(url)
        });
        for id in [1, 2, 3] {
            hook.offline(notice(id));
        }
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(next(&mut seen).await.1["message_id"].as_u64().unwrap());
        }
        assert_eq!(
            ids,
            [1, 2, 2, 3],
            "400: given up at once; 502: two attempts"
        );
        assert_eq!(hook.metrics.failed.get(), 2);
        assert_eq!(hook.metrics.retried.get(), 1);
        assert_eq!(hook.metrics.sent.get(), 0);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_sheds_and_counts_and_shutdown_counts_what_is_left() {
        let hold = Arc::new(Semaphore::new(0));
        let (url, mut seen) = receiver(|_| StatusCode::OK, Some(hold.clone())).await;
        let (hook, shutdown, task) = start(WebhookConfig {
            queue: 1,
            ..config(url)
        });
        hook.offline(notice(1));
        // The first is in flight (held by the receiver), holding the one delivery slot.
        assert_eq!(next(&mut seen).await.1["message_id"], 1);
        hook.offline(notice(2));
        hook.offline(notice(3));
        hook.offline(notice(4));
        assert_eq!(hook.metrics.queue_depth.get(), 1, "the second waits");
        assert_eq!(
            shed(&hook, "queue_full"),
            2,
            "the third and fourth are shed"
        );
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(shed(&hook, "shutdown"), 2, "one in flight, one queued");
        assert_eq!(hook.metrics.queue_depth.get(), 0);
        assert_eq!(hook.metrics.sent.get(), 0);
        hook.offline(notice(5));
        assert_eq!(
            shed(&hook, "shutdown"),
            3,
            "after shutdown, every notice is shed"
        );
    }

    #[tokio::test]
    async fn an_https_receiver_is_reached_over_tls_trusting_the_configured_roots() {
        let (cert, roots) = roam_tls::self_signed(&["localhost"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(
            roam_tls::server_config(&cert, &[b"http/1.1"]).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let _ = tx.send((parts.headers, body));
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::new(),
                                )))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let url = WebhookConfig::parse_url(&format!("https://localhost:{port}/hook")).unwrap();
        let (hook, shutdown, task) = start(WebhookConfig {
            tls: Some(roam_tls::client_config(roots, &[b"http/1.1"])),
            ..config(url)
        });
        hook.offline(notice(9));
        hook.offline(notice(10));
        let (headers, body) = next(&mut seen).await;
        assert_eq!(body["message_id"], 9);
        assert!(
            headers[SIGNATURE_HEADER]
                .to_str()
                .unwrap()
                .starts_with("sha256=")
        );
        assert_eq!(next(&mut seen).await.1["message_id"], 10);
        assert_eq!(
            hook.metrics.sent.get(),
            1,
            "the first was delivered before the second went"
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let at = |attempt, unit| backoff(base, max, attempt, unit);
        assert_eq!(at(1, 0.0), Duration::from_millis(50));
        assert!(at(1, 0.999_999) < Duration::from_millis(100));
        assert!(at(1, 0.999_999) > Duration::from_micros(99_990));
        assert_eq!(at(3, 0.0), Duration::from_millis(200));
        assert_eq!(at(3, 0.5), Duration::from_millis(300));
        assert_eq!(at(6, 0.0), Duration::from_secs(1), "capped at 2 s");
        assert_eq!(at(40, 0.0), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        assert!(WebhookConfig::parse_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(WebhookConfig::parse_url("https://push.example.com/roam").is_ok());
        for bad in ["", "push.example.com", "ftp://x/y", "/hook", "http://"] {
            let e = WebhookConfig::parse_url(bad).unwrap_err();
            assert!(e.to_string().contains("webhook.url"), "{e}");
        }
    }
}
