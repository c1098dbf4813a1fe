//! `roam bench room-fanout`: business-API pushes to one room, fanned out by the server to
//! every member's WebSocket.
//!
//! `roam bench room-fanout [--members M] [--rate R] [--duration S] [--transport ws|h3|quic]`:
//! a private `roam serve` (tokens and the API key come from its data directory, so `--target`
//! is refused) and M members (default 2,000, at most 9,000), each a TLS 1.3 WebSocket
//! (`wss://…/v1/ws`, HTTP/1.1 Upgrade; `--transport ws`, the default), an HTTP/3
//! `GET /v1/stream` (`--transport h3`) or a raw-frame QUIC stream (`--transport quic`, ALPN
//! `roam/1`) — over QUIC one connection and client UDP socket per member — from the loopback
//! source addresses 127.0.0.1–127.0.0.8, authenticated as its own user and device with AUTH
//! (over HTTP/3: the request's bearer token and `rooms=`) joining room `fanout` at once.
//! Once every AUTH_REPLY is
//! in and core counts M members in the room (`/api/v1/online/rooms`), a publisher posts R
//! messages per second (default 50) to `POST /api/v1/push/rooms` for S seconds (default 10).
//!
//! Method:
//!
//! - Pacing: a fixed schedule — message k is due at start + k / R — and each message is sent
//!   at its due time on an idle keep-alive HTTP/1.1 connection to the admin listener, from a
//!   pool that opens another connection only when none is idle (at most 64 in use;
//!   `publishers` says how many were opened: a few at moderate rates). So a slow API answer
//!   delays no later message and nothing is sent in bursts; `late_publishes` counts messages
//!   sent over 5 ms after their due time (waiting for a connection). The publisher runs on
//!   its own thread (a current-thread runtime), apart from the members' runtime.
//! - A 429 (an edge queue is full) is counted in `rejected` and the message is dropped, not
//!   retried: a retry would bend the fixed schedule, and the server said it sheds load. Other
//!   failures count in `errors` (a broken connection is dropped). `published` counts 202s only.
//! - The content is 32 bytes of ASCII, `<k, 10 digits> <µs since the bench's clock base, 21
//!   digits>`, taken when the request is written; a member receiving the PUSH (its `Ephemeral`
//!   content) computes the delivery latency (API call + fan-out + the member's own queueing)
//!   on the same monotonic clock, into its own HDR histogram (1 µs – 60 s, 2 significant
//!   digits, so thousands of members stay small); the histograms are merged at the end.
//! - Measurement window: server CPU (utime + stime from `/proc/<pid>`) from the first
//!   publish until every published message reached every member, or at most 3 s after the
//!   last publish (the drain). `deliveries_per_sec` = deliveries received / that window.
//! - Members send nothing after AUTH (the server runs with a 300 s heartbeat interval, so it
//!   never closes them as idle during a run). A member the server closes (e.g. DISCONNECT
//!   `REASON_SLOW` when its outbox overflows) is counted in `members_closed`.
//! - The members run in this process, on a multi-thread tokio runtime (one worker per core),
//!   sharing the machine's cores with the server: at high delivery rates the client's own
//!   TLS, WebSocket and protobuf decoding competes with the server for CPU, which can raise
//!   latency (and lower `deliveries_per_sec`) but does not enter the server's CPU figure.
//!   `client_cpu_us_per_delivery` (this process's CPU over the same window) shows how much
//!   of the machine the client took.
//!
//! Figures: `deliveries_per_sec`, `delivered_ratio` (deliveries received / (published × M)),
//! `server_cpu_us_per_delivery`, `client_cpu_us_per_delivery`, `delivery_p50_ms`, `delivery_p99_ms`, `delivery_max_ms`,
//! `published`, `rejected`, `errors`, `late_publishes`, `publish_per_sec` (achieved),
//! `api_p99_ms`, `deliveries`, `members`, `members_closed`, `publishers`, `server_rss_bytes`, `transport`.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use roam_client::admin::AdminConnection;
use roam_proto::Op;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::BenchArgs;
use crate::child::ChildServer;
use crate::conn::{Conn, SETUP_TIMEOUT, Transport, source_addr};
use crate::proc::ProcStats;
use crate::process::raise_nofile_limit;
use crate::progress::Progress;
use crate::report::{Report, histogram};
use crate::server::{QUIET_CLIENTS_TOML, admin_get, api_key, listener, unix_now, with_server};

