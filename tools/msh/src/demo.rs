//! `msh demo`: builds the examples and prints the harvest table.

use crate::bench::harvest::{self, HarvestOptions, Mode};
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

    // The linked chase, and the same chase with no msh in its source (profiled,
    // rewritten, run under `msh run`), interleaved in the same runs. The second needs
    // perf_event_open: where the profiler can't run, the demo says why and goes on.
    let linked = HarvestOptions {
        runs,
        ..HarvestOptions::default()
    };
    let both = HarvestOptions {
        also: vec![Mode::Rewritten],
        ..linked.clone()
    };
    let bar = harvest::progress_bar(5 * runs as u64, "measuring");
    let (r, unmodified_error) = match harvest::run(&both, &bar) {
        Ok(r) => (r, None),
        Err(err) => {
            bar.reset();
            (harvest::run(&linked, &bar)?, Some(err))
        }
    };
    bar.finish_and_clear();
    let u = r.also.first();

    println!(
        "msh demo: {} MiB pointer chase (primary) + compute scavenger, budget {} ns, median of {} runs\n",
        r.mib, r.budget_ns, r.runs
    );
    let row = |name: &str,
               hop: Option<f64>,
               slow: Option<f64>,
               units: Option<f64>,
               share: Option<f64>| {
        let cell =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        println!(
            "{:<46} {:>9} {:>9} {:>10} {:>10}",
            name,
            cell(hop, &|v| format!("{v:.1}")),
            cell(slow, &|v| format!("{:+.1}%", v * 100.0)),
            cell(units, &|v| format!("{:.1}", v / 1e6)),
            cell(share, &|v| format!("{:.0}%", v * 100.0)),
        );
    };
    println!(
        "{:<46} {:>9} {:>9} {:>10} {:>10}",
        "", "primary", "primary", "scavenger", "scavenger"
    );
    println!(
        "{:<46} {:>9} {:>9} {:>10} {:>10}",
        "setup", "ns/hop", "slowdown", "Munits/s", "core share"
    );
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
        "msh: yield in the source, libmsh.a linked",
        Some(r.ns_per_hop_msh),
        Some(r.primary_slowdown),
        Some(r.scavenger_msh_units_per_s),
        Some(r.scavenger_core_fraction),
    );
    if let Some(u) = u {
        row(
            "msh: unmodified binary, profiled + rewritten",
            Some(u.ns_per_hop_msh),
            Some(u.primary_slowdown),
            Some(u.scavenger_msh_units_per_s),
            Some(u.scavenger_core_fraction),
        );
    }
    if let (Some(ns), Some(slow), Some(share)) = (
        r.os_threads_primary_ns,
        r.os_threads_primary_slowdown,
        r.os_threads_scavenger_core_fraction,
    ) {
        row(
            "no msh: two OS threads pinned to one core",
            Some(ns / r.hops as f64),
            Some(slow),
            Some(share * r.scavenger_alone_units_per_s),
            Some(share),
        );
    }
    println!();
    match (u.and_then(|u| u.pipeline.as_ref()), &unmodified_error) {
        (Some(p), _) => println!(
            "Unmodified binary: msh profile ({}) ranked {} first with {:.0}% of the events; \
             msh rewrite patched {} site there (its switch path saves {} registers); msh run \
             preloaded libmsh.so with the compute scavenger as its pool.",
            p.profile_backend,
            p.site,
            p.site_share * 100.0,
            p.patched,
            p.saved_registers
                .split(',')
                .filter(|r| !r.is_empty())
                .count(),
        ),
        (None, Some(err)) => println!("Unmodified binary: not run here: {err:#}"),
        (None, None) => {}
    }
    println!(
        "With msh the scavenger ran in the primary's memory stalls: {:.0}% of a core for {:+.1}% primary time.",
        r.scavenger_core_fraction * 100.0,
        r.primary_slowdown * 100.0
    );
    Ok(())
}
