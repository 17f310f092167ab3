//! The `sample` backend (software cpu-clock sampling) and the attribution of sampled
//! instruction addresses to loads, shared with `pmu`.
use crate::address::{self, Recovery};
use crate::collect::{collect, Collection, Evidence, Target};
use crate::elf::{ObjectCache, ObjectImage};
use crate::maps::ProcessTree;
use crate::perf::EventSpec;
use crate::schema::Profile;
use crate::sites::{build_profile, SiteStats, Thresholds};
use crate::RunReport;
use anyhow::{bail, Result};
use iced_x86::{Instruction, InstructionInfoFactory};
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
    /// The sample points at the instruction after the load: cpu-clock's skid of one
    /// (on a pointer chase ~99% of samples land there), so the load is found by
    /// decoding backwards from the sampled IP.
    One,
    /// The sample points at the load itself (PEBS-precise hardware sampling).
    Precise,
}

/// Samples `target` with cpu-clock at `frequency_hz`; with `registers`, each sample
/// carries the user registers, from which the charged load's address is recomputed.
pub fn run(
    target: Target,
    frequency_hz: u64,
    registers: bool,
    duration: Option<Duration>,
    thresholds: Thresholds,
) -> Result<(Profile, RunReport)> {
    if frequency_hz == 0 || frequency_hz > 100_000 {
        bail!("--frequency must be between 1 and 100000 Hz, not {frequency_hz}");
    }
    let spec = EventSpec {
        sample_regs: registers,
        ..EventSpec::cpu_clock(1_000_000_000 / frequency_hz)
    };
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
    let Attribution {
        counts,
        attributed,
        replaced,
    } = attribute(&collection, skid, &mut objects);
    refuse_if_mostly_replaced(attributed, replaced)?;
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
        notes: replaced_note(replaced).into_iter().collect(),
    };
    Ok((profile, report))
}

/// Where a runtime instruction address lies.
pub enum Located<'a> {
    /// In this object, at this ELF virtual address.
    Found(&'a mut ObjectImage, u64),
    /// The file on disk has another build-id than the one that was mapped (rebuilt
    /// during the run): attributing by its bytes would name the wrong instructions.
    Replaced,
    /// Anonymous memory, `[vdso]`, an unreadable or non-ELF file.
    Unknown,
}

/// Resolves a process's runtime address to an object and ELF virtual address.
pub fn locate<'a>(
    processes: &ProcessTree,
    objects: &'a mut ObjectCache,
    pid: u32,
    address: u64,
) -> (Located<'a>, Option<PathBuf>) {
    let Some((path, file_offset)) = processes.resolve(pid, address) else {
        return (Located::Unknown, None);
    };
    let path = path.clone();
    let mapped_id = processes.build_id_at(pid, address);
    let Some(image) = objects.get(&path) else {
        return (Located::Unknown, Some(path));
    };
    if mapped_id.is_some_and(|id| id != image.build_id) {
        return (Located::Replaced, Some(path));
    }
    match image.vaddr_of_file_offset(file_offset) {
        Some(vaddr) => (Located::Found(image, vaddr), Some(path)),
        None => (Located::Unknown, Some(path)),
    }
}

/// What attribution found.
#[derive(Debug, Default)]
pub struct Attribution {
    /// Samples and evidence per site: (object path, file offset of the load).
    pub counts: HashMap<(PathBuf, u64), SiteStats>,
    /// Samples charged to a load.
    pub attributed: u64,
    /// Samples in files replaced on disk since they were mapped.
    pub replaced: u64,
}

/// Maps each sampled IP to (object, ELF address of the load).
pub fn attribute(collection: &Collection, skid: Skid, objects: &mut ObjectCache) -> Attribution {
    let mut result = Attribution::default();
    let mut info = InstructionInfoFactory::new();
    for (&(pid, ip), &n) in &collection.samples {
        let (located, path) = locate(&collection.processes, objects, pid, ip);
        let (image, vaddr) = match located {
            Located::Found(image, vaddr) => (image, vaddr),
            Located::Replaced => {
                result.replaced += n;
                continue;
            }
            Located::Unknown => continue,
        };
        let load = match skid {
            Skid::One => image.load_before(vaddr),
            Skid::Precise => image.instruction_at(vaddr),
        };
        if let (Some(load), Some(path)) = (load, path) {
            let site = result.counts.entry((path, load.ip())).or_default();
            site.events += n;
            result.attributed += n;
            if let Some(evidence) = collection.evidence.get(&(pid, ip)) {
                add_addresses(site, &load, evidence, ip, skid, &mut info);
            }
        }
    }
    result
}

/// Adds what the samples at runtime IP `ip` say about the address `load` read: the
/// data addresses a precise event recorded, or the address recomputed from the
/// registers of a sample taken right after the load.
fn add_addresses(
    site: &mut SiteStats,
    load: &Instruction,
    evidence: &Evidence,
    ip: u64,
    skid: Skid,
    info: &mut InstructionInfoFactory,
) {
    if skid == Skid::Precise {
        site.addresses.extend(&evidence.addrs);
        return;
    }
    for regs in &evidence.regs {
        match address::recover(load, info, regs, ip) {
            Recovery::Recovered(a) => site.addresses.push(a),
            Recovery::Chased(next, register) => {
                site.chased.push(next);
                site.chased_register = Some(address::name(register));
            }
            Recovery::Unrecoverable(why) => *site.unrecoverable.entry(why).or_default() += 1,
        }
    }
}

/// A run whose events mostly fell in replaced files has nothing true to say: what is
/// left is the start-up before the swap and the libraries, not the program's loads.
/// (Requiring *all* events to be lost let one sample in ld.so or libc keep such a run.)
pub fn refuse_if_mostly_replaced(attributed: u64, replaced: u64) -> Result<()> {
    if replaced > attributed {
        bail!("the profiled files were rebuilt or replaced on disk during the run ({replaced} events): profile again");
    }
    Ok(())
}

/// The note for samples lost to replaced files, if any.
pub fn replaced_note(replaced: u64) -> Option<String> {
    (replaced > 0).then(|| {
        format!("warning: {replaced} events fell in files rebuilt or replaced during the run; they were not attributed")
    })
}
