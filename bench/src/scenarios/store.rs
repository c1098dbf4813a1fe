//! `roam bench store-append` and `roam bench store-read`: the embedded store (`roam-store` on
//! fjall) in this process, on a temporary data directory (under `TMPDIR`, which must be a real
//! disk for the durability figures to mean anything), through the timelines layer the core
//! uses.
//!
//! - `store-append`: `--connections` writers (default 256), each appending 100-byte messages
//!   back to back for `--duration` seconds (default 5) per phase. Every append is durable on
//!   return: the store's normal commit path (sequencer batch, group commit, one fsync per
//!   group). Phase 1, *distinct*: each writer has a timeline of its own. Phase 2, *hot*: every
//!   writer appends to one timeline. Figures: `appends_per_sec`, `commit_p50_us`/`_p99_us`/
//!   `_max_us` (from the call to its acknowledgement, durable), `cpu_us_per_append`, the same
//!   prefixed `hot_` for phase 2, then `errors` and `rss_bytes`.
//! - `store-read`: fills 100 timelines × 1,000 messages of 100 bytes, then `--connections`
//!   readers (default 4) each read, back to back for `--duration` seconds (default 5), the 100
//!   messages after a random seq (0..=900) of a random timeline. Figures: `reads_per_sec`,
//!   `read_100_p50_us`/`_p99_us`/`_max_us`, `cpu_us_per_read`, `errors` (a failed read, or one
//!   that returned other than 100 messages), `rss_bytes`.
//!
//! The store runs in this process, so CPU time and RSS are this process's (from
//! `/proc/<own pid>`): they include the load generator, which is one async task per writer or
//! reader looping around the call.

use parking_lot::Mutex;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use roam_store::{NewMessage, Store, TimelineId, Timelines};

use crate::args::BenchArgs;
use crate::proc::ProcStats;
use crate::progress::Progress;
use crate::report::{Report, latency_figures, latency_histogram};

/// Body size of every appended message.
const BODY_BYTES: usize = 100;
/// Distinct bodies, sliced out of one random buffer (so blocks do not compress to nothing).
const BODY_POOL: usize = 1024;
/// Upper bound of `--connections` for both scenarios.
const MAX_WORKERS: usize = 16_384;

const APPEND_WRITERS: usize = 256;
const APPEND_PHASE_SECS: f64 = 5.0;

const READERS: usize = 4;
const READ_SECS: f64 = 5.0;
const READ_TIMELINES: usize = 100;
const READ_FILL: u64 = 1_000;
const READ_LIMIT: usize = 100;
/// Concurrent appenders per timeline while filling (the sequencer batches them).
const FILL_TASKS_PER_TIMELINE: u64 = 4;

/// Message ids: unique within this process, which is all the store asks of them here.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `roam bench store-append`.
pub(crate) fn run_append(args: &BenchArgs) -> Result<Report> {
    refuse_remote(args, "store-append")?;
    let phase = args.duration_or(APPEND_PHASE_SECS)?;
    let writers = args.connections_or(APPEND_WRITERS, MAX_WORKERS)?;
    let (dir, runtime) = setup("store-append")?;
    let report = runtime.block_on(async {
        let store = open_store(dir.path()).await?;
        let bodies = Bodies::new();
        let mut report = Report::new("store-append");
        report
            .figure("writers", writers as u64)
            .figure("body_bytes", BODY_BYTES as u64);
        let distinct = append_phase(&store, &bodies, &mut report, "", writers, phase, |i| {
            TimelineId::inbox(format!("bench-{i}"))
        })
        .await?;
        let hot = append_phase(&store, &bodies, &mut report, "hot_", writers, phase, |_| {
            TimelineId::inbox("bench-hot")
        })
        .await?;
        let errors = distinct.merge(hot);
        finish(&mut report, errors, "store-append")?;
        Ok::<_, anyhow::Error>(report)
    });
    // The store is gone by now (its drop waited for the committer), then the directory goes.
    drop(runtime);
    drop(dir);
    report
}

/// `roam bench store-read`.
pub(crate) fn run_read(args: &BenchArgs) -> Result<Report> {
    refuse_remote(args, "store-read")?;
    let duration = args.duration_or(READ_SECS)?;
    let readers = args.connections_or(READERS, MAX_WORKERS)?;
    let (dir, runtime) = setup("store-read")?;
    let report = runtime.block_on(async {
        let store = open_store(dir.path()).await?;
        fill(&store).await?;
        let mut report = Report::new("store-read");
        report
            .figure("readers", readers as u64)
            .figure("timelines", READ_TIMELINES as u64)
            .figure("messages_per_timeline", READ_FILL)
            .figure("body_bytes", BODY_BYTES as u64);
        let outcome = read_phase(&store, &mut report, readers, duration).await?;
        finish(&mut report, outcome, "store-read")?;
        Ok::<_, anyhow::Error>(report)
    });
    drop(runtime);
    drop(dir);
    report
}

