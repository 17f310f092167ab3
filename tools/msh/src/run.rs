//! `msh run`: starts a program with libmsh.so preloaded and the scavenger pool set.
//! The program's output and exit status are its own: msh execs it. A program that
//! cannot be started exits as a shell would: 127 when it is not found, 126 when it
//! cannot be executed.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `msh run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scavenger pool: one `PATH ARGS…` line per scavenger; `#` starts a comment.
    #[arg(long, value_name = "FILE", required_unless_present = "track_dirty")]
    pub pool: Option<PathBuf>,
    /// Track written pages for `msh checkpoint --pid PID` (MSH_TRACK_DIRTY=1).
    #[arg(long)]
    pub track_dirty: bool,
    /// Scavenger slots per primary thread (1 to 1024).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=msh_core::sched::MAX_SLOTS as i64))]
    pub scavengers_per_thread: Option<u32>,
    /// Budget per switch, in ns (0 to 1000000000). Default 150; with --max-slowdown,
    /// where the search starts.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=msh_core::sched::MAX_BUDGET_NS))]
    pub budget_ns: Option<u64>,
    /// Find the budget per switch online, per thread: the longest that costs the
    /// primary at most this fraction of its time (0 to 1). Off by default: on
    /// `msh bench harvest` it has not yet beaten the fixed 150 ns.
    #[arg(long, value_name = "F", value_parser = parse_fraction)]
    pub max_slowdown: Option<f64>,
    /// At exit, run unfinished scavengers for at most this many ms, then abandon them
    /// with one line naming them (Ctrl-C abandons them at once). Default 2000.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub exit_wait: Option<u64>,
    /// Preempt and stop a scavenger that runs this many ms of CPU time without
    /// yielding (0 turns the watchdog off). Default 10.
    #[arg(long, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=msh_core::sched::MAX_WATCHDOG_MS))]
    pub watchdog_ms: Option<u64>,
    /// Programs the program execs get scavengers too (by default libmsh removes its
    /// variables from their environment, so `sh -c 'a; b'` runs a and b plainly).
    #[arg(long)]
    pub follow_exec: bool,
    /// Print `msh-stats: {json}` on stderr at exit.
    #[arg(long)]
    pub stats: bool,
    /// Exit with status 2 on a pool error instead of running without msh.
    #[arg(long)]
    pub strict: bool,
    /// At exit, drop unfinished scavengers at once instead of running them (for at
    /// most --exit-wait ms).
    #[arg(long)]
    pub abandon_at_exit: bool,
    /// Also harvest idle time: while a primary waits in epoll_wait, poll or select,
    /// its scavengers run on its CPU, and it takes the CPU back within a few
    /// microseconds of becoming ready (MSH_HARVEST_IDLE=1). The process then uses its
    /// CPU fully while it would have slept.
    #[arg(long)]
    pub harvest_idle: bool,
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
    if let Some(fraction) = args.max_slowdown {
        command.env("MSH_MAX_SLOWDOWN", fraction.to_string());
    }
    if let Some(ms) = args.exit_wait {
        command.env("MSH_EXIT_WAIT_MS", ms.to_string());
    }
    if let Some(ms) = args.watchdog_ms {
        command.env("MSH_WATCHDOG_MS", ms.to_string());
    }
    if args.follow_exec {
        command.env("MSH_FOLLOW_EXEC", "1");
    }
    if args.harvest_idle {
        command.env("MSH_HARVEST_IDLE", "1");
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

/// A failure that must end msh with a particular exit status (`main` maps it).
#[derive(Debug)]
pub struct StartFailure {
    /// The status to exit with.
    pub code: i32,
    /// The one-line message.
    pub message: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartFailure {}

/// The status msh exits with for `err`: a shell's for a program that could not be
/// started, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.downcast_ref::<StartFailure>().map_or(1, |e| e.code)
}

/// Replaces this process with the program; returns only on failure.
pub fn run(args: &RunArgs) -> Result<()> {
    let mut command = command(args)?;
    let err = command.exec();
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    Err(StartFailure {
        code,
        message: format!("cannot run {}: {err}", args.command[0].to_string_lossy()),
    }
    .into())
}

/// A fraction from 0 to 1 (`--max-slowdown`).
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("expected a fraction from 0 to 1, got {text}")),
    }
}
