//! The `msh` command.
use anyhow::Result;
use clap::{Parser, Subcommand};

use msh_cli::{bench, checkpoint, demo, doctor, run};

mod kpatch;

#[derive(Parser)]
#[command(
    name = "msh",
    version,
    about = "Harvest memory-stall cycles: run scavenger coroutines while a primary waits for memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the bundled examples and print the harvest table.
    Demo(demo::DemoArgs),
    /// What this machine offers msh: PMU, userfaultfd, PAGEMAP_SCAN, QEMU, ... and why not.
    Doctor(doctor::DoctorArgs),
    /// Find delinquent loads (pmu, sample or sim backend); `profile show` prints a profile.
    Profile(msh_profile::cli::ProfileArgs),
    /// Kernel lock patch: move one lock (a structure field) to a policy-aware implementation.
    Kpatch(kpatch::KpatchArgs),
    /// Run a program with scavengers: libmsh.so preloaded, every thread a primary.
    Run(run::RunArgs),
    /// Checkpoint a process started with `msh run --track-dirty` (full or incremental); `verify` compares.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Insert prefetch+yield at profiled loads of an unmodified x86-64 ELF binary.
    Rewrite(msh_rewrite::cli::RewriteArgs),
    /// Allocation and access traces of a program, in SQLite; `list`, `stat`, `plot`, `report`.
    Trace(msh_trace::cli::TraceArgs),
    /// Page-walk simulator: x86 radix tables against direct translation (DMT, pvDMT) and others.
    Pagewalk(msh_pagewalk::cli::PagewalkArgs),
    /// Benchmarks, as ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: bench::BenchCommand,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("msh: {err:#}");
        std::process::exit(run::exit_code(&err));
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Checkpoint(args) => checkpoint::run(&args),
        Command::Rewrite(args) => msh_rewrite::cli::run(&args),
        Command::Pagewalk(args) => msh_pagewalk::cli::run(&args),
        Command::Profile(args) => msh_profile::cli::run(args),
        Command::Kpatch(args) => kpatch::run(&args),
        Command::Trace(args) => msh_trace::cli::run(&args),
        Command::Bench { bench } => bench::run(&bench),
    }
}
