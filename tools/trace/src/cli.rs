//! The `msh trace` command line.
use crate::db;
use crate::record::{record, RecordOptions};
use crate::source::{SourceKind, SourceOptions, DEFAULT_EVERY, DEFAULT_FREQUENCY_HZ};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

/// `msh trace`: record a run, or look at recorded ones.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TraceArgs {
    #[command(subcommand)]
    command: Option<TraceCommand>,
    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Debug, Args)]
struct RecordArgs {
    /// The trace database to append the run to (created if missing).
    #[arg(short = 'o', long = "output", value_name = "DB.sqlite")]
    db: Option<PathBuf>,
    /// Name of the run (default: the program's name and the run number).
    #[arg(long, value_name = "NAME")]
    run_name: Option<String>,
    /// Where accesses come from: pmu (hardware load/store sampling), sample (cpu-clock
    /// with registers), exact (qemu tracer), damon. Default: pmu if this machine has
    /// a PMU, else sample.
    #[arg(long, value_enum, value_name = "SOURCE")]
    access: Option<SourceKind>,
    /// Samples per CPU-second for the sample source.
    #[arg(long, value_name = "HZ", default_value_t = DEFAULT_FREQUENCY_HZ,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    frequency: u64,
    /// The exact source records one access in N.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Print the run's summary as JSON.
    #[arg(long)]
    json: bool,
    /// The command to trace, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
enum TraceCommand {
    /// The runs in a database.
    List(ListArgs),
    /// Per run: wall/user/sys time, max RSS, samples requested vs obtained, lost events.
    Stat(StatArgs),
    /// A time × address heatmap of one run (PNG or SVG, by the file's extension).
    Plot(crate::plot::PlotArgs),
    /// One self-contained HTML report: heatmap, sortable table of allocation sites, zoom.
    Report(crate::report::ReportArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The trace database.
    db: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatArgs {
    /// The trace database.
    db: PathBuf,
    /// Only this run (default: every run).
    #[arg(long, value_name = "NAME")]
    run: Option<String>,
    /// Also run each run's command untraced once and print traced ÷ untraced wall time.
    #[arg(long)]
    baseline: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `msh trace`.
pub fn run(args: &TraceArgs) -> Result<()> {
    match &args.command {
        Some(TraceCommand::List(a)) => list(a),
        Some(TraceCommand::Stat(a)) => stat(a),
        Some(TraceCommand::Plot(a)) => crate::plot::run(a),
        Some(TraceCommand::Report(a)) => crate::report::run(a),
        None => record_run(&args.record),
    }
}

fn record_run(args: &RecordArgs) -> Result<()> {
    let Some(db) = &args.db else {
        bail!("no database given (usage: msh trace -o DB.sqlite [--access SOURCE] -- CMD ARGS…)");
    };
    let summary = record(&RecordOptions {
        db: db.clone(),
        name: args.run_name.clone(),
        source: args.access,
        source_options: SourceOptions {
            frequency_hz: args.frequency,
            every: args.every,
        },
        command: args.command.clone(),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "msh trace: run {:?} in {}: {} allocations, {} accesses ({} in an allocation) from the {} source, {:.3} s",
            summary.name,
            db.display(),
            summary.allocations,
            summary.accesses,
            summary.attributed,
            summary.access_source.name(),
            summary.wall_ns as f64 / 1e9
        );
    }
    Ok(())
}

fn list(args: &ListArgs) -> Result<()> {
    let conn = db::open(&args.db, false)?;
    let runs = db::runs(&conn)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    println!(
        "{:<4} {:<24} {:<8} {:>10} {:>12} {:>10}  command",
        "id", "name", "source", "wall s", "allocations", "accesses"
    );
    for r in runs {
        println!(
            "{:<4} {:<24} {:<8} {:>10.3} {:>12} {:>10}  {}",
            r.id,
            r.name,
            r.access_source,
            r.wall_ns as f64 / 1e9,
            r.allocations,
            r.samples_recorded,
            r.command
        );
    }
    Ok(())
}

fn stat(args: &StatArgs) -> Result<()> {
    let conn = db::open(&args.db, false)?;
    let mut runs = db::runs(&conn)?;
    if let Some(name) = &args.run {
        runs = vec![db::pick_run(&conn, Some(name))?];
    }
    let mut out = Vec::new();
    for r in &runs {
        let baseline_ns = if args.baseline {
            Some(untraced_wall_ns(&r.command)?)
        } else {
            None
        };
        out.push(serde_json::json!({
            "run": r,
            "baseline_wall_ns": baseline_ns,
            "overhead": baseline_ns.map(|b| r.wall_ns as f64 / b.max(1) as f64),
        }));
        if !args.json {
            println!("run {} ({}): {}", r.id, r.name, r.command);
            println!(
                "  wall {:.3} s, user {:.3} s, sys {:.3} s, max RSS {} KiB, {}",
                r.wall_ns as f64 / 1e9,
                r.user_ns as f64 / 1e9,
                r.sys_ns as f64 / 1e9,
                r.max_rss_kib,
                r.exit
            );
            println!(
                "  access source {}: {} samples requested, {} recorded, {} lost; {} allocation events",
                r.access_source, r.samples_requested, r.samples_recorded, r.lost, r.allocation_events
            );
            println!("  it measures: {}", r.access_measures);
            if let Some(b) = baseline_ns {
                println!(
                    "  untraced now: {:.3} s; traced ÷ untraced = {:.3} (one untraced run: noisy)",
                    b as f64 / 1e9,
                    r.wall_ns as f64 / b.max(1) as f64
                );
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// Runs a recorded command line (split on whitespace) once, untraced.
fn untraced_wall_ns(command: &str) -> Result<u64> {
    let argv: Vec<&str> = command.split_whitespace().collect();
    let Some((program, rest)) = argv.split_first() else {
        bail!("the run has no command to re-run");
    };
    let started = Instant::now();
    let status = std::process::Command::new(program)
        .args(rest)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {program} for the baseline"))?;
    if !status.success() {
        bail!("the baseline run of {command} failed ({status})");
    }
    Ok(started.elapsed().as_nanos() as u64)
}
