//! `roam bench ids`: the ID service in-process, and over gRPC on loopback TCP.
//!
//! One `IdService` on an embedded store in a temporary directory, on its own runtime (which
//! also runs the segment loads and the gRPC server, as in `roam serve`). Phases, each a share
//! of `--duration` (default 12 s):
//!
//! - `segment_ids_per_sec_1t`: one thread, `TagHandle::next_id` in a loop;
//! - `segment_ids_per_sec`: one such thread per core, one tag (one counter shared by all
//!   cores); `segment_ids_per_sec_tag_per_thread`: the same with a tag per thread;
//! - `snowflake_ids_per_sec` (ceiling 4,096,000/s per worker) and `sonyflake_ids_per_sec`
//!   (ceiling 25,600/s): one thread, one ID per call;
//! - `grpc_calls_per_sec`: `NextIds(count = 1)` from `--connections` concurrent callers
//!   (default 64) over 4 HTTP/2 connections to a tonic server on 127.0.0.1, with latency;
//! - `grpc_batched_ids_per_sec`: the same with `count = 1000`.
//!
//! `segment_waits` counts requests that found both buffers empty and waited for the store
//! (0 means callers never waited in the measurement).

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roam_idsvc::{IdMetrics, IdService, IdSource, IdsConfig, TagHandle, TagLabel};
use tokio_util::sync::CancellationToken;

use crate::args::BenchArgs;
use crate::progress::Progress;
use crate::report::{Report, latency_figures, latency_histogram};

const TAG: &str = "bench";
/// The tag's own step; the dynamic step grows it to `max_step` within the warm-up.
const STEP: u64 = 100_000;
const BATCH: u32 = 1_000;
const CHANNELS: usize = 4;

pub(crate) fn run(args: &BenchArgs) -> Result<Report> {
    let total = args.duration_or(12.0)?;
    let callers = args.connections_or(64, 4_096)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::Builder::new()
        .prefix("roam-bench-ids-")
        .tempdir()
        .context("cannot create a directory for the bench's store")?;

    // The service's runtime: segment loads, lease heartbeat and the gRPC server run here.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("ids-server")
        .enable_all()
        .build()?;
    let metrics = IdMetrics::default();
    let svc = server_rt.block_on(async {
        let spec = format!("embedded:{}", dir.path().display());
        let store = roam_store::Store::open(&spec).await?;
        let svc = IdService::start(store, IdsConfig::default(), metrics.clone()).await?;
        svc.create_tag(TAG, STEP, 1).await?;
        anyhow::Ok(svc)
    })?;
    let handle = server_rt.block_on(svc.tag(TAG))?;

    // Warm-up: the dynamic step climbs to its ceiling; then count waits from here.
    spin_segment(&handle, total / 24)?;
    let label = TagLabel { tag: TAG.into() };
    let waits_before = metrics.segment_waits.get_or_create(&label).get();

    let mut report = Report::new("ids");
    let phase = total / 6;
    let one = std::slice::from_ref(&handle);
    let seg_1t = on_threads(1, "segment 1t", phase, one)?;
    let seg_all = on_threads(cores, "segment", phase, one)?;
    let waits = metrics.segment_waits.get_or_create(&label).get() - waits_before;
    // The same with a tag per thread: no counter shared between cores.
    let mut own = Vec::new();
    for i in 0..cores {
        let tag = format!("{TAG}-{i}");
        server_rt.block_on(svc.create_tag(&tag, STEP, 1))?;
        let h = server_rt.block_on(svc.tag(&tag))?;
        spin_segment(&h, total / 24)?;
        own.push(h);
    }
    let seg_tags = on_threads(cores, "segment tags", phase / 2, &own)?;
    let snowflake = one_thread("snowflake", phase / 2, async || svc.next_snowflake().await)?;
    let sonyflake = one_thread("sonyflake", phase / 2, async || svc.next_sonyflake().await)?;
    report
        .figure("segment_ids_per_sec_1t", seg_1t)
        .figure("segment_ids_per_sec", seg_all)
        .figure("segment_ids_per_sec_tag_per_thread", seg_tags)
        .figure("segment_step", handle.state().step)
        .figure("segment_waits", waits)
        .figure("snowflake_ids_per_sec", snowflake)
        .figure("sonyflake_ids_per_sec", sonyflake);

    // gRPC over loopback TCP.
    let stop = CancellationToken::new();
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let server = server_rt.spawn(roam_idsvc::grpc::serve(listener, svc.clone(), stop.clone()));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("ids-client")
        .enable_all()
        .build()?;
    let grpc_phase = total / 4;
    let load = |count, rate, prefix, report: &mut Report| {
        client_rt.block_on(grpc_load(
            addr, callers, count, grpc_phase, report, rate, prefix,
        ))
    };
    let errors = load(1, "grpc_calls_per_sec", "grpc_call", &mut report)?
        + load(
            BATCH,
            "grpc_batched_ids_per_sec",
            "grpc_batched_call",
            &mut report,
        )?;
    report
        .figure("grpc_batch_size", BATCH)
        .figure("grpc_callers", callers as u64)
        .figure("grpc_errors", errors);

    stop.cancel();
    drop(client_rt);
    server_rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "bench gRPC server failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("bench gRPC server did not stop in time"),
        }
        svc.shutdown().await;
    });
    Ok(report)
}

