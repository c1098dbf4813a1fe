//! Server-side figures read from `/proc/<pid>`.

use super::BenchError;

/// A snapshot of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, microseconds.
    pub cpu_us: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/stat`.
    pub fn read(pid: u32) -> Result<ProcStats, BenchError> {
        let err = |e: procfs::ProcError| BenchError::Proc {
            pid,
            detail: e.to_string(),
        };
        let id = i32::try_from(pid).map_err(|_| BenchError::Proc {
            pid,
            detail: "pid out of range".into(),
        })?;
        let stat = procfs::process::Process::new(id)
            .and_then(|p| p.stat())
            .map_err(err)?;
        let ticks = procfs::ticks_per_second().max(1);
        Ok(ProcStats {
            rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
            cpu_us: (stat.utime + stat.stime).saturating_mul(1_000_000) / ticks,
        })
    }
}
