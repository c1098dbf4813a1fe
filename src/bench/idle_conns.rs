//! `roam bench idle-conns`: what an idle, authenticated client connection costs the server in
//! memory.
//!
//! `roam bench idle-conns [--transport raw|ws] [--connections N] [--duration SECS]`: N
//! (default 1,000, at most 19,000) TLS 1.3 connections to a private `roam serve` — the raw
//! port (`raw`, ALPN `roam/1`, the default) or WebSockets on the client port (`ws`,
//! `wss://…/v1/ws`, HTTP/1.1 Upgrade). Each connection authenticates with its own user and
//! device (AUTH with a token minted from the server's data directory, so `--target` is
//! refused) and joins one room with ROOM_JOIN (100 connections per room, `room-<i / 100>`),
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

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use roam_client::bench::{BenchArgs, ProcStats, Progress, Report};
use roam_client::child::ChildServer;
use roam_client::ws::{ALPN_WS, WsConnection};
use roam_proto::client::v1 as pb;
use roam_proto::{Frame, FrameDecoder, Op, frame_of};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::server::{admin_get, api_key, duration_at_most, listener, refuse_target, with_server};

/// The hidden scenario name of a worker process.
pub const WORKER: &str = "idle-conns-worker";

/// The most connections: the server's file limit here is 20,000.
const MAX_CONNECTIONS: usize = 19_000;
/// Connections per worker process.
const PER_WORKER: usize = 5_000;
/// Loopback source addresses 127.0.0.1 ..= 127.0.0.SOURCES.
pub(super) const SOURCES: usize = 8;
/// Connections of the warm-up.
const WARMUP: usize = 32;
/// Connection setups in flight per worker.
const IN_FLIGHT: usize = 32;
/// Attempts to set up one connection.
const ATTEMPTS: u32 = 3;
/// Time for one setup (TCP, TLS, upgrade, AUTH, ROOM_JOIN).
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The connect phase of all workers together.
const CONNECT_LIMIT: Duration = Duration::from_secs(240);
/// The longest `--duration` (the idle window), far below the 450 s idle close.
const MAX_IDLE_SECS: f64 = 120.0;
/// Liveness heartbeats a worker has unanswered at a time.
const PROBES_IN_FLIGHT: usize = 64;
/// A liveness heartbeat unanswered this long is sent again.
const PROBE_RETRY: Duration = Duration::from_secs(2);
/// Time for every connection to answer the liveness heartbeat.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// A worker ends on its own after this long, whatever its parent does.
const WORKER_LIFETIME: Duration = Duration::from_secs(900);
/// The server's configuration: heartbeats far apart, so idle connections stay open.
/// Also room-fanout's. Up to ~10k connections come from one loopback address, thousands
/// handshaking at once: the per-address and handshake caps are off.
pub(super) const SERVER_TOML: &str = "[core]\nheartbeat_min_secs = 300\nheartbeat_max_secs = 300\n[limits]\nmax_conns_per_ip = 0\nmax_handshakes = 0\n";
/// Token lifetime, seconds.
const TOKEN_TTL: u64 = 3600;

// ---------------------------------------------------------------------------------------
// Client connections (shared with room-fanout)
// ---------------------------------------------------------------------------------------

/// A client transport of this scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Transport {
    /// The raw port (TLS, ALPN `roam/1`).
    Raw,
    /// WebSockets on the client port.
    Ws,
}

impl Transport {
    fn parse(name: Option<&str>) -> Result<Self> {
        match name.unwrap_or("raw") {
            "raw" => Ok(Transport::Raw),
            "ws" => Ok(Transport::Ws),
            other => bail!("--transport {other}: idle-conns offers raw and ws"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Raw => "raw",
            Transport::Ws => "ws",
        }
    }

    /// The server listener this transport connects to.
    fn listener(self) -> &'static str {
        match self {
            Transport::Raw => "raw",
            Transport::Ws => "client_tcp",
        }
    }

