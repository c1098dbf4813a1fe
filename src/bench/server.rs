//! What the scenarios that run their own `roam serve` and use its data directory (idle-conns,
//! push, room-fanout) share: refusing `--target`, a bounded `--duration`, the private
//! server's lifetime around a run, its listener addresses and API key, and the admin API (a
//! one-off `GET` of JSON, and `POST`s on keep-alive HTTP/1.1 connections that yield the
//! answer's status).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use roam_client::bench::{BenchArgs, Report};
use roam_client::child::ChildServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive HTTP/1.1 connection to the admin listener.
pub(super) type AdminConn = http1::SendRequest<Full<Bytes>>;

/// Refuses `--target`: `scenario` runs its own server, because it needs that server's data
/// directory for `what` (e.g. "tokens").
pub(super) fn refuse_target(args: &BenchArgs, scenario: &str, what: &str) -> Result<()> {
    if args.target.is_some() {
        bail!(
            "{scenario} runs its own server (it needs the server's data directory for {what}): drop --target"
        );
    }
    Ok(())
}

/// `--duration` or `default_secs`, at most `max_secs` for `scenario`.
pub(super) fn duration_at_most(
    args: &BenchArgs,
    default_secs: f64,
    max_secs: f64,
    scenario: &str,
) -> Result<Duration> {
    let duration = args.duration_or(default_secs)?;
    if duration.as_secs_f64() > max_secs {
        bail!(
            "--duration {}: at most {max_secs} seconds for {scenario}",
            duration.as_secs_f64()
        );
    }
    Ok(duration)
}

/// Starts a private server (`exe serve` with `config_toml`), runs `run` against it, then
/// stops it whatever `run` returned. `run`'s error comes first; a server that exits
/// unsuccessfully fails an otherwise good run.
pub(super) fn with_server(
    exe: &Path,
    config_toml: &str,
    run: impl FnOnce(&ChildServer) -> Result<Report>,
) -> Result<Report> {
    let server = ChildServer::start(exe, config_toml)?;
    let result = run(&server);
    let stopped = server.stop();
    let report = result?;
    let status = stopped?;
    if !status.success() {
        bail!("the server exited with {status}");
    }
    Ok(report)
}

/// The address of `server`'s listener `name` (e.g. "admin").
pub(super) fn listener(server: &ChildServer, name: &str) -> Result<SocketAddr> {
    server
        .addr(name)
        .with_context(|| format!("the server reported no {name} address"))
}

/// The API key the child server wrote.
pub(super) fn api_key(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("api-key");
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(key.trim().to_owned())
}

/// The internal-port key of a child server (its `<data>/internal-key`).
pub(super) fn internal_key(data_dir: &Path) -> Result<roam_proto::internal_auth::InternalKey> {
    let key = roam_core::secret_file::load_or_create(&data_dir.join("internal-key"), 32)?;
    Ok(roam_proto::internal_auth::InternalKey::from_bytes(&key))
}

/// `GET path` on the admin listener (one request, `connection: close`); the JSON body of a
/// 200 answer.
pub(super) async fn admin_get(
    admin: SocketAddr,
    key: &str,
    path: &str,
) -> Result<serde_json::Value> {
    let mut tcp = TcpStream::connect(admin).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow!("GET {path}: no answer within 10 s"))??;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: not JSON: {body:?}"))
}

/// Opens a keep-alive HTTP/1.1 connection (TCP_NODELAY) to the admin listener; its driver
/// runs as a task of its own.
pub(super) async fn admin_connect(admin: SocketAddr) -> Result<AdminConn, String> {
    let tcp = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// `POST path` of the JSON `body`, authorized with the API `key`.
pub(super) fn admin_post(
    path: &str,
    key: &str,
    body: String,
) -> hyper::http::Result<hyper::Request<Full<Bytes>>> {
    hyper::Request::post(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
}

/// Sends `request` on `conn` and reads the whole answer; its status.
pub(super) async fn status_of(
    conn: &mut AdminConn,
    request: hyper::Request<Full<Bytes>>,
) -> Result<u16, String> {
    let response = conn
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}
