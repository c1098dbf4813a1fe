//! `roam bench handshake`: new TLS 1.3 connections to the client port, each doing one
//! HTTP/1.1 `GET /healthz`, from `--connections` concurrent workers.
//!
//! Figures: `handshakes_per_sec`, `handshake_p50_us` / `_p99_us` / `_max_us` (TCP connect +
//! TLS handshake, client side), `request_p99_us` (the request on the new connection),
//! `server_cpu_us_per_handshake` and `server_rss_bytes` (from /proc of the server), `errors`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::args::BenchArgs;
use crate::proc::ProcStats;
use crate::progress::Progress;
use crate::report::{Report, latency_figures, latency_histogram};
use crate::server;

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    let duration = args.duration_or(5.0)?;
    let workers = args.connections_or(16, 1024)?;
    let child;
    let (target, pid, ca) = match (args.target, args.server_pid) {
        (Some(target), Some(pid)) => {
            let ca = args
                .ca
                .clone()
                .context("handshake with --target needs --ca <the server's CA PEM>")?;
            (target, pid, ca)
        }
        _ => {
            let exe = std::env::current_exe()?;
            child = server::start(&exe, "")?;
            let addr = server::listener(&child, "client_tcp")?;
            (addr, child.pid(), child.dev_cert())
        }
    };
    let tls = roam_tls::client_config(roam_tls::roots_from_pem(&ca)?, &[b"http/1.1"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let before = ProcStats::read(pid)?;
    let outcome = runtime.block_on(drive(target, tls, workers, duration));
    let after = ProcStats::read(pid)?;
    if outcome.ok == 0 {
        bail!(
            "handshake: no operation succeeded: {}",
            outcome
                .first_error
                .unwrap_or_else(|| "no attempt finished".into())
        );
    }
    let mut report = Report::new("handshake");
    report.figure("connections", workers as u64).figure(
        "handshakes_per_sec",
        (outcome.ok as f64 / outcome.elapsed.as_secs_f64()).round() as u64,
    );
    latency_figures(&mut report, "handshake", &outcome.handshake);
    report
        .figure("request_p99_us", outcome.request.value_at_quantile(0.99))
        .figure(
            "server_cpu_us_per_handshake",
            after.cpu_us.saturating_sub(before.cpu_us) as f64 / outcome.ok as f64,
        )
        .figure("server_rss_bytes", after.rss_bytes)
        .figure("errors", outcome.errors);
    Ok(report)
}

struct Outcome {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    handshake: Histogram<u64>,
    request: Histogram<u64>,
    elapsed: Duration,
}

async fn drive(
    target: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    workers: usize,
    duration: Duration,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let progress = Progress::new("handshake", duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let connector = TlsConnector::from(tls.clone());
        tasks.spawn(worker(target, connector, deadline));
    }
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress.set(start.elapsed());
        }
    };
    let mut outcome = Outcome {
        ok: 0,
        errors: 0,
        first_error: None,
        handshake: latency_histogram(),
        request: latency_histogram(),
        elapsed: Duration::ZERO,
    };
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let Ok(w) = joined else { continue };
            outcome.ok += w.ok;
            outcome.errors += w.errors;
            if outcome.first_error.is_none() {
                outcome.first_error = w.first_error;
            }
            let _ = outcome.handshake.add(&w.handshake);
            let _ = outcome.request.add(&w.request);
        }
    };
    tokio::select! {
        _ = collect => {}
        _ = ticker => {}
    }
    outcome.elapsed = start.elapsed();
    progress.finish();
    outcome
}

struct WorkerResult {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    handshake: Histogram<u64>,
    request: Histogram<u64>,
}

async fn worker(target: SocketAddr, connector: TlsConnector, deadline: Instant) -> WorkerResult {
    let mut r = WorkerResult {
        ok: 0,
        errors: 0,
        first_error: None,
        handshake: latency_histogram(),
        request: latency_histogram(),
    };
    while Instant::now() < deadline {
        match one(target, &connector).await {
            Ok((handshake, request)) => {
                r.ok += 1;
                let _ = r.handshake.record(handshake.as_micros().max(1) as u64);
                let _ = r.request.record(request.as_micros().max(1) as u64);
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    r
}

async fn one(target: SocketAddr, connector: &TlsConnector) -> Result<(Duration, Duration), String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let handshake = start.elapsed();
    let start = Instant::now();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::with_capacity(256);
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .map_err(|_| "response timed out".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if !response.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&response[..response.len().min(40)]).into_owned();
        return Err(format!("unexpected response: {head:?}"));
    }
    Ok((handshake, start.elapsed()))
}
