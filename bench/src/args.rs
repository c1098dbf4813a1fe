//! The command line of `roam bench` and the checks of its values that every scenario shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

/// `roam bench SCENARIO [...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The scenario (see docs/benchmarks.md): chat, frame-codec, handshake, ids, idle-conns,
    /// push, room-fanout, store-append, store-read.
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
    pub(crate) fn duration_or(&self, default_secs: f64) -> Result<Duration> {
        let secs = self.duration.unwrap_or(default_secs);
        if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
            bail!("--duration {secs}: must be above 0 and at most 3600 seconds");
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// `--duration` or `default_secs`, at most `max_secs` for `scenario`.
    pub(crate) fn duration_at_most(
        &self,
        default_secs: f64,
        max_secs: f64,
        scenario: &str,
    ) -> Result<Duration> {
        let duration = self.duration_or(default_secs)?;
        if duration.as_secs_f64() > max_secs {
            bail!(
                "--duration {}: at most {max_secs} seconds for {scenario}",
                duration.as_secs_f64()
            );
        }
        Ok(duration)
    }

    /// `--connections` or the scenario's default, bounded by `max`.
    pub(crate) fn connections_or(&self, default: usize, max: usize) -> Result<usize> {
        let n = self.connections.unwrap_or(default);
        if n == 0 || n > max {
            bail!("--connections {n}: must be between 1 and {max}");
        }
        Ok(n)
    }

    /// Refuses `--target`: `scenario` runs its own server, because it needs that server's
    /// data directory for `what` (e.g. "tokens").
    pub(crate) fn refuse_target(&self, scenario: &str, what: &str) -> Result<()> {
        if self.target.is_some() {
            bail!(
                "{scenario} runs its own server (it needs the server's data directory for {what}): drop --target"
            );
        }
        Ok(())
    }
}
