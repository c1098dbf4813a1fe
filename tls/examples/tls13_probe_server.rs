//! A TLS 1.3 server for conformance probes (tlsfuzzer's TLS 1.3 scripts; see
//! docs/testing.md): it answers a request (bytes up to an empty line) with a short HTTP/1.0
//! response and closes with `close_notify`, as `openssl s_server -www` does.
//!
//! `lean` serves with `roam_tls::lean` (what the edge runs); `rustls` serves with stock
//! tokio-rustls on the same certificate and configuration (`roam_tls::server_config`, ALPN
//! as on the client port): the baseline to compare against.
//!
//! ```sh
//! cargo run -p roam-tls --example tls13_probe_server -- lean 4433 /tmp/probe-cert
//! ```
//!
//! The certificate is the development one in the given directory (generated there on first
//! use). Listens on 127.0.0.1 only; stops on Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use roam_tls::lean::LeanTlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bound on one connection's life, handshake included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a request's size.
const MAX_REQUEST: usize = 1 << 20;

#[derive(Clone)]
enum Stack {
    Lean(LeanTlsAcceptor),
    Rustls(tokio_rustls::TlsAcceptor),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stack, port, dir] = args.as_slice() else {
        return Err("usage: tls13_probe_server lean|rustls PORT CERT_DIR".into());
    };
    let (cert, _) = roam_tls::dev_cert(std::path::Path::new(dir))?;
    let config: Arc<rustls::ServerConfig> = roam_tls::server_config(&cert, roam_tls::ALPN_TCP)?;
    let stack = match stack.as_str() {
        "lean" => Stack::Lean(LeanTlsAcceptor::new(config)),
        "rustls" => Stack::Rustls(tokio_rustls::TlsAcceptor::from(config)),
        other => return Err(format!("unknown stack {other:?}: lean or rustls").into()),
    };
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let stack = stack.clone();
        tokio::spawn(tokio::time::timeout(CONNECTION_TIMEOUT, async move {
            match stack {
                Stack::Lean(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls).await;
                    }
                }
                Stack::Rustls(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls).await;
                    }
                }
            }
        }));
    }
}

/// Reads one request, answers it, closes with `close_notify`. Any TLS error ends it (the
/// stream has sent its alert by then).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut tls: S) {
    let mut request = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let body = format!("received {} bytes\n", request.len());
    let response = format!(
        "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if tls.write_all(response.as_bytes()).await.is_ok() {
        let _ = tls.shutdown().await;
    }
}
