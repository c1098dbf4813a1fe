//! `roam bench push`: business-API pushes to users, measured from the API call to the
//! delivery arriving at an edge over the edge link.
//!
//! A private `roam serve` (this scenario needs its data directory for tokens and the API key,
//! so `--target` is refused) gets one bench edge on its internal link with `--connections`
//! authenticated devices (default 1,000, one user each). `--rate`-less: 32 API workers, each
//! on its own keep-alive HTTP/1.1 connection, push to random users as fast as the server
//! accepts for `--duration` seconds (default 5). Each push's content carries its number, so
//! the edge side times it.
//!
//! Figures: `api_pushes_per_sec` (202 answers), `push_to_edge_p50_ms` / `_p99_ms` (API call
//! start → Deliver received by the edge), `api_p99_ms` (the API call alone), `rejected`
//! (429), `server_cpu_us_per_push`, `server_rss_bytes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use roam_client::admin::AdminConnection;
use roam_edge::link::{CoreLink, EdgeIdentity};
use roam_proto::FrameDecoder;
use roam_proto::client::v1 as pb;
use roam_proto::internal::v1::{self as link, EdgeUp, edge_down, edge_up};
use tokio::sync::Mutex;

use crate::args::BenchArgs;
use crate::child::ChildServer;
use crate::proc::ProcStats;
use crate::progress::Progress;
use crate::report::{Report, latency_histogram};
use crate::server::{self, api_key, internal_key, listener};

const WORKERS: usize = 32;

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    args.refuse_target("push", "tokens and the API key")?;
    let duration = args.duration_or(5.0)?;
    let devices = args.connections_or(1000, 100_000)?;
    let server = server::start(&std::env::current_exe()?, "")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive(&server, devices, duration));
    let status = server.stop()?;
    if !status.success() {
        bail!("the server exited with {status}");
    }
    result
}

/// When each push left, by its number (the content).
type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