/// These scenarios measure the store in this process; remote-server options do not apply.
fn refuse_remote(args: &BenchArgs, scenario: &str) -> Result<()> {
    let unused = [
        ("--target", args.target.is_some()),
        ("--rate", args.rate.is_some()),
        ("--transport", args.transport.is_some()),
    ];
    match unused.iter().find(|(_, given)| *given) {
        Some((flag, _)) => bail!(
            "{flag}: {scenario} runs the store in this process at full speed and takes only \
             --duration and --connections"
        ),
        None => Ok(()),
    }
}

/// The temporary data directory and a multi-thread runtime (one worker per core).
fn setup(scenario: &str) -> Result<(tempfile::TempDir, tokio::runtime::Runtime)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("roam-bench-{scenario}-"))
        .tempdir()
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                std::env::temp_dir().display()
            )
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("roam-bench")
        .build()
        .context("cannot start the async runtime")?;
    Ok((dir, runtime))
}

async fn open_store(dir: &Path) -> Result<Store> {
    Store::open(&format!("embedded:{}", dir.display()))
        .await
        .with_context(|| format!("cannot open a store in {}", dir.display()))
}

/// Failed operations over a run and the first failure.
#[derive(Debug, Default)]
struct Errors {
    /// Operations that succeeded.
    ok: u64,
    /// Operations that failed.
    failed: u64,
    /// What the first failure said.
    first: Option<String>,
}

impl Errors {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        self.first.get_or_insert(what);
    }

    fn merge(mut self, other: Errors) -> Errors {
        self.ok += other.ok;
        self.failed += other.failed;
        if self.first.is_none() {
            self.first = other.first;
        }
        self
    }
}

/// Adds `errors` and `rss_bytes`; fails when nothing succeeded.
fn finish(report: &mut Report, errors: Errors, scenario: &'static str) -> Result<()> {
    if errors.ok == 0 {
        bail!(
            "{scenario}: no operation succeeded: {}",
            errors
                .first
                .unwrap_or_else(|| "no operation completed".into())
        );
    }
    if let Some(first) = &errors.first {
        tracing::warn!(failed = errors.failed, first = %first, "{scenario}: some operations failed");
    }
    let stats = ProcStats::read(std::process::id())?;
    report
        .figure("errors", errors.failed)
        .figure("rss_bytes", stats.rss_bytes);
    Ok(())
}

/// One append phase: `writers` tasks, writer `i` appending to `timeline_of(i)` until `phase`
/// has passed. Adds `<prefix>appends_per_sec`, `<prefix>commit_*_us` and
/// `<prefix>cpu_us_per_append` to `report`.
async fn append_phase(
    store: &Store,
    bodies: &Bodies,
    report: &mut Report,
    prefix: &str,
    writers: usize,
    phase: Duration,
    timeline_of: impl Fn(usize) -> TimelineId,
) -> Result<Errors> {
    let name = if prefix.is_empty() { "distinct" } else { "hot" };
    let cpu_before = ProcStats::read(std::process::id())?.cpu_us;
    // One histogram for all tasks (a few hundred KiB each would inflate `rss_bytes`).
    let hist = Arc::new(Mutex::new(latency_histogram()));
    let start = Instant::now();
    let deadline = start + phase;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let hist = hist.clone();
            let timelines = store.timelines();
            let timeline = timeline_of(i);
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut errors = Errors::default();
                while Instant::now() < deadline {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    let message = NewMessage {
                        id,
                        created_at_ms: now_ms(),
                        body: bodies.get(id),
                    };
                    let sent = Instant::now();
                    match timelines.append(&timeline, message).await {
                        Ok(_) => {
                            hist.lock().saturating_record(micros(sent.elapsed()));
                            errors.ok += 1;
                        }
                        Err(e) => {
                            // A failed commit (e.g. the disk) fails the next ones too.
                            errors.fail(format!("append to {timeline}: {e}"));
                            break;
                        }
                    }
                }
                errors
            })
        })
        .collect();
    show_progress(name, start, phase).await;
    let mut errors = Errors::default();
    for task in tasks {
        let e = task
            .await
            .map_err(|e| anyhow!("a writer task failed: {e}"))?;
        errors = errors.merge(e);
    }
    let hist = hist.lock();
    let elapsed = start.elapsed();
    let cpu_us = ProcStats::read(std::process::id())?
        .cpu_us
        .saturating_sub(cpu_before);
    report.figure(
        &format!("{prefix}appends_per_sec"),
        per_sec(errors.ok, elapsed),
    );
    latency_figures(report, &format!("{prefix}commit"), &hist);
    report.figure(
        &format!("{prefix}cpu_us_per_append"),
        per_op(cpu_us, errors.ok),
    );
    Ok(errors)
}

