//! The `msh` command.
use clap::{Parser, Subcommand};

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
    Rewrite(msh_rewrite::cli::RewriteArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Rewrite(args) => std::process::exit(msh_rewrite::cli::main(args)),
    }
}
