//! A worker process of idle-conns (`roam bench idle-conns-worker`): reads its [`Job`] on
//! stdin, sets up its connections, reports on stdout, answers `probe` lines, holds its
//! connections until stdin closes, and exits then.

use parking_lot::Mutex;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use roam_proto::Op;
use roam_proto::client::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::protocol::{Job, Liveness, PROBE, SetUp, WorkerMsg};
use super::{ATTEMPTS, PROBE_TIMEOUT, TOKEN_TTL, room_of, setup};
use crate::conn::{Conn, SETUP_TIMEOUT, source_addr};
use crate::process::raise_nofile_limit;
use crate::server::unix_now;

/// Connection setups in flight per worker.
const IN_FLIGHT: usize = 32;
/// Liveness heartbeats a worker has unanswered at a time.
const PROBES_IN_FLIGHT: usize = 64;
/// A liveness heartbeat unanswered this long is sent again.
const PROBE_RETRY: Duration = Duration::from_secs(2);
/// A worker ends on its own after this long, whatever its parent does.
const WORKER_LIFETIME: Duration = Duration::from_secs(900);

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
        self.first_error.lock().get_or_insert(error);
    }
}

/// `roam bench idle-conns-worker`: reads a [`Job`] line on stdin, sets up its connections,
/// reports on stdout, answers `probe` lines, and exits when stdin closes.
pub(crate) fn run() -> Result<()> {
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
            let first_error = counters.first_error.lock().clone();
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
        if command.trim() != PROBE {
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
