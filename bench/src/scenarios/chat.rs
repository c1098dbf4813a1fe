//! `roam bench chat`: stored 1:1 messaging between pairs of users over TLS WebSockets.
//!
//! `roam bench chat [--connections N] [--rate R] [--duration S]`: a private `roam serve`
//! (tokens come from its data directory, so `--target` is refused) and N connections (default
//! 100, even, at most 4,000), each a TLS 1.3 WebSocket (`wss://…/v1/ws`) from the loopback
//! source addresses 127.0.0.1–127.0.0.8, authenticated as its own user: connections 2i and
//! 2i + 1 are a pair, and each sends SENDs to the other. Once every AUTH_REPLY is in, the
//! connections together send R messages per second (default 1,000) for S seconds (default
//! 10); every message is stored durably by the server before its SEND_ACK, and pushed to the
//! partner, who is online.
//!
//! Method:
//!
//! - Pacing: each connection has a fixed schedule of R/N messages per second, offset so the
//!   connections do not send in step; message k is due at its start + k · N/R. A connection
//!   keeps at most 256 SENDs unacknowledged: at that many it waits, and a message sent over
//!   5 ms after its due time counts in `late_sends` (a sign the server is saturated).
//! - Latencies, on one monotonic clock: `send_to_ack` from writing a SEND to reading its
//!   SEND_ACK on the same connection; `send_to_deliver` from writing it to the partner
//!   reading its PUSH (the content carries the send time, 20 ASCII digits of µs since the
//!   bench's clock base).
//! - Measurement window: from the first send until every message was acknowledged and
//!   delivered, or at most 5 s after the last send (the drain). `messages_per_sec` =
//!   acknowledged messages / that window; server CPU (utime + stime from `/proc/<pid>`) over
//!   the same window / acknowledged messages is `server_cpu_us_per_message`.
//! - `errors` counts ERROR frames and connections the server closed.
//! - The clients run in this process, on a multi-thread tokio runtime, sharing the machine's
//!   cores with the server: at high rates the client's own TLS, WebSocket and protobuf work
//!   competes with the server (`client_cpu_us_per_message` shows how much it took).
//!
//! Figures: `messages_per_sec`, `send_to_ack_p50_ms`, `send_to_ack_p99_ms`,
//! `send_to_deliver_p50_ms`, `send_to_deliver_p99_ms`, `server_cpu_us_per_message`,
//! `client_cpu_us_per_message`, `errors`, `sent`, `acked`, `delivered`, `late_sends`,
//! `connections`, `server_rss_bytes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use roam_proto::Op;
use roam_proto::client::v1 as pb;
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
use crate::server::{QUIET_CLIENTS_TOML, listener, unix_now, with_server};

/// The most connections (all in this process).
const MAX_CONNECTIONS: usize = 4_000;
/// The highest `--rate`.
const MAX_RATE: u64 = 200_000;
/// The longest `--duration`.
const MAX_SECS: f64 = 120.0;
/// Connection setups in flight.
const IN_FLIGHT: usize = 64;
/// SENDs a connection may have unacknowledged.
const WINDOW: usize = 256;
/// A send written later than this after its due time is late.
const LATE: Duration = Duration::from_millis(5);
/// How long after the last send acks and deliveries still count.
const DRAIN: Duration = Duration::from_secs(5);
/// Token lifetime, seconds.
const TOKEN_TTL: u64 = 3600;
/// The server's rate limits are for abusive clients, not for a load generator.
const CHAT_TOML: &str =
    "[messaging]\nsend_rate = 0\n[edge]\nrate_burst = 1000000\nrate_per_sec = 1000000\n";

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    args.refuse_target("chat", "tokens")?;
    if args.members.is_some() {
        bail!("chat counts --connections (pairs of users), not --members");
    }
    if args.transport.as_deref().is_some_and(|t| t != "ws") {
        bail!("chat clients use WebSockets only (--transport ws)");
    }
    let connections = args.connections_or(100, MAX_CONNECTIONS)?;
    if connections < 2 || connections % 2 != 0 {
        bail!("--connections {connections}: must be even (pairs of users), at least 2");
    }
    let rate = args.rate.unwrap_or(1000);
    if rate == 0 || rate > MAX_RATE {
        bail!("--rate {rate}: must be between 1 and {MAX_RATE}");
    }
    let duration = args.duration_at_most(10.0, MAX_SECS, "chat")?;
    let nofile = raise_nofile_limit();
    if nofile < connections as u64 + 500 {
        bail!(
            "the open-file limit is {nofile}; {connections} connections need about {} in this process and in the server",
            connections + 500
        );
    }
    let toml = format!("{QUIET_CLIENTS_TOML}{CHAT_TOML}");
    with_server(&std::env::current_exe()?, &toml, |server| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(drive(server, connections, rate, duration))
    })
}