/// Takes segment IDs one by one on this thread for `phase`; returns how many.
fn spin_segment(handle: &TagHandle, phase: Duration) -> Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < phase {
            for _ in 0..4096 {
                black_box(handle.next_id().await?);
            }
            n += 4096;
        }
        Ok(n)
    })
}

/// Takes segment IDs on `threads` threads at once (thread `i` from `handles[i % len]`);
/// returns the IDs per second of all of them.
fn on_threads(threads: usize, name: &str, phase: Duration, handles: &[TagHandle]) -> Result<u64> {
    let progress = Progress::new(name, phase);
    let start = Instant::now();
    let counts = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| s.spawn(move || spin_segment(&handles[i % handles.len()], phase)))
            .collect();
        while workers.iter().any(|w| !w.is_finished()) {
            progress.set(start.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| bail!("a bench thread panicked"))
            })
            .collect::<Result<Vec<u64>>>()
    })?;
    progress.finish();
    Ok(per_sec(counts.iter().sum(), start.elapsed()))
}

/// Calls `call` in a loop on one thread for `phase`; returns the calls per second.
fn one_thread(
    name: &str,
    phase: Duration,
    call: impl AsyncFn() -> Result<u64, roam_idsvc::IdError>,
) -> Result<u64> {
    let progress = Progress::new(name, phase);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = rt.block_on(async {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < phase {
            for _ in 0..256 {
                black_box(call().await?);
            }
            n += 256;
            progress.set(start.elapsed());
        }
        anyhow::Ok((n, start.elapsed()))
    })?;
    progress.finish();
    Ok(per_sec(n.0, n.1))
}

/// `callers` tasks over `CHANNELS` connections call `NextIds(count)` for `phase`; adds the
/// IDs per second as `rate` and the call latency under `prefix`; returns the failed calls.
async fn grpc_load(
    addr: std::net::SocketAddr,
    callers: usize,
    count: u32,
    phase: Duration,
    report: &mut Report,
    rate: &str,
    prefix: &str,
) -> Result<u64> {
    let uri = format!("http://{addr}");
    let mut sources = Vec::new();
    for _ in 0..CHANNELS.min(callers) {
        sources.push(IdSource::connect(&uri, Duration::from_secs(5)).await?);
    }
    let progress = Progress::new(prefix, phase);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..callers {
        let source = sources[i % sources.len()].clone();
        tasks.spawn(async move {
            let mut hist = latency_histogram();
            let (mut calls, mut errors) = (0u64, 0u64);
            let mut first_error = None;
            while start.elapsed() < phase {
                let t = Instant::now();
                match source.next_ids(TAG, count).await {
                    Ok(ids) if ids.len() == count as usize => {
                        calls += 1;
                        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = hist.record(us.max(1));
                    }
                    Ok(_) => errors += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (calls, errors, hist, first_error)
        });
    }
    let mut latency = latency_histogram();
    let (mut calls, mut errors, mut first_error) = (0, 0, None);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                let Some(done) = done else { break };
                let (c, e, h, f) = done.context("a gRPC caller panicked")?;
                calls += c;
                errors += e;
                latency.add(&h).context("merging latency histograms")?;
                if first_error.is_none() {
                    first_error = f;
                }
            }
            _ = tick.tick() => progress.set(start.elapsed()),
        }
    }
    let elapsed = start.elapsed();
    progress.finish();
    if calls == 0 {
        bail!(
            "gRPC: no call succeeded: {}",
            first_error.unwrap_or_default()
        );
    }
    report.figure(rate, per_sec(calls * u64::from(count), elapsed));
    latency_figures(report, prefix, &latency);
    Ok(errors)
}

fn per_sec(n: u64, elapsed: Duration) -> u64 {
    (n as f64 / elapsed.as_secs_f64().max(1e-9)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn reports_every_figure_the_issue_names() {
        let cli = Cli::parse_from(["bench", "ids", "--duration", "1.2", "--connections", "4"]);
        let report = run(&cli.args).unwrap();
        for name in [
            "segment_ids_per_sec_1t",
            "segment_ids_per_sec",
            "snowflake_ids_per_sec",
            "grpc_calls_per_sec",
            "grpc_batched_ids_per_sec",
        ] {
            let v = report.get(name).and_then(|v| v.as_u64()).unwrap();
            assert!(v > 0, "{name} = {v}");
        }
        assert_eq!(report.get("grpc_errors").and_then(|v| v.as_u64()), Some(0));
    }
}
