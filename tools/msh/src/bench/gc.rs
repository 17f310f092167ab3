//! `msh bench gc`: Boehm GC (Debian's bdwgc) on allocation-heavy workloads
//! (`c-examples/gc_bench.c`), each in three configurations measured in the same run,
//! interleaved (the order rotates every run), figures as medians:
//!
//! - `stop_the_world`: bdwgc's default;
//! - `bdwgc_incremental`: incremental mode on bdwgc's own dirty bits (this build tries
//!   soft-dirty, which this kernel lacks, then mprotect + SIGSEGV; `vdb` says which ran);
//! - `msh_incremental`: incremental mode on bdwgc's manual VDB, fed by msh.
//!
//! A pause is a world-stopped interval (see `gc_bench.c`). Every configuration must
//! compute the same checksum: a collector that freed a live object fails the run.

use crate::examples;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::process::Command;

/// The configurations, in the order reported.
pub const CONFIGS: [&str; 3] = ["stop_the_world", "bdwgc_incremental", "msh_incremental"];
/// The workloads, in the order reported.
pub const WORKLOADS: [&str; 2] = ["trees", "histogram"];

/// Arguments of `msh bench gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Print JSON: {"workloads": [{"name", "configs": [...]}], ...}.
    #[arg(long)]
    json: bool,
    /// Runs per workload and configuration (figures are medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    runs: u64,
    /// Workload size: 0 is small (tests), each step doubles the work.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=6))]
    scale: u32,
    /// bdwgc's initial heap, MiB (the same in every configuration).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    heap_mib: u32,
    /// The incremental modes mark in slices of at most this many ms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    time_limit_ms: u32,
    /// Allocation path in every configuration: bdwgc's per-thread free lists (its
    /// default; under msh refilled by `gc_msh_vdb.c`) or the global ones.
    #[arg(long, value_enum, default_value = "thread-local")]
    alloc: AllocPath,
}

/// Where `gc_bench` takes its objects from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocPath {
    /// `GC_MALLOC`: per-thread free lists.
    ThreadLocal,
    /// `GC_malloc_kind_global`: the global free lists.
    Global,
}

impl AllocPath {
    fn name(self) -> &'static str {
        match self {
            AllocPath::ThreadLocal => "thread-local",
            AllocPath::Global => "global",
        }
    }
}

/// One `gc_bench` run, as it prints it.
#[derive(Deserialize, Debug, Clone)]
struct Sample {
    vdb: String,
    #[serde(default)]
    msh_backend: Option<String>,
    total_s: f64,
    collections: f64,
    pause_ms_mean: f64,
    pause_ms_max: f64,
    first_write_ns: f64,
    node_bytes: u64,
    bdwgc: String,
    checksum: u64,
}

/// One configuration's figures on one workload.
#[derive(Serialize, Debug)]
pub struct ConfigReport {
    /// The configuration.
    pub name: &'static str,
    /// Median total time of the workload, s.
    pub total_s: f64,
    /// Median number of collections.
    pub collections: f64,
    /// Median of each run's mean world-stopped pause, ms.
    pub pause_ms_mean: f64,
    /// Median of each run's longest world-stopped pause, ms.
    pub pause_ms_max: f64,
    /// The longest pause seen in any run, ms.
    pub pause_ms_max_any_run: f64,
    /// Median mutator cost of one first write to a page after a collection, ns.
    pub first_write_ns: f64,
    /// The bytes bdwgc gives a 32-byte tree node once allocation is warm (the same in
    /// every configuration unless a free-list refill picks the wrong size class).
    pub node_bytes: u64,
    /// The dirty-bit mechanism: `none`, bdwgc's own (`mprotect`, `soft-dirty`) or `manual`.
    pub vdb: String,
    /// For `msh_incremental`: the msh backend that fed bdwgc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msh_backend: Option<String>,
    /// Median over runs of total_s / stop_the_world's total_s in the same run.
    pub total_vs_stop_the_world: f64,
    /// Median over runs of total_s / bdwgc_incremental's total_s in the same run.
    pub total_vs_bdwgc_incremental: f64,
}

/// One workload's figures.
#[derive(Serialize, Debug)]
pub struct WorkloadReport {
    /// The workload.
    pub name: &'static str,
    /// One entry per configuration, in [`CONFIGS`] order.
    pub configs: Vec<ConfigReport>,
}

/// The whole report.
#[derive(Serialize, Debug)]
pub struct Report {
    /// Per workload.
    pub workloads: Vec<WorkloadReport>,
    /// bdwgc's version.
    pub bdwgc: String,
    /// Runs per figure.
    pub runs: usize,
    /// The allocation path.
    pub alloc: &'static str,
    /// The 1-minute load average when the run ended (the machine is shared).
    pub load_avg_1m: Option<f64>,
}

