//! msh profile: find a program's delinquent loads — the loads that stall on memory —
//! and write them as a versioned JSON profile (see [`schema`]) for `msh rewrite`.
//!
//! Backends:
//! - `pmu` ([`pmu`]): precise hardware load-miss sampling; needs a hardware PMU.
//! - `sample` ([`sample`]): software cpu-clock sampling through perf_event_open;
//!   each sample is charged to the load just before the sampled IP (skid of one).
//! - `sim` ([`sim`]): msh's tracer (qemu-x86_64 + a TCG plugin) streams every access
//!   into a set-associative L1/L2/LLC model: exact per-load miss counts and ratios.
//! - `auto` ([`auto`]): `pmu` when the machine has one, else `sample` confirmed by a
//!   short `sim` run.
//! - `import` ([`import`]): a `perf record` made elsewhere, through `perf script`.
#![warn(missing_docs)]
pub mod address;
pub mod auto;
pub mod cli;
pub mod collect;
pub mod elf;
pub mod footprint;
pub mod import;
pub mod latency;
pub mod launch;
pub mod maps;
pub mod perf;
pub mod pmu;
pub mod sample;
pub mod schema;
pub mod show;
pub mod sim;
pub mod sites;
pub mod stats;

pub use elf::build_id;
pub use schema::{Profile, ProfiledObject, Site};
pub use sites::Thresholds;

use anyhow::{bail, Result};
use std::time::Duration;

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `pmu` when the machine has a hardware PMU, else `sample`, confirmed by `sim`.
    Auto,
    /// Precise hardware samples of last-level-cache load misses, with data addresses.
    Pmu,
    /// cpu-clock sampling with user registers; the load is found one instruction back.
    Sample,
    /// A model of the private caches, fed every access by the exact tracer.
    Sim,
}

/// What to profile: a command to start, or a running process.
#[derive(Debug, Clone)]
pub enum What {
    /// Start this command line.
    Command(Vec<String>),
    /// Attach to this running process.
    Pid(i32),
}

/// How to run a profile.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which backend finds the loads.
    pub backend: Backend,
    /// Stop profiling after this long (a started command is then sent SIGTERM).
    pub duration: Option<Duration>,
    /// cpu-clock samples per second (`sample`).
    pub frequency_hz: u64,
    /// Sample user registers to recover load addresses (`sample`; on by default).
    pub sample_registers: bool,
    /// Which sites count as delinquent.
    pub thresholds: Thresholds,
    /// Cache hierarchy for `sim`; `None` reads the host's from sysfs.
    pub cache: Option<sim::cache::HierarchyConfig>,
    /// How long `auto`'s confirming `sim` run may take (zero: none).
    pub confirm_for: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Auto,
            duration: None,
            frequency_hz: sample::DEFAULT_FREQUENCY_HZ,
            sample_registers: true,
            thresholds: Thresholds::default(),
            cache: None,
            confirm_for: auto::DEFAULT_CONFIRM,
        }
    }
}

/// What happened during a run, for the one-paragraph summary `msh profile` prints.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The backend that ran.
    pub backend: String,
    /// Samples, or simulated LLC misses.
    pub events: u64,
    /// Events charged to a load.
    pub attributed: u64,
    /// Threads that were sampled.
    pub threads: usize,
    /// Records the kernel dropped.
    pub lost_records: u64,
    /// How long the run took.
    pub wall: Duration,
    /// Backend-specific lines (e.g. the simulator's speed).
    pub notes: Vec<String>,
}

/// The one line every fallback prints: `BACKEND: unavailable (WHY); INSTEAD`.
pub fn unavailable(backend: &str, why: &str, instead: &str) -> String {
    format!("{backend}: unavailable ({why}); {instead}")
}

pub(crate) fn target(what: &What) -> Result<collect::Target> {
    Ok(match what {
        What::Command(argv) => collect::Target::Command {
            command: launch::command_for(argv)?,
            display: argv[0].clone(),
        },
        What::Pid(pid) => collect::Target::Pid(*pid),
    })
}

/// Profiles `what` with the chosen backend.
pub fn profile(what: &What, options: &Options) -> Result<(Profile, RunReport)> {
    if let What::Command(argv) = what {
        if argv.is_empty() {
            bail!("no command given (usage: msh profile -o P.json -- CMD ARGS…)");
        }
        launch::resolve_program(&argv[0])?;
    }
    match options.backend {
        Backend::Pmu => pmu::run(target(what)?, options.duration, options.thresholds),
        Backend::Sample => sample::run(
            target(what)?,
            options.frequency_hz,
            options.sample_registers,
            options.duration,
            options.thresholds,
        ),
        Backend::Sim => sim::run(what, options),
        Backend::Auto => auto::run(what, options),
    }
}
