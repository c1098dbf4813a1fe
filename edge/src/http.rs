//! The HTTP routes of the client port, every response carrying `alt-svc` (HTTP/3):
//!
//! - `GET /healthz`.
//! - `GET /v1/ws` — a WebSocket over HTTP/1.1 Upgrade or HTTP/2 extended CONNECT (RFC 8441,
//!   many WebSockets on one TCP connection); one binary message = one or more frames.
//! - `GET /v1/stream`, `GET /v1/poll`, `POST /v1/send` — virtual connections made of HTTP
//!   requests (`crate::vconn`): a streamed response body or long-polls down, request
//!   bodies up.
//! - `POST /roam.client.v1.Gateway/Connect` — the gRPC `Gateway` service (`crate::grpc`).
//! - `GET /` — the web app (clients/web's build) when its directory exists.
//! - `POST /v1/dev-login` — the web app's development login (a token for a name), only when
//!   the process was given a minter ([`DevLogin`]); 404 otherwise.
//!
//! Every connection runs through the same driver (`crate::conn::drive`). Errors before a
//! connection exists (no token, a refused token, an unknown `roam-session`, a bad body) are
//! an HTTP status with `{"error": {"code", "message"}}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use roam_proto::client::v1::{self as pb, error::Code};
use roam_proto::{FrameDecoder, Op};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::task::TaskTracker;
use tower_http::services::{ServeDir, ServeFile};

use crate::admission::{ConnTicket, Hold, SessionRefused};
use crate::conn::{FrameIo, Transport, drive_holding};
use crate::gateway::Gateway;
use crate::vconn::{
    self, Conn, ConnError, DirectOpening, Downstream, Mode, Registry, WritesDirect,
};

/// The header naming a virtual connection.
pub(crate) const SESSION: HeaderName = HeaderName::from_static("roam-session");
/// The header carrying the cursor of the last frame a poll answered.
pub(crate) const CURSOR: HeaderName = HeaderName::from_static("roam-cursor");
/// The media type of a body of frames back to back.
pub(crate) const FRAMES: &str = "application/vnd.roam.frames";

/// A long-poll waits at most this long (`wait` above is cut to it).
pub(crate) const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// A long-poll without `wait` waits this long.
pub(crate) const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(25);
/// A `/v1/send` waits this long for its replies; later ones go downstream.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// `/v1/send` bodies hold at most this many maximum-size frames' worth of bytes.
const SEND_FRAMES: usize = 16;

/// tungstenite's read buffer per WebSocket (kept while idle).
const WS_READ_BUFFER: usize = 512;

/// Mints a client token for a user name: the development login. Given only where the
/// configuration allows it (`edge.dev_login`), in a process that holds the token secret.
#[derive(Clone)]
pub struct DevLogin(pub Arc<MintFn>);

/// Mints a token for a user name, or says why it cannot.
pub type MintFn = dyn Fn(&str) -> Result<String, String> + Send + Sync;

impl std::fmt::Debug for DevLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevLogin")
    }
}

/// What the routes serve besides the client API.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `POST /v1/dev-login` answers with a token when set; 404 when not.
    pub dev_login: Option<DevLogin>,
    /// clients/web's build; `GET /` serves it when the directory exists.
    pub web_dir: Option<PathBuf>,
    /// Where connections outliving their request run (WebSockets, virtual connections,
    /// gRPC streams): the listener waits for them when it drains.
    pub tracker: TaskTracker,
    /// The SHA-256 (hex) of the client port's certificate, served at `GET /v1/wt-cert-hash`
    /// for WebTransport's `serverCertificateHashes` (a development certificate is
    /// self-signed).
    pub cert_sha256: Option<String>,
}

#[derive(Debug, Clone)]
struct Client {
    gateway: Arc<Gateway>,
    vconns: Arc<Registry>,
    tracker: TaskTracker,
}