async fn drive(server: &ChildServer, devices: usize, duration: Duration) -> Result<Report> {
    let internal = listener(server, "internal")?;
    let admin = listener(server, "admin")?;
    let mut edge = CoreLink::connect(
        &format!("http://{internal}"),
        EdgeIdentity {
            key: Some(internal_key(&server.data_dir())?),
            edge_id: "bench-edge".into(),
            weight: 1,
            ..EdgeIdentity::default()
        },
    )
    .await?;
    let secret = roam_core::auth::Secret::load_or_create(&server.data_dir())?;
    let now = server::unix_now()?;
    let up = edge.sender();
    for i in 0..devices {
        let token = secret.mint(&format!("u{i}"), None, 3600, now)?;
        let connect = link::Connect {
            conn_id: i as u64,
            token,
            device_id: format!("d{i}"),
            platform: "bench".into(),
            transport: "bench".into(),
            rooms: vec![],
        };
        up.send(EdgeUp {
            msg: Some(edge_up::Msg::Connect(connect)),
        })
        .await?;
    }
    let mut accepted = 0;
    while accepted < devices {
        match tokio::time::timeout(Duration::from_secs(30), edge.next()).await {
            Ok(Ok(Some(edge_down::Msg::ConnectResult(r)))) if r.ok => accepted += 1,
            Ok(Ok(Some(edge_down::Msg::ConnectResult(r)))) => {
                bail!("a bench device was refused: {}", r.error_message)
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("core ended the bench edge's link"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("core authenticated {accepted} of {devices} devices within 30 s"),
        }
    }
    let key: Arc<str> = Arc::from(api_key(&server.data_dir())?);

    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let delivered = Arc::new(Mutex::new(latency_histogram()));
    let receiver = {
        let (sent, delivered) = (sent.clone(), delivered.clone());
        tokio::spawn(async move {
            let decoder = FrameDecoder::default();
            while let Ok(Some(msg)) = edge.next().await {
                let edge_down::Msg::Deliver(d) = msg else {
                    continue;
                };
                let at = Instant::now();
                let mut frames = d.frames;
                let Ok(Some(frame)) = decoder.decode_bytes(&mut frames) else {
                    continue;
                };
                let Ok(push) = frame.decode_body::<pb::Push>() else {
                    continue;
                };
                let Some(pb::push::Kind::Ephemeral(e)) = push.kind else {
                    continue;
                };
                let Some(n) = std::str::from_utf8(&e.content)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                if let Some(start) = sent.lock().await.remove(&n) {
                    let _ = delivered
                        .lock()
                        .await
                        .record(at.duration_since(start).as_micros().max(1) as u64);
                }
            }
        })
    };

    let before = ProcStats::read(server.pid())?;
    let start = Instant::now();
    let deadline = start + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::new("push", duration);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (sent, counter, key) = (sent.clone(), counter.clone(), key.clone());
        workers.spawn(worker(w, admin, key, devices, sent, counter, deadline));
    }
    let mut api = latency_histogram();
    let (mut ok, mut rejected, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let w = joined?;
        ok += w.ok;
        rejected += w.rejected;
        errors += w.errors;
        first_error = first_error.or(w.first_error);
        api.add(&w.api)?;
        progress.set(start.elapsed());
    }
    let elapsed = start.elapsed();
    progress.finish();
    // Let the last deliveries arrive.
    let settle = Instant::now() + Duration::from_secs(2);
    while !sent.lock().await.is_empty() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = ProcStats::read(server.pid())?;
    receiver.abort();
    if ok == 0 {
        bail!("no push was accepted: {}", first_error.unwrap_or_default());
    }
    let delivered = delivered.lock().await;
    let lost = sent.lock().await.len();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = Report::new("push");
    report
        .figure("devices", devices as u64)
        .figure("api_workers", WORKERS as u64)
        .figure(
            "api_pushes_per_sec",
            (ok as f64 / elapsed.as_secs_f64()).round() as u64,
        )
        .figure("push_to_edge_p50_ms", ms(delivered.value_at_quantile(0.50)))
        .figure("push_to_edge_p99_ms", ms(delivered.value_at_quantile(0.99)))
        .figure("api_p99_ms", ms(api.value_at_quantile(0.99)))
        .figure("delivered", delivered.len())
        .figure("undelivered", lost as u64)
        .figure("rejected", rejected)
        .figure("errors", errors)
        .figure(
            "server_cpu_us_per_push",
            after.cpu_us.saturating_sub(before.cpu_us) as f64 / ok as f64,
        )
        .figure("server_rss_bytes", after.rss_bytes);
    Ok(report)
}

struct WorkerResult {
    ok: u64,
    rejected: u64,
    errors: u64,
    first_error: Option<String>,
    api: hdrhistogram::Histogram<u64>,
}

async fn worker(
    seed: usize,
    admin: std::net::SocketAddr,
    key: Arc<str>,
    devices: usize,
    sent: Sent,
    counter: Arc<AtomicU64>,
    deadline: Instant,
) -> WorkerResult {
    let mut r = WorkerResult {
        ok: 0,
        rejected: 0,
        errors: 0,
        first_error: None,
        api: latency_histogram(),
    };
    let mut send = None;
    let mut user = seed;
    while Instant::now() < deadline {
        if send.is_none() {
            match AdminConnection::connect(admin).await {
                Ok(s) => send = Some(s),
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e.to_string());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = send.as_mut() else { continue };
        user = (user * 7919 + 13) % devices;
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let body = format!(r#"{{"users":["u{user}"],"content":"{n}"}}"#);
        let start = Instant::now();
        sent.lock().await.insert(n, start);
        let outcome = s
            .post_json("/api/v1/push/users", &key, body)
            .await
            .map(|response| response.status);
        let _ = r.api.record(start.elapsed().as_micros().max(1) as u64);
        match outcome {
            Ok(202) => r.ok += 1,
            Ok(status) => {
                sent.lock().await.remove(&n);
                if status == 429 {
                    r.rejected += 1;
                } else {
                    r.errors += 1;
                    r.first_error.get_or_insert(format!("HTTP {status}"));
                }
            }
            Err(e) => {
                sent.lock().await.remove(&n);
                r.errors += 1;
                r.first_error.get_or_insert(e.to_string());
                send = None;
            }
        }
    }
    r
}
