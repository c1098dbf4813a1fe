//! Server-side figures read from `/proc/<pid>`.

use anyhow::{Context, Result};

/// A snapshot of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStats {
    /// Resident set size, bytes.
    pub(crate) rss_bytes: u64,
    /// User + system CPU time, microseconds.
    pub(crate) cpu_us: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/stat`.
    pub(crate) fn read(pid: u32) -> Result<ProcStats> {
        let context = || format!("cannot read /proc/{pid}");
        let id = i32::try_from(pid)
            .context("pid out of range")
            .with_context(context)?;
        let stat = procfs::process::Process::new(id)
            .and_then(|p| p.stat())
            .with_context(context)?;
        let ticks = procfs::ticks_per_second().max(1);
        Ok(ProcStats {
            rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
            cpu_us: (stat.utime + stat.stime).saturating_mul(1_000_000) / ticks,
        })
    }
}
