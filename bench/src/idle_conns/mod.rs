//! `roam bench idle-conns`: what an idle, authenticated client connection costs the server in
//! memory.
//!
//! `roam bench idle-conns [--transport raw|ws|quic|h3] [--connections N] [--duration SECS]`:
//! N (default 1,000, at most 19,000) TLS 1.3 connections to a private `roam serve` — the raw
//! port (`raw`, ALPN `roam/1`, the default), WebSockets on the client port (`ws`,
//! `wss://…/v1/ws`, HTTP/1.1 Upgrade), raw frames over QUIC (`quic`, `listen.raw_quic`), or
//! HTTP/3 (`h3`, `listen.client_quic`: a `GET /v1/stream` held open, requests up as
//! `POST /v1/send` on the same QUIC connection); over QUIC, one UDP socket and quinn endpoint
//! per client connection. Each connection authenticates with its own user and device (AUTH
//! with a token minted from the server's data directory — over HTTP/3 the stream request's
//! bearer token — so `--target` is refused) and joins one room with ROOM_JOIN (100 connections per room, `room-<i / 100>`),
//! waiting for AUTH_REPLY and ROOM_JOIN_REPLY. Then nothing is sent either way for
//! `--duration` seconds (default 2).
//!
//! Method:
//!
//! 1. The server runs with a fixed client heartbeat interval of 300 s (`core.heartbeat_min_secs
//!    = heartbeat_max_secs = 300`; the default starts new devices at 60 s, so a connection is
//!    closed as idle after 90 s without a heartbeat, which a slow connect phase could reach).
//!    The whole run is bounded well below that, so clients never heartbeat before the end.
//!    Its file limit is this process's hard limit (it inherits the raised soft limit).
//! 2. Warm-up: 32 connections are opened, authenticated, joined, heartbeated and closed, then
//!    the bench waits a second. This makes the server initialise what it creates lazily on
//!    first use (runtime worker threads' allocator arenas, TLS session state, metric label
//!    sets, the comet's and core's maps, the store's first writes), so that one-off cost does
//!    not end up divided among the measured connections.
//! 3. `server_rss_before_bytes` is read from `/proc/<server pid>`.
//! 4. The connections are opened by worker processes (this binary again, as the hidden
//!    scenario `idle-conns-worker`, at most 5,000 connections each, 32 setups in flight per
//!    worker) from the loopback source addresses 127.0.0.1–127.0.0.8 (one socket bound per
//!    connection before connect, so ephemeral ports never run out). Every process raises its
//!    RLIMIT_NOFILE soft limit to the hard limit. A worker reads its job (one JSON line) on
//!    stdin, reports progress as JSON lines on stdout, holds its connections until its stdin
//!    closes, and exits then (so it also ends when this process dies); this process always
//!    closes, waits for, and if need be kills its workers, also on errors.
//! 5. Once every connection is set up: `--duration` seconds of silence, then
//!    `server_rss_bytes` is read. `server_rss_per_conn_bytes` = (after − before) /
//!    established connections. RSS is resident memory only; the kernel's socket buffers are
//!    not in it.
//! 6. Liveness, after the measurement: every connection sends one HEARTBEAT and counts its
//!    HEARTBEAT_REPLY (at most 64 unanswered per worker, because the edge forwards heartbeats
//!    to core over a bounded queue that drops on overflow; resent after 2 s, 3 attempts);
//!    `connections` is the number that answered, `closed` those the server
//!    closed at any point after their setup, and `unexpected_frames` counts frames the server
//!    sent to connections that were supposed to be idle (0 expected). `server_online` is core's
//!    count of online connections (`/api/v1/online/total`).
//!
//! Figures: `connections`, `server_rss_per_conn_bytes`, `server_rss_bytes`,
//! `server_rss_before_bytes`, `connect_per_sec` (connections set up per second over the
//! connect phase: TCP + TLS + upgrade + AUTH + ROOM_JOIN, from 32 × workers concurrent
//! setups), `server_cpu_us_per_conn` (server CPU over the connect phase / connections set
//! up), `failed` (connections that could not be set up after 3 attempts), `closed`,
//! `unexpected_frames`, `server_online`, `workers`; plus `"transport"` naming the transport.
//! The client processes share the machine's cores with the server, which lowers
//! `connect_per_sec` but not the server's memory.
//!
//! Files: this one is the measurement (the parent process); `protocol.rs` the JSON lines
//! between the parent and its workers; `workers.rs` the parent's handle on its worker
//! processes; `worker.rs` a worker process. The client connections are `crate::conn`'s.

pub(crate) mod protocol;
pub(crate) mod worker;
mod workers;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use roam_proto::Op;
use roam_proto::client::v1 as pb;

use self::protocol::{Job, Liveness, SetUp, WorkerMsg};
use self::workers::Workers;
use crate::args::BenchArgs;
use crate::child::ChildServer;
use crate::conn::{Conn, SETUP_TIMEOUT, Transport, source_addr};
use crate::proc::ProcStats;
use crate::process::raise_nofile_limit;
use crate::progress::Progress;
use crate::report::Report;
use crate::server::{QUIET_CLIENTS_TOML, admin_get, api_key, listener, unix_now, with_server};

