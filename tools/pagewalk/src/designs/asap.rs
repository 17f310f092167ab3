//! ASAP, prefetched address translation (Margaritov et al., MICRO'19).
//!
//! The OS keeps each area's PD pages and PT pages in two contiguous, sorted runs, so
//! the addresses of the PD and PT entries follow from the virtual address. On a TLB
//! miss the walker issues those two references at once, while it reads the upper
//! levels as usual; each level is done when both its predecessor and its own read are.
//!
//! ```text
//!  t=0 ─▶ PML4 ─▶ PDPT ─▶ (PD ready?) ─▶ (PT ready?)
//!  t=0 ─▶ PD  (prefetch) ─────┘              │
//!  t=0 ─▶ PT  (prefetch) ────────────────────┘          4 references, ≈ 2 latencies
//! ```
//! In a VM both dimensions prefetch (the guest's deeper levels and each host walk's),
//! as in the DMT artifact's model of ASAP. The walker is [`super::radix`]'s.
use crate::phys::{PhysMemory, PAGE};
use crate::space::Mapping;
use anyhow::Result;

#[derive(Debug, Clone, Copy)]
struct Run {
    pd_start: u64,
    pd_end: u64,
    pd_base: u64,
    pt_start: u64,
    pt_end: u64,
    pt_base: u64,
}

/// The PD and PT runs of each area of one address space.
pub(crate) struct Runs {
    per_area: Vec<Option<Run>>,
    memory: usize,
}

impl Runs {
    pub(crate) fn new(memory: usize) -> Runs {
        Runs {
            per_area: Vec::new(),
            memory,
        }
    }

    /// The PD (level 2) or PT (level 1) page holding `addr`'s entry, in its run.
    pub(crate) fn table_page(
        &mut self,
        level: u32,
        addr: u64,
        area: usize,
        mapping: &Mapping,
        memories: &mut [PhysMemory],
    ) -> Result<Option<u64>> {
        if level > 2 {
            return Ok(None);
        }
        if area >= self.per_area.len() {
            self.per_area.resize(area + 1, None);
        }
        let run = match self.per_area[area] {
            Some(run) => run,
            None => {
                let a = mapping.area(area);
                let pd_start = a.start / (1 << 30) * (1 << 30);
                let pd_end = a.end.next_multiple_of(1 << 30);
                let pt_start = a.start / (2 << 20) * (2 << 20);
                let pt_end = a.end.next_multiple_of(2 << 20);
                let memory = &mut memories[self.memory];
                let run = Run {
                    pd_start,
                    pd_end,
                    pd_base: memory.alloc_contiguous((pd_end - pd_start) >> 30 << 12)?,
                    pt_start,
                    pt_end,
                    pt_base: memory.alloc_contiguous((pt_end - pt_start) >> 21 << 12)?,
                };
                self.per_area[area] = Some(run);
                run
            }
        };
        Ok(match level {
            2 if run.pd_start <= addr && addr < run.pd_end => {
                Some(run.pd_base + ((addr - run.pd_start) >> 30) * PAGE)
            }
            1 if run.pt_start <= addr && addr < run.pt_end => {
                Some(run.pt_base + ((addr - run.pt_start) >> 21) * PAGE)
            }
            _ => None,
        })
    }
}