/// The room.
const ROOM: &str = "fanout";
/// The most members (all in this process).
const MAX_MEMBERS: usize = 9_000;
/// The highest `--rate`.
const MAX_RATE: u64 = 20_000;
/// The longest `--duration`, far below the 450 s idle close of silent members.
const MAX_SECS: f64 = 120.0;
/// Member setups in flight.
const IN_FLIGHT: usize = 64;
/// Bytes of each push's content.
const CONTENT_LEN: usize = 32;
/// How long after the last publish deliveries still count.
const DRAIN: Duration = Duration::from_secs(3);
/// Most publisher connections (in use at once).
const MAX_PUBLISH_CONNS: usize = 64;
/// A publish started later than this after its due time is late.
const LATE: Duration = Duration::from_millis(5);
/// Token lifetime, seconds.
const TOKEN_TTL: u64 = 3600;

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    args.refuse_target("room-fanout", "tokens and the API key")?;
    if args.connections.is_some() {
        bail!("room-fanout counts --members, not --connections");
    }
    let transport = match args.transport.as_deref().unwrap_or("ws") {
        "ws" => Transport::Ws,
        "h3" => Transport::H3,
        "quic" => Transport::Quic,
        other => bail!("--transport {other}: room-fanout members use ws, h3 or quic"),
    };
    let members = args.members.unwrap_or(2000);
    if members == 0 || members > MAX_MEMBERS {
        bail!("--members {members}: must be between 1 and {MAX_MEMBERS}");
    }
    let rate = args.rate.unwrap_or(50);
    if rate == 0 || rate > MAX_RATE {
        bail!("--rate {rate}: must be between 1 and {MAX_RATE}");
    }
    let duration = args.duration_at_most(10.0, MAX_SECS, "room-fanout")?;
    let nofile = raise_nofile_limit();
    if nofile < members as u64 + 500 {
        bail!(
            "the open-file limit is {nofile}; {members} members need about {} in this process and in the server",
            members + 500
        );
    }
    with_server(&std::env::current_exe()?, QUIET_CLIENTS_TOML, |server| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(drive(server, transport, members, rate, duration))
    })
}

/// A histogram of microseconds, 1 µs – 60 s, 2 significant digits (~20 KiB each).
fn small_histogram() -> Histogram<u64> {
    histogram(2)
}

/// What one member saw.
struct MemberResult {
    received: u64,
    latency: Histogram<u64>,
    /// Why the member's connection ended before the run did: the server's DISCONNECT
    /// (with its reason) or the client's error.
    closed: Option<String>,
    bad: u64,
}

