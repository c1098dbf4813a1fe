//! # roam-bench — `roam bench`, the load generator of docs/contract.md §6
//!
//! The `roam` binary parses [`BenchArgs`] and calls [`run`]; everything else is here.
//!
//! - A scenario gets the parsed [`BenchArgs`], does bounded work (count and time) against
//!   loopback only, and returns a `Report`: named figures with their unit in the name
//!   (`_per_sec`, `_us`, `_ms`, `_bytes`). [`run`] prints the human summary and then the JSON
//!   object as the last line on stdout (`report.rs`), with a progress bar on stderr
//!   (`progress.rs`).
//! - Scenarios (`scenarios/`, one file each, and `idle_conns/`): `frame-codec`, `handshake`,
//!   `ids`, `idle-conns`, `push`, `roam-switch`, `room-fanout`, `chat`, `store-append`, `store-read`
//!   (docs/benchmarks.md says what each measures).
//! - Server-side figures come from `/proc/<server pid>` (`proc.rs`) so the load generator's
//!   own cost never counts. Without `--target`, a scenario that needs a server starts its
//!   own: [`child::ChildServer`], whose configuration the scenarios write in one place
//!   (`server.rs`). The end-to-end tests (`tests/`) start their servers with the same
//!   launcher.
//! - Client connections for the scenarios that hold thousands (`conn.rs`: raw or WebSocket,
//!   over `roam_client`'s transports, from a chosen loopback source address), and what the
//!   processes of a run share (`process.rs`: the open-file limit).
//! - `idle-conns` spreads its connections over worker processes: this binary again, as the
//!   hidden scenario `idle-conns-worker` (`idle_conns/worker.rs`), driven over its stdin and
//!   stdout by JSON lines (`idle_conns/protocol.rs`) from the parent (`idle_conns/workers.rs`,
//!   `idle_conns/mod.rs`).
//!
//! Errors are `anyhow` throughout: this is the binary's side, and each error ends as one
//! line on stderr.

#![forbid(unsafe_code)]

pub mod child;

mod args;
mod conn;
mod idle_conns;
mod proc;
mod process;
mod progress;
mod report;
mod scenarios;
mod server;

use anyhow::{Result, bail};

pub use args::BenchArgs;

/// Every scenario, for help and error messages.
const SCENARIOS: &[&str] = &[
    "chat",
    "frame-codec",
    "handshake",
    "ids",
    "idle-conns",
    "push",
    "roam-switch",
    "room-fanout",
    "store-append",
    "store-read",
];

/// Runs the scenario named in `args` and prints its report (summary, then the JSON line last
/// on stdout).
pub fn run(args: BenchArgs) -> Result<()> {
    // A worker process of idle-conns (hidden: it reports to its parent, not to a person).
    if args.scenario == idle_conns::WORKER {
        return idle_conns::worker::run();
    }
    let report = match args.scenario.as_str() {
        "chat" => scenarios::chat::run(&args)?,
        "frame-codec" => scenarios::frame_codec::run(&args)?,
        "handshake" => scenarios::handshake::run(&args)?,
        "ids" => scenarios::ids::run(&args)?,
        "idle-conns" => idle_conns::run(&args)?,
        "push" => scenarios::push::run(&args)?,
        "roam-switch" => scenarios::roam_switch::run(&args)?,
        "room-fanout" => scenarios::room_fanout::run(&args)?,
        "store-append" => scenarios::store::run_append(&args)?,
        "store-read" => scenarios::store::run_read(&args)?,
        _ => bail!(
            "unknown scenario {:?}; known: {}",
            args.scenario,
            SCENARIOS.join(", ")
        ),
    };
    report.print();
    Ok(())
}
