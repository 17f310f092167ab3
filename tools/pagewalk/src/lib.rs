//! msh pagewalk: a page-walk simulator comparing the x86-64 radix page table with
//! Direct Memory Translation (DMT, pvDMT) and, for reference, ECPT, FPT and ASAP, native,
//! in a VM and nested.
//!
//! A stream of accesses ([`source`]) drives one [`sim::Simulator`] per design ×
//! environment × page size, all in lockstep over the same batch, in parallel (rayon).
//! Each simulator has its own synthetic OS (areas, frames and page-table pages
//! allocated on first touch from a shuffled free list, `space` and `phys`), its own
//! TLBs, page-walk caches and data caches ([`config`]), and its design's page tables
//! ([`designs`]), whose every reference is simulated through the caches at its real
//! physical address. [`report`] turns the counters into the table and the JSON.
#![warn(missing_docs)]

pub(crate) mod assoc;
pub mod cli;
pub mod config;
pub mod designs;
pub(crate) mod phys;
pub mod report;
pub mod sim;
pub mod source;
pub(crate) mod space;

pub use designs::{Design, Env};
pub use space::Area;

use anyhow::{bail, Result};
use config::MachineConfig;
use rayon::prelude::*;
use report::Report;
use serde::Serialize;
use sim::{SimConfig, Simulator, Stats};
use source::{Access, AccessSource};
use std::time::Instant;

/// Accesses handed to the simulators at a time: few enough (128 KiB) for the batch to
/// stay in the host's L2 between the source writing it and each simulator reading it.
const BATCH: usize = 1 << 13;
/// How many accesses ahead a simulator prefetches the model's state into the host's
/// caches ([`Simulator::prefetch`]).
const LOOKAHEAD: usize = 8;

/// Page-size policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum Pages {
    /// 4 KiB pages only.
    #[serde(rename = "4k")]
    Base,
    /// Transparent huge pages: 2 MiB pages wherever an area's alignment allows
    /// (in the guest and in the host).
    #[serde(rename = "thp")]
    Thp,
}

impl Pages {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Pages::Base => "4k",
            Pages::Thp => "thp",
        }
    }

    /// Parses `4k` or `thp`.
    pub fn parse(name: &str) -> Result<Pages> {
        match name.trim().to_ascii_lowercase().as_str() {
            "4k" => Ok(Pages::Base),
            "thp" | "2m" => Ok(Pages::Thp),
            _ => bail!("unknown page size {name:?} (expected 4k or thp)"),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Study {
    /// Designs (radix is always simulated: it is the baseline).
    pub designs: Vec<Design>,
    /// Environments.
    pub envs: Vec<Env>,
    /// Page-size policies.
    pub pages: Vec<Pages>,
    /// Model the TLBs.
    pub tlb: bool,
    /// Model the page-walk caches.
    pub pwc: bool,
    /// The machine.
    pub machine: MachineConfig,
    /// Seed of the OS's free-list shuffle and of hash functions.
    pub seed: u64,
    /// Fraction of run time spent walking under radix, for the application speedup;
    /// `None`: estimated from the simulation (see [`report`]).
    pub walk_fraction: Option<f64>,
}

impl Study {
    /// The simulations this study runs, and a note for each combination it skips.
    pub fn configs(&self) -> (Vec<SimConfig>, Vec<String>) {
        let mut designs = vec![Design::Radix];
        designs.extend(self.designs.iter().copied().filter(|d| *d != Design::Radix));
        let mut configs = Vec::new();
        let mut skipped = Vec::new();
        for &pages in &self.pages {
            for &env in &self.envs {
                for &design in &designs {
                    if let Some(why) = design.unsupported_in(env) {
                        let note = format!("{} {}: {why}", design.name(), env.name());
                        if self.designs.contains(&design) && !skipped.contains(&note) {
                            skipped.push(note);
                        }
                        continue;
                    }
                    configs.push(SimConfig {
                        design,
                        env,
                        pages,
                        tlb: self.tlb,
                        pwc: self.pwc,
                        machine: self.machine.clone(),
                        seed: self.seed,
                    });
                }
            }
        }
        (configs, skipped)
    }

    /// Refuses a footprint the innermost simulated physical memory cannot hold.
    fn check_footprint(&self, areas: &[Area]) -> Result<()> {
        let footprint: u64 = areas.iter().map(|a| a.end - a.start).sum();
        let m = &self.machine;
        for &env in &self.envs {
            let (gib, name, field) = match env {
                Env::Native => (m.host_memory_gib, "host", "host_memory_gib"),
                Env::Virt => (m.guest_memory_gib, "guest", "guest_memory_gib"),
                Env::Nested => (
                    m.nested_guest_memory_gib,
                    "L2 guest",
                    "nested_guest_memory_gib",
                ),
            };
            // 1/8 is reserved for contiguous tables (TEAs, ECPT/FPT tables, ASAP runs).
            let usable = (gib << 30) / 8 * 7;
            if footprint > usable {
                bail!(
                    "footprint of {} MiB does not fit the simulated {name} physical memory ({gib} GiB, {} MiB of it for pages): raise {field} with --config or give a smaller --footprint",
                    footprint >> 20,
                    usable >> 20
                );
            }
        }
        Ok(())
    }
}

/// Runs `study` over every access of `source`; `progress` is told how many accesses
/// each batch had.
pub fn run(
    study: &Study,
    source: &mut dyn AccessSource,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report> {
    if study.designs.is_empty() || study.envs.is_empty() || study.pages.is_empty() {
        bail!("nothing to simulate: give at least one design, environment and page size");
    }
    study.machine.validate()?;
    let areas = source.areas();
    study.check_footprint(&areas)?;
    let (configs, skipped) = study.configs();
    let mut sims = configs
        .par_iter()
        .map(|c| Simulator::new(c, &areas))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut batch: Vec<Access> = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        source.fill(&mut batch, BATCH)?;
        if batch.is_empty() {
            break;
        }
        sims.par_iter_mut().try_for_each(|sim| {
            for (i, access) in batch.iter().enumerate() {
                if let Some(ahead) = batch.get(i + LOOKAHEAD) {
                    sim.prefetch(ahead.addr);
                }
                sim.access(access.addr)?;
            }
            anyhow::Ok(())
        })?;
        progress(batch.len() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats: Vec<Stats> = sims.iter().map(Simulator::stats).collect();
    Ok(Report::new(
        &configs,
        &stats,
        study.walk_fraction,
        seconds,
        skipped,
    ))
}
