//! `msh bench harvest`: the 64 MiB pointer chase (primary) with the compute scavenger,
//! alone, with msh, and as two OS threads pinned to one CPU. All runs are interleaved
//! so that noise from the machine hits every mode alike; figures are medians of the
//! per-run ratios.

use crate::examples::{self, Chase, Compute};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use msh_profile::stats::median;
use serde::Serialize;
use std::path::PathBuf;

/// How the primary gets its yield point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// ptrchase_msh: MSH_PREFETCH_YIELD in the source, linked with libmsh.a.
    Linked,
    /// The plain ptrchase (no msh in its source), profiled by `msh profile`, rewritten
    /// by `msh rewrite` at the top site, run under `msh run` with the compute pool.
    Rewritten,
}

/// How the scavenger gives the core back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScavengerBuild {
    /// compute.c as written: `msh_yield()` after each unit of work.
    Explicit,
    /// compute.c built without any `msh_yield()` (-DMSH_NO_YIELD) and rewritten by
    /// `msh rewrite --scavenger`, measured against the explicit build with the same
    /// primary (the rewritten ptrchase under `msh run`) in the same interleaved runs.
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
    /// Find the budget online instead (the runtime's --max-slowdown, 0 to 1).
    #[arg(long, value_name = "F", conflicts_with = "sweep", value_parser = crate::run::parse_fraction)]
    pub max_slowdown: Option<f64>,
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
    /// The scavenger: `rewritten` measures compute built without yields and rewritten
    /// with `msh rewrite --scavenger` beside the explicit-yield build (implies
    /// `--mode rewritten`: both run under `msh run` with the same primary).
    #[arg(long, value_enum, default_value = "explicit")]
    pub scavenger: ScavengerBuild,
    /// With `--scavenger rewritten`: the rewriter's --yield-every-ns.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub yield_every_ns: Option<u64>,
}

/// Runs `msh bench harvest`.
pub fn run_cli(args: &HarvestArgs) -> Result<()> {
    examples::build()?;
    let rewritten_scavenger = args.scavenger == ScavengerBuild::Rewritten;
    let base = HarvestOptions {
        mode: if rewritten_scavenger {
            Mode::Rewritten
        } else {
            args.mode
        },
        scavenger: args.scavenger,
        yield_every_ns: args.yield_every_ns,
        budget_ns: args.budget_ns,
        max_slowdown_permille: args.max_slowdown.map(|f| (f * 1000.0).round() as u32),
        mib: args.mib,
        hops: args.hops,
        runs: args.runs as usize,
        os_threads: true,
        also: Vec::new(),
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
        super::print_json(&report, args.json)?;
    }
    Ok(())
}

/// What `msh bench harvest` measures.
#[derive(Debug, Clone)]
pub struct HarvestOptions {
    /// How the primary gets its yield points.
    pub mode: Mode,
    /// Budget per switch; None = the runtime's default.
    pub budget_ns: Option<u64>,
    /// Find the budget online with this allowance; None = fixed.
    pub max_slowdown_permille: Option<u32>,
    /// Size of the chased table, MiB.
    pub mib: u64,
    /// Pointer-chase hops per primary run.
    pub hops: u64,
    /// Interleaved runs; figures are medians.
    pub runs: usize,
    /// Also measure the OS-threads baseline.
    pub os_threads: bool,
    /// Other modes to measure in the same interleaved runs (the demo's rows).
    pub also: Vec<Mode>,
    /// `Rewritten`: with `Mode::Rewritten`, the explicit-yield compute and the
    /// rewritten one (reported under `also`), both counted through `COMPUTE_COUNTER`.
    pub scavenger: ScavengerBuild,
    /// `msh rewrite --scavenger --yield-every-ns` (None: the rewriter's default).
    pub yield_every_ns: Option<u64>,
}

impl Default for HarvestOptions {
    fn default() -> Self {
        HarvestOptions {
            mode: Mode::Linked,
            budget_ns: None,
            max_slowdown_permille: None,
            mib: 64,
            hops: 2_000_000,
            runs: 5,
            os_threads: true,
            also: Vec::new(),
            scavenger: ScavengerBuild::Explicit,
            yield_every_ns: None,
        }
    }
}