/// The hidden scenario name of a worker process.
pub(crate) const WORKER: &str = "idle-conns-worker";

/// The most connections: the server's file limit here is 20,000.
const MAX_CONNECTIONS: usize = 19_000;
/// Connections per worker process.
const PER_WORKER: usize = 5_000;
/// Connections of the warm-up.
const WARMUP: usize = 32;
/// Attempts to set up one connection.
const ATTEMPTS: u32 = 3;
/// The connect phase of all workers together.
const CONNECT_LIMIT: Duration = Duration::from_secs(240);
/// The longest `--duration` (the idle window), far below the 450 s idle close.
const MAX_IDLE_SECS: f64 = 120.0;
/// Time for every connection to answer the liveness heartbeat.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Token lifetime, seconds.
const TOKEN_TTL: u64 = 3600;

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    args.refuse_target("idle-conns", "tokens")?;
    if args.rate.is_some() || args.members.is_some() {
        bail!("idle-conns takes --transport, --connections and --duration (the idle window) only");
    }
    let transport = Transport::parse(args.transport.as_deref())?;
    let n = args.connections_or(1000, MAX_CONNECTIONS)?;
    let idle = args.duration_at_most(2.0, MAX_IDLE_SECS, "idle-conns")?;
    let nofile = raise_nofile_limit();
    // The server holds every connection plus its listeners, store files and links.
    let needed = n as u64 + 500;
    if nofile < needed {
        bail!(
            "the open-file limit is {nofile} (hard limit included); {n} connections need about {needed} in the server: raise `ulimit -Hn`"
        );
    }
    let exe = std::env::current_exe()?;
    with_server(&exe, QUIET_CLIENTS_TOML, |server| {
        measure(&exe, server, transport, n, idle)
    })
}

/// Where a worker stands, from its last line.
#[derive(Debug, Default, Clone)]
struct WorkerState {
    set_up: SetUp,
    ready: bool,
    first_error: Option<String>,
    probed: Option<Liveness>,
    exited: bool,
}

