//! The `msh pagewalk` command line, kept here so the `msh` binary only wires it in.
use crate::config::MachineConfig;
use crate::source::{self, AccessSource, Synthetic, Workload};
use crate::{Design, Env, Pages, Study};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use msh_profile::collect::{stopped_by, StopSignals};
use std::io::IsTerminal;
use std::path::PathBuf;

/// `msh pagewalk run …` and `msh pagewalk record …`.
#[derive(Debug, clap::Args)]
pub struct PagewalkArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Simulate page walks of radix and the other designs over an access stream.
    Run(RunArgs),
    /// Trace a command's loads and stores under qemu-x86_64 into a file that
    /// `run --trace` replays (one recording, many machine configurations).
    Record(RecordArgs),
}

/// Options of `msh pagewalk record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The trace file to write (msh tracer format).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Stop tracing after this many seconds (the program then gets SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub time_limit: Option<f64>,
    /// Run this many instructions untraced first (skip start-up).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fast_forward: u64,
    /// The command to trace, after `--`.
    #[arg(last = true, value_name = "CMD", required = true)]
    pub command: Vec<String>,
}

/// Options of `msh pagewalk run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A built-in workload.
    #[arg(long, value_enum, value_name = "WORKLOAD", conflicts_with_all = ["trace", "command"])]
    pub synthetic: Option<Workload>,
    /// Bytes the synthetic workload touches (K/M/G/T suffixes).
    #[arg(long, value_name = "SIZE", default_value = "8G")]
    pub footprint: String,
    /// Accesses the synthetic workload makes.
    #[arg(long, value_name = "N", default_value_t = 20_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub accesses: u64,
    /// A saved trace (msh tracer format), streamed.
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub trace: Option<PathBuf>,
    /// Designs, comma-separated: radix,dmt,pvdmt,ecpt,fpt,asap (radix always runs: it is the baseline).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "radix,dmt,pvdmt,ecpt,fpt,asap"
    )]
    pub designs: String,
    /// Environments, comma-separated: native,virt,nested.
    #[arg(long, value_name = "LIST", default_value = "native,virt")]
    pub env: String,
    /// Page sizes, comma-separated: 4k, thp (2 MiB pages where an area allows, guest and host).
    #[arg(long, value_name = "LIST", default_value = "4k")]
    pub pages: String,
    /// Turn the TLBs off (L1 dTLB, STLB, nested TLB): every access walks.
    #[arg(long)]
    pub no_tlb: bool,
    /// Turn the page-walk caches off.
    #[arg(long)]
    pub no_pwc: bool,
    /// Machine description (JSON; any subset of the fields, see README).
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
    /// Seed of the synthetic workload, the free-list shuffle and the hashes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of run time spent in page walks under radix, for the application
    /// speedup (default: estimated from the simulation).
    #[arg(long, value_name = "F", value_parser = fraction)]
    pub walk_fraction: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// With `-- CMD`: stop tracing after this many seconds (the program then gets
    /// SIGTERM; what was traced is simulated).
    #[arg(long, value_name = "SECS", value_parser = seconds, requires = "command")]
    pub time_limit: Option<f64>,
    /// The command to trace, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs `msh pagewalk …`.
pub fn run(args: &PagewalkArgs) -> Result<()> {
    match &args.action {
        Action::Run(run) => run_study(run),
        Action::Record(record) => record_trace(record),
    }
}

/// A positive number of seconds, at most a day — clap's value parser.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 86_400.0 => Ok(value),
        _ => Err(format!(
            "{text} is not a number of seconds between 0 and 86400"
        )),
    }
}