fn run_once(workload: &str, config: &str, args: &GcArgs) -> Result<Sample> {
    let path = examples::build_dir().join("gc_bench");
    let output = Command::new(&path)
        .args(["--workload", workload, "--config", config])
        .args(["--scale", &args.scale.to_string()])
        .args(["--heap-mib", &args.heap_mib.to_string()])
        .args(["--time-limit-ms", &args.time_limit_ms.to_string()])
        .args(["--alloc", args.alloc.name()])
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(2) => {
            bail!("{workload}/{config}: the workload's self-check failed (a live object freed?)")
        }
        _ => bail!(
            "{workload}/{config} failed ({}): {}",
            output.status,
            stderr.trim()
        ),
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("gc_bench: "))
        .with_context(|| format!("{workload}/{config} printed no result"))?;
    serde_json::from_str(line).with_context(|| format!("unreadable gc_bench result: {line}"))
}

fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs every workload in every configuration `args.runs` times, interleaved.
pub fn measure(args: &GcArgs) -> Result<Report> {
    // The parser bounds every number.
    let runs = args.runs as usize;
    examples::build_targets(&["all"])?;
    let steps = (runs * WORKLOADS.len() * CONFIGS.len()) as u64;
    let bar = super::harvest::progress_bar(steps, "collecting");
    // samples[workload][config] = one Sample per run
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); CONFIGS.len()]; WORKLOADS.len()];
    for run in 0..runs {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for k in 0..CONFIGS.len() {
                let c = (k + run) % CONFIGS.len();
                let sample = run_once(workload, CONFIGS[c], args)?;
                samples[w][c].push(sample);
                bar.inc(1);
            }
            let reference = samples[w][0][run].checksum;
            if let Some(c) = (1..CONFIGS.len()).find(|&c| samples[w][c][run].checksum != reference)
            {
                bail!(
                    "{workload}: {} computed a different result than stop_the_world (a live object freed?)",
                    CONFIGS[c]
                );
            }
        }
    }
    bar.finish_and_clear();
    let bdwgc = samples[0][0][0].bdwgc.clone();
    let workloads = WORKLOADS
        .iter()
        .zip(&samples)
        .map(|(&name, per_config)| WorkloadReport {
            name,
            configs: CONFIGS
                .iter()
                .zip(per_config)
                .map(|(&config, runs)| summarize(config, runs, per_config))
                .collect(),
        })
        .collect();
    Ok(Report {
        workloads,
        bdwgc,
        runs,
        alloc: args.alloc.name(),
        load_avg_1m: load_average(),
    })
}

fn summarize(name: &'static str, runs: &[Sample], all: &[Vec<Sample>]) -> ConfigReport {
    let med = |f: &dyn Fn(&Sample) -> f64| {
        msh_profile::stats::median(&mut runs.iter().map(f).collect::<Vec<_>>())
    };
    let ratio = |other: usize| {
        msh_profile::stats::median(
            &mut runs
                .iter()
                .zip(&all[other])
                .map(|(own, base)| own.total_s / base.total_s)
                .collect::<Vec<_>>(),
        )
    };
    ConfigReport {
        name,
        total_s: med(&|s| s.total_s),
        collections: med(&|s| s.collections),
        pause_ms_mean: med(&|s| s.pause_ms_mean),
        pause_ms_max: med(&|s| s.pause_ms_max),
        pause_ms_max_any_run: runs.iter().map(|s| s.pause_ms_max).fold(0.0, f64::max),
        first_write_ns: med(&|s| s.first_write_ns),
        node_bytes: runs[0].node_bytes,
        vdb: runs[0].vdb.clone(),
        msh_backend: runs[0].msh_backend.clone(),
        total_vs_stop_the_world: ratio(0),
        total_vs_bdwgc_incremental: ratio(1),
    }
}

/// `msh bench gc`.
pub fn run(args: &GcArgs) -> Result<()> {
    let report = measure(args)?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        print_table(&mut out, &report)
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}

fn print_table(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "bdwgc {}, {} allocation, medians of {} runs, load {:.1}",
        report.bdwgc,
        report.alloc,
        report.runs,
        report.load_avg_1m.unwrap_or(f64::NAN)
    )?;
    writeln!(
        out,
        "{:<10} {:<18} {:<9} {:>8} {:>7} {:>7} {:>10} {:>9} {:>12} {:>8}",
        "workload",
        "config",
        "vdb",
        "total_s",
        "vs_stw",
        "vs_own",
        "collects",
        "pause_ms",
        "max_pause_ms",
        "write_ns"
    )?;
    for w in &report.workloads {
        for c in &w.configs {
            writeln!(
                out,
                "{:<10} {:<18} {:<9} {:>8.3} {:>7.2} {:>7.2} {:>10.0} {:>9.2} {:>12.2} {:>8.0}",
                w.name,
                c.name,
                c.vdb,
                c.total_s,
                c.total_vs_stop_the_world,
                c.total_vs_bdwgc_incremental,
                c.collections,
                c.pause_ms_mean,
                c.pause_ms_max,
                c.first_write_ns
            )?;
        }
    }
    Ok(())
}