/// The report of `msh bench harvest` (`--json`): the primary's cost and the scavenger's gain.
#[derive(Debug, Clone, Serialize)]
pub struct HarvestReport {
    /// `linked` or `rewritten`.
    pub mode: &'static str,
    /// The budget per switch: the fixed one, or the median of where the online search
    /// ended.
    pub budget_ns: u64,
    /// `fixed` or `online` (`--max-slowdown`: found as the primary runs).
    pub budget: &'static str,
    /// Size of the chased table, MiB.
    pub mib: u64,
    /// Pointer-chase hops per primary run.
    pub hops: u64,
    /// Interleaved runs the medians are over.
    pub runs: usize,
    /// Median wall time of the primary alone.
    pub primary_alone_ns: f64,
    /// Median wall time of the primary with msh.
    pub primary_msh_ns: f64,
    /// Median of the per-run (msh / alone − 1).
    pub primary_slowdown: f64,
    /// `primary_alone_ns` per hop.
    pub ns_per_hop_alone: f64,
    /// `primary_msh_ns` per hop.
    pub ns_per_hop_msh: f64,
    /// Median rate of the compute scavenger alone.
    pub scavenger_alone_units_per_s: f64,
    /// Scavenger work per second of the primary's run with msh.
    pub scavenger_msh_units_per_s: f64,
    /// Median of the per-run (scavenger rate with msh / alone).
    pub scavenger_core_fraction: f64,
    /// Median wall time of the primary beside an OS-thread scavenger.
    pub os_threads_primary_ns: Option<f64>,
    /// Median of the per-run (OS threads / alone − 1).
    pub os_threads_primary_slowdown: Option<f64>,
    /// Median of the per-run (scavenger rate as an OS thread / alone).
    pub os_threads_scavenger_core_fraction: Option<f64>,
    /// `Mode::Rewritten`: how the binary was profiled and rewritten.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
    /// The other modes asked for with [`HarvestOptions::also`], from the same runs
    /// (and, with `--scavenger rewritten`, the rewritten scavenger's run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<MshRun>,
    /// `--scavenger rewritten`: the rewrite, and the rewritten scavenger's core
    /// fraction over the explicit build's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scavenger_rewrite: Option<ScavengerRewrite>,
}

/// How compute was rewritten for `--scavenger rewritten`, and what it reached.
#[derive(Debug, Clone, Serialize)]
pub struct ScavengerRewrite {
    /// The rewriter's target interval between yields, ns.
    pub yield_every_ns: u64,
    /// Yield checks placed.
    pub checks: usize,
    /// Checks wanted but not placed.
    pub skipped: usize,
    /// Median of the per-run (rewritten core fraction / explicit core fraction).
    pub core_fraction_ratio: f64,
    /// Median primary slowdown with the explicit build.
    pub explicit_slowdown: f64,
    /// Median primary slowdown with the rewritten build.
    pub rewritten_slowdown: f64,
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
        if let Some(permille) = opts.max_slowdown_permille {
            args.extend(["-p".into(), permille.to_string()]);
        }
    }
    args
}

/// How the unmodified ptrchase was prepared for `Mode::Rewritten`: the whole
/// pipeline a user runs on a binary without source.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// The profiler backend that chose the site.
    pub profile_backend: String,
    /// The top site, `function+0xN`, and its share of the run's events.
    pub site: String,
    /// Share of the profile's events at that site.
    pub site_share: f64,
    /// Sites the rewriter patched (the profile's top one).
    pub patched: usize,
    /// Registers the switch path saves there.
    pub saved_registers: String,
}

/// Profiles the plain ptrchase with `msh profile` (the `sample` backend: it works on
/// every machine, with or without a PMU), rewrites it at the top site with
/// `msh rewrite --top 1`, and writes a pool with the compute scavenger.
fn prepare_rewritten(opts: &HarvestOptions) -> Result<(PathBuf, PathBuf, Pipeline)> {
    prepare_rewritten_with(opts, "compute_scav.so", "bench-harvest.pool")
}

