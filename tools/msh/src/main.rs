//! The `msh` command.
use clap::{Parser, Subcommand};

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
    /// Kernel lock patch: move one lock (a structure field) to a policy-aware implementation.
    Kpatch(kpatch::KpatchArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Kpatch(args) => kpatch::main(args),
    }
}
