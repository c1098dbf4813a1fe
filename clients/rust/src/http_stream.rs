//! The HTTP stream transports, client side, for the [`crate::client::Client`]: a virtual
//! connection made of `GET /v1/stream` (frames down, one long response body) and `POST
//! /v1/send` (frames up; the answer holds their replies), over HTTP/2 (TLS 1.3, ALPN `h2`,
//! the client port) or HTTP/3 (QUIC, ALPN `h3`, the client port's UDP twin). For networks
//! where only HTTPS gets through.
//!
//! The stream opens on the first write, which the session makes AUTH: its token, device,
//! platform and rooms become the opening request's bearer token and query, and the server's
//! AUTH_REPLY is the body's first frame; a refused token (401) comes back to the session as
//! the ERROR that AUTH would have got. Later writes go up as `POST /v1/send`, one at a time
//! and in order, from a task of their own, so that reading the stream never waits on them;
//! their replies join the stream's frames. The frames wait in a bounded queue
//! (64 frames): when the session does not take them, reading stops, and the server's
//! slow-consumer policy applies as on any connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, FrameDecoder, Op, frame_of};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Frames read but not yet taken by the session (the stream's and `/v1/send`'s answers).
pub(crate) const DOWN_QUEUE: usize = 64;

/// The largest frame accepted.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What the reading side reports.
enum Down {
    Frame(Frame),
    /// The stream ended (the server closed the connection).
    End,
    /// The stream or a `/v1/send` failed.
    Failed(String),
}

/// How requests are made: HTTP/2 or HTTP/3.
#[derive(Clone)]
enum Requests {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H3(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>),
}

/// An answer's head and a way to read its body.
enum Body {
    H2(hyper::body::Incoming),
    H3(Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>),
}