async fn drive(
    server: &ChildServer,
    transport: Transport,
    members: usize,
    rate: u64,
    duration: Duration,
) -> Result<Report> {
    let client = listener(server, transport.listener())?;
    let admin = listener(server, "admin")?;
    let data_dir = server.data_dir();
    let key: Arc<str> = Arc::from(api_key(&data_dir)?);
    let tls = transport.tls(&server.dev_cert())?;
    let secret = roam_core::auth::Secret::load_or_create(&data_dir)?;
    let now = unix_now()?;
    // The clock every timestamp in the contents is relative to.
    let base = Instant::now();

    // Members.
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut setups = tokio::task::JoinSet::new();
    for i in 0..members {
        let (user, device) = (format!("fan-u{i}"), format!("fan-d{i}"));
        let token = secret.mint(&user, Some(&device), TOKEN_TTL, now)?;
        let (tls, slots) = (tls.clone(), slots.clone());
        setups.spawn(async move {
            let _slot = slots.acquire_owned().await.map_err(|e| anyhow!(e))?;
            let mut last = anyhow!("no attempt");
            for attempt in 0..3u64 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                let setup = async {
                    let mut conn = Conn::open(transport, source_addr(i), client, &tls).await?;
                    conn.authenticate(token.clone(), device.clone(), vec![ROOM.into()])
                        .await?;
                    Ok::<Conn, anyhow::Error>(conn)
                };
                match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
                    Ok(Ok(conn)) => return Ok(conn),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = anyhow!("setup timed out"),
                }
            }
            Err(last)
        });
    }
    let progress = Progress::new("members", Duration::from_millis(members as u64));
    let mut member_tasks = tokio::task::JoinSet::new();
    let mut done = 0u64;
    while let Some(joined) = setups.join_next().await {
        let conn = joined?.context("a member could not connect")?;
        let (received, stop) = (received.clone(), stop.clone());
        member_tasks.spawn(member(conn, base, received, stop));
        done += 1;
        progress.set(Duration::from_millis(done));
    }
    progress.finish();

    // Core must know the room's members before pushes can reach them.
    let path = "/api/v1/online/rooms?top=10";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rooms = admin_get(admin, &key, path).await?;
        let online = rooms["rooms"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["room"] == ROOM))
            .and_then(|r| r["online"].as_u64())
            .unwrap_or(0);
        if online >= members as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("core counts {online} of {members} members in room {ROOM} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Publish.
    let total = (rate as f64 * duration.as_secs_f64()).round().max(1.0) as u64;
    let pool = Arc::new(Pool {
        admin,
        key,
        idle: Mutex::new(Vec::new()),
        opened: AtomicU64::new(0),
        slots: Arc::new(Semaphore::new(MAX_PUBLISH_CONNS)),
    });
    let before = ProcStats::read(server.pid())?;
    let client_before = ProcStats::read(std::process::id())?;
    let start = Instant::now();
    let progress = Progress::new("publish", duration);
    // The publisher gets its own thread and runtime, so that the members' work (which can
    // saturate their runtime) does not delay it.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let publisher = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let published = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(publish(pool, rate, total, base, start)));
            let _ = done_tx.send(published);
        })
    };
    let schedule = async {
        done_rx
            .await
            .map_err(|_| anyhow!("the publisher thread ended without a result"))?
    };
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress.set(start.elapsed());
        }
    };
    let published = tokio::select! {
        r = schedule => r?,
        () = ticker => bail!("the progress ticker ended"),
    };
    let publish_elapsed = start.elapsed();
    let _ = publisher.join();
    progress.finish();

    // Drain: until everything published has reached every member, at most DRAIN.
    let expected = published.accepted * members as u64;
    let drain_end = Instant::now() + DRAIN;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let after = ProcStats::read(server.pid())?;
    let client_after = ProcStats::read(std::process::id())?;
    stop.cancel();

    let mut latency = small_histogram();
    let (mut deliveries, mut closed, mut bad) = (0u64, 0u64, 0u64);
    let mut why = std::collections::BTreeMap::<String, u64>::new();
    while let Some(joined) = member_tasks.join_next().await {
        let m = joined?;
        deliveries += m.received;
        if let Some(reason) = m.closed {
            closed += 1;
            *why.entry(reason).or_default() += 1;
        }
        bad += m.bad;
        latency.add(&m.latency)?;
    }
    for (reason, n) in &why {
        eprintln!("room-fanout: {n} members closed early: {reason}");
    }
    if published.accepted == 0 {
        bail!(
            "no push was accepted ({} rejected): {}",
            published.rejected,
            published.first_error.unwrap_or_default()
        );
    }
    if bad > 0 {
        eprintln!("room-fanout: {bad} frames were not this run's pushes");
    }
    if let Some(e) = &published.first_error {
        eprintln!("room-fanout: first publish error: {e}");
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = Report::new("room-fanout");
    report
        .figure(
            "deliveries_per_sec",
            (deliveries as f64 / elapsed.as_secs_f64()).round() as u64,
        )
        .figure("delivered_ratio", deliveries as f64 / expected as f64)
        .figure(
            "server_cpu_us_per_delivery",
            after.cpu_us.saturating_sub(before.cpu_us) as f64 / deliveries.max(1) as f64,
        )
        .figure(
            "client_cpu_us_per_delivery",
            client_after.cpu_us.saturating_sub(client_before.cpu_us) as f64
                / deliveries.max(1) as f64,
        )
        .figure("delivery_p50_ms", ms(latency.value_at_quantile(0.50)))
        .figure("delivery_p99_ms", ms(latency.value_at_quantile(0.99)))
        .figure("delivery_max_ms", ms(latency.max()))
        .figure("published", published.accepted)
        .figure("rejected", published.rejected)
        .figure("errors", published.errors)
        .figure("late_publishes", published.late)
        .figure(
            "publish_per_sec",
            published.accepted as f64 / publish_elapsed.as_secs_f64(),
        )
        .figure(
            "api_p99_ms",
            ms(published
                .api
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(0.99))),
        )
        .figure("deliveries", deliveries)
        .figure("members", members as u64)
        .figure("transport", transport.name())
        .figure("members_closed", closed)
        .figure("publishers", published.publishers)
        .figure("server_rss_bytes", after.rss_bytes);
    Ok(report)
}

