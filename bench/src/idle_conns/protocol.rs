//! The protocol between idle-conns and its worker processes: JSON lines. The parent writes
//! one [`Job`] line on a worker's stdin, then `probe` lines; the worker answers with
//! [`WorkerMsg`] lines on its stdout, holds its connections until its stdin closes, and exits
//! then.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::conn::Transport;

/// The line that asks every connection of a worker for one heartbeat round trip.
pub(crate) const PROBE: &str = "probe";

/// A worker's job: connections `first .. first + count`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) transport: Transport,
    pub(crate) target: SocketAddr,
    pub(crate) ca: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) first: usize,
    pub(crate) count: usize,
}

/// A worker's report, one JSON line on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum WorkerMsg {
    /// Connections set up (and failed) so far.
    Progress(SetUp),
    /// Every connection of the job is set up or failed.
    Ready {
        #[serde(flatten)]
        set_up: SetUp,
        first_error: Option<String>,
    },
    /// The answer to `probe`.
    Probed(Liveness),
}

/// A worker's connections set up, and those that failed, so far.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct SetUp {
    pub(crate) established: u64,
    pub(crate) failed: u64,
}

/// A worker's answer to `probe`: connections that answered a heartbeat, connections closed,
/// frames received while idle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Liveness {
    pub(crate) alive: u64,
    pub(crate) closed: u64,
    pub(crate) unexpected_frames: u64,
}