fn measure(
    exe: &Path,
    server: &ChildServer,
    transport: Transport,
    n: usize,
    idle: Duration,
) -> Result<Report> {
    let pid = server.pid();
    let target = listener(server, transport.listener())?;
    let admin = listener(server, "admin")?;
    let (ca, data_dir) = (server.dev_cert(), server.data_dir());
    let key = api_key(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(warm_up(transport, target, &ca, &data_dir))
        .context("warm-up")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = ProcStats::read(pid)?;

    // Connect phase.
    let jobs: Vec<Job> = (0..n.div_ceil(PER_WORKER))
        .map(|w| {
            let first = w * PER_WORKER;
            Job {
                transport,
                target,
                ca: ca.clone(),
                data_dir: data_dir.clone(),
                first,
                count: PER_WORKER.min(n - first),
            }
        })
        .collect();
    let start = Instant::now();
    let mut workers = Workers::spawn(exe, &jobs)?;
    let mut states = vec![WorkerState::default(); jobs.len()];
    let progress = Progress::new("connect", Duration::from_millis(n as u64));
    let deadline = start + CONNECT_LIMIT;
    while !states.iter().all(|s| s.ready) {
        let (k, msg) = workers.recv(deadline).with_context(|| {
            let established: u64 = states.iter().map(|s| s.set_up.established).sum();
            format!("connect phase: {established} of {n} connections set up")
        })?;
        apply(&mut states[k], msg);
        if states[k].exited && !states[k].ready {
            bail!("idle-conns worker {k} exited during the connect phase (its stderr is above)");
        }
        let done: u64 = states
            .iter()
            .map(|s| s.set_up.established + s.set_up.failed)
            .sum();
        progress.set(Duration::from_millis(done));
    }
    let connect_elapsed = start.elapsed();
    progress.finish();
    let connected = ProcStats::read(pid)?;
    let established: u64 = states.iter().map(|s| s.set_up.established).sum();
    let failed: u64 = states.iter().map(|s| s.set_up.failed).sum();
    eprintln!(
        "idle-conns: {established} {} connections set up in {:.1} s ({failed} failed)",
        transport.name(),
        connect_elapsed.as_secs_f64()
    );
    if established == 0 {
        let first = states.iter().find_map(|s| s.first_error.clone());
        bail!(
            "no connection could be set up: {}",
            first.unwrap_or_default()
        );
    }

    // Idle window, then the measurement.
    let progress = Progress::new("idle", idle);
    let idle_start = Instant::now();
    while idle_start.elapsed() < idle {
        std::thread::sleep(
            Duration::from_millis(100).min(idle.saturating_sub(idle_start.elapsed())),
        );
        progress.set(idle_start.elapsed());
        // Progress lines during the idle window only say what is already known.
        while let Some((k, msg)) = workers.try_recv() {
            apply(&mut states[k], msg);
        }
    }
    progress.finish();
    let after = ProcStats::read(pid)?;

    // Liveness: one heartbeat round trip on every connection.
    for k in 0..jobs.len() {
        workers.send(k, protocol::PROBE)?;
    }
    let deadline = Instant::now() + PROBE_TIMEOUT + Duration::from_secs(5);
    while !states.iter().all(|s| s.probed.is_some()) {
        let (k, msg) = workers.recv(deadline).context("liveness probe")?;
        apply(&mut states[k], msg);
        if states[k].exited && states[k].probed.is_none() {
            bail!("idle-conns worker {k} exited during the liveness probe");
        }
    }
    let alive: u64 = states
        .iter()
        .filter_map(|s| s.probed)
        .map(|p| p.alive)
        .sum();
    let online = runtime.block_on(server_online(admin, &key, alive));
    workers.finish();
    drop(runtime);

    let (mut closed, mut unexpected) = (0, 0);
    for p in states.iter().filter_map(|s| s.probed) {
        closed += p.closed;
        unexpected += p.unexpected_frames;
    }
    if let Some(e) = states.iter().find_map(|s| s.first_error.clone()) {
        eprintln!("idle-conns: first setup error: {e}");
    }
    let grown = after.rss_bytes as i64 - before.rss_bytes as i64;
    let mut report = Report::new("idle-conns");
    report
        .figure("transport", transport.name())
        .figure("connections", alive)
        .figure(
            "server_rss_per_conn_bytes",
            (grown as f64 / established as f64).round() as i64,
        )
        .figure("server_rss_bytes", after.rss_bytes)
        .figure("server_rss_before_bytes", before.rss_bytes)
        .figure(
            "connect_per_sec",
            (established as f64 / connect_elapsed.as_secs_f64()).round() as u64,
        )
        .figure(
            "server_cpu_us_per_conn",
            connected.cpu_us.saturating_sub(before.cpu_us) as f64 / established as f64,
        )
        .figure("established", established)
        .figure("failed", failed)
        .figure("closed", closed)
        .figure("unexpected_frames", unexpected)
        .figure("server_online", online.unwrap_or(0))
        .figure("workers", jobs.len() as u64);
    Ok(report)
}

/// Core's count of online connections (`/api/v1/online/total`). Edges report their counts
/// on their link heartbeat (every 5 s by default), so this waits up to 7 s for `expected`.
async fn server_online(admin: SocketAddr, key: &str, expected: u64) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(7);
    loop {
        let total = admin_get(admin, key, "/api/v1/online/total")
            .await
            .ok()
            .and_then(|v| v["total"].as_u64());
        if total.is_some_and(|t| t >= expected) || Instant::now() > deadline {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn apply(state: &mut WorkerState, msg: Option<WorkerMsg>) {
    match msg {
        None => state.exited = true,
        Some(WorkerMsg::Progress(set_up)) => state.set_up = set_up,
        Some(WorkerMsg::Ready {
            set_up,
            first_error,
        }) => {
            state.set_up = set_up;
            state.first_error = first_error;
            state.ready = true;
        }
        Some(WorkerMsg::Probed(probed)) => state.probed = Some(probed),
    }
}

/// Sets up `WARMUP` connections like the measured ones, heartbeats once on each and closes
/// them.
async fn warm_up(
    transport: Transport,
    target: SocketAddr,
    ca: &Path,
    data_dir: &Path,
) -> Result<()> {
    let tls = transport.tls(ca)?;
    let secret = roam_core::auth::Secret::load_or_create(data_dir)?;
    let now = unix_now()?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WARMUP {
        let (user, device) = (format!("warm-u{i}"), format!("warm-d{i}"));
        let token = secret.mint(&user, Some(&device), TOKEN_TTL, now)?;
        let tls = tls.clone();
        tasks.spawn(async move {
            let mut conn = tokio::time::timeout(
                SETUP_TIMEOUT,
                setup(
                    transport,
                    source_addr(i),
                    target,
                    &tls,
                    token,
                    device,
                    room_of(i),
                ),
            )
            .await
            .map_err(|_| anyhow!("setup timed out"))??;
            conn.send(Op::Heartbeat, 3, &pb::Heartbeat {}).await?;
            conn.reply(Op::HeartbeatReply, 3).await?;
            conn.close().await;
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// The room of connection `i`.
pub(crate) fn room_of(i: usize) -> String {
    format!("room-{}", i / 100)
}

/// Opens, authenticates and joins one connection.
pub(crate) async fn setup(
    transport: Transport,
    source: Ipv4Addr,
    target: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    token: String,
    device: String,
    room: String,
) -> Result<Conn> {
    let mut conn = Conn::open(transport, source, target, tls).await?;
    conn.authenticate(token, device, Vec::new()).await?;
    conn.join(room).await?;
    Ok(conn)
}