/// What every connection adds to as it goes.
#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    delivered: AtomicU64,
}

/// What one connection saw.
struct ClientResult {
    sent: u64,
    late: u64,
    errors: u64,
    ack: Histogram<u64>,
    deliver: Histogram<u64>,
}

/// One connection's part of the run.
struct Plan {
    partner: String,
    /// Its first send's due time.
    first: Instant,
    /// Time between its sends.
    interval: Duration,
    /// Its sends.
    total: u64,
    /// The clock base of the send times in the contents.
    base: Instant,
}

async fn drive(
    server: &ChildServer,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> Result<Report> {
    let client_tcp = listener(server, "client_tcp")?;
    let tls = Transport::Ws.tls(&server.dev_cert())?;
    let secret = roam_core::auth::Secret::load_or_create(&server.data_dir())?;
    let now = unix_now()?;
    let base = Instant::now();

    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut setups = tokio::task::JoinSet::new();
    for i in 0..connections {
        let (user, device) = (format!("chat-u{i}"), format!("chat-d{i}"));
        let token = secret.mint(&user, Some(&device), TOKEN_TTL, now)?;
        let (tls, slots) = (tls.clone(), slots.clone());
        setups.spawn(async move {
            let _slot = slots.acquire_owned().await.map_err(|e| anyhow!(e))?;
            let setup = async {
                let mut conn = Conn::open(Transport::Ws, source_addr(i), client_tcp, &tls).await?;
                conn.authenticate(token, device, Vec::new()).await?;
                Ok::<Conn, anyhow::Error>(conn)
            };
            match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
                Ok(Ok(conn)) => Ok((i, conn)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow!("setup timed out")),
            }
        });
    }
    let progress = Progress::new("connect", Duration::from_millis(connections as u64));
    let mut conns = Vec::with_capacity(connections);
    while let Some(joined) = setups.join_next().await {
        conns.push(joined?.context("a chat client could not connect")?);
        progress.set(Duration::from_millis(conns.len() as u64));
    }
    progress.finish();

    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let before = ProcStats::read(server.pid())?;
    let client_before = ProcStats::read(std::process::id())?;
    let start = Instant::now();
    let mut expected = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns {
        // Spread the connections' schedules over one interval.
        let first = start + interval.mul_f64(i as f64 / connections as f64);
        let span = duration.saturating_sub(first - start);
        let total = (span.as_secs_f64() / interval.as_secs_f64())
            .ceil()
            .max(1.0) as u64;
        expected += total;
        let plan = Plan {
            partner: format!("chat-u{}", i ^ 1),
            first,
            interval,
            total,
            base,
        };
        tasks.spawn(client(conn, plan, counts.clone(), stop.clone()));
    }

    let progress = Progress::new("chat", duration);
    let drain_end = start + duration + DRAIN;
    while Instant::now() < drain_end {
        let (acked, delivered) = (
            counts.acked.load(Ordering::Relaxed),
            counts.delivered.load(Ordering::Relaxed),
        );
        if acked >= expected && delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        progress.set(start.elapsed().min(duration));
    }
    let elapsed = start.elapsed();
    let after = ProcStats::read(server.pid())?;
    let client_after = ProcStats::read(std::process::id())?;
    progress.finish();
    stop.cancel();

    let (mut ack, mut deliver) = (histogram(3), histogram(3));
    let (mut sent, mut late, mut errors) = (0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let r = joined?;
        sent += r.sent;
        late += r.late;
        errors += r.errors;
        ack.add(&r.ack)?;
        deliver.add(&r.deliver)?;
    }
    let acked = counts.acked.load(Ordering::Relaxed);
    let delivered = counts.delivered.load(Ordering::Relaxed);
    if acked == 0 {
        bail!("no SEND was acknowledged ({errors} errors)");
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = Report::new("chat");
    report
        .figure(
            "messages_per_sec",
            (acked as f64 / elapsed.as_secs_f64()).round() as u64,
        )
        .figure("send_to_ack_p50_ms", ms(ack.value_at_quantile(0.50)))
        .figure("send_to_ack_p99_ms", ms(ack.value_at_quantile(0.99)))
        .figure(
            "send_to_deliver_p50_ms",
            ms(deliver.value_at_quantile(0.50)),
        )
        .figure(
            "send_to_deliver_p99_ms",
            ms(deliver.value_at_quantile(0.99)),
        )
        .figure(
            "server_cpu_us_per_message",
            after.cpu_us.saturating_sub(before.cpu_us) as f64 / acked as f64,
        )
        .figure(
            "client_cpu_us_per_message",
            client_after.cpu_us.saturating_sub(client_before.cpu_us) as f64 / acked as f64,
        )
        .figure("errors", errors)
        .figure("sent", sent)
        .figure("acked", acked)
        .figure("delivered", delivered)
        .figure("late_sends", late)
        .figure("connections", connections as u64)
        .figure("server_rss_bytes", after.rss_bytes);
    Ok(report)
}

/// Sends on `plan`'s schedule and reads acks and the partner's pushes, until `stop`.
async fn client(
    mut conn: Conn,
    plan: Plan,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> ClientResult {
    let mut r = ClientResult {
        sent: 0,
        late: 0,
        errors: 0,
        ack: histogram(3),
        deliver: histogram(3),
    };
    // seq → when its SEND was written.
    let mut unacked: HashMap<u32, Instant> = HashMap::with_capacity(WINDOW);
    let mut due = plan.first;
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let can_send = r.sent < plan.total && unacked.len() < WINDOW;
        tokio::select! {
            () = &mut stopped => break,
            () = tokio::time::sleep_until(due), if can_send => {
                let now = Instant::now();
                if now.duration_since(due) > LATE {
                    r.late += 1;
                }
                let seq = (r.sent + 2) as u32;
                let stamp = format!("{:020}", now.duration_since(plan.base).as_micros());
                let send = pb::Send {
                    to: plan.partner.clone(),
                    client_msg_id: format!("m{seq}"),
                    content: stamp.into_bytes().into(),
                    content_type: String::new(),
                };
                if conn.send(Op::Send, seq, &send).await.is_err() {
                    r.errors += 1;
                    break;
                }
                unacked.insert(seq, now);
                r.sent += 1;
                due += plan.interval;
            }
            frame = conn.next() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(_) => {
                        r.errors += 1;
                        break;
                    }
                };
                let now = Instant::now();
                match frame.op_kind() {
                    Some(Op::SendAck) => {
                        if let Some(at) = unacked.remove(&frame.seq) {
                            let _ = r.ack.record(micros(now.duration_since(at)));
                            counts.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Op::Push) => {
                        if let Some(sent_us) = sent_at(&frame.body) {
                            let now_us = now.duration_since(plan.base).as_micros() as u64;
                            let _ = r.deliver.record(now_us.saturating_sub(sent_us).max(1));
                            counts.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Op::Error) => {
                        r.errors += 1;
                        unacked.remove(&frame.seq);
                    }
                    Some(Op::Disconnect) => {
                        r.errors += 1;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    conn.close().await;
    r
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// The send time (µs since the clock base) a PUSH of this run carries: a stored `Message`
/// whose content is 20 ASCII digits.
fn sent_at(body: &[u8]) -> Option<u64> {
    let push: pb::Push = prost::Message::decode(body).ok()?;
    let Some(pb::push::Kind::Message(m)) = push.kind else {
        return None;
    };
    if m.content.len() != 20 {
        return None;
    }
    std::str::from_utf8(&m.content).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_of_this_run_carries_its_send_time() {
        let push = |content: &[u8]| {
            prost::Message::encode_to_vec(&pb::Push {
                kind: Some(pb::push::Kind::Message(pb::Message {
                    content: content.to_vec().into(),
                    ..Default::default()
                })),
            })
        };
        assert_eq!(sent_at(&push(b"00000000000001234567")), Some(1_234_567));
        assert_eq!(sent_at(&push(b"1234567")), None, "not 20 digits");
        assert_eq!(sent_at(&push(b"0000000000000123456x")), None);
        assert_eq!(sent_at(b"\xff\xff"), None);
    }
}