/// Reads a member's frames until `stop`: each PUSH of this run counts as a delivery and its
/// latency is recorded.
async fn member(
    mut conn: Conn,
    base: Instant,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
) -> MemberResult {
    let mut r = MemberResult {
        received: 0,
        latency: small_histogram(),
        closed: None,
        bad: 0,
    };
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            () = &mut stopped => break,
            frame = conn.next() => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                r.closed = Some("the server ended the stream".into());
                break;
            }
            Err(e) => {
                r.closed = Some(format!("error: {e:#}"));
                break;
            }
        };
        match frame.op_kind() {
            Some(Op::Push) => match sent_at(&frame.body) {
                Some(sent_us) => {
                    let now_us = base.elapsed().as_micros() as u64;
                    let _ = r.latency.record(now_us.saturating_sub(sent_us).max(1));
                    r.received += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
                None => r.bad += 1,
            },
            Some(Op::Disconnect) => {
                let reason = frame
                    .decode_body::<roam_proto::client::v1::Disconnect>()
                    .map(|d| d.reason().as_str_name().to_owned())
                    .unwrap_or_default();
                r.closed = Some(format!("DISCONNECT {reason}"));
                break;
            }
            _ => r.bad += 1,
        }
    }
    conn.close().await;
    r
}

/// The send timestamp (µs since the clock base) in the body of a PUSH of this run:
/// `Push.ephemeral` (field 2) with `room` (1) = [`ROOM`] and a [`CONTENT_LEN`]-byte `content`
/// (2). Read in place: decoding into `pb::Push` would copy the room and the content, and
/// at hundreds of thousands of deliveries per second the client's CPU is what it competes
/// for with the server.
fn sent_at(body: &[u8]) -> Option<u64> {
    let ephemeral = pb_field(body, 2)?;
    if pb_field(ephemeral, 1)? != ROOM.as_bytes() {
        return None;
    }
    let content = pb_field(ephemeral, 2)?;
    if content.len() != CONTENT_LEN {
        return None;
    }
    content[11..].iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// The last occurrence of length-delimited field `number` in protobuf message `msg`.
fn pb_field(mut msg: &[u8], number: u64) -> Option<&[u8]> {
    let mut found = None;
    while !msg.is_empty() {
        let key = prost::encoding::decode_varint(&mut msg).ok()?;
        match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut msg).ok()?;
            }
            1 => msg = msg.get(8..)?,
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut msg).ok()?).ok()?;
                let (value, rest) = msg.split_at_checked(len)?;
                if key >> 3 == number {
                    found = Some(value);
                }
                msg = rest;
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    found
}

#[derive(Default)]
struct PublisherResult {
    accepted: u64,
    rejected: u64,
    errors: u64,
    late: u64,
    publishers: u64,
    first_error: Option<String>,
    api: Option<Histogram<u64>>,
}

