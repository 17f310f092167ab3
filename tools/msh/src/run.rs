//! `msh run`: starts a program with libmsh.so preloaded and the scavenger pool set.
//! The program's output and exit status are its own: msh execs it.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scavenger pool: one `PATH ARGS…` line per scavenger; `#` starts a comment.
    #[arg(long, value_name = "FILE", required_unless_present = "track_dirty")]
    pub pool: Option<PathBuf>,
    /// Track written pages for `msh checkpoint --pid PID` (MSH_TRACK_DIRTY=1).
    #[arg(long)]
    pub track_dirty: bool,
    /// Scavenger slots per primary thread.
    #[arg(long, value_name = "N")]
    pub scavengers_per_thread: Option<u32>,
    /// Budget per switch, in ns.
    #[arg(long, value_name = "N")]
    pub budget_ns: Option<u64>,
    /// Print `msh-stats: {json}` on stderr at exit.
    #[arg(long)]
    pub stats: bool,
    /// Exit with status 2 on a pool error instead of running without msh.
    #[arg(long)]
    pub strict: bool,
    /// At exit, drop unfinished scavengers instead of running them to the end.
    #[arg(long)]
    pub abandon_at_exit: bool,
    /// The main thread is not a primary (only threads it creates are).
    #[arg(long)]
    pub skip_first_thread: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// libmsh.so: `MSH_LIB`, beside this executable (a cargo build), or in ../lib.
pub fn find_libmsh() -> Result<PathBuf> {
    if let Some(lib) = std::env::var_os("MSH_LIB") {
        let lib = PathBuf::from(lib);
        if !lib.is_file() {
            bail!("MSH_LIB={} is not a file", lib.display());
        }
        return Ok(lib);
    }
    let exe = std::env::current_exe().context("cannot find the msh executable")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    for candidate in [dir.join("libmsh.so"), dir.join("../lib/libmsh.so")] {
        if candidate.is_file() {
            return Ok(candidate.canonicalize()?);
        }
    }
    bail!(
        "cannot find libmsh.so beside {} or in ../lib: build it with `cargo build --release -p msh-ffi`, or set MSH_LIB",
        exe.display()
    )
}

/// The command `msh run` would exec, with its environment.
pub fn command(args: &RunArgs) -> Result<Command> {
    let lib = find_libmsh()?;
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    let mut preload = lib.into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(" ");
        preload.push(existing);
    }
    command.env("LD_PRELOAD", preload);
    if let Some(pool) = &args.pool {
        // An absolute path: the program may change directory before reading it.
        let pool = std::path::absolute(pool).context("cannot resolve the pool path")?;
        command.env("MSH_SCAV_POOL_PATH", pool);
    }
    if args.track_dirty {
        command.env("MSH_TRACK_DIRTY", "1");
    }
    if let Some(n) = args.scavengers_per_thread {
        command.env("MAX_SCAV_PER_THREAD", n.to_string());
    }
    if let Some(ns) = args.budget_ns {
        command.env("MSH_BUDGET_NS", ns.to_string());
    }
    let flag = |on: bool| if on { "1" } else { "0" };
    command
        .env("MSH_STATS", flag(args.stats))
        .env("MSH_STRICT", flag(args.strict))
        .env("SKIP_FIRST_THREAD", flag(args.skip_first_thread))
        .env(
            "MSH_AT_EXIT",
            if args.abandon_at_exit {
                "abandon"
            } else {
                "finish"
            },
        );
    Ok(command)
}

/// Replaces this process with the program; returns only on failure.
pub fn run(args: &RunArgs) -> Result<()> {
    let mut command = command(args)?;
    let err = command.exec();
    bail!("cannot run {}: {err}", args.command[0].to_string_lossy())
}
