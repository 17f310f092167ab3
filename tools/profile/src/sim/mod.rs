//! The `sim` backend: run the program under msh's exact access tracer (`msh-tracer`:
//! qemu-x86_64 with a TCG plugin streaming every load and store in batches), replay
//! each batch through the cache model ([`cache`], [`model`]) as it arrives, and count,
//! per load instruction, its executions and its last-level-cache misses. Exact for the
//! modelled caches: each traced thread gets private L1/L2 and all share the LLC (the
//! threads' batches interleave in the order they were filled, a few thousand accesses
//! at a time).
//!
//! Instruction addresses are mapped to objects through the guest memory map the
//! tracer reports (qemu-x86_64 loads the program at addresses of its own choosing).
//! Programs QEMU 7.2 cannot run (AVX-512 code) are refused with a pointer to
//! `--backend sample`; one that `exec`s is refused (the new program runs untraced);
//! children a program forks are not traced, and the report says so.
pub mod cache;
pub mod model;

use crate::elf::ObjectCache;
use crate::launch::resolve_program;
use crate::maps::{AddressSpace, Mapping, ProcessTree};
use crate::sample::{locate, Located};
use crate::schema::Profile;
use crate::sites::{build_profile, SiteStats};
use crate::{Options, RunReport, What};
use anyhow::{bail, Context, Result};
use cache::HierarchyConfig;
use model::Simulator;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::path::PathBuf;

/// A run that executed fewer guest instructions than this "exited at once".
pub const MIN_INSTRUCTIONS: u64 = 1_000_000;

/// Profiles `what` by simulation (see the module documentation).
pub fn run(what: &What, options: &Options) -> Result<(Profile, RunReport)> {
    simulate(what, options, None)
}

/// Like [`run`], but the profile reports only the given candidate sites — (object
/// path, ELF virtual address of the load) — for confirming another backend's ranking
/// (the `auto` backend); the thresholds in `options` still apply. The whole program is
/// still simulated (every access shapes the caches); only the report is restricted.
pub fn run_for_sites(
    what: &What,
    options: &Options,
    sites: &[(PathBuf, u64)],
) -> Result<(Profile, RunReport)> {
    let sites: HashSet<(PathBuf, u64)> = sites
        .iter()
        .map(|(path, vaddr)| (path.canonicalize().unwrap_or_else(|_| path.clone()), *vaddr))
        .collect();
    simulate(what, options, Some(&sites))
}

