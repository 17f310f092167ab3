//! `msh demo`: builds the examples and prints the harvest table.

use crate::bench::harvest::{self, HarvestOptions};
use anyhow::Result;
use indicatif::ProgressBar;
use std::time::Duration;

/// `msh demo` options.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Runs per setup (the table shows medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
}

/// Runs `msh demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    let runs = args.runs as usize;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("building libmsh and the C examples");
    spinner.enable_steady_tick(Duration::from_millis(120));
    crate::examples::build()?;
    spinner.finish_and_clear();

    let opts = HarvestOptions {
        runs,
        ..HarvestOptions::default()
    };
    let bar = harvest::progress_bar(4 * runs as u64, "measuring");
    let r = harvest::run(&opts, &bar)?;
    bar.finish_and_clear();

    println!(
        "msh demo: {} MiB pointer chase (primary) + compute scavenger, budget {} ns, median of {} runs\n",
        r.mib, r.budget_ns, r.runs
    );
    println!(
        "{:<44} {:>12} {:>10} {:>16} {:>14}",
        "", "primary", "primary", "scavenger", "scavenger"
    );
    println!(
        "{:<44} {:>12} {:>10} {:>16} {:>14}",
        "setup", "ns/hop", "slowdown", "Munits/s", "core share"
    );
    let row = |name: &str,
               hop: Option<f64>,
               slow: Option<f64>,
               units: Option<f64>,
               share: Option<f64>| {
        let cell =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        println!(
            "{:<44} {:>12} {:>10} {:>16} {:>14}",
            name,
            cell(hop, &|v| format!("{v:.1}")),
            cell(slow, &|v| format!("{:+.1}%", v * 100.0)),
            cell(units, &|v| format!("{:.1}", v / 1e6)),
            cell(share, &|v| format!("{:.0}%", v * 100.0)),
        );
    };
    row(
        "primary alone",
        Some(r.ns_per_hop_alone),
        Some(0.0),
        None,
        None,
    );
    row(
        "scavenger alone",
        None,
        None,
        Some(r.scavenger_alone_units_per_s),
        Some(1.0),
    );
    row(
        "both, with msh (one thread)",
        Some(r.ns_per_hop_msh),
        Some(r.primary_slowdown),
        Some(r.scavenger_msh_units_per_s),
        Some(r.scavenger_core_fraction),
    );
    if let (Some(ns), Some(slow), Some(share)) = (
        r.os_threads_primary_ns,
        r.os_threads_primary_slowdown,
        r.os_threads_scavenger_core_fraction,
    ) {
        row(
            "both, as two OS threads pinned to one core",
            Some(ns / r.hops as f64),
            Some(slow),
            Some(share * r.scavenger_alone_units_per_s),
            Some(share),
        );
    }
    println!(
        "\nWith msh the scavenger ran in the primary's memory stalls: {:.0}% of a core for {:+.1}% primary time.",
        r.scavenger_core_fraction * 100.0,
        r.primary_slowdown * 100.0
    );
    Ok(())
}
