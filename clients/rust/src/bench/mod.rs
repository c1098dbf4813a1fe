//! The `roam bench` harness (SPEC.md §6) and the scenarios that need no server internals.
//!
//! A scenario gets the parsed [`BenchArgs`], does bounded work (count and time) against
//! loopback only, and returns a [`Report`]: named figures with their unit in the name
//! (`_per_sec`, `_us`, `_ms`, `_bytes`). [`run`] prints the human summary and then the JSON
//! object as the last line on stdout. Server-side figures come from `/proc/<server pid>`
//! ([`ProcStats`]) so the load generator's own cost never counts. Without `--target`, a
//! scenario that needs a server starts its own with [`crate::child::ChildServer`].
//!
//! Scenarios here: `frame-codec` (the codec alone, one core) and `handshake` (TLS 1.3
//! handshakes + one HTTP request against the client port). The `roam` binary adds the
//! scenarios that run server internals in-process.

mod codec;
mod handshake;
mod proc;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use proc::ProcStats;
pub use report::{Progress, Report, latency_figures, latency_histogram};

/// `roam bench SCENARIO [...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The scenario: frame-codec, handshake (and those the binary adds; see docs/benchmarks.md).
    pub scenario: String,
    /// Seconds of measurement (each scenario has a default).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Concurrent connections or workers.
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Offered load, operations per second.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<u64>,
    /// Room members (room-fanout).
    #[arg(long, value_name = "M")]
    pub members: Option<usize>,
    /// Transport to use, where a scenario offers several.
    #[arg(long, value_name = "T")]
    pub transport: Option<String>,
    /// Address of a running server instead of a private child server.
    #[arg(long, value_name = "ADDR", requires = "server_pid")]
    pub target: Option<SocketAddr>,
    /// Pid of the `--target` server, for server-side figures from /proc.
    #[arg(long, value_name = "PID", requires = "target")]
    pub server_pid: Option<u32>,
    /// CA certificate (PEM) to trust for a `--target` server (a child's dev cert otherwise).
    #[arg(long, value_name = "FILE", requires = "target")]
    pub ca: Option<PathBuf>,
}

impl BenchArgs {
    /// `--duration` or the scenario's default, as a [`Duration`].
    pub fn duration_or(&self, default_secs: f64) -> Result<Duration, BenchError> {
        let secs = self.duration.unwrap_or(default_secs);
        if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
            return Err(BenchError::Usage(format!(
                "--duration {secs}: must be above 0 and at most 3600 seconds"
            )));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// `--connections` or the scenario's default, bounded by `max`.
    pub fn connections_or(&self, default: usize, max: usize) -> Result<usize, BenchError> {
        let n = self.connections.unwrap_or(default);
        if n == 0 || n > max {
            return Err(BenchError::Usage(format!(
                "--connections {n}: must be between 1 and {max}"
            )));
        }
        Ok(n)
    }
}

/// Why a benchmark could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The arguments do not fit the scenario.
    #[error("{0}")]
    Usage(String),
    /// The private server could not be started or stopped.
    #[error(transparent)]
    Child(#[from] crate::child::ChildError),
    /// TLS configuration (e.g. the CA file).
    #[error(transparent)]
    Tls(#[from] roam_tls::TlsError),
    /// Reading `/proc/<pid>` failed.
    #[error("cannot read /proc/{pid}: {detail}")]
    Proc {
        /// The process.
        pid: u32,
        /// What procfs said.
        detail: String,
    },
    /// Every attempt of the scenario failed; the first error says why.
    #[error("{scenario}: no operation succeeded: {first_error}")]
    NothingSucceeded {
        /// The scenario.
        scenario: &'static str,
        /// The first failure.
        first_error: String,
    },
    /// Any other I/O failure (e.g. starting the runtime).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs a scenario of this crate and prints its report. `Ok(None)` if the name is not one of
/// this crate's scenarios (the caller may know it).
pub fn run_known(args: &BenchArgs) -> Result<Option<Report>, BenchError> {
    let report = match args.scenario.as_str() {
        "frame-codec" => codec::run(args)?,
        "handshake" => handshake::run(args)?,
        _ => return Ok(None),
    };
    Ok(Some(report))
}

/// The scenarios of this crate, for help and error messages.
pub const SCENARIOS: &[&str] = &["frame-codec", "handshake"];