/// The client port's routes over `gateway`.
pub fn router(gateway: Arc<Gateway>, options: HttpOptions) -> Router {
    let grpc = crate::grpc::service(gateway.clone(), options.tracker.clone());
    let client = Client {
        gateway,
        vconns: Arc::new(Registry::default()),
        tracker: options.tracker,
    };
    let hash = options.cert_sha256.clone();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/wt-cert-hash",
            get(move || async move {
                match hash {
                    Some(hash) => axum::Json(serde_json::json!({
                        "algorithm": "sha-256",
                        "value": hash,
                    }))
                    .into_response(),
                    None => not_found().await.into_response(),
                }
            }),
        )
        .route("/v1/ws", any(websocket))
        .route("/v1/stream", get(stream))
        .route("/v1/poll", get(poll))
        .route("/v1/send", post(send))
        .route_service("/roam.client.v1.Gateway/Connect", grpc)
        .with_state(client);
    // Registered either way, so that with the login off the app's fallback does not answer.
    let router = match options.dev_login {
        Some(login) => router.route("/v1/dev-login", post(move |body| dev_login(login, body))),
        None => router.route("/v1/dev-login", any(not_found)),
    };
    match options.web_dir.filter(|d| d.join("index.html").is_file()) {
        Some(dir) => {
            let index = ServeFile::new(dir.join("index.html"));
            router.fallback_service(ServeDir::new(dir).fallback(index))
        }
        None => router.fallback(not_found),
    }
}

/// `POST /v1/dev-login` with `{"user": "<name>"}`: `{"user", "token"}`.
async fn dev_login(
    login: DevLogin,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "invalid_argument", m);
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| bad("the body must be JSON: {\"user\": \"<name>\"}"))?;
    let user = value
        .get("user")
        .and_then(|u| u.as_str())
        .map(str::trim)
        .unwrap_or_default();
    if user.is_empty()
        || user.len() > 64
        || user.starts_with("group:")
        || user.chars().any(char::is_control)
    {
        return Err(bad(
            "user must be 1-64 bytes without control characters and not start with group:",
        ));
    }
    let token = (login.0)(user).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot mint a token: {e}"),
        )
    })?;
    Ok(axum::Json(
        serde_json::json!({ "user": user, "token": token }),
    ))
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (and the web app is not built: run `npm ci && npm run build` in clients/web)",
    )
}

/// An error answer: `{"error": {"code", "message"}}` with its status (and `retry-after`
/// when the edge is unavailable).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(5);
        roam_proto::http_error::error_response(self.status, &self.code, &self.message, retry)
            .into_response()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> ApiError {
    ApiError {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn unavailable(message: &str) -> ApiError {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

/// A session of the request's connection ([`crate::admission::Ticket::session`]), or the
/// 429 refusing it. Without a ticket (a router used without the listener) there is no cap.
fn session(ticket: Option<&ConnTicket>) -> Result<Hold, ApiError> {
    let Some(ticket) = ticket else {
        return Ok(Hold::default());
    };
    match ticket.ticket().session() {
        Ok(permit) => Ok(Hold {
            session: Some(permit),
            ..Hold::default()
        }),
        Err(SessionRefused::PerConn) => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            "this connection carries as many sessions as it may (edge.max_sessions_per_conn): open another connection",
        )),
        Err(SessionRefused::Unauthenticated) => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            "this connection carries as many unauthenticated sessions as it may: authenticate those first",
        )),
    }
}

/// Why a request to `/v1/ws` is not a WebSocket handshake, if it is not.
fn websocket_handshake(req: &Request) -> Result<Option<HeaderValue>, ApiError> {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "bad_handshake", message);
    let header = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header(SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(bad("sec-websocket-version: 13 is required"));
    }
    if req.version() >= Version::HTTP_2 {
        // RFC 8441: extended CONNECT with :protocol websocket; the answer is a plain 200.
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        if req.method() != Method::CONNECT || protocol.map(|p| p.as_str()) != Some("websocket") {
            return Err(bad(
                "over HTTP/2, a WebSocket is an extended CONNECT with :protocol websocket",
            ));
        }
        return Ok(None);
    }
    let has_token = |name: HeaderName, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.method() != Method::GET
        || !has_token(CONNECTION, "upgrade")
        || !has_token(UPGRADE, "websocket")
    {
        return Err(error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "GET with `connection: upgrade` and `upgrade: websocket` is required",
        ));
    }
    let key = header(SEC_WEBSOCKET_KEY).ok_or_else(|| bad("sec-websocket-key is required"))?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map(Some)
        .map_err(|_| bad("sec-websocket-key is malformed"))
}