/// As [`prepare_rewritten`], with the pool's scavenger `scavenger` (in the build
/// directory, no arguments: with `COMPUTE_COUNTER` it computes until the exit).
fn prepare_rewritten_with(
    opts: &HarvestOptions,
    scavenger: &str,
    pool_name: &str,
) -> Result<(PathBuf, PathBuf, Pipeline)> {
    use msh_rewrite::{rewrite, Options, Selection};
    let build = examples::build_dir();
    let plain = build.join("ptrchase");
    // Through `sh -c 'exec …'` only to keep the chase's result line off our stdout.
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        r#"exec "$0" "$@" > /dev/null"#.into(),
        plain.display().to_string(),
    ];
    argv.extend(chase_args(opts, "alone"));
    let profile_options = msh_profile::Options {
        backend: msh_profile::Backend::Sample,
        ..msh_profile::Options::default()
    };
    let (profile, report) =
        msh_profile::profile(&msh_profile::What::Command(argv), &profile_options)
            .context("msh profile of ptrchase")?;
    let top = profile
        .object_for(&plain)?
        .sites
        .first()
        .context("msh profile found no delinquent load in ptrchase")?
        .clone();
    let profile_path = build.join("ptrchase.profile.json");
    profile.save(&profile_path)?;
    let rewritten = build.join("ptrchase.msh");
    let rewrite_report = rewrite(&Options {
        input: plain,
        output: rewritten.clone(),
        selection: Selection::Profile {
            path: profile_path,
            min_share: None,
            top: Some(1),
        },
        allow_call_windows: false,
    })?;
    let pool = build.join(pool_name);
    std::fs::write(&pool, format!("{}\n", build.join(scavenger).display()))?;
    let pipeline = Pipeline {
        profile_backend: report.backend,
        site: top.symbol,
        site_share: top.share,
        patched: rewrite_report.patched,
        saved_registers: rewrite_report
            .sites
            .first()
            .map(|s| s.saved.clone())
            .unwrap_or_default(),
    };
    Ok((rewritten, pool, pipeline))
}

/// Runs the benchmark; `progress` counts steps (4 per run).
pub fn run(opts: &HarvestOptions, progress: &ProgressBar) -> Result<HarvestReport> {
    if opts.runs == 0 || opts.hops == 0 || opts.mib == 0 {
        bail!("--runs, --hops and --mib must be positive");
    }
    let mut variants = Vec::new();
    let mut scavenger_rewrite = None;
    if opts.scavenger == ScavengerBuild::Rewritten {
        let (explicit, rewritten, rewrite) = Variant::prepare_scavengers(opts)?;
        variants.push(explicit);
        variants.push(rewritten);
        scavenger_rewrite = Some(rewrite);
    } else {
        for &mode in std::iter::once(&opts.mode).chain(&opts.also) {
            variants.push(Variant::prepare(mode, opts)?);
        }
    }
    let mut alone_ns = Vec::new();
    let mut scav_alone = Vec::new();
    let (mut os_ns, mut os_slowdown, mut os_fraction) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let compute: Compute = examples::run_json("compute", &["-t".into(), "0.3".into()])?;
        progress.inc(1);
        let alone: Chase = examples::run_json("ptrchase", &chase_args(opts, "alone"))?;
        progress.inc(1);
        alone_ns.push(alone.elapsed_ns);
        scav_alone.push(compute.units_per_s);
        for variant in &mut variants {
            variant.measure(opts, &alone, &compute)?;
            progress.inc(1);
        }
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
    if let Some(rewrite) = &mut scavenger_rewrite {
        let (explicit, rewritten) = (&variants[0], &variants[1]);
        let mut ratios: Vec<f64> = explicit
            .fraction
            .iter()
            .zip(&rewritten.fraction)
            .map(|(e, r)| r / e)
            .collect();
        rewrite.core_fraction_ratio = median(&mut ratios);
        rewrite.explicit_slowdown = median(&mut explicit.slowdown.clone());
        rewrite.rewritten_slowdown = median(&mut rewritten.slowdown.clone());
    }
    let mut runs: Vec<MshRun> = variants.into_iter().map(|v| v.finish(opts.hops)).collect();
    let first = runs.remove(0);
    Ok(HarvestReport {
        mode: first.mode,
        budget_ns: first.budget_ns,
        budget: if opts.max_slowdown_permille.is_some() {
            "online"
        } else {
            "fixed"
        },
        mib: opts.mib,
        hops: opts.hops,
        runs: opts.runs,
        primary_alone_ns,
        primary_msh_ns: first.primary_msh_ns,
        primary_slowdown: first.primary_slowdown,
        ns_per_hop_alone: primary_alone_ns / opts.hops as f64,
        ns_per_hop_msh: first.ns_per_hop_msh,
        scavenger_alone_units_per_s: median(&mut scav_alone),
        scavenger_msh_units_per_s: first.scavenger_msh_units_per_s,
        scavenger_core_fraction: first.scavenger_core_fraction,
        os_threads_primary_ns: optional(&mut os_ns),
        os_threads_primary_slowdown: optional(&mut os_slowdown),
        os_threads_scavenger_core_fraction: optional(&mut os_fraction),
        pipeline: first.pipeline,
        also: runs,
        scavenger_rewrite,
    })
}

