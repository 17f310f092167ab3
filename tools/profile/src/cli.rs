//! The `msh profile` command line (clap), kept here so the `msh` binary only wires it in.
use crate::sim::cache::HierarchyConfig;
use crate::sites::{DEFAULT_MIN_MISS_RATIO, DEFAULT_MIN_SHARE};
use crate::{profile, Backend, Options, Profile, RunReport, Thresholds, What};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Find delinquent loads: `msh profile [opts] -o P.json -- CMD ARGS…`,
/// `msh profile --pid PID -o P.json`, `msh profile show P.json`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProfileArgs {
    /// `msh profile show`; without it, profile a command or process.
    #[command(subcommand)]
    pub action: Option<ProfileAction>,
    /// auto = pmu when the machine has a hardware PMU, else sample.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Where to write the profile (JSON, version 1).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PROFILE.json",
        required = true
    )]
    pub output: Option<PathBuf>,
    /// Profile a running process (and its threads) instead of starting a command.
    #[arg(long, value_name = "PID", conflicts_with = "command",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub pid: Option<i32>,
    /// Stop after S seconds (a command msh started is then sent SIGTERM).
    #[arg(long, value_name = "S", value_parser = positive_seconds)]
    pub duration: Option<f64>,
    /// cpu-clock samples per second (sample backend).
    #[arg(long, value_name = "HZ", default_value_t = crate::sample::DEFAULT_FREQUENCY_HZ,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub frequency: u64,
    /// Sample without user registers: smaller samples, but no load addresses, so no
    /// footprints (sample backend).
    #[arg(long)]
    pub no_registers: bool,
    /// A load is delinquent with at least this share of the run's samples/misses.
    #[arg(long, value_name = "F", default_value_t = DEFAULT_MIN_SHARE, value_parser = share)]
    pub min_share: f64,
    /// …and, when executions are known (sim), at least this LLC miss ratio.
    #[arg(long, value_name = "F", default_value_t = DEFAULT_MIN_MISS_RATIO, value_parser = share)]
    pub min_miss_ratio: f64,
    /// auto: let the confirming sim run take at most S seconds (0: no sim run).
    #[arg(long, value_name = "S", default_value_t = crate::auto::DEFAULT_CONFIRM.as_secs_f64(),
          value_parser = seconds)]
    pub confirm_seconds: f64,
    /// Cache hierarchy for sim, e.g. `L1=48K:12,L2=2M:16,L3=32M:16` (default: this host's).
    #[arg(long, value_name = "LEVELS")]
    pub cache: Option<String>,
    /// The command to profile, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `msh profile` does besides profiling.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileAction {
    /// Print a profile's top sites as a table.
    Show {
        /// The profile file to show.
        profile: PathBuf,
        /// Sites to show per object.
        #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        top: usize,
    },
}

/// Runs `msh profile …`.
pub fn run(args: ProfileArgs) -> Result<()> {
    if let Some(ProfileAction::Show { profile, top }) = &args.action {
        print!("{}", crate::show::render(&Profile::load(profile)?, *top));
        return Ok(());
    }
    let output = args.output.clone().context("missing -o PROFILE.json")?;
    let what = match (args.pid, args.command.is_empty()) {
        (Some(pid), _) => What::Pid(pid),
        (None, false) => What::Command(args.command.clone()),
        (None, true) => bail!("nothing to profile: give `-- CMD ARGS…` or --pid PID"),
    };
    let options = options(&args)?;
    // Checked before the (possibly long) run; written only after it.
    let program = profiled_program(&what);
    let mut outputs = msh_files::Outputs::new(&[program.as_path()])?;
    let out = outputs.plan(&output, "-o")?;
    let (profile, report) = profile(&what, &options)?;
    outputs.set(out, profile.to_bytes());
    outputs.commit()?;
    eprint!("{}", summary(&profile, &report, &output));
    Ok(())
}

/// The executable being profiled, which the profile must never overwrite.
fn profiled_program(what: &What) -> PathBuf {
    match what {
        What::Pid(pid) => PathBuf::from(format!("/proc/{pid}/exe")),
        What::Command(argv) => argv
            .first()
            .and_then(|program| crate::launch::resolve_program(program).ok())
            .unwrap_or_default(),
    }
}

/// The longest run `--duration` and `--confirm-seconds` take: a year.
pub const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// A share or ratio: a number from 0 to 1 (not NaN) — clap's value parser.
pub fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        Ok(_) => Err(format!("{text} is not between 0 and 1")),
        Err(_) => Err(format!("{text} is not a number")),
    }
}

/// Seconds from 0 to [`MAX_SECONDS`] — clap's value parser.
pub fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=MAX_SECONDS).contains(&value) => Ok(value),
        Ok(_) => Err(format!("{text} is not between 0 and {MAX_SECONDS} seconds")),
        Err(_) => Err(format!("{text} is not a number of seconds")),
    }
}

/// Seconds above 0, at most [`MAX_SECONDS`] — clap's value parser.
pub fn positive_seconds(text: &str) -> Result<f64, String> {
    let value = seconds(text)?;
    if value == 0.0 {
        return Err(format!("{text} is not a positive number of seconds"));
    }
    Ok(value)
}

/// The run's options; every number was range-checked by the parser.
fn options(args: &ProfileArgs) -> Result<Options> {
    let duration = args.duration.map(Duration::from_secs_f64);
    let cache = args
        .cache
        .as_deref()
        .map(HierarchyConfig::parse)
        .transpose()
        .context("bad --cache")?;
    Ok(Options {
        backend: args.backend,
        duration,
        frequency_hz: args.frequency,
        sample_registers: !args.no_registers,
        thresholds: Thresholds {
            min_share: args.min_share,
            min_miss_ratio: args.min_miss_ratio,
        },
        cache,
        confirm_for: Duration::from_secs_f64(args.confirm_seconds),
    })
}

fn summary(profile: &Profile, report: &RunReport, output: &Path) -> String {
    let what = if report.backend == "sim" {
        "simulated LLC load misses"
    } else {
        "samples"
    };
    let sites: usize = profile.objects.iter().map(|o| o.sites.len()).sum();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut text = format!(
        "msh profile: {} backend, {:.2} s: {} {what} from {}, {:.1}% charged to loads; {} in {} -> {}\n",
        report.backend,
        report.wall.as_secs_f64(),
        report.events,
        plural(report.threads, "thread"),
        100.0 * report.attributed as f64 / report.events.max(1) as f64,
        plural(sites, "delinquent load"),
        plural(profile.objects.len(), "object"),
        output.display()
    );
    if let Some(top) = profile.objects.first().and_then(|o| o.sites.first()) {
        text += &format!(
            "msh profile: top site {} {} ({}), {:.1}% share\n",
            top.offset,
            top.symbol,
            top.insn,
            top.share * 100.0
        );
    }
    if report.lost_records > 0 {
        text += &format!(
            "msh profile: warning: the kernel dropped {} records (ring buffer full)\n",
            report.lost_records
        );
    }
    for note in &report.notes {
        text += &format!("msh profile: {note}\n");
    }
    text
}
