//! The parent's handle on its worker processes: starts them (this binary again, as
//! `roam bench idle-conns-worker`), writes their lines, reads theirs on a thread each, and
//! ends them: stdin closed, a wait, then a kill.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::WORKER;
use super::protocol::{Job, WorkerMsg};

/// The worker processes of a run. Dropping it kills and reaps every one still running.
pub(super) struct Workers {
    procs: Vec<(Child, Option<ChildStdin>)>,
    lines: mpsc::Receiver<(usize, Option<WorkerMsg>)>,
}

impl Workers {
    pub(super) fn spawn(exe: &Path, jobs: &[Job]) -> Result<Workers> {
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
    pub(super) fn send(&mut self, k: usize, line: &str) -> Result<()> {
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
    pub(super) fn recv(&self, deadline: Instant) -> Result<(usize, Option<WorkerMsg>)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(wait).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => anyhow!("the workers did not finish in time"),
            mpsc::RecvTimeoutError::Disconnected => anyhow!("every worker is gone"),
        })
    }

    /// A line if one is waiting.
    pub(super) fn try_recv(&self) -> Option<(usize, Option<WorkerMsg>)> {
        self.lines.try_recv().ok()
    }

    /// Closes every worker's stdin (they close their connections and exit), waits up to
    /// 10 s for them, then kills what is left (in `drop`).
    pub(super) fn finish(mut self) {
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