/// `GET /v1/ws` (HTTP/1.1 Upgrade) or extended CONNECT (HTTP/2): the handshake is checked
/// and answered here and the connection runs in one task on the listener's tracker. (Not
/// axum's `WebSocketUpgrade`: its task keeps two more copies of the WebSocket and boxes the
/// callback's future, ≈ 0.8 KB more per idle connection.)
async fn websocket(State(client): State<Client>, mut req: Request) -> Response {
    let accept = match websocket_handshake(&req) {
        Ok(accept) => accept,
        Err(e) => return e.into_response(),
    };
    let gateway = client.gateway;
    // The connection's ticket (its slot) and this request's stream: an HTTP/1.1 connection's
    // task ends once it is upgraded, and the WebSocket then holds the slot. Over HTTP/2 the
    // stream lives inside its connection, which holds the slot anyway, and stays open (the
    // connection is not idle) while the WebSocket lives.
    let ticket = req.extensions().get::<ConnTicket>().cloned();
    let hold = match session(ticket.as_ref()) {
        Ok(hold) => hold,
        Err(e) => return e.into_response(),
    };
    let max = gateway.config.max_packet;
    let transport = Transport {
        name: "ws",
        http: Transport::http_version(req.version()),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let config = WebSocketConfig::default()
        // Small buffers: tungstenite allocates its read buffer up front and keeps it for
        // the connection's life (128 KiB by default). Client frames are small; a larger
        // message grows the buffer while it is read.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max * SEND_FRAMES))
        .max_frame_size(Some(max * SEND_FRAMES));
    client.tracker.spawn(async move {
        let _ticket = ticket;
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        drive_holding(gateway, WsIo { socket }, transport, hold).await;
    });
    match accept {
        Some(accept) => Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .unwrap_or_default(),
        None => Response::new(Body::empty()),
    }
}

/// Frames over a WebSocket: binary messages in, one binary message per batch out.
struct WsIo {
    socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
}

impl FrameIo for WsIo {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Binary(bytes))) if !bytes.is_empty() => {
                    buf.extend_from_slice(&bytes);
                    return Ok(bytes.len());
                }
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(
                    Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
                )) => {
                    continue;
                }
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text messages are not frames",
                    ));
                }
                Some(Ok(Message::Close(_))) | None => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    async fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        let message = match frames {
            [] => return Ok(()),
            [one] => one.clone(),
            many => many.concat().into(),
        };
        self.socket
            .send(Message::Binary(message))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// What a request to open or poll a virtual connection carries.
struct Opening {
    version: Version,
    headers: HeaderMap,
    q: HashMap<String, String>,
    ticket: Option<ConnTicket>,
    /// The transport writes a stream's frames itself ([`WritesDirect`]).
    writes_direct: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Opening {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let q: Result<Query<HashMap<String, String>>, QueryRejection> =
            Query::from_request_parts(parts, state).await;
        let Query(q) =
            q.map_err(|e| error(StatusCode::BAD_REQUEST, "bad_query", &e.body_text()))?;
        Ok(Opening {
            version: parts.version,
            headers: parts.headers.clone(),
            q,
            ticket: parts.extensions.get::<ConnTicket>().cloned(),
            writes_direct: parts.extensions.get::<WritesDirect>().is_some(),
        })
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an `Authorization: Bearer <token>` header is required",
            )
        })
}

/// The virtual connection a request names in `roam-session`, checked against its token.
fn named(client: &Client, headers: &HeaderMap) -> Result<Option<Arc<Conn>>, ApiError> {
    let token = bearer(headers)?;
    let Some(id) = headers.get(&SESSION) else {
        return Ok(None);
    };
    let conn = id
        .to_str()
        .map_err(|_| ConnError::Unknown)
        .and_then(|id| client.vconns.get(id))
        .and_then(|c| c.check(token).map(|()| c))
        .map_err(conn_error)?;
    Ok(Some(conn))
}

fn conn_error(e: ConnError) -> ApiError {
    match e {
        ConnError::Unknown => error(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no such connection (closed, or never opened): open a new one and SYNC",
        ),
        ConnError::WrongToken => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the connection was opened with another token",
        ),
        ConnError::Cursor(message) => error(StatusCode::CONFLICT, "bad_cursor", &message),
        ConnError::Closed => error(
            StatusCode::GONE,
            "closed",
            "the connection is closed: open a new one and SYNC",
        ),
    }
}