/// Appends `READ_FILL` messages to each of `READ_TIMELINES` timelines.
async fn fill(store: &Store) -> Result<()> {
    let bodies = Bodies::new();
    let per_task = READ_FILL / FILL_TASKS_PER_TIMELINE;
    let tasks: Vec<_> = (0..READ_TIMELINES)
        .flat_map(|t| (0..FILL_TASKS_PER_TIMELINE).map(move |k| (t, k)))
        .map(|(t, k)| {
            let timelines = store.timelines();
            let timeline = read_timeline(t);
            let bodies = bodies.clone();
            // The last task of a timeline takes the remainder.
            let count = if k + 1 == FILL_TASKS_PER_TIMELINE {
                READ_FILL - per_task * k
            } else {
                per_task
            };
            tokio::spawn(async move {
                for _ in 0..count {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    let message = NewMessage {
                        id,
                        created_at_ms: now_ms(),
                        body: bodies.get(id),
                    };
                    timelines
                        .append(&timeline, message)
                        .await
                        .with_context(|| format!("filling {timeline}"))?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| anyhow!("a fill task failed: {e}"))??;
    }
    Ok(())
}

fn read_timeline(t: usize) -> TimelineId {
    TimelineId::inbox(format!("bench-read-{t}"))
}

/// `readers` tasks reading 100 messages at random places until `duration` has passed. Adds
/// `reads_per_sec`, `read_100_*_us` and `cpu_us_per_read`.
async fn read_phase(
    store: &Store,
    report: &mut Report,
    readers: usize,
    duration: Duration,
) -> Result<Errors> {
    let timelines: Vec<TimelineId> = (0..READ_TIMELINES).map(read_timeline).collect();
    let cpu_before = ProcStats::read(std::process::id())?.cpu_us;
    let hist = Arc::new(Mutex::new(latency_histogram()));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..readers)
        .map(|r| {
            let hist = hist.clone();
            let reader: Timelines = store.timelines();
            let timelines = timelines.clone();
            let mut rng = SplitMix64(0x7EAD_0000 + r as u64);
            tokio::spawn(async move {
                let mut errors = Errors::default();
                while Instant::now() < deadline {
                    let timeline = &timelines[rng.below(timelines.len() as u64) as usize];
                    let after = rng.below(READ_FILL - READ_LIMIT as u64 + 1);
                    let sent = Instant::now();
                    match reader.read(timeline, after, READ_LIMIT).await {
                        Ok(entries) if entries.len() == READ_LIMIT => {
                            hist.lock().saturating_record(micros(sent.elapsed()));
                            errors.ok += 1;
                        }
                        Ok(entries) => errors.fail(format!(
                            "read {timeline} after {after}: {} messages, not {READ_LIMIT}",
                            entries.len()
                        )),
                        Err(e) => errors.fail(format!("read {timeline} after {after}: {e}")),
                    }
                    // A read of durable data completes without ever waiting, so without this
                    // a reader would keep its worker thread and starve the others.
                    tokio::task::yield_now().await;
                }
                errors
            })
        })
        .collect();
    show_progress("read", start, duration).await;
    let mut errors = Errors::default();
    for task in tasks {
        let e = task
            .await
            .map_err(|e| anyhow!("a reader task failed: {e}"))?;
        errors = errors.merge(e);
    }
    let hist = hist.lock();
    let elapsed = start.elapsed();
    let cpu_us = ProcStats::read(std::process::id())?
        .cpu_us
        .saturating_sub(cpu_before);
    report.figure("reads_per_sec", per_sec(errors.ok, elapsed));
    latency_figures(report, "read_100", &hist);
    report.figure("cpu_us_per_read", per_op(cpu_us, errors.ok));
    Ok(errors)
}

/// Moves a progress bar over `phase` from `start` (returns when the phase is over).
fn show_progress(name: &str, start: Instant, phase: Duration) -> impl Future<Output = ()> {
    let progress = Progress::new(name, phase);
    async move {
        while start.elapsed() < phase {
            let left = phase.saturating_sub(start.elapsed());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            progress.set(start.elapsed());
        }
        progress.finish();
    }
}

/// 100-byte bodies, each a slice of one shared random buffer (no copy per message).
#[derive(Clone)]
struct Bodies(Bytes);

impl Bodies {
    fn new() -> Self {
        let len = BODY_POOL * BODY_BYTES;
        let mut rng = SplitMix64(0xB0D1E5);
        let mut buf = Vec::with_capacity(len + 8);
        while buf.len() < len {
            buf.extend_from_slice(&rng.next().to_le_bytes());
        }
        buf.truncate(len);
        Bodies(Bytes::from(buf))
    }

    fn get(&self, id: u64) -> Bytes {
        let at = (id % BODY_POOL as u64) as usize * BODY_BYTES;
        self.0.slice(at..at + BODY_BYTES)
    }
}

/// A tiny deterministic generator (SplitMix64) for bodies and read positions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Roughly uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn per_sec(count: u64, elapsed: Duration) -> u64 {
    (count as f64 / elapsed.as_secs_f64().max(1e-9)) as u64
}

/// CPU microseconds per operation, two decimals.
fn per_op(cpu_us: u64, ops: u64) -> f64 {
    (cpu_us as f64 / ops.max(1) as f64 * 100.0).round() / 100.0
}
