//! `roam bench`: dispatches a scenario to the harness in `roam_client::bench` and prints its
//! report (summary, then the JSON line last on stdout).

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
