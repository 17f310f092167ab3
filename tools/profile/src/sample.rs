//! The `sample` backend (software cpu-clock sampling) and the attribution of sampled
//! instruction addresses to loads, shared with `pmu`.
use crate::collect::{collect, Collection, Target};
use crate::elf::ObjectCache;
use crate::perf::EventSpec;
use crate::schema::Profile;
use crate::sites::{build_profile, SiteStats, Thresholds};
use crate::RunReport;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Default sampling rate: 1,000 samples per CPU-second. Each cpu-clock sample costs
/// about 30 µs of the profiled program's time on this VM (timer interrupts exit to the
/// hypervisor), so 10 kHz slows a program by ~30% and 1 kHz by ~5% (the `overhead`
/// bench measures it); 1,000 samples already rank the top loads to about ±1.5%.
pub const DEFAULT_FREQUENCY_HZ: u64 = 1_000;

/// Runs fewer samples than this are refused: too few to rank loads.
pub const MIN_SAMPLES: u64 = 20;

/// Where a sample's IP points relative to the load that caused it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skid {
    /// The sample points at the instruction after the load (cpu-clock; see DESIGN.md).
    One,
    /// The sample points at the load itself (PEBS-precise hardware sampling).
    Precise,
}

pub fn run(
    target: Target,
    frequency_hz: u64,
    duration: Option<Duration>,
    thresholds: Thresholds,
) -> Result<(Profile, RunReport)> {
    if frequency_hz == 0 || frequency_hz > 100_000 {
        bail!("--frequency must be between 1 and 100000 Hz, not {frequency_hz}");
    }
    let spec = EventSpec::cpu_clock(1_000_000_000 / frequency_hz);
    let collection = collect(&spec, target, duration)?;
    finish("sample", collection, Skid::One, thresholds)
}

/// Attributes a collection's samples to loads and builds the profile.
pub fn finish(
    backend: &str,
    collection: Collection,
    skid: Skid,
    thresholds: Thresholds,
) -> Result<(Profile, RunReport)> {
    if collection.total_samples < MIN_SAMPLES {
        bail!(
            "the program ran for {} ms and gave only {} samples (need {MIN_SAMPLES}): too short to profile",
            collection.wall.as_millis(),
            collection.total_samples
        );
    }
    let mut objects = ObjectCache::default();
    let (counts, attributed) = attribute(&collection, skid, &mut objects);
    let profile = build_profile(
        backend,
        &counts,
        collection.total_samples,
        &mut objects,
        thresholds,
    );
    let report = RunReport {
        backend: backend.to_owned(),
        events: collection.total_samples,
        attributed,
        threads: collection.threads.len(),
        lost_records: collection.lost_records,
        wall: collection.wall,
        notes: Vec::new(),
    };
    Ok((profile, report))
}

/// Maps each sampled IP to (object, ELF address of the load); returns the per-load
/// counts and how many samples found a load.
pub fn attribute(
    collection: &Collection,
    skid: Skid,
    objects: &mut ObjectCache,
) -> (HashMap<(PathBuf, u64), SiteStats>, u64) {
    let mut counts: HashMap<(PathBuf, u64), SiteStats> = HashMap::new();
    let mut attributed = 0;
    for (&(pid, ip), &n) in &collection.samples {
        let Some((path, file_offset)) = collection.processes.resolve(pid, ip) else {
            continue;
        };
        let Some(image) = objects.get(path) else {
            continue;
        };
        let Some(vaddr) = image.vaddr_of_file_offset(file_offset) else {
            continue;
        };
        let load = match skid {
            Skid::One => image.load_before(vaddr),
            Skid::Precise => Some(vaddr),
        };
        if let Some(load) = load {
            counts.entry((path.clone(), load)).or_default().events += n;
            attributed += n;
        }
    }
    (counts, attributed)
}
