//! `msh bench harvest`: the 64 MiB pointer chase (primary) with the compute scavenger,
//! alone, with msh, and as two OS threads pinned to one CPU. All runs are interleaved
//! so that noise from the machine hits every mode alike; figures are medians of the
//! per-run ratios.

use crate::examples::{self, median, Chase, Compute};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How the primary gets its yield point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// ptrchase_msh: MSH_PREFETCH_YIELD in the source, linked with libmsh.a.
    Linked,
    /// The plain ptrchase, rewritten by `msh rewrite` at its chase load, under `msh run`.
    Rewritten,
}

/// `msh bench harvest` options.
#[derive(clap::Args, Debug)]
pub struct HarvestArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Budget per switch in ns (default: the runtime's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub budget_ns: Option<u64>,
    /// Where the primary's yield point comes from.
    #[arg(long, value_enum, default_value = "linked")]
    pub mode: Mode,
    /// Sweep budgets and print the trade-off curve.
    #[arg(long, conflicts_with = "budget_ns")]
    pub sweep: bool,
    /// Size of the chased table.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    pub mib: u64,
    /// Hops per run.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub hops: u64,
    /// Runs per setup (figures are medians).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub runs: u64,
}

/// Runs `msh bench harvest`.
pub fn run_cli(args: &HarvestArgs) -> Result<()> {
    examples::build()?;
    let base = HarvestOptions {
        mode: args.mode,
        budget_ns: args.budget_ns,
        mib: args.mib,
        hops: args.hops,
        runs: args.runs as usize,
        os_threads: true,
    };
    let runs = base.runs;
    if args.sweep {
        let budgets = SWEEP_BUDGETS;
        let bar = progress_bar((budgets.len() * 4 * runs) as u64, "sweeping");
        let mut rows = Vec::new();
        for (i, budget) in budgets.into_iter().enumerate() {
            let opts = HarvestOptions {
                budget_ns: Some(budget),
                os_threads: i == 0,
                ..base.clone()
            };
            rows.push(run(&opts, &bar)?);
        }
        bar.finish_and_clear();
        if args.json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            println!(
                "{:>10} {:>18} {:>24}",
                "budget_ns", "primary_slowdown", "scavenger_core_fraction"
            );
            for r in &rows {
                println!(
                    "{:>10} {:>17.1}% {:>23.1}%",
                    r.budget_ns,
                    r.primary_slowdown * 100.0,
                    r.scavenger_core_fraction * 100.0
                );
            }
        }
    } else {
        let bar = progress_bar(4 * runs as u64, "measuring");
        let report = run(&base, &bar)?;
        bar.finish_and_clear();
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct HarvestOptions {
    pub mode: Mode,
    /// Budget per switch; None = the runtime's default.
    pub budget_ns: Option<u64>,
    pub mib: u64,
    pub hops: u64,
    pub runs: usize,
    /// Also measure the OS-threads baseline.
    pub os_threads: bool,
}

impl Default for HarvestOptions {
    fn default() -> Self {
        HarvestOptions {
            mode: Mode::Linked,
            budget_ns: None,
            mib: 64,
            hops: 2_000_000,
            runs: 5,
            os_threads: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HarvestReport {
    pub mode: &'static str,
    pub budget_ns: u64,
    pub mib: u64,
    pub hops: u64,
    pub runs: usize,
    pub primary_alone_ns: f64,
    pub primary_msh_ns: f64,
    pub primary_slowdown: f64,
    pub ns_per_hop_alone: f64,
    pub ns_per_hop_msh: f64,
    pub scavenger_alone_units_per_s: f64,
    pub scavenger_msh_units_per_s: f64,
    pub scavenger_core_fraction: f64,
    pub os_threads_primary_ns: Option<f64>,
    pub os_threads_primary_slowdown: Option<f64>,
    pub os_threads_scavenger_core_fraction: Option<f64>,
}

fn chase_args(opts: &HarvestOptions, mode: &str) -> Vec<String> {
    let mut args = vec![
        "-m".into(),
        opts.mib.to_string(),
        "-n".into(),
        opts.hops.to_string(),
        "--mode".into(),
        mode.into(),
    ];
    if mode == "msh" {
        if let Some(budget) = opts.budget_ns {
            args.extend(["-b".into(), budget.to_string()]);
        }
    }
    args
}

/// The plain ptrchase rewritten at the first load of `chase` (the one that misses),
/// through a one-site version-1 profile, and a pool with the compute scavenger.
fn prepare_rewritten() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    use msh_rewrite::{rewrite, Options, Selection};
    let build = examples::build_dir();
    let plain = build.join("ptrchase");
    let scratch = rewrite(&Options {
        input: plain.clone(),
        output: build.join("ptrchase.all-loads"),
        selection: Selection::AllLoads,
        allow_call_windows: false,
    })?;
    let site = scratch
        .sites
        .iter()
        .filter(|site| {
            site.symbol
                .as_deref()
                .is_some_and(|name| name.starts_with("chase+"))
        })
        .min_by_key(|site| {
            u64::from_str_radix(site.offset.trim_start_matches("0x"), 16).unwrap_or(u64::MAX)
        })
        .context("the rewriter found no load in ptrchase's chase()")?;
    let profile = build.join("ptrchase.profile.json");
    let json = serde_json::json!({
        "version": 1,
        "backend": "bench",
        "objects": [{
            "path": plain.display().to_string(),
            "build_id": scratch.build_id,
            "sites": [{ "offset": site.offset, "symbol": site.symbol, "share": 1.0 }],
        }],
    });
    std::fs::write(&profile, json.to_string())?;
    let rewritten = build.join("ptrchase.msh");
    rewrite(&Options {
        input: plain,
        output: rewritten.clone(),
        selection: Selection::Profile {
            path: profile,
            min_share: None,
            top: None,
        },
        allow_call_windows: false,
    })?;
    let pool = build.join("bench-harvest.pool");
    std::fs::write(
        &pool,
        format!("{}\n", build.join("compute_scav.so").display()),
    )?;
    Ok((rewritten, pool))
}

/// Runs the benchmark; `progress` counts steps (4 per run).
pub fn run(opts: &HarvestOptions, progress: &ProgressBar) -> Result<HarvestReport> {
    if opts.runs == 0 || opts.hops == 0 || opts.mib == 0 {
        bail!("--runs, --hops and --mib must be positive");
    }
    let rewritten = match opts.mode {
        Mode::Linked => None,
        Mode::Rewritten => Some(prepare_rewritten()?),
    };
    let mut alone_ns = Vec::new();
    let mut msh_ns = Vec::new();
    let mut slowdown = Vec::new();
    let mut fraction = Vec::new();
    let mut scav_alone = Vec::new();
    let mut scav_msh = Vec::new();
    let (mut os_ns, mut os_slowdown, mut os_fraction) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let compute: Compute = examples::run_json("compute", &["-t".into(), "0.3".into()])?;
        progress.inc(1);
        let alone: Chase = examples::run_json("ptrchase", &chase_args(opts, "alone"))?;
        progress.inc(1);
        let with_msh: Chase = match &rewritten {
            None => examples::run_json("ptrchase_msh", &chase_args(opts, "msh"))?,
            Some((program, pool)) => {
                let mut extra = vec!["--abandon-at-exit".to_string(), "--stats".to_string()];
                if let Some(budget) = opts.budget_ns {
                    extra.extend(["--budget-ns".to_string(), budget.to_string()]);
                }
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let prefix = super::attach::msh_run_prefix(pool, &extra)?;
                let args = chase_args(opts, "alone");
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (mut chase, stderr) = super::attach::run_chase(&prefix, program, &args)?;
                chase.scavenger_units = super::attach::scavenger_yields(&stderr)? as u64;
                chase
            }
        };
        progress.inc(1);
        if with_msh.checksum != alone.checksum {
            bail!("ptrchase under msh computed a different checksum: the switch corrupted the primary");
        }
        alone_ns.push(alone.elapsed_ns);
        msh_ns.push(with_msh.elapsed_ns);
        slowdown.push(with_msh.elapsed_ns / alone.elapsed_ns - 1.0);
        fraction.push(with_msh.units_per_s() / compute.units_per_s);
        scav_alone.push(compute.units_per_s);
        scav_msh.push(with_msh.units_per_s());
        if opts.os_threads {
            let os: Chase = examples::run_json("ptrchase", &chase_args(opts, "os-threads"))?;
            os_ns.push(os.elapsed_ns);
            os_slowdown.push(os.elapsed_ns / alone.elapsed_ns - 1.0);
            os_fraction.push(os.units_per_s() / compute.units_per_s);
        }
        progress.inc(1);
    }
    let optional = |v: &mut Vec<f64>| (!v.is_empty()).then(|| median(v));
    let primary_alone_ns = median(&mut alone_ns);
    let primary_msh_ns = median(&mut msh_ns);
    Ok(HarvestReport {
        mode: match opts.mode {
            Mode::Linked => "linked",
            Mode::Rewritten => "rewritten",
        },
        budget_ns: opts.budget_ns.unwrap_or(msh_core::sched::DEFAULT_BUDGET_NS),
        mib: opts.mib,
        hops: opts.hops,
        runs: opts.runs,
        primary_alone_ns,
        primary_msh_ns,
        primary_slowdown: median(&mut slowdown),
        ns_per_hop_alone: primary_alone_ns / opts.hops as f64,
        ns_per_hop_msh: primary_msh_ns / opts.hops as f64,
        scavenger_alone_units_per_s: median(&mut scav_alone),
        scavenger_msh_units_per_s: median(&mut scav_msh),
        scavenger_core_fraction: median(&mut fraction),
        os_threads_primary_ns: optional(&mut os_ns),
        os_threads_primary_slowdown: optional(&mut os_slowdown),
        os_threads_scavenger_core_fraction: optional(&mut os_fraction),
    })
}

/// Budgets swept by `--sweep`.
pub const SWEEP_BUDGETS: [u64; 7] = [0, 50, 100, 150, 200, 300, 500];

pub fn progress_bar(steps: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}