fn record_trace(args: &RecordArgs) -> Result<()> {
    let argv: Vec<std::ffi::OsString> = args.command.iter().map(Into::into).collect();
    // The program itself is an input the trace must never replace.
    let program = msh_tracer::find_in_path(&argv[0], std::env::var_os("PATH").as_deref());
    let inputs: Vec<&std::path::Path> = program.iter().map(PathBuf::as_path).collect();
    // Ctrl-C, SIGTERM and SIGHUP stop the trace and still write what was traced.
    let _signals = StopSignals::catch();
    let options = msh_tracer::TraceOptions {
        fast_forward_insns: args.fast_forward,
        time_limit: args.time_limit.map(std::time::Duration::from_secs_f64),
        interrupted: Some(|| stopped_by().is_some()),
        ..Default::default()
    };
    let header = msh_tracer::file::FileHeader {
        command: args.command.clone(),
        sampling: options.sampling,
        fast_forward_insns: options.fast_forward_insns,
        addr_filter: None,
    };
    let mut writer = msh_tracer::file::Writer::create(&args.output, &header, &inputs)?;
    let spinner = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    spinner.set_style(
        ProgressStyle::with_template("tracing {spinner} {human_pos} accesses ({elapsed})")
            .expect("a valid template"),
    );
    let mut failed = None;
    let summary = msh_tracer::trace(&argv, &options, |batch| match writer.write_batch(batch) {
        Ok(()) => {
            spinner.inc(batch.accesses.len() as u64);
            std::ops::ControlFlow::Continue(())
        }
        Err(err) => {
            failed = Some(err);
            std::ops::ControlFlow::Break(())
        }
    });
    spinner.finish_and_clear();
    if let Some(err) = failed {
        return Err(err);
    }
    let summary = summary?;
    let trailer = msh_tracer::file::FileTrailer::from_summary(&summary, writer.batches());
    writer.finish(&trailer)?;
    eprintln!(
        "msh pagewalk: {} accesses of {} thread(s) in {} ({:.1} s); {} {}",
        summary.accesses_delivered,
        summary.threads,
        args.output.display(),
        summary.wall.as_secs_f64(),
        args.command[0],
        match summary.stopped {
            Some(reason) => format!("stopped early ({reason:?})"),
            None => format!("ended with {}", summary.exit),
        }
    );
    Ok(())
}

/// A number from 0 to 1 (not NaN) — clap's value parser.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text} is not a number between 0 and 1")),
    }
}

fn run_study(args: &RunArgs) -> Result<()> {
    let study = study(args)?;
    let mut source: Box<dyn AccessSource> = match (&args.synthetic, &args.trace) {
        (Some(workload), _) => Box::new(Synthetic::new(
            *workload,
            parse_size(&args.footprint).context("--footprint")?,
            args.accesses,
            args.seed,
        )?),
        (None, Some(path)) => source::trace_file(path)?,
        (None, None) if !args.command.is_empty() => source::traced_command(
            &args.command,
            args.time_limit.map(std::time::Duration::from_secs_f64),
        )?,
        (None, None) => {
            bail!("nothing to simulate: give --synthetic WORKLOAD, --trace FILE or -- CMD ARGS…")
        }
    };
    let bar = match source.len_hint() {
        Some(n) if std::io::stderr().is_terminal() => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template(
                    "simulating [{bar:30}] {human_pos}/{human_len} accesses ({elapsed}, eta {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    };
    let report = crate::run(&study, source.as_mut(), &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn study(args: &RunArgs) -> Result<Study> {
    let list = |text: &str| {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let machine = match &args.config {
        Some(path) => MachineConfig::load(path)?,
        None => MachineConfig::default(),
    };
    Ok(Study {
        designs: list(&args.designs)
            .iter()
            .map(|d| Design::parse(d))
            .collect::<Result<_>>()?,
        envs: list(&args.env)
            .iter()
            .map(|e| Env::parse(e))
            .collect::<Result<_>>()?,
        pages: list(&args.pages)
            .iter()
            .map(|p| Pages::parse(p))
            .collect::<Result<_>>()?,
        tlb: !args.no_tlb,
        pwc: !args.no_pwc,
        machine,
        seed: args.seed,
        walk_fraction: args.walk_fraction,
    })
}

/// `8G`, `512M`, `64K`, `1T` or plain bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("bad size {text:?} (expected e.g. 8G, 512M)"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n && *v > 0)
        .with_context(|| format!("bad size {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "x1G", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
