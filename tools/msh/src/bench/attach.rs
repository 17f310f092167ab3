//! `msh bench attach`: what preloading libmsh costs a program with no yield points
//! (ptrchase, and memcached under a loopback load), and how the explicit-yield
//! ptrchase that is *not* linked with libmsh harvests under `msh run` compared with
//! the linked build. Runs are interleaved; figures are medians of per-run ratios.

use crate::examples::{self, Chase, Compute};
use crate::memcached;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use msh_profile::stats::median;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `msh bench attach` options.
#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Runs (figures are medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub runs: u64,
    /// Hops per ptrchase run.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub hops: u64,
    /// Set+get pairs per memcached client (4 clients).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub memcached_pairs: u32,
    /// Skip memcached.
    #[arg(long)]
    pub no_memcached: bool,
}

/// Runs `msh bench attach`.
pub fn run_cli(args: &AttachArgs) -> Result<()> {
    examples::build()?;
    let opts = AttachOptions {
        runs: args.runs as usize,
        hops: args.hops,
        memcached_pairs: args.memcached_pairs,
        memcached: !args.no_memcached,
    };
    let bar = super::harvest::progress_bar(3 * opts.runs as u64, "measuring");
    let report = run(&opts, &bar)?;
    bar.finish_and_clear();
    super::print_json(&report, args.json)
}

/// What `msh bench attach` measures.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Interleaved runs; figures are medians.
    pub runs: usize,
    /// Pointer-chase hops per ptrchase run.
    pub hops: u64,
    /// Set+get pairs per memcached client (4 clients).
    pub memcached_pairs: u32,
    /// Also measure memcached under `msh run`.
    pub memcached: bool,
}

/// The report of `msh bench attach` (`--json`).
#[derive(Debug, Serialize)]
pub struct AttachReport {
    /// Interleaved runs the medians are over.
    pub runs: usize,
    /// Wall time under `msh run` / plain, ptrchase without yield points.
    pub ptrchase_attach_ratio: f64,
    /// Client wall time against memcached under `msh run` / plain.
    pub memcached_attach_ratio: Option<f64>,
    /// scavenger_core_fraction of the linked ptrchase_msh.
    pub linked_scavenger_core_fraction: f64,
    /// scavenger_core_fraction of ptrchase_yield (not linked) under `msh run`.
    pub preloaded_scavenger_core_fraction: f64,
    /// preloaded / linked.
    pub preloaded_over_linked: f64,
}

/// `msh run` prefix for this executable with the compute scavenger pool.
pub(crate) fn msh_run_prefix(pool: &Path, extra: &[&str]) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find the msh executable")?;
    let mut prefix = vec![
        exe.display().to_string(),
        "run".into(),
        "--pool".into(),
        pool.display().to_string(),
    ];
    prefix.extend(extra.iter().map(|s| s.to_string()));
    prefix.push("--".into());
    Ok(prefix)
}

pub(crate) fn run_chase(
    prefix: &[String],
    program: &Path,
    args: &[&str],
) -> Result<(Chase, String)> {
    run_chase_env(prefix, program, args, &[])
}

/// As [`run_chase`], with `env` added to the command's environment.
pub(crate) fn run_chase_env(
    prefix: &[String],
    program: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Result<(Chase, String)> {
    let mut argv: Vec<String> = prefix.to_vec();
    argv.push(program.display().to_string());
    argv.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{} failed: {stderr}", argv.join(" "));
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ptrchase: "))
        .context("no ptrchase line")?;
    Ok((serde_json::from_str(line)?, stderr))
}

pub(crate) fn scavenger_yields(stderr: &str) -> Result<f64> {
    total_stat(stderr, "scavenger_yields")
}

/// A figure of the `total` object of the `msh-stats:` line in `stderr`.
pub(crate) fn total_stat(stderr: &str, name: &str) -> Result<f64> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("msh-stats: "))
        .context("no msh-stats line")?;
    let stats: serde_json::Value = serde_json::from_str(line)?;
    stats["total"][name]
        .as_f64()
        .with_context(|| format!("no {name} in msh-stats"))
}

/// Runs `msh bench attach`: each program plain and under `msh run`, interleaved.
pub fn run(opts: &AttachOptions, progress: &ProgressBar) -> Result<AttachReport> {
    let build = examples::build_dir();
    let pool: PathBuf = build.join("bench-attach.pool");
    std::fs::write(
        &pool,
        format!("{}\n", build.join("compute_scav.so").display()),
    )?;
    let attach = msh_run_prefix(&pool, &["--abandon-at-exit"])?;
    let attach_stats = msh_run_prefix(&pool, &["--abandon-at-exit", "--stats"])?;
    let hops = opts.hops.to_string();
    let chase_args = ["-n", hops.as_str()];
    let (mut ptr_ratio, mut mc_ratio, mut linked, mut preloaded, mut relative) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let (plain, _) = run_chase(&[], &build.join("ptrchase"), &chase_args)?;
        let (attached, _) = run_chase(&attach, &build.join("ptrchase"), &chase_args)?;
        ptr_ratio.push(attached.elapsed_ns / plain.elapsed_ns);
        progress.inc(1);

        let compute: Compute = examples::run_json("compute", &["-t".into(), "0.3".into()])?;
        let (link, _) = run_chase(
            &[],
            &build.join("ptrchase_msh"),
            &["-n", &hops, "--mode", "msh"],
        )?;
        let (yielding, stderr) = run_chase(
            &attach_stats,
            &build.join("ptrchase_yield"),
            &["-n", &hops, "--mode", "yield"],
        )?;
        let link_fraction = link.units_per_s() / compute.units_per_s;
        let yield_fraction =
            scavenger_yields(&stderr)? / (yielding.elapsed_ns / 1e9) / compute.units_per_s;
        linked.push(link_fraction);
        preloaded.push(yield_fraction);
        relative.push(yield_fraction / link_fraction);
        progress.inc(1);

        if opts.memcached {
            let mut times = [Duration::ZERO; 2];
            for (slot, prefix) in [(0, Vec::new()), (1, attach.clone())] {
                let server =
                    memcached::start(&prefix, 2, &build.join("bench-attach.memcached.log"))?;
                let load = memcached::load(
                    server.port,
                    4,
                    opts.memcached_pairs,
                    Duration::from_secs(60),
                )?;
                server.stop();
                times[slot] = load.elapsed;
            }
            mc_ratio.push(times[1].as_secs_f64() / times[0].as_secs_f64());
        }
        progress.inc(1);
    }
    Ok(AttachReport {
        runs: opts.runs,
        ptrchase_attach_ratio: median(&mut ptr_ratio),
        memcached_attach_ratio: (!mc_ratio.is_empty()).then(|| median(&mut mc_ratio)),
        linked_scavenger_core_fraction: median(&mut linked),
        preloaded_scavenger_core_fraction: median(&mut preloaded),
        preloaded_over_linked: median(&mut relative),
    })
}
