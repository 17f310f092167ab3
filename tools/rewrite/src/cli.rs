//! The `msh rewrite` subcommand: arguments and the one-line error contract.

use crate::{rewrite_to_bytes, Options, Selection};
use clap::Args;
use std::path::PathBuf;

/// Insert prefetch+yield trampolines at loads of an unmodified x86-64 ELF binary, or
/// (--scavenger) yield checks that bound the time between a scavenger's yields
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("sites").required(true).multiple(true)
    .args(["profile", "all_loads", "scavenger"])))]
pub struct RewriteArgs {
    /// The executable or shared object to rewrite
    pub input: PathBuf,
    /// Where to write the rewritten binary (nothing is written on error)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Patch the sites of this profile (from `msh profile`; its build-id must match INPUT)
    #[arg(long, value_name = "PROFILE.json")]
    pub profile: Option<PathBuf>,
    /// Patch every load that can be proven safe
    #[arg(long, conflicts_with_all = ["profile", "scavenger"])]
    pub all_loads: bool,
    /// For a scavenger that never calls msh_yield(): yield checks at function entries,
    /// loop headers and in long straight-line stretches, so that it yields every
    /// --yield-every-ns; with --profile, the profile's loads are costed as misses
    #[arg(long)]
    pub scavenger: bool,
    /// With --scavenger: target time between two yields, in ns (default 100, finer than
    /// the runtime's default 150 ns budget, so a switch back overruns it by at most one
    /// interval; the runtime counts its budget in these yields)
    #[arg(long, requires = "scavenger", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(10..=10_000_000))]
    pub yield_every_ns: Option<u64>,
    /// With --profile: only sites with at least this share of the samples (0..1)
    #[arg(long, requires = "profile", conflicts_with = "scavenger", value_name = "F",
          value_parser = msh_profile::cli::share)]
    pub min_share: Option<f64>,
    /// With --profile: only the N sites with the largest share
    #[arg(long, requires = "profile", conflicts_with = "scavenger", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub top: Option<usize>,
    /// Write a JSON report (candidates, patched, skipped by reason, registers saved per site)
    #[arg(long, value_name = "REPORT.json")]
    pub report: Option<PathBuf>,
    /// Let a window end with a call (+~2% coverage; unwinding through such calls then fails)
    #[arg(long)]
    pub call_windows: bool,
}

/// Runs the subcommand; the caller prints the error (one line, `{:#}`).
pub fn run(args: &RewriteArgs) -> anyhow::Result<()> {
    let selection = match &args.profile {
        _ if args.scavenger => Selection::Scavenger {
            every_ns: args
                .yield_every_ns
                .unwrap_or(crate::scavenger::DEFAULT_EVERY_NS),
            profile: args.profile.clone(),
        },
        Some(path) => Selection::Profile {
            path: path.clone(),
            min_share: args.min_share,
            top: args.top,
        },
        None => Selection::AllLoads,
    };
    let options = Options {
        input: args.input.clone(),
        output: args.output.clone(),
        selection,
        allow_call_windows: args.call_windows,
    };
    // Both outputs are checked before the work and land together after it.
    let mut outputs = msh_files::Outputs::new(&options.inputs())?;
    let out = options.plan_output(&mut outputs)?;
    let report_out = args
        .report
        .as_deref()
        .map(|path| outputs.plan(path, "--report"))
        .transpose()?;
    let (bytes, report) = rewrite_to_bytes(&options)?;
    outputs.set(out, bytes);
    if let Some(id) = report_out {
        outputs.set(id, serde_json::to_vec_pretty(&report)?);
    }
    outputs.commit()?;
    if let Some(scav) = &report.scavenger {
        eprintln!(
            "msh rewrite: {} of {} yield checks placed ({} skipped), every ~{} ns, {} bytes -> {}",
            report.patched,
            report.candidates,
            report.candidates - report.patched,
            scav.yield_every_ns,
            report.trampoline_bytes,
            args.output.display()
        );
        return Ok(());
    }
    eprintln!(
        "msh rewrite: {} of {} candidate loads patched ({:.1}%), {} trampolines, {} bytes -> {}",
        report.patched,
        report.candidates,
        100.0 * report.patched as f64 / report.candidates.max(1) as f64,
        report.trampolines,
        report.trampoline_bytes,
        args.output.display()
    );
    Ok(())
}
