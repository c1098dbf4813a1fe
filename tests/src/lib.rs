//! # roam-tests — end-to-end tests against real `roam` processes
//!
//! Every test here starts the real binary (built by `cargo build --bins` before the suite,
//! see `scripts/test`) on a private data directory with ephemeral ports
//! ([`roam_bench::child::ChildServer`], the launcher `roam bench` uses too) and talks to it
//! with real clients over loopback; the business API through the SDK's admin client
//! ([`roam_client::admin`], as `roam bench` does).
//! The tests live in `tests/tests/*.rs`; this library holds what they share.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step fails the test, helpers included"
)]

use std::path::PathBuf;

use roam_bench::child::ChildServer;

/// The `roam` binary of this build (`target/<profile>/roam`, next to the test's `deps/`).
pub fn roam_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join("roam");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bins` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A TLS connection to the server's client port offering `alpn`, trusting its development
/// certificate.
pub async fn tls(
    server: &ChildServer,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let roots = roam_tls::roots_from_pem(&server.dev_cert()).expect("the dev certificate");
    let config = roam_tls::client_config(roots, &[alpn]);
    let tcp = tokio::net::TcpStream::connect(server.addr("client_tcp").expect("client address"))
        .await
        .expect("connect to the client port");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// A WebSocket opening over HTTP/2: extended CONNECT (RFC 8441) to `/v1/ws`.
pub fn websocket_over_h2() -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://localhost/v1/ws")
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .expect("a valid request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    req
}

/// Starts a private server with `extra_toml` added to its config.
pub fn start(extra_toml: &str) -> ChildServer {
    ChildServer::start(&roam_bin(), extra_toml).unwrap_or_else(|e| panic!("roam serve: {e:#}"))
}

/// A plain-HTTP response from the admin listener.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to the server's admin listener (a connection of its own,
/// `content-type: application/json`), with the server's API key unless `key` says otherwise.
pub async fn admin(
    server: &ChildServer,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> HttpResponse {
    let key = match key {
        Some(k) => k.to_owned(),
        None => api_key(server),
    };
    let method = roam_client::admin::Method::from_bytes(method.as_bytes())
        .unwrap_or_else(|e| panic!("method {method:?}: {e}"));
    let body = bytes::Bytes::copy_from_slice(body.unwrap_or("").as_bytes());
    let addr = server.addr("admin").expect("admin address");
    let r = roam_client::admin::request(addr, method, path, &key, Some(body))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let headers = r
        .headers
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), v)
        })
        .collect();
    HttpResponse {
        status: r.status,
        headers,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

/// The server's business API key.
pub fn api_key(server: &ChildServer) -> String {
    std::fs::read_to_string(server.data_dir().join("api-key"))
        .expect("the server wrote its API key")
        .trim()
        .to_owned()
}

/// GETs `path` on the admin listener until `done` holds for its JSON (at most 5 s; panics
/// naming the path and the last answer otherwise). Returns that JSON.
pub async fn poll(
    server: &ChildServer,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = admin(server, "GET", path, None, None).await.json();
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The server's internal-port key (`<data>/internal-key`), which every caller of the
/// internal gRPC port (edge link, ID service) must send.
pub fn internal_key(server: &ChildServer) -> roam_proto::internal_auth::InternalKey {
    let key = roam_core::secret_file::load_or_create(&server.data_dir().join("internal-key"), 32)
        .expect("the server's internal key");
    roam_proto::internal_auth::InternalKey::from_bytes(&key)
}

/// A client token for `user`, valid 10 minutes, signed with the server's data-dir secret.
pub fn token(server: &ChildServer, user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    roam_core::auth::Secret::load_or_create(&server.data_dir())
        .expect("the server's token secret")
        .mint(user, None, 600, now)
        .expect("a token")
}

/// The value of one sample of the server's `/metrics` (`name{labels}` exactly as exposed,
/// e.g. `roam_edge_closes_total{reason="slow"}`), 0 when absent.
pub async fn metric(server: &ChildServer, sample: &str) -> f64 {
    let text = admin(server, "GET", "/metrics", None, Some("")).await.body;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `POST /api/v1/push/{kind}` (`devices`, `users`, `rooms`, `all`) with `body` on the admin
/// listener.
pub async fn push(server: &ChildServer, kind: &str, body: serde_json::Value) -> HttpResponse {
    admin(
        server,
        "POST",
        &format!("/api/v1/push/{kind}"),
        Some(&body.to_string()),
        None,
    )
    .await
}

/// Waits until core knows `rooms` rooms. Room membership travels to core on the edge link,
/// apart from the business API: a room push right after ROOM_JOIN_REPLY could miss it.
pub async fn wait_for_rooms(server: &ChildServer, rooms: usize) {
    poll(server, "/api/v1/online/rooms", |v| {
        v["rooms"].as_array().is_some_and(|r| r.len() == rooms)
    })
    .await;
}

/// The next frame on a raw connection: at most 10 s, and panics if the server closed it or
/// the connection failed.
pub async fn next_frame(c: &mut roam_client::raw::RawConnection) -> roam_proto::Frame {
    tokio::time::timeout(std::time::Duration::from_secs(10), c.next())
        .await
        .expect("no frame within 10 s")
        .expect("the connection failed")
        .expect("the server closed the connection")
}

/// An AUTH for `user`'s `device` with a token signed by `issuer` (the server that holds the
/// token secret: the all-in-one process, or the core an edge links to), no rooms.
pub fn auth(issuer: &ChildServer, user: &str, device: &str) -> roam_proto::client::v1::Auth {
    roam_proto::client::v1::Auth {
        token: token(issuer, user),
        device_id: device.into(),
        platform: "test".into(),
        rooms: Vec::new(),
    }
}

/// A connection to `edge`'s raw port authenticated with `auth`: panics unless AUTH_REPLY
/// answers it. Returns the connection and the reply.
pub async fn raw_login(
    edge: &ChildServer,
    auth: &roam_proto::client::v1::Auth,
) -> (
    roam_client::raw::RawConnection,
    roam_proto::client::v1::AuthReply,
) {
    let addr = edge.addr("raw").expect("the server has a raw port");
    let mut c = roam_client::raw::RawConnection::connect(addr, &edge.dev_cert())
        .await
        .expect("raw connect");
    c.send(roam_proto::Op::Auth, 1, auth)
        .await
        .expect("send AUTH");
    let f = next_frame(&mut c).await;
    assert_eq!(
        f.op_kind(),
        Some(roam_proto::Op::AuthReply),
        "{}/{}: {f:?}",
        auth.device_id,
        auth.platform
    );
    let reply = f.decode_body().expect("an AuthReply body");
    (c, reply)
}