/// Keep-alive HTTP/1.1 connections to the admin listener, opened on demand.
struct Pool {
    admin: SocketAddr,
    key: Arc<str>,
    idle: Mutex<Vec<AdminConnection>>,
    opened: AtomicU64,
    /// One permit per connection that may be in use.
    slots: Arc<Semaphore>,
}

/// What became of one message.
enum Outcome {
    Accepted,
    Rejected,
    Failed(String),
}

/// Sends messages `0 .. total`, message k at `start + k / rate`, each on an idle connection
/// of `pool`.
async fn publish(
    pool: Arc<Pool>,
    rate: u64,
    total: u64,
    base: Instant,
    start: Instant,
) -> Result<PublisherResult> {
    let mut r = PublisherResult {
        api: Some(small_histogram()),
        ..PublisherResult::default()
    };
    let mut tally = |(outcome, api_us, late): (Outcome, u64, bool)| {
        match outcome {
            Outcome::Accepted => r.accepted += 1,
            Outcome::Rejected => r.rejected += 1,
            Outcome::Failed(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
            }
        }
        r.late += u64::from(late);
        if let Some(api) = r.api.as_mut() {
            let _ = api.record(api_us.max(1));
        }
    };
    let mut sends = tokio::task::JoinSet::new();
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
        sends.spawn(publish_one(pool.clone(), k, due, base));
        while let Some(done) = sends.try_join_next() {
            tally(done?);
        }
    }
    while let Some(done) = sends.join_next().await {
        tally(done?);
    }
    r.publishers = pool.opened.load(Ordering::Relaxed);
    Ok(r)
}

/// Posts message `k` (due at `due`) on an idle connection of `pool`, or a new one.
async fn publish_one(pool: Arc<Pool>, k: u64, due: Instant, base: Instant) -> (Outcome, u64, bool) {
    let Ok(_slot) = pool.slots.clone().acquire_owned().await else {
        return (Outcome::Failed("pool closed".into()), 0, true);
    };
    let idle = pool.idle.lock().pop();
    let mut send = match idle {
        Some(send) => send,
        None => match AdminConnection::connect(pool.admin).await {
            Ok(send) => {
                pool.opened.fetch_add(1, Ordering::Relaxed);
                send
            }
            Err(e) => return (Outcome::Failed(e.to_string()), 0, true),
        },
    };
    if let Err(e) = send.ready().await {
        return (Outcome::Failed(e.to_string()), 0, true);
    }
    let now = Instant::now();
    let late = now.duration_since(due) > LATE;
    let sent_us = base.elapsed().as_micros();
    let body = format!(r#"{{"rooms":["{ROOM}"],"content":"{k:010} {sent_us:021}"}}"#);
    let status = send
        .post_json("/api/v1/push/rooms", &pool.key, body)
        .await
        .map(|response| response.status);
    let api_us = now.elapsed().as_micros() as u64;
    let outcome = match status {
        Ok(202) => Outcome::Accepted,
        Ok(429) => Outcome::Rejected,
        Ok(status) => Outcome::Failed(format!("HTTP {status}")),
        Err(e) => return (Outcome::Failed(e.to_string()), api_us, late),
    };
    // The connection is healthy: back to the pool.
    pool.idle.lock().push(send);
    (outcome, api_us, late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use roam_proto::client::v1 as pb;

    fn push(room: &str, content: &[u8]) -> Vec<u8> {
        pb::Push {
            kind: Some(pb::push::Kind::Ephemeral(pb::Ephemeral {
                room: room.into(),
                content: content.to_vec().into(),
                created_at: 1_700_000_000_000,
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_the_timestamp_of_this_runs_pushes_only() {
        let content = format!("{:010} {:021}", 42, 123_456_789);
        assert_eq!(sent_at(&push(ROOM, content.as_bytes())), Some(123_456_789));
        assert_eq!(sent_at(&push("other", content.as_bytes())), None);
        assert_eq!(sent_at(&push(ROOM, b"short")), None);
        let bad = format!("{:010} {:>21}", 42, "x");
        assert_eq!(sent_at(&push(ROOM, bad.as_bytes())), None);
        assert_eq!(sent_at(&[0xff, 0xff]), None);
    }
}