impl Body {
    /// The next chunk; `None` at the end.
    async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Body::H2(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
            Body::H3(stream) => match stream.recv_data().await {
                Ok(Some(mut chunk)) => Ok(Some(chunk.copy_to_bytes(chunk.remaining()))),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    async fn all(&mut self) -> Result<Bytes, String> {
        let mut out = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

impl Requests {
    /// Sends `request` with `body`; the answer's status, `roam-session` header and body.
    async fn send(
        &mut self,
        request: http::request::Builder,
        body: Bytes,
    ) -> Result<(u16, Option<String>, Body), String> {
        let session = |h: &http::HeaderMap| {
            h.get("roam-session")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match self {
            Requests::H2(sender) => {
                let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
                sender.ready().await.map_err(|e| e.to_string())?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let id = session(response.headers());
                Ok((status, id, Body::H2(response.into_body())))
            }
            Requests::H3(sender) => {
                let request = request.body(()).map_err(|e| e.to_string())?;
                let mut stream = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                if !body.is_empty() {
                    stream.send_data(body).await.map_err(|e| e.to_string())?;
                }
                stream.finish().await.map_err(|e| e.to_string())?;
                let response = stream.recv_response().await.map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let id = session(response.headers());
                Ok((status, id, Body::H3(Box::new(stream))))
            }
        }
    }
}

/// An HTTP connection to an edge's client port, before and after its stream opened.
pub(crate) struct HttpStream {
    requests: Requests,
    /// `https://host[:port]`, the requests' scheme and authority.
    origin: String,
    /// The QUIC endpoint (HTTP/3), for migration.
    endpoint: Option<quinn::Endpoint>,
    /// After the opening: where the writes go, and where frames come from.
    open: Option<Open>,
    /// Replies made up here (a refused AUTH), handed out first.
    local: Vec<Frame>,
    tasks: Vec<JoinHandle<()>>,
}

struct Open {
    up: mpsc::UnboundedSender<Bytes>,
    down: mpsc::Receiver<Down>,
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl HttpStream {
    /// TLS (ALPN `h2`, verifying `name`) and an HTTP/2 connection over `tcp`.
    pub(crate) async fn connect_h2(
        tcp: TcpStream,
        tls: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        port: u16,
    ) -> Result<Self, String> {
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let origin = format!("https://{}:{port}", crate::ws::authority(&name));
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpStream {
            requests: Requests::H2(sender),
            origin,
            endpoint: None,
            open: None,
            local: Vec::new(),
            tasks: vec![driver],
        })
    }

    /// QUIC on `endpoint` (verifying `name`) to `addr` and an HTTP/3 connection.
    pub(crate) async fn connect_h3(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        name: ServerName<'static>,
    ) -> Result<Self, String> {
        let origin = format!("https://{}:{}", crate::ws::authority(&name), addr.port());
        let (conn, _early) = crate::quic::connect_named(&endpoint, addr, &name.to_str())
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        Ok(HttpStream {
            requests: Requests::H3(sender),
            origin,
            endpoint: Some(endpoint),
            open: None,
            local: Vec::new(),
            tasks: vec![driver],
        })
    }

    /// The QUIC endpoint of an HTTP/3 connection.
    pub(crate) fn endpoint(&self) -> Option<&quinn::Endpoint> {
        self.endpoint.as_ref()
    }

    /// Writes frames: the first write (AUTH first) opens the stream, the rest go up with
    /// `POST /v1/send`.
    pub(crate) async fn write(&mut self, mut bytes: Bytes) -> Result<(), String> {
        if self.open.is_none() {
            let decoder = FrameDecoder::new(MAX_FRAME);
            let mut buf = BytesMut::from(&bytes[..]);
            let auth = decoder
                .decode(&mut buf)
                .map_err(|e| e.to_string())?
                .filter(|f| f.op_kind() == Some(Op::Auth))
                .ok_or("an HTTP stream opens with AUTH")?;
            bytes = buf.freeze();
            self.open_stream(&auth).await?;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        match &self.open {
            Some(open) => open
                .up
                .send(bytes)
                .map_err(|_| "the stream is closed".to_owned()),
            // The AUTH was refused: nothing else goes up.
            None => Ok(()),
        }
    }

    async fn open_stream(&mut self, auth_frame: &Frame) -> Result<(), String> {
        let auth: pb::Auth = auth_frame.decode_body().map_err(|e| e.to_string())?;
        let mut query = format!("device={}", encode(&auth.device_id));
        if !auth.platform.is_empty() {
            query.push_str(&format!("&platform={}", encode(&auth.platform)));
        }
        if !auth.rooms.is_empty() {
            query.push_str(&format!("&rooms={}", encode(&auth.rooms.join(","))));
        }
        let bearer = format!("Bearer {}", auth.token);
        let request = http::Request::get(format!("{}/v1/stream?{query}", self.origin))
            .header("authorization", &bearer);
        let (status, session, mut body) = self.requests.send(request, Bytes::new()).await?;
        if !(200..300).contains(&status) {
            let answer = body.all().await.unwrap_or_default();
            let (code, message) = error_of(&answer);
            if status == 401 || status == 403 {
                // What AUTH over a frame connection would have got.
                let code =
                    pb::error::Code::from_str_name(&format!("CODE_{}", code.to_ascii_uppercase()))
                        .unwrap_or(pb::error::Code::AuthFailed);
                let error = pb::Error {
                    code: code as i32,
                    message,
                };
                let frame =
                    frame_of(Op::Error, auth_frame.seq, &error).map_err(|e| e.to_string())?;
                let mut buf = BytesMut::from(&frame[..]);
                if let Ok(Some(f)) = FrameDecoder::new(MAX_FRAME).decode(&mut buf) {
                    self.local.push(f);
                }
                return Ok(());
            }
            return Err(format!("GET /v1/stream: {status} {code}: {message}"));
        }
        let session = session.ok_or("GET /v1/stream: no roam-session header")?;
        let (down_tx, down) = mpsc::channel(DOWN_QUEUE);
        let (up, up_rx) = mpsc::unbounded_channel();
        self.tasks
            .push(tokio::spawn(read_stream(body, down_tx.clone())));
        self.tasks.push(tokio::spawn(write_up(
            self.requests.clone(),
            format!("{}/v1/send", self.origin),
            bearer,
            session,
            up_rx,
            down_tx,
        )));
        self.open = Some(Open { up, down });
        Ok(())
    }

    /// The next frame, `None` when the server ended the stream. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, String> {
        if !self.local.is_empty() {
            return Ok(Some(self.local.remove(0)));
        }
        let Some(open) = self.open.as_mut() else {
            return std::future::pending().await;
        };
        match open.down.recv().await {
            Some(Down::Frame(f)) => Ok(Some(f)),
            Some(Down::End) | None => Ok(None),
            Some(Down::Failed(e)) => Err(e),
        }
    }
}

/// Reads the stream's body into frames for `down` (waiting while it is full).
async fn read_stream(mut body: Body, down: mpsc::Sender<Down>) {
    let decoder = FrameDecoder::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    loop {
        match body.chunk().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if !forward_frames(&decoder, &mut buf, &down).await {
                    return;
                }
            }
            Ok(None) => {
                let _ = down.send(Down::End).await;
                return;
            }
            Err(e) => {
                let _ = down.send(Down::Failed(e)).await;
                return;
            }
        }
    }
}

/// Posts what the session writes, one `POST /v1/send` at a time, in order; the replies in
/// each answer go to `down`.
async fn write_up(
    mut requests: Requests,
    url: String,
    bearer: String,
    session: String,
    mut up: mpsc::UnboundedReceiver<Bytes>,
    down: mpsc::Sender<Down>,
) {
    let decoder = FrameDecoder::new(MAX_FRAME);
    while let Some(first) = up.recv().await {
        // Whatever else is waiting goes in the same request.
        let mut body = BytesMut::from(&first[..]);
        while let Ok(more) = up.try_recv() {
            body.extend_from_slice(&more);
        }
        let request = http::Request::post(&url)
            .header("authorization", &bearer)
            .header("roam-session", &session)
            .header("content-type", "application/vnd.roam.frames");
        let answer = match requests.send(request, body.freeze()).await {
            Ok((status, _, mut answer)) => match answer.all().await {
                Ok(bytes) if (200..300).contains(&status) => Ok(bytes),
                Ok(bytes) => {
                    let (code, message) = error_of(&bytes);
                    Err(format!("POST /v1/send: {status} {code}: {message}"))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let mut bytes = match answer {
            Ok(bytes) => BytesMut::from(&bytes[..]),
            Err(e) => {
                let _ = down.send(Down::Failed(e)).await;
                return;
            }
        };
        if !forward_frames(&decoder, &mut bytes, &down).await {
            return;
        }
    }
}

/// Sends every whole frame in `buf` to `down`; false once that is over (`down` closed, or
/// a malformed frame, reported as `Down::Failed`).
async fn forward_frames(
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
    down: &mpsc::Sender<Down>,
) -> bool {
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                if down.send(Down::Frame(frame)).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                let _ = down.send(Down::Failed(e.to_string())).await;
                return false;
            }
        }
    }
}

/// The `{"error": {"code", "message"}}` of an error answer.
fn error_of(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |name: &str| {
        v["error"][name]
            .as_str()
            .map_or_else(String::new, str::to_owned)
    };
    let message = match field("message") {
        m if m.is_empty() => String::from_utf8_lossy(body).into_owned(),
        m => m,
    };
    (field("code"), message)
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(encode("a b&c=d,é"), "a%20b%26c%3Dd%2C%C3%A9");
    }

    #[test]
    fn error_bodies() {
        let (code, message) = error_of(br#"{"error":{"code":"auth_failed","message":"bad"}}"#);
        assert_eq!((code.as_str(), message.as_str()), ("auth_failed", "bad"));
        let (code, message) = error_of(b"plain");
        assert_eq!((code.as_str(), message.as_str()), ("", "plain"));
    }
}
