//! Direct Memory Translation (Zhang et al., ASPLOS'24) and its paravirtual variant.
//!
//! The OS keeps the leaf page-table pages of each large area (≥ 64 MiB, ≤ 16 areas)
//! physically contiguous: a *translation entry area* (TEA). A per-area register holds
//! the area's bounds and its TEA's base, so the leaf entry's address is computed from
//! the virtual address, with no walk. The radix tree stays above the TEA (its PD
//! entries point into it) for the OS and for addresses outside every TEA, which take
//! the ordinary radix walk. With THP the TEA holds the area's PD entries instead.
//!
//! ```text
//!  native:  TEA[va]                                            1 reference
//!  virt:    hTEA[gpa(gTEA[va])] ─▶ gTEA[va] ─▶ hTEA[data gpa]   3 (the guest TEA's own
//!                                                                 address is guest-physical)
//!  pvDMT:   gTEA[va] (host-contiguous) ─▶ hTEA[data gpa]         2
//!  nested:  L2 TEA[va] ─▶ L1 TEA[l2pa] ─▶ L0 TEA[l1pa]           3 (each level's TEA
//!                                                                 host-contiguous, as the paper)
//! ```
//! The host's TEA covers the VM's memory, one large area of the hypervisor.
use super::{Step, WalkCtx};
use crate::phys::{PhysMemory, HUGE, PAGE};
use crate::space::{Mapping, MAX_TEAS, TEA_MIN_AREA};
use anyhow::Result;

/// One area's TEA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tea {
    /// First address covered (aligned to what one leaf table page covers).
    span_start: u64,
    span_end: u64,
    /// log2 of the bytes one entry maps (12, or 21 with THP).
    shift: u32,
    /// Base in the table's memory.
    base: u64,
    /// pvDMT: the same TEA's host-physical base.
    host_base: Option<u64>,
}

impl Tea {
    fn entry(&self, addr: u64) -> u64 {
        ((addr - self.span_start) >> self.shift) * 8
    }
}

/// The TEAs of one address space.
pub(crate) struct Teas {
    /// Per area index: not yet decided, none, or a TEA.
    per_area: Vec<Option<Option<Tea>>>,
    count: usize,
    thp: bool,
    /// The memory the guest table lives in.
    memory: usize,
    /// pvDMT: the host memory each TEA is also made contiguous in.
    pv_host: Option<usize>,
}

impl Teas {
    pub(crate) fn new(memory: usize, thp: bool, pv_host: Option<usize>) -> Teas {
        Teas {
            per_area: Vec::new(),
            count: 0,
            thp,
            memory,
            pv_host,
        }
    }

    fn tea(
        &mut self,
        area: usize,
        mapping: &Mapping,
        memories: &mut [PhysMemory],
    ) -> Result<Option<Tea>> {
        if area >= self.per_area.len() {
            self.per_area.resize(area + 1, None);
        }
        if let Some(decided) = self.per_area[area] {
            return Ok(decided);
        }
        let a = mapping.area(area);
        let tea = if a.end - a.start < TEA_MIN_AREA || self.count == MAX_TEAS {
            None
        } else {
            let (start, end, shift, table_span) = if self.thp {
                let (lo, hi) = a.huge_range();
                (lo, hi, 21, 1u64 << 30)
            } else {
                (a.start, a.end, 12, HUGE)
            };
            if start >= end {
                None
            } else {
                let span_start = start / table_span * table_span;
                let span_end = end.next_multiple_of(table_span);
                let bytes = ((span_end - span_start) >> shift) * 8;
                let base = memories[self.memory].alloc_contiguous(bytes)?;
                let host_base = match self.pv_host {
                    Some(host) => Some(memories[host].alloc_contiguous(bytes)?),
                    None => None,
                };
                self.count += 1;
                Some(Tea {
                    span_start,
                    span_end,
                    shift,
                    base,
                    host_base,
                })
            }
        };
        self.per_area[area] = Some(tea);
        Ok(tea)
    }

    /// The one reference of a direct translation, when `addr` is covered by a TEA.
    pub(crate) fn direct(&mut self, addr: u64, ctx: &mut WalkCtx) -> Result<Option<Step>> {
        let Some(tea) = self.tea(ctx.xlat.area, ctx.mapping, ctx.memories)? else {
            return Ok(None);
        };
        // With THP, the 4 KiB head and tail of an area are outside its TEA of PD entries.
        if ctx.xlat.huge != self.thp || addr < tea.span_start || addr >= tea.span_end {
            return Ok(None);
        }
        Ok(Some(match tea.host_base {
            Some(host) => Step {
                addr: host + tea.entry(addr),
                flags: Step::HOST_PHYSICAL,
            },
            None => Step::read(tea.base + tea.entry(addr)),
        }))
    }

    /// Where the radix tree above a TEA finds the leaf table page (in the TEA).
    pub(crate) fn table_page(
        &mut self,
        level: u32,
        addr: u64,
        area: usize,
        mapping: &Mapping,
        memories: &mut [PhysMemory],
    ) -> Result<Option<u64>> {
        let leaf_level = if self.thp { 2 } else { 1 };
        if level != leaf_level {
            return Ok(None);
        }
        Ok(self.tea(area, mapping, memories)?.and_then(|tea| {
            (tea.span_start <= addr && addr < tea.span_end)
                .then(|| tea.base + ((addr - tea.span_start) >> (tea.shift + 9)) * PAGE)
        }))
    }
}

/// The host side of nested DMT: an L2-physical address is translated by the L1
/// hypervisor's TEA over the L2 VM's memory, then by L0's TEA over the L1 VM's memory.
/// Both TEAs are host-contiguous (paravirtual), so both references are to L0-physical
/// addresses.
pub(crate) struct NestedHost {
    l1_tea: u64,
    l1_shift: u32,
    l0_tea: u64,
    l0_shift: u32,
}

impl NestedHost {
    /// `l2_memory` and `l1_memory`: the sizes of the VMs' memories; `thp_*`: whether
    /// each hypervisor backs its VM with 2 MiB pages. TEAs come from `l0`.
    pub(crate) fn new(
        l2_memory: u64,
        l1_memory: u64,
        thp: bool,
        l0: &mut PhysMemory,
    ) -> Result<NestedHost> {
        let shift = if thp { 21 } else { 12 };
        Ok(NestedHost {
            l1_tea: l0.alloc_contiguous((l2_memory >> shift) * 8)?,
            l1_shift: shift,
            l0_tea: l0.alloc_contiguous((l1_memory >> shift) * 8)?,
            l0_shift: shift,
        })
    }

    pub(crate) fn plan(&mut self, l2pa: u64, ctx: WalkCtx, steps: &mut Vec<Step>) -> Result<()> {
        let l1pa = ctx.mid.map_or(l2pa, |x| x.out);
        steps.push(Step {
            addr: self.l1_tea + (l2pa >> self.l1_shift) * 8,
            flags: Step::HOST_PHYSICAL,
        });
        steps.push(Step {
            addr: self.l0_tea + (l1pa >> self.l0_shift) * 8,
            flags: Step::HOST_PHYSICAL,
        });
        Ok(())
    }
}
