//! Page-table designs. Each one lays its entries out in simulated physical memory and,
//! for an address, plans the references its walker makes (a list of [`Step`]s); the
//! simulator (`crate::sim`) executes them through the PWCs, the nested TLB and the data
//! caches, and in a VM translates every guest-physical entry address through the host
//! dimension first. So each design pays for its own references, with its own cache
//! outcomes.
//!
//! | design | native | virt | nested | module |
//! |---|---|---|---|---|
//! | radix (x86-64, 4 levels) | 4 | 24 | 24 (shadow EPT) | [`radix`] |
//! | DMT | 1 | 3 | 3 (paravirtual at both levels) | [`dmt`] |
//! | pvDMT | – | 2 | – | [`dmt`] |
//! | ECPT (elastic cuckoo, 3 ways) | 3 parallel | 3×(3+1) + 3, in 3 steps | – | [`ecpt`] |
//! | FPT (flattened L4+L3, L2+L1) | 2 | 8 | – | [`fpt`] |
//! | ASAP (radix, PD/PT prefetched) | 4 (overlapped) | 24 (overlapped) | – | [`asap`] |
//!
//! Counts are references with every TLB and PWC off and 4 KiB pages; with 2 MiB pages
//! the radix leaf is one level up (3 native, 15 virtualized).
pub mod asap;
pub mod dmt;
pub mod ecpt;
pub mod fpt;
pub mod radix;

use crate::assoc::SetAssoc;
use crate::config::PwcConfig;
use crate::phys::PhysMemory;
use crate::space::{Mapping, Xlat};
use anyhow::Result;
use serde::Serialize;

/// A page-table design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Design {
    /// x86-64 four-level radix tree (the baseline).
    Radix,
    /// Direct Memory Translation: leaf tables of large areas contiguous (TEAs).
    Dmt,
    /// Paravirtualized DMT: guest TEAs also contiguous in host-physical memory.
    Pvdmt,
    /// Elastic cuckoo page tables (hashed, probed in parallel).
    Ecpt,
    /// Flattened page table: L4+L3 and L2+L1 merged into 2 MiB nodes.
    Fpt,
    /// ASAP: PD and PT pages contiguous per area, prefetched at walk start.
    Asap,
}

impl Design {
    /// All designs, in table order.
    pub const ALL: [Design; 6] = [
        Design::Radix,
        Design::Dmt,
        Design::Pvdmt,
        Design::Ecpt,
        Design::Fpt,
        Design::Asap,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Design::Radix => "radix",
            Design::Dmt => "dmt",
            Design::Pvdmt => "pvdmt",
            Design::Ecpt => "ecpt",
            Design::Fpt => "fpt",
            Design::Asap => "asap",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Result<Design> {
        Design::ALL
            .into_iter()
            .find(|d| d.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown design {name:?} (expected radix, dmt, pvdmt, ecpt, fpt or asap)"
                )
            })
    }

    /// Why this design is not simulated in `env`, if it is not.
    pub fn unsupported_in(self, env: Env) -> Option<&'static str> {
        match (self, env) {
            (Design::Pvdmt, Env::Native) => {
                Some("pvDMT is a virtualization design (native pvDMT is DMT)")
            }
            (Design::Pvdmt, Env::Nested) => {
                Some("nested DMT is already paravirtual at both levels (the dmt row)")
            }
            (Design::Ecpt | Design::Fpt | Design::Asap, Env::Nested) => Some(
                "nested virtualization is modelled for radix and DMT only, as in the DMT paper",
            ),
            _ => None,
        }
    }
}

/// The execution environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    /// A process on bare metal: one dimension.
    Native,
    /// A process in a VM: guest table and host (EPT) table, 2-D walk.
    Virt,
    /// A process in a VM in a VM.
    Nested,
}

impl Env {
    /// All environments.
    pub const ALL: [Env; 3] = [Env::Native, Env::Virt, Env::Nested];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Env::Native => "native",
            Env::Virt => "virt",
            Env::Nested => "nested",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Result<Env> {
        Env::ALL
            .into_iter()
            .find(|e| e.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                anyhow::anyhow!("unknown environment {name:?} (expected native, virt or nested)")
            })
    }
}

/// One reference (or PWC hit) of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// The entry's physical address in the table's own memory (guest-physical for a
    /// guest table, unless `HOST_PHYSICAL`).
    pub(crate) addr: u64,
    pub(crate) flags: u8,
}

impl Step {
    /// A page-walk-cache hit that skipped the levels above the next step.
    pub(crate) const PWC_HIT: u8 = 1;
    /// Issued together with the previous step (its latency overlaps).
    pub(crate) const PARALLEL: u8 = 2;
    /// Issued at the start of the walk (ASAP); the walk waits for it only when it
    /// reaches this level.
    pub(crate) const PREFETCH: u8 = 4;
    /// Already a host-physical address (pvDMT): no host translation.
    pub(crate) const HOST_PHYSICAL: u8 = 8;

    pub(crate) fn read(addr: u64) -> Step {
        Step { addr, flags: 0 }
    }

    pub(crate) fn pwc_hit() -> Step {
        Step {
            addr: 0,
            flags: Step::PWC_HIT,
        }
    }

    pub(crate) fn has(self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// One walker's page-walk caches (`None` when PWCs are off).
pub(crate) struct Pwcs {
    pub(crate) pml4e: SetAssoc,
    pub(crate) pdpte: SetAssoc,
    pub(crate) pde: SetAssoc,
}

impl Pwcs {
    pub(crate) fn new(config: &PwcConfig) -> Pwcs {
        Pwcs {
            pml4e: SetAssoc::new(config.pml4e),
            pdpte: SetAssoc::new(config.pdpte),
            pde: SetAssoc::new(config.pde),
        }
    }
}

/// What a planner sees of the walk it plans.
pub(crate) struct WalkCtx<'a> {
    /// The translation being walked for (already resolved by the synthetic OS).
    pub(crate) xlat: Xlat,
    /// For a two-stage (nested host) dimension: the first stage's translation.
    pub(crate) mid: Option<Xlat>,
    pub(crate) mapping: &'a Mapping,
    pub(crate) pwc: Option<&'a mut Pwcs>,
    pub(crate) memories: &'a mut [PhysMemory],
}

/// A page table of one dimension.
pub(crate) enum Table {
    Radix(radix::Radix),
    Ecpt(ecpt::Ecpt),
    Fpt(fpt::Fpt),
    NestedDmtHost(dmt::NestedHost),
}

impl Table {
    /// Appends the steps of a walk for `addr` to `steps`.
    #[inline]
    pub(crate) fn plan(&mut self, addr: u64, ctx: WalkCtx, steps: &mut Vec<Step>) -> Result<()> {
        match self {
            Table::Radix(t) => t.plan(addr, ctx, steps),
            Table::Ecpt(t) => t.plan(addr, ctx, steps),
            Table::Fpt(t) => t.plan(addr, ctx, steps),
            Table::NestedDmtHost(t) => t.plan(addr, ctx, steps),
        }
    }

    /// Calls `entry` with the physical addresses (in the table's own memory) of some
    /// entries a walk for `addr` is likely to read, as far as they are known without
    /// changing anything. Only a hint for host prefetches.
    #[inline]
    pub(crate) fn peek_entries(&self, addr: u64, huge: bool, entry: impl FnMut(u64)) {
        if let Table::Radix(t) = self {
            t.peek_entries(addr, huge, entry);
        }
    }
}
