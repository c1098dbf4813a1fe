//! `roam bench`: dispatches a scenario and prints its report (summary, then the JSON line
//! last on stdout).
//!
//! The harness and the scenarios that need only a client live in `roam_client::bench`; the
//! scenarios here run server internals in-process (they need the server crates), one module
//! each, reusing that harness (`Report`, `ProcStats`, `Progress`, latency histograms).

mod idle_conns;
mod ids;
mod push;
mod room_fanout;
mod server;
mod store;

use anyhow::{Result, bail};
use roam_client::bench::{BenchArgs, SCENARIOS, run_known};

/// The scenarios of this binary (after those of `roam_client::bench::SCENARIOS`).
const LOCAL_SCENARIOS: &[&str] = &[
    "ids",
    "idle-conns",
    "push",
    "room-fanout",
    "store-append",
    "store-read",
];

/// Runs the scenario named in `args`.
pub fn run(args: BenchArgs) -> Result<()> {
    // A worker process of idle-conns (hidden: it reports to its parent, not to a person).
    if args.scenario == idle_conns::WORKER {
        return idle_conns::worker();
    }
    let report = match run_known(&args)? {
        Some(report) => report,
        None => match args.scenario.as_str() {
            "ids" => ids::run(&args)?,
            "idle-conns" => idle_conns::run(&args)?,
            "push" => push::run(&args)?,
            "room-fanout" => room_fanout::run(&args)?,
            "store-append" => store::run_append(&args)?,
            "store-read" => store::run_read(&args)?,
            _ => bail!(
                "unknown scenario {:?}; known: {}",
                args.scenario,
                SCENARIOS
                    .iter()
                    .chain(LOCAL_SCENARIOS)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    report.print();
    Ok(())
}