/// One way of running the primary with msh, and its per-run samples.
struct Variant {
    /// The name in the report (the mode's, or the scavenger build's).
    label: &'static str,
    /// The `COMPUTE_COUNTER` file the scavenger adds its units to; None: units are
    /// the scavenger's yields (one per unit in the explicit build).
    counter: Option<PathBuf>,
    /// `Mode::Rewritten`: the rewritten binary and its pool.
    rewritten: Option<(PathBuf, PathBuf)>,
    pipeline: Option<Pipeline>,
    msh_ns: Vec<f64>,
    slowdown: Vec<f64>,
    fraction: Vec<f64>,
    units: Vec<f64>,
    budgets: Vec<f64>,
}

impl Variant {
    fn prepare(mode: Mode, opts: &HarvestOptions) -> Result<Variant> {
        let (rewritten, pipeline) = match mode {
            Mode::Linked => (None, None),
            Mode::Rewritten => {
                let (program, pool, pipeline) = prepare_rewritten(opts)?;
                (Some((program, pool)), Some(pipeline))
            }
        };
        Ok(Variant::new(mode.name(), None, rewritten, pipeline))
    }

    /// A variant with no runs measured yet.
    fn new(
        label: &'static str,
        counter: Option<PathBuf>,
        rewritten: Option<(PathBuf, PathBuf)>,
        pipeline: Option<Pipeline>,
    ) -> Variant {
        Variant {
            label,
            counter,
            rewritten,
            pipeline,
            msh_ns: Vec::new(),
            slowdown: Vec::new(),
            fraction: Vec::new(),
            units: Vec::new(),
            budgets: Vec::new(),
        }
    }

    /// `--scavenger rewritten`: the rewritten ptrchase under `msh run` twice, with the
    /// explicit-yield compute and with compute built without yields and rewritten by
    /// `msh rewrite --scavenger`; both count their units in a `COMPUTE_COUNTER` file.
    fn prepare_scavengers(opts: &HarvestOptions) -> Result<(Variant, Variant, ScavengerRewrite)> {
        use msh_rewrite::{rewrite, Options, Selection};
        let (program, explicit_pool, pipeline) = prepare_rewritten(opts)?;
        let build = examples::build_dir();
        let every_ns = opts
            .yield_every_ns
            .unwrap_or(msh_rewrite::scavenger::DEFAULT_EVERY_NS);
        let report = rewrite(&Options {
            input: build.join("compute_noyield.so"),
            output: build.join("compute_noyield.msh.so"),
            selection: Selection::Scavenger {
                every_ns,
                profile: None,
            },
            allow_call_windows: false,
        })
        .context("msh rewrite --scavenger of compute_noyield.so")?;
        let rewritten_pool = build.join("bench-harvest-rewritten.pool");
        std::fs::write(
            &rewritten_pool,
            format!("{}\n", build.join("compute_noyield.msh.so").display()),
        )?;
        let variant = |label, pool: PathBuf, counter: &str, pipeline| {
            Variant::new(
                label,
                Some(build.join(counter)),
                Some((program.clone(), pool)),
                pipeline,
            )
        };
        let rewrite = ScavengerRewrite {
            yield_every_ns: every_ns,
            checks: report.patched,
            skipped: report.candidates - report.patched,
            core_fraction_ratio: 0.0,
            explicit_slowdown: 0.0,
            rewritten_slowdown: 0.0,
        };
        Ok((
            variant(
                "explicit-yield-scavenger",
                explicit_pool,
                "bench-harvest-explicit.counter",
                Some(pipeline),
            ),
            variant(
                "rewritten-scavenger",
                rewritten_pool,
                "bench-harvest-rewritten.counter",
                None,
            ),
            rewrite,
        ))
    }