    /// A TLS client configuration trusting `ca`, with this transport's ALPN.
    pub(super) fn tls(self, ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
        let roots = roam_tls::roots_from_pem(ca)?;
        Ok(roam_tls::client_config(
            roots,
            match self {
                Transport::Raw => roam_tls::ALPN_RAW,
                Transport::Ws => ALPN_WS,
            },
        ))
    }
}

/// Frames over the raw port: a TLS stream with frames back to back.
pub(super) struct RawConn {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

/// One client connection, either transport.
pub(super) enum Conn {
    Raw(Box<RawConn>),
    Ws(Box<WsConnection>),
}

impl Conn {
    /// Sends one frame.
    pub(super) async fn send<M: prost::Message>(
        &mut self,
        op: Op,
        seq: u32,
        msg: &M,
    ) -> Result<()> {
        let frame = frame_of(op, seq, msg)?;
        match self {
            Conn::Raw(c) => {
                c.tls.write_all(&frame).await?;
                c.tls.flush().await?;
            }
            Conn::Ws(c) => c.send_raw(frame).await?,
        }
        Ok(())
    }

    /// The next frame, `None` when the server closed the connection. Cancel-safe.
    pub(super) async fn next(&mut self) -> Result<Option<Frame>> {
        match self {
            Conn::Ws(c) => Ok(c.next().await?),
            Conn::Raw(c) => loop {
                let c = &mut **c;
                if let Some(frame) = c.decoder.decode(&mut c.buf)? {
                    return Ok(Some(frame));
                }
                c.buf.reserve(4096);
                match c.tls.read_buf(&mut c.buf).await {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    /// Closes the connection gracefully (close_notify, or a WebSocket close).
    pub(super) async fn close(self) {
        match self {
            Conn::Raw(mut c) => {
                let _ = c.tls.shutdown().await;
            }
            Conn::Ws(c) => {
                let _ = c.close().await;
            }
        }
    }
}

/// The loopback source address of connection `i`.
pub(super) fn source_addr(i: usize) -> Ipv4Addr {
    // SOURCES is at most 254, so this fits a u8.
    Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8)
}

/// Opens a TCP connection from `source` (any port) to `target`, then TLS and, for `ws`, the
/// WebSocket upgrade.
pub(super) async fn open(
    transport: Transport,
    source: Ipv4Addr,
    target: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("bind {source}"))?;
    let tcp = socket.connect(target).await.context("connect")?;
    match transport {
        Transport::Ws => Ok(Conn::Ws(Box::new(
            WsConnection::connect_over(tcp, tls.clone()).await?,
        ))),
        Transport::Raw => {
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost")?;
            let tls = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            Ok(Conn::Raw(Box::new(RawConn {
                tls,
                buf: BytesMut::new(),
                decoder: FrameDecoder::default(),
            })))
        }
    }
}

/// Waits for the reply `op` to request `seq`; an ERROR or DISCONNECT frame, or the end of
/// the connection, is an error naming it.
async fn reply(conn: &mut Conn, op: Op, seq: u32) -> Result<Frame> {
    loop {
        let Some(frame) = conn.next().await? else {
            bail!("the server closed the connection while waiting for {op:?}");
        };
        match frame.op_kind() {
            Some(got) if got == op && frame.seq == seq => return Ok(frame),
            Some(Op::Error) => {
                let e = frame.decode_body::<pb::Error>().unwrap_or_default();
                bail!("ERROR {:?}: {}", e.code(), e.message);
            }
            Some(Op::Disconnect) => {
                let d = frame.decode_body::<pb::Disconnect>().unwrap_or_default();
                bail!("DISCONNECT {:?}: {}", d.reason(), d.message);
            }
            _ => {}
        }
    }
}

/// AUTH (seq 1) with `token` as `device`, joining `rooms` at once; returns the reply.
pub(super) async fn authenticate(
    conn: &mut Conn,
    token: String,
    device: String,
    rooms: Vec<String>,
) -> Result<pb::AuthReply> {
    let auth = pb::Auth {
        token,
        device_id: device,
        platform: "bench".into(),
        rooms,
    };
    conn.send(Op::Auth, 1, &auth).await?;
    Ok(reply(conn, Op::AuthReply, 1)
        .await?
        .decode_body::<pb::AuthReply>()?)
}

/// ROOM_JOIN (seq 2) of `room`, waiting for its reply.
async fn join(conn: &mut Conn, room: String) -> Result<()> {
    conn.send(Op::RoomJoin, 2, &pb::Room { room }).await?;
    reply(conn, Op::RoomJoinReply, 2).await?;
    Ok(())
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit; returns the soft limit
/// in force afterwards.
pub(super) fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.unwrap_or(u64::MAX);
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

// ---------------------------------------------------------------------------------------
// The scenario (parent)
// ---------------------------------------------------------------------------------------

pub fn run(args: &BenchArgs) -> Result<Report> {
    refuse_target(args, "idle-conns", "tokens")?;
    if args.rate.is_some() || args.members.is_some() {
        bail!("idle-conns takes --transport, --connections and --duration (the idle window) only");
    }
    let transport = Transport::parse(args.transport.as_deref())?;
    let n = args.connections_or(1000, MAX_CONNECTIONS)?;
    let idle = duration_at_most(args, 2.0, MAX_IDLE_SECS, "idle-conns")?;
    let nofile = raise_nofile_limit();
    // The server holds every connection plus its listeners, store files and links.
    let needed = n as u64 + 500;
    if nofile < needed {
        bail!(
            "the open-file limit is {nofile} (hard limit included); {n} connections need about {needed} in the server: raise `ulimit -Hn`"
        );
    }
    let exe = std::env::current_exe()?;
    with_server(&exe, SERVER_TOML, |server| {
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
        workers.send(k, "probe")?;
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
            reply(&mut conn, Op::HeartbeatReply, 3).await?;
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
fn room_of(i: usize) -> String {
    format!("room-{}", i / 100)
}

/// Opens, authenticates and joins one connection.
async fn setup(
    transport: Transport,
    source: Ipv4Addr,
    target: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    token: String,
    device: String,
    room: String,
) -> Result<Conn> {
    let mut conn = open(transport, source, target, tls).await?;
    authenticate(&mut conn, token, device, Vec::new()).await?;
    join(&mut conn, room).await?;
    Ok(conn)
}

// ---------------------------------------------------------------------------------------
// Worker processes
// ---------------------------------------------------------------------------------------

/// A worker's job: connections `first .. first + count`.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    transport: Transport,
    target: SocketAddr,
    ca: PathBuf,
    data_dir: PathBuf,
    first: usize,
    count: usize,
}

/// A worker's report, one JSON line on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WorkerMsg {
    /// Connections set up (and failed) so far.
    Progress(SetUp),
    /// Every connection of the job is set up or failed.
    Ready {
        #[serde(flatten)]
        set_up: SetUp,
        first_error: Option<String>,
    },
    /// The answer to `probe`.
    Probed(Liveness),
}

/// A worker's connections set up, and those that failed, so far.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct SetUp {
    established: u64,
    failed: u64,
}

/// A worker's answer to `probe`: connections that answered a heartbeat, connections closed,
/// frames received while idle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Liveness {
    alive: u64,
    closed: u64,
    unexpected_frames: u64,
}

/// The worker processes of a run. Dropping it kills and reaps every one still running.
struct Workers {
    procs: Vec<(Child, Option<ChildStdin>)>,
    lines: mpsc::Receiver<(usize, Option<WorkerMsg>)>,
}

impl Workers {
    fn spawn(exe: &Path, jobs: &[Job]) -> Result<Workers> {
        let (tx, lines) = mpsc::channel();
        let mut workers = Workers {
            procs: Vec::new(),
            lines,
        };
        for (k, job) in jobs.iter().enumerate() {
            let mut child = Command::new(exe)
                .args(["bench", WORKER])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take();
            workers.procs.push((child, stdin));
            let stdout = stdout.context("worker stdout")?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(msg) = serde_json::from_str::<WorkerMsg>(&line)
                        && tx.send((k, Some(msg))).is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send((k, None));
            });
            workers.send(k, &serde_json::to_string(job)?)?;
        }
        Ok(workers)
    }

