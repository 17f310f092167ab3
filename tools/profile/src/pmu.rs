//! The `pmu` backend: precise hardware sampling of loads that miss the last-level
//! cache (PEBS on Intel, through the generic `LL-read-miss` cache event with
//! `precise_ip`), each sample carrying the load's own IP and its data address.
//!
//! Machines without a hardware PMU (most cloud VMs, including msh's CI) have no `cpu`
//! PMU under /sys/bus/event_source/devices; there the backend fails with
//! [`NoPmu`] and `auto` falls through to `sample`.
//!
//! Not implemented: LBR branch records to count each load's executions, so `pmu`
//! profiles carry `miss_ratio: null` like `sample` ones.
use crate::collect::{collect, Target};
use crate::perf::{probe, EventSpec};
use crate::sample::{finish, Skid};
use crate::schema::Profile;
use crate::sites::Thresholds;
use crate::RunReport;
use anyhow::Result;
use perf_event_open_sys::bindings as b;
use std::path::Path;
use std::time::Duration;

/// This machine has no hardware performance-monitoring unit (or the kernel refuses
/// its load-miss event); the reason.
#[derive(Debug, thiserror::Error)]
#[error("pmu: unavailable (no hardware PMU: {0}); use --backend sample (cpu-clock) or sim")]
pub struct NoPmu(pub String);

/// Default: one sample per this many LLC load misses.
pub const DEFAULT_MISS_PERIOD: u64 = 1_000;

const PMU_DIRS: [&str; 3] = [
    "/sys/bus/event_source/devices/cpu",
    "/sys/bus/event_source/devices/cpu_core",
    "/sys/bus/event_source/devices/cpu_atom",
];

/// Is there a core PMU? Checks sysfs, the same place `perf list` looks.
pub fn detect() -> Result<(), NoPmu> {
    if PMU_DIRS.iter().any(|d| Path::new(d).exists()) {
        Ok(())
    } else {
        Err(NoPmu(
            "no cpu PMU under /sys/bus/event_source/devices: a VM without PMU passthrough".into(),
        ))
    }
}

fn llc_read_miss(precise_ip: u8) -> EventSpec {
    EventSpec {
        type_: b::PERF_TYPE_HW_CACHE,
        config: (b::PERF_COUNT_HW_CACHE_LL
            | (b::PERF_COUNT_HW_CACHE_OP_READ << 8)
            | (b::PERF_COUNT_HW_CACHE_RESULT_MISS << 16)) as u64,
        sample_period: DEFAULT_MISS_PERIOD,
        precise_ip,
        sample_addr: true,
        sample_regs: false,
        mmap_data: false,
        inherit: true,
    }
}

/// The event this machine's PMU accepts, and where its samples point.
pub struct Chosen {
    spec: EventSpec,
    skid: Skid,
}

/// Finds the precise LLC-load-miss event the kernel accepts here, before anything is
/// started (so a refusal costs nothing): precise_ip 2 asks for zero skid (PEBS with
/// the IP fix-up: the sampled IP is the load itself); 1 and 0 leave the usual skid of
/// one, charged like cpu-clock samples.
pub fn choose() -> Result<Chosen, NoPmu> {
    detect()?;
    let mut refusals = Vec::new();
    for precise_ip in [2u8, 1, 0] {
        let spec = llc_read_miss(precise_ip);
        match probe(&spec) {
            Ok(()) => {
                let skid = if precise_ip >= 2 {
                    Skid::Precise
                } else {
                    Skid::One
                };
                return Ok(Chosen { spec, skid });
            }
            Err(err) => refusals.push(format!("precise_ip={precise_ip}: {err}")),
        }
    }
    Err(NoPmu(format!(
        "the kernel refused the LLC-load-miss event ({})",
        refusals.join("; ")
    )))
}

/// Profiles `target` with the event [`choose`] found.
pub fn run_chosen(
    chosen: Chosen,
    target: Target,
    duration: Option<Duration>,
    thresholds: Thresholds,
) -> Result<(Profile, RunReport)> {
    let collection = collect(&chosen.spec, target, duration)?;
    finish("pmu", collection, chosen.skid, thresholds)
}

/// Profiles `target` with the PMU, or fails with [`NoPmu`] before starting it.
pub fn run(
    target: Target,
    duration: Option<Duration>,
    thresholds: Thresholds,
) -> Result<(Profile, RunReport)> {
    run_chosen(choose()?, target, duration, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_matches_sysfs() {
        let present = PMU_DIRS.iter().any(|d| Path::new(d).exists());
        assert_eq!(detect().is_ok(), present);
        if let Err(err) = detect() {
            assert!(err
                .to_string()
                .starts_with("pmu: unavailable (no hardware PMU: "));
        }
    }
}
