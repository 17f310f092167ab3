//! The `msh` command.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "msh", version, about = "Harvest memory-stall cycles: run scavenger coroutines while a primary waits for memory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find delinquent loads (pmu, sample or sim backend); `profile show` prints a profile.
    Profile(msh_profile::cli::ProfileArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profile(args) => msh_profile::cli::run(args),
    };
    if let Err(err) = result {
        eprintln!("msh: {err:#}");
        std::process::exit(1);
    }
}
