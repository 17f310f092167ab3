//! The `msh` command.
use anyhow::Result;
use clap::{Parser, Subcommand};

use msh_cli::{bench, demo, examples, run};

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
    Demo {
        /// Runs per setup (the table shows medians).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Find delinquent loads (pmu, sample or sim backend); `profile show` prints a profile.
    Profile(msh_profile::cli::ProfileArgs),
    /// Kernel lock patch: move one lock (a structure field) to a policy-aware implementation.
    Kpatch(kpatch::KpatchArgs),
    /// Run a program with scavengers: libmsh.so preloaded, every thread a primary.
    Run(run::RunArgs),
    /// Insert prefetch+yield at profiled loads of an unmodified x86-64 ELF binary.
    Rewrite(msh_rewrite::cli::RewriteArgs),
    /// Benchmarks, as ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One one-way context switch: msh's against corosensei's.
    Switch {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Round trips per run.
        #[arg(long, default_value_t = 20_000_000)]
        round_trips: u64,
        /// Runs (the result is the median).
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Dirty-page tracking: every backend on a large mapping (arm, first write, collect, exactness).
    Dirty(bench::dirty::DirtyArgs),
    /// What preloading libmsh costs (ptrchase, memcached), and harvest when preloaded.
    Attach {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Runs (figures are medians).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Hops per ptrchase run.
        #[arg(long, default_value_t = 2_000_000)]
        hops: u64,
        /// Set+get pairs per memcached client (4 clients).
        #[arg(long, default_value_t = 5_000)]
        memcached_pairs: u32,
        /// Skip memcached.
        #[arg(long)]
        no_memcached: bool,
    },
    /// Pointer chase (primary) + compute scavenger: alone, with msh, as OS threads.
    Harvest {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Budget per switch in ns (default: the runtime's).
        #[arg(long)]
        budget_ns: Option<u64>,
        /// Where the primary's yield point comes from.
        #[arg(long, value_enum, default_value = "linked")]
        mode: bench::harvest::Mode,
        /// Sweep budgets and print the trade-off curve.
        #[arg(long, conflicts_with = "budget_ns")]
        sweep: bool,
        /// Size of the chased table.
        #[arg(long, default_value_t = 64)]
        mib: u64,
        /// Hops per run.
        #[arg(long, default_value_t = 2_000_000)]
        hops: u64,
        /// Runs per setup (figures are medians).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("msh: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { runs } => demo::run(runs),
        Command::Run(args) => run::run(&args),
        Command::Rewrite(args) => msh_rewrite::cli::run(&args),
        Command::Profile(args) => msh_profile::cli::run(args),
        Command::Kpatch(args) => kpatch::run(&args),
        Command::Bench { bench } => match bench {
            BenchCommand::Switch {
                json,
                round_trips,
                runs,
            } => {
                let report = bench::switch::run(round_trips, runs)?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "one-way switch: msh {:.2} ns, corosensei {:.2} ns, ratio {:.2} (median of {} runs)",
                        report.msh_ns, report.corosensei_ns, report.ratio, report.runs
                    );
                    println!(
                        "prefetch-and-yield with nothing to run, over a bare prefetch: {:.2} ns (no msh), {:.2} ns (registered primary)",
                        report.noop_yield_ns, report.noop_yield_registered_ns
                    );
                }
                Ok(())
            }
            BenchCommand::Dirty(args) => bench::dirty::run(&args),
            BenchCommand::Attach {
                json,
                runs,
                hops,
                memcached_pairs,
                no_memcached,
            } => {
                use bench::attach::{self, AttachOptions};
                examples::build()?;
                let opts = AttachOptions {
                    runs,
                    hops,
                    memcached_pairs,
                    memcached: !no_memcached,
                };
                let bar = bench::harvest::progress_bar(3 * runs as u64, "measuring");
                let report = attach::run(&opts, &bar)?;
                bar.finish_and_clear();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                Ok(())
            }
            BenchCommand::Harvest {
                json,
                budget_ns,
                mode,
                sweep,
                mib,
                hops,
                runs,
            } => {
                use bench::harvest::{self, HarvestOptions};
                examples::build()?;
                let base = HarvestOptions {
                    mode,
                    budget_ns,
                    mib,
                    hops,
                    runs,
                    os_threads: true,
                };
                if sweep {
                    let budgets = harvest::SWEEP_BUDGETS;
                    let bar = harvest::progress_bar((budgets.len() * 4 * runs) as u64, "sweeping");
                    let mut rows = Vec::new();
                    for (i, budget) in budgets.into_iter().enumerate() {
                        let opts = HarvestOptions {
                            budget_ns: Some(budget),
                            os_threads: i == 0,
                            ..base.clone()
                        };
                        rows.push(harvest::run(&opts, &bar)?);
                    }
                    bar.finish_and_clear();
                    if json {
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
                    let bar = harvest::progress_bar(4 * runs as u64, "measuring");
                    let report = harvest::run(&base, &bar)?;
                    bar.finish_and_clear();
                    if json {
                        println!("{}", serde_json::to_string(&report)?);
                    } else {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    }
                }
                Ok(())
            }
        },
    }
}