    /// Writes one line to worker `k`'s stdin.
    fn send(&mut self, k: usize, line: &str) -> Result<()> {
        let stdin = self
            .procs
            .get_mut(k)
            .and_then(|(_, stdin)| stdin.as_mut())
            .with_context(|| format!("worker {k} has no stdin"))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("worker {k} is gone"))
    }

    /// The next line of any worker (`None`: that worker's stdout ended), until `deadline`.
    fn recv(&self, deadline: Instant) -> Result<(usize, Option<WorkerMsg>)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(wait).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => anyhow!("the workers did not finish in time"),
            mpsc::RecvTimeoutError::Disconnected => anyhow!("every worker is gone"),
        })
    }

    /// A line if one is waiting.
    fn try_recv(&self) -> Option<(usize, Option<WorkerMsg>)> {
        self.lines.try_recv().ok()
    }

    /// Closes every worker's stdin (they close their connections and exit), waits up to
    /// 10 s for them, then kills what is left (in `drop`).
    fn finish(mut self) {
        for (_, stdin) in &mut self.procs {
            stdin.take();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && self
                .procs
                .iter_mut()
                .any(|(child, _)| matches!(child.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (child, stdin) in &mut self.procs {
            stdin.take();
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Counters a worker's connections share.
#[derive(Default)]
struct Counters {
    established: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    alive: AtomicU64,
    unexpected: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(error);
        }
    }
}

/// `roam bench idle-conns-worker`: reads a [`Job`] line on stdin, sets up its connections,
/// reports on stdout, answers `probe` lines, and exits when stdin closes.
pub fn worker() -> Result<()> {
    raise_nofile_limit();
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let job: Job = serde_json::from_str(&line).context("idle-conns-worker: bad job line")?;
    let (commands_tx, commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in stdin.lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                break;
            }
        }
        // Dropping the sender tells the worker its parent is done (or gone).
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        tokio::time::timeout(WORKER_LIFETIME, work(job, commands))
            .await
            .unwrap_or_else(|_| Err(anyhow!("worker lifetime exceeded")))
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// One report line on stdout (ignored if the parent is gone: its stdin EOF ends us).
fn say(msg: &WorkerMsg) {
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

async fn work(job: Job, mut commands: tokio::sync::mpsc::UnboundedReceiver<String>) -> Result<()> {
    let tls = job.transport.tls(&job.ca)?;
    let secret = roam_core::auth::Secret::load_or_create(&job.data_dir)?;
    let now = unix_now()?;
    let counters = Arc::new(Counters::default());
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let probes = Arc::new(Semaphore::new(PROBES_IN_FLIGHT));
    let (probe_tx, probe_rx) = watch::channel(0u32);
    let mut tasks = tokio::task::JoinSet::new();
    for i in job.first..job.first + job.count {
        let (user, device) = (format!("idle-u{i}"), format!("idle-d{i}"));
        let token = secret.mint(&user, Some(&device), TOKEN_TTL, now)?;
        let (tls, counters, slots) = (tls.clone(), counters.clone(), slots.clone());
        let (probe, probes) = (probe_rx.clone(), probes.clone());
        let (transport, target) = (job.transport, job.target);
        tasks.spawn(async move {
            let Ok(slot) = slots.acquire_owned().await else {
                return;
            };
            let mut last_error = String::new();
            let mut conn = None;
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                let set_up = setup(
                    transport,
                    source_addr(i),
                    target,
                    &tls,
                    token.clone(),
                    device.clone(),
                    room_of(i),
                );
                match tokio::time::timeout(SETUP_TIMEOUT, set_up).await {
                    Ok(Ok(c)) => {
                        conn = Some(c);
                        break;
                    }
                    Ok(Err(e)) => last_error = format!("{e:#}"),
                    Err(_) => last_error = "setup timed out".into(),
                }
            }
            drop(slot);
            match conn {
                Some(conn) => {
                    counters.established.fetch_add(1, Ordering::Relaxed);
                    hold(conn, probe, probes, &counters).await;
                }
                None => counters.fail(last_error),
            }
        });
    }
    drop(probe_rx);

    // Progress until every connection is set up or failed.
    let count = job.count as u64;
    loop {
        let set_up = SetUp {
            established: counters.established.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        };
        if set_up.established + set_up.failed >= count {
            let first_error = counters.first_error.lock().ok().and_then(|e| e.clone());
            say(&WorkerMsg::Ready {
                set_up,
                first_error,
            });
            break;
        }
        say(&WorkerMsg::Progress(set_up));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Hold the connections; answer probes; end when stdin closes.
    while let Some(command) = commands.recv().await {
        if command.trim() != "probe" {
            continue;
        }
        counters.alive.store(0, Ordering::Relaxed);
        probe_tx.send_modify(|generation| *generation += 1);
        let deadline = Instant::now() + PROBE_TIMEOUT;
        loop {
            let alive = counters.alive.load(Ordering::Relaxed);
            let closed = counters.closed.load(Ordering::Relaxed);
            let established = counters.established.load(Ordering::Relaxed);
            if alive + closed >= established || Instant::now() > deadline {
                say(&WorkerMsg::Probed(Liveness {
                    alive,
                    closed,
                    unexpected_frames: counters.unexpected.load(Ordering::Relaxed),
                }));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tasks.abort_all();
    Ok(())
}

/// Holds an established connection: counts what the server sends (nothing is expected but
/// heartbeat replies), and notes when the server closes it. On each probe it sends one
/// HEARTBEAT, holding one of the worker's `probes` permits until the reply (the edge forwards
/// heartbeats to core over a bounded queue that drops what overflows, so a worker keeps only
/// `PROBES_IN_FLIGHT` unanswered); a heartbeat unanswered after `PROBE_RETRY` is sent again,
/// up to `ATTEMPTS` times.
async fn hold(
    mut conn: Conn,
    mut probe: watch::Receiver<u32>,
    probes: Arc<Semaphore>,
    counters: &Counters,
) {
    // (permit, seq, resend time, attempts) of the heartbeat waiting for its reply.
    let mut waiting: Option<(OwnedSemaphorePermit, u32, Instant, u32)> = None;
    loop {
        let resend_at = waiting.as_ref().map(|w| w.2);
        tokio::select! {
            frame = conn.next() => match frame {
                Ok(Some(f)) if f.op_kind() == Some(Op::HeartbeatReply) => {
                    if waiting.take_if(|w| w.1 == f.seq).is_some() {
                        counters.alive.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(_)) => {
                    counters.unexpected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) | Err(_) => {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            changed = probe.changed() => {
                if changed.is_err() {
                    return;
                }
                let seq = 2 + *probe.borrow_and_update();
                let Ok(permit) = probes.clone().acquire_owned().await else {
                    return;
                };
                if conn.send(Op::Heartbeat, seq, &pb::Heartbeat {}).await.is_err() {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                waiting = Some((permit, seq, Instant::now() + PROBE_RETRY, 1));
            }
            () = sleep_until_opt(resend_at), if resend_at.is_some() => {
                if let Some((permit, seq, _, attempts)) = waiting.take()
                    && attempts < ATTEMPTS
                {
                    if conn.send(Op::Heartbeat, seq, &pb::Heartbeat {}).await.is_err() {
                        counters.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    waiting = Some((permit, seq, Instant::now() + PROBE_RETRY, attempts + 1));
                }
            }
        }
    }
}

/// Sleeps until `at` (forever if `None`).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