fn simulate(
    what: &What,
    options: &Options,
    only: Option<&HashSet<(PathBuf, u64)>>,
) -> Result<(Profile, RunReport)> {
    let argv = match what {
        What::Command(argv) => argv,
        What::Pid(_) => bail!(
            "the sim backend runs the program under qemu-x86_64: it cannot attach to a running PID (use --backend sample)"
        ),
    };
    let Some(program) = argv.first() else {
        bail!("no command given (usage: msh profile -o P.json -- CMD ARGS…)")
    };
    resolve_program(program)?;
    let config = match &options.cache {
        Some(config) => config.clone(),
        None => {
            HierarchyConfig::host().context("cannot read the host's cache sizes (pass --cache)")?
        }
    };
    let mut simulator = Simulator::new(cache::Hierarchy::new(&config));
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sim: {human_pos} accesses simulated ({per_sec}), {elapsed}",
        )
        .expect("a valid template"),
    );
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let trace_options = msh_tracer::TraceOptions {
        time_limit: options.duration,
        // SIGTERM, SIGHUP or Ctrl-C: the tracer stops qemu (SIGTERM, then SIGKILL) and
        // the profile of the accesses seen so far is written, as the sample backend does.
        interrupted: Some(|| crate::collect::stopped_by().is_some()),
        ..Default::default()
    };
    let stop_signals = crate::collect::StopSignals::catch();
    let command: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let summary = msh_tracer::trace(&command, &trace_options, |batch| {
        simulator.batch(batch.thread, batch.accesses);
        progress.inc(batch.accesses.len() as u64);
        ControlFlow::Continue(())
    });
    progress.finish_and_clear();
    stop_signals.report();
    drop(stop_signals);
    let summary = summary?;
    if let Some((path, true)) = &summary.exec {
        bail!(
            "{program} exec'd {path}, which qemu-x86_64 runs natively and untraced, so the profile would miss it: profile {path} directly"
        );
    }
    if let (Some(signal), true) = (
        crate::collect::stopped_by(),
        summary.instructions < MIN_INSTRUCTIONS,
    ) {
        bail!(
            "stopped by {} after {} instructions under qemu: too little ran to profile",
            crate::collect::signal_name(signal),
            summary.instructions
        );
    }
    if summary.instructions < MIN_INSTRUCTIONS {
        bail!(
            "{program} exited almost at once ({} instructions under qemu): nothing to profile",
            summary.instructions
        );
    }

    // The guest's file mappings, as one address space.
    let mut space = AddressSpace::default();
    for vma in &summary.vmas {
        if let Some(path) = &vma.path {
            space.add(Mapping {
                start: vma.start,
                end: vma.end,
                pgoff: vma.offset,
                path: PathBuf::from(path),
                build_id: None,
            });
        }
    }
    let mut processes = ProcessTree::default();
    processes.insert(0, space);
    let mut objects = ObjectCache::default();
    let mut counts: HashMap<(PathBuf, u64), SiteStats> = HashMap::new();
    let mut attributed = 0;
    for (ip, load) in simulator.loads() {
        let (Located::Found(image, vaddr), Some(path)) = locate(&processes, &mut objects, 0, ip)
        else {
            continue;
        };
        // Implicit stack reads (pop, ret) and indirect branches through memory count
        // in the total, but they are not sites a prefetch could be placed at.
        if !image.is_load_at(vaddr) {
            continue;
        }
        if only.is_some_and(|only| !only.contains(&(path.clone(), vaddr))) {
            continue;
        }
        let site = counts.entry((path, vaddr)).or_default();
        site.events += load.llc_misses;
        *site.executions.get_or_insert(0) += load.executions;
        attributed += load.llc_misses;
    }
    let profile = build_profile(
        "sim",
        &counts,
        simulator.llc_load_misses,
        &mut objects,
        options.thresholds,
    );
    let wall = summary.wall.as_secs_f64().max(1e-9);
    let model_rate = simulator.accesses as f64 / simulator.model_time.as_secs_f64().max(1e-9) / 1e6;
    let run_rate = simulator.accesses as f64 / wall / 1e6;
    let mut notes = vec![
        format!(
            "sim: {} instructions, {} data accesses ({} loads) through {} ({} cores: private caches, shared LLC)",
            summary.instructions,
            simulator.accesses,
            simulator.load_accesses,
            config.describe(),
            summary.threads.max(1),
        ),
        format!(
            "sim: cache model alone {model_rate:.1} M accesses/s ({:.2} s); whole run {run_rate:.1} M accesses/s ({:.2} s)",
            simulator.model_time.as_secs_f64(),
            wall
        ),
    ];
    if summary.forks > 0 {
        notes.push(format!(
            "warning: the program forked {} time(s); the children ran untraced and are not in the profile",
            summary.forks
        ));
    }
    match summary.stopped {
        Some(msh_tracer::StopReason::Interrupted) => notes
            .push("sim: cut short by a stop signal; the profile covers the run until then".into()),
        Some(_) => notes
            .push("sim: stopped at the time limit; the profile covers the run until then".into()),
        None => {}
    }
    let report = RunReport {
        backend: "sim".into(),
        events: simulator.llc_load_misses,
        attributed,
        threads: summary.threads as usize,
        lost_records: 0,
        wall: summary.wall,
        notes,
    };
    Ok((profile, report))
}
