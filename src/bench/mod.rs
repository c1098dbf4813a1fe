//! `roam bench`: dispatches a scenario and prints its report (summary, then the JSON line
//! last on stdout).
//!
//! The harness and the scenarios that need only a client live in `roam_client::bench`; the
//! scenarios here run server internals in-process (they need the server crates), one module
//! each, reusing that harness (`Report`, `ProcStats`, `Progress`, latency histograms).

use anyhow::{Result, bail};
use roam_client::bench::{BenchArgs, SCENARIOS, run_known};

/// Runs the scenario named in `args`.
pub fn run(args: BenchArgs) -> Result<()> {
    let Some(report) = run_known(&args)? else {
        bail!(
            "unknown scenario {:?}; known: {}",
            args.scenario,
            SCENARIOS.join(", ")
        );
    };
    report.print();
    Ok(())
}
