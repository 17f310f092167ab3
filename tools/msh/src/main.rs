//! The `msh` command.
use clap::{Parser, Subcommand};

mod bench_dirty;

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
    /// Benchmarks (ratios against baselines measured in the same run; medians)
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Dirty-page tracking: every backend on a large mapping (arm, first write, collect, exactness)
    Dirty(bench_dirty::DirtyArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench { what } => match what {
            BenchCommand::Dirty(args) => bench_dirty::run(&args),
        },
    };
    if let Err(error) = result {
        eprintln!("msh: {error:#}");
        std::process::exit(1);
    }
}