/// The HTTP answer to an AUTH refused with `e`.
fn refused(e: &pb::Error) -> ApiError {
    let code = Code::try_from(e.code).unwrap_or(Code::Unspecified);
    let status = match code {
        Code::AuthRequired | Code::AuthFailed | Code::AuthExpired => StatusCode::UNAUTHORIZED,
        Code::Forbidden => StatusCode::FORBIDDEN,
        Code::Unavailable => return unavailable(&e.message),
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    };
    let name = code
        .as_str_name()
        .trim_start_matches("CODE_")
        .to_lowercase();
    error(status, &name, &e.message)
}

/// Opens a virtual connection for `request` and waits for core's answer to its AUTH: the
/// connection and its first frames, or the HTTP error refusing it.
async fn open(
    client: &Client,
    request: &Opening,
    mode: Mode,
) -> Result<(Arc<Conn>, Option<Downstream>), ApiError> {
    let (version, q) = (request.version, &request.q);
    let token = bearer(&request.headers)?;
    let field = |name: &str| q.get(name).map_or("", String::as_str);
    if field("device").is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "`device` is required: a stable id of the app install (as AUTH.device_id)",
        ));
    }
    let auth = vconn::auth_frame(token, field("device"), field("platform"), field("rooms"))
        .filter(|a| a.len() <= client.gateway.config.max_packet)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "too_large",
                "the token and parameters exceed the frame limit",
            )
        })?;
    // A session of the carrying connection (for a long-polled one, until it authenticated),
    // and admission of its own — a source share and a slot, as a TCP connection's — before
    // its AUTH goes to core: one refused here has replaced no live session of its device.
    let gateway = client.gateway.clone();
    let mut hold = session(request.ticket.as_ref())?;
    if let Some(session) = &mut hold.session {
        session.release_on_auth = mode == Mode::Poll;
    }
    // Without its connection's ticket (a transport that does not hand one out) the source
    // is unknown: a slot alone, not one shared source for every such client.
    let admitted = match &request.ticket {
        Some(t) => gateway.admission.admit(t.ticket().peer()),
        None => Ok(gateway.admission.admit_without_source()),
    };
    match admitted {
        Err(_) => {
            return Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "your address holds as many connections as it may (limits.max_conns_per_ip)",
            ));
        }
        Ok(own) if !own.has_slot() => {
            return Err(unavailable("the edge is at its connection limit"));
        }
        Ok(own) => hold.own = Some(Box::new(own)),
    }
    let (conn, io, body) = client.vconns.open(
        token,
        auth,
        mode,
        request.writes_direct,
        gateway.config.outbox,
        gateway.shutdown.clone(),
    );
    let transport = Transport {
        name: if mode == Mode::Stream {
            "stream"
        } else {
            "poll"
        },
        http: Transport::http_version(version),
    };
    let wait = gateway.config.session.auth_timeout + Duration::from_secs(5);
    let driver = drive_holding(gateway, io, transport, hold);
    let first = tokio::time::timeout(wait, conn.first_frames());
    let (first, body) = match body {
        // Run here until AUTH_REPLY, then handed to the transport with the response.
        Some(Downstream::Direct(mut direct)) => {
            direct.start(driver, client.tracker.clone());
            (direct.until(first).await, Some(Downstream::Direct(direct)))
        }
        body => {
            client.tracker.spawn(driver);
            (first.await, body)
        }
    };
    let refusal = match first {
        Ok(Some(mut frames)) => match FrameDecoder::new(usize::MAX).decode_bytes(&mut frames) {
            Ok(Some(f)) if f.op == Op::AuthReply.code() => return Ok((conn, body)),
            Ok(Some(f)) if f.op == Op::Error.code() => f.decode_body::<pb::Error>().map_or_else(
                |_| unavailable("the connection was refused"),
                |e| refused(&e),
            ),
            _ => unavailable("the connection was refused"),
        },
        _ => unavailable("core did not answer the authentication in time"),
    };
    client.vconns.remove(conn.id);
    Err(refusal)
}

fn frames_response(status: StatusCode, body: Bytes, conn: &Conn, cursor: Option<u64>) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(FRAMES));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(&conn.session()) {
        h.insert(SESSION, id);
    }
    if let Some(c) = cursor {
        h.insert(CURSOR, HeaderValue::from(c));
    }
    r
}

