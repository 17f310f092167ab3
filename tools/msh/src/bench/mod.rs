//! `msh bench …`: measurements as ratios against a baseline taken in the same run.
pub mod attach;
pub mod checkpoint;
pub mod dirty;
pub mod gc;
pub mod harvest;
pub mod server;
pub mod switch;

use anyhow::Result;

/// `msh bench` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// One one-way context switch: msh's against corosensei's.
    Switch {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Round trips per run.
        #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1000..=10_000_000_000))]
        round_trips: u64,
        /// Runs (the result is the median).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
    },
    /// Dirty-page tracking: every backend on a large mapping (arm, first write, collect, exactness).
    Dirty(dirty::DirtyArgs),
    /// Boehm GC: stop-the-world, incremental on its own dirty bits, incremental fed by msh.
    Gc(gc::GcArgs),
    /// Checkpoints of an unmodified process: full vs incremental (msh run --track-dirty), and criu.
    Checkpoint(checkpoint::CheckpointBenchArgs),
    /// What preloading libmsh costs (ptrchase, memcached), and harvest when preloaded.
    Attach(attach::AttachArgs),
    /// Pointer chase (primary) + compute scavenger: alone, with msh, as OS threads.
    Harvest(harvest::HarvestArgs),
    /// Debian's redis or memcached under an open-loop load: latency and harvest of
    /// each way to run batch work beside it (OS thread, SCHED_IDLE, msh).
    Server(server::ServerArgs),
}

/// Prints a report as JSON: on one line with `--json` (for scripts), indented otherwise.
fn print_json<T: serde::Serialize>(report: &T, one_line: bool) -> Result<()> {
    if one_line {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

/// Runs one `msh bench` subcommand.
pub fn run(command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Switch {
            json,
            round_trips,
            runs,
        } => {
            let report = switch::run(*round_trips, *runs as usize)?;
            if *json {
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
                println!(
                    "primary->scavenger->primary round trip: msh {:.2} ns (quota, errno and control words kept), MSH's protocol {:.2} ns, ratio {:.2}",
                    report.msh_round_trip_ns, report.msh_protocol_round_trip_ns, report.round_trip_ratio
                );
            }
            Ok(())
        }
        BenchCommand::Dirty(args) => dirty::run(args),
        BenchCommand::Gc(args) => gc::run(args),
        BenchCommand::Checkpoint(args) => checkpoint::run(args),
        BenchCommand::Attach(args) => attach::run_cli(args),
        BenchCommand::Harvest(args) => harvest::run_cli(args),
        BenchCommand::Server(args) => server::run_cli(args),
    }
}