    /// One run of the primary with msh, against this round's `alone` and `compute`.
    fn measure(&mut self, opts: &HarvestOptions, alone: &Chase, compute: &Compute) -> Result<()> {
        let with_msh: Chase = match &self.rewritten {
            None => examples::run_json("ptrchase_msh", &chase_args(opts, "msh"))?,
            Some((program, pool)) => {
                let mut extra = vec!["--abandon-at-exit".to_string(), "--stats".to_string()];
                if let Some(budget) = opts.budget_ns {
                    extra.extend(["--budget-ns".to_string(), budget.to_string()]);
                }
                if let Some(permille) = opts.max_slowdown_permille {
                    let fraction = f64::from(permille) / 1000.0;
                    extra.extend(["--max-slowdown".to_string(), fraction.to_string()]);
                }
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let prefix = super::attach::msh_run_prefix(pool, &extra)?;
                let args = chase_args(opts, "alone");
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (mut chase, stderr) = match &self.counter {
                    None => {
                        let (mut chase, stderr) =
                            super::attach::run_chase(&prefix, program, &args)?;
                        chase.scavenger_units = super::attach::scavenger_yields(&stderr)? as u64;
                        (chase, stderr)
                    }
                    Some(counter) => {
                        std::fs::write(counter, [0u8; 8])?;
                        let env = [("COMPUTE_COUNTER", counter.as_path())];
                        let (mut chase, stderr) =
                            super::attach::run_chase_env(&prefix, program, &args, &env)?;
                        let bytes = std::fs::read(counter)?;
                        let units: [u8; 8] = bytes
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .context("the COMPUTE_COUNTER file shrank")?;
                        chase.scavenger_units = u64::from_le_bytes(units);
                        (chase, stderr)
                    }
                };
                chase.budget_ns = super::attach::total_stat(&stderr, "budget_ns")? as u64;
                chase
            }
        };
        if with_msh.checksum != alone.checksum {
            bail!("ptrchase under msh computed a different checksum: the switch corrupted the primary");
        }
        self.msh_ns.push(with_msh.elapsed_ns);
        self.slowdown
            .push(with_msh.elapsed_ns / alone.elapsed_ns - 1.0);
        self.fraction
            .push(with_msh.units_per_s() / compute.units_per_s);
        self.units.push(with_msh.units_per_s());
        self.budgets.push(with_msh.budget_ns as f64);
        Ok(())
    }

    fn finish(mut self, hops: u64) -> MshRun {
        let primary_msh_ns = median(&mut self.msh_ns);
        MshRun {
            mode: self.label,
            primary_msh_ns,
            ns_per_hop_msh: primary_msh_ns / hops as f64,
            primary_slowdown: median(&mut self.slowdown),
            scavenger_msh_units_per_s: median(&mut self.units),
            scavenger_core_fraction: median(&mut self.fraction),
            budget_ns: median(&mut self.budgets).round() as u64,
            pipeline: self.pipeline,
        }
    }
}

/// The figures of one msh mode, measured in the same interleaved runs as the others.
#[derive(Debug, Clone, Serialize)]
pub struct MshRun {
    /// `linked` or `rewritten`; with `--scavenger rewritten`,
    /// `explicit-yield-scavenger` or `rewritten-scavenger`.
    pub mode: &'static str,
    /// Median wall time of the primary with msh.
    pub primary_msh_ns: f64,
    /// The same, per hop.
    pub ns_per_hop_msh: f64,
    /// Median of the per-run (msh / alone − 1).
    pub primary_slowdown: f64,
    /// Scavenger work per second of the primary's run.
    pub scavenger_msh_units_per_s: f64,
    /// Median of the per-run (scavenger rate with msh / alone).
    pub scavenger_core_fraction: f64,
    /// Median of the budget per switch the primary ended with, ns.
    pub budget_ns: u64,
    /// `rewritten`: how the binary was profiled and rewritten.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Linked => "linked",
            Mode::Rewritten => "rewritten",
        }
    }
}

/// Budgets swept by `--sweep`.
pub const SWEEP_BUDGETS: [u64; 7] = [0, 50, 100, 150, 200, 300, 500];

/// A progress bar on stderr for `steps` runs.
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