/// `GET /v1/stream`: opens a virtual connection; the response body is its frames (or, for a
/// transport that writes them itself, the response carries the connection: `vconn::direct`).
async fn stream(State(client): State<Client>, request: Opening) -> Result<Response, ApiError> {
    let (conn, body) = open(&client, &request, Mode::Stream).await?;
    let mut r = frames_response(StatusCode::OK, Bytes::new(), &conn, None);
    match body {
        Some(Downstream::Body(frames)) => {
            *r.body_mut() = Body::from_stream(frames.map(Ok::<_, Infallible>));
        }
        // The transport sends the frames (see `vconn::direct`).
        Some(Downstream::Direct(direct)) => {
            r.extensions_mut().insert(DirectOpening::new(direct));
        }
        None => return Err(unavailable("the stream could not be set up")),
    }
    // Tell buffering proxies (nginx) to pass frames through as they come.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// `cursor` and `wait` of a poll.
fn poll_query(q: &HashMap<String, String>) -> Result<(u64, Duration), ApiError> {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "bad_query", message);
    let cursor = q
        .get("cursor")
        .ok_or_else(|| bad("`cursor` is required: the roam-cursor of the last poll answer"))?;
    // u64::MAX is no frame's cursor (the one after it could not be numbered): refused here
    // with the other malformed values, never carried into cursor arithmetic.
    let cursor = cursor
        .parse::<u64>()
        .ok()
        .filter(|c| *c < u64::MAX)
        .ok_or_else(|| {
            bad(&format!(
                "cursor {cursor:?} is not an integer from 0 to {}",
                u64::MAX - 1
            ))
        })?;
    let wait = match q.get("wait").map(|w| w.parse::<f64>()) {
        None => DEFAULT_POLL_WAIT,
        Some(Ok(w)) if w.is_finite() && w >= 0.0 => Duration::from_secs_f64(w).min(MAX_POLL_WAIT),
        Some(_) => {
            return Err(bad(
                "wait must be a number of seconds from 0 (at most 60 are waited)",
            ));
        }
    };
    Ok((cursor, wait))
}

/// `GET /v1/poll[?cursor=N&wait=S]`: without `roam-session`, opens a virtual connection and
/// answers its first frames; with it, the frames after cursor N (waiting up to S seconds).
async fn poll(State(client): State<Client>, request: Opening) -> Result<Response, ApiError> {
    let (conn, cursor, wait) = match named(&client, &request.headers)? {
        None => {
            let (conn, _) = open(&client, &request, Mode::Poll).await?;
            (conn, 0, Duration::ZERO)
        }
        Some(conn) if conn.mode != Mode::Poll => {
            return Err(error(
                StatusCode::CONFLICT,
                "not_polled",
                "this connection streams its frames: read its /v1/stream response",
            ));
        }
        Some(conn) => {
            let (cursor, wait) = poll_query(&request.q)?;
            (conn, cursor, wait)
        }
    };
    let waiting = &client.gateway.metrics.polls_waiting;
    Ok(
        match conn.poll(cursor, wait, waiting).await.map_err(conn_error)? {
            Some((body, last)) => frames_response(StatusCode::OK, body, &conn, Some(last)),
            None => frames_response(StatusCode::NO_CONTENT, Bytes::new(), &conn, Some(cursor)),
        },
    )
}

/// `POST /v1/send`: frames up to the connection named in `roam-session`; the response body
/// holds their replies.
async fn send(
    State(client): State<Client>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let conn = named(&client, &headers)?.ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "no_session",
            "a roam-session header is required: open a connection with GET /v1/stream or GET /v1/poll",
        )
    })?;
    let max_packet = client.gateway.config.max_packet;
    let limit = max_packet * SEND_FRAMES;
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body exceeds {limit} bytes"),
            ));
        }
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("reading the body: {e}"),
            ));
        }
    };
    let requests = vconn::requests(&body, max_packet)
        .map_err(|message| error(StatusCode::BAD_REQUEST, "bad_frame", &message))?;
    let replies = conn
        .send(body, requests, SEND_TIMEOUT)
        .await
        .map_err(conn_error)?;
    Ok(frames_response(
        StatusCode::OK,
        replies.concat().into(),
        &conn,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_cursor_beyond_the_last_possible_frame_is_a_bad_query() {
        let e = poll_query(&query(&[("cursor", "18446744073709551615")])).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "bad_query")
        );
        let e = poll_query(&query(&[("cursor", "18446744073709551616")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let (cursor, _) = poll_query(&query(&[("cursor", "18446744073709551614")])).unwrap();
        assert_eq!(cursor, u64::MAX - 1);
    }
}
