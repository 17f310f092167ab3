//! The x86-64 four-level radix page table, and the walker with its page-walk caches.
//!
//! ```text
//!  CR3 ─▶ PML4[47:39] ─▶ PDPT[38:30] ─▶ PD[29:21] ─▶ PT[20:12] ─▶ 4 KiB page
//!                                        └─(2 MiB page: the PD entry is the leaf)
//!  PWCs (deepest hit wins):  PDE hit ──────────────────────▶ 1 reference (PT)
//!                            PDPTE hit ─────────────▶ 2 (PD, PT)
//!                            PML4E hit ──────▶ 3 (PDPT, PD, PT)
//!                            miss ─▶ 4
//! ```
//! Table pages are allocated on first touch from the shuffled free list, except where
//! a design places them itself: DMT puts the leaf tables of large areas in their TEA
//! ([`super::dmt`]), ASAP puts each area's PD and PT pages in contiguous runs
//! ([`super::asap`]). The same walker serves all three.
use super::asap::Runs;
use super::dmt::Teas;
use super::{Step, WalkCtx};
use crate::phys::PhysMemory;
use crate::space::SparseMap;
use anyhow::Result;

/// Who places the leaf-side table pages, and what the walker does besides.
pub(crate) enum Mode {
    Plain,
    Dmt(Teas),
    Asap(Runs),
}

pub(crate) struct Radix {
    /// The physical memory the table pages live in.
    memory: usize,
    root: Option<u64>,
    pdpt: SparseMap,
    pd: SparseMap,
    pt: SparseMap,
    mode: Mode,
}

impl Radix {
    pub(crate) fn new(memory: usize, mode: Mode) -> Radix {
        Radix {
            memory,
            root: None,
            pdpt: SparseMap::default(),
            pd: SparseMap::default(),
            pt: SparseMap::default(),
            mode,
        }
    }

    pub(crate) fn plan(
        &mut self,
        addr: u64,
        mut ctx: WalkCtx,
        steps: &mut Vec<Step>,
    ) -> Result<()> {
        if let Mode::Dmt(teas) = &mut self.mode {
            if let Some(step) = teas.direct(addr, &mut ctx)? {
                steps.push(step);
                return Ok(());
            }
        }
        let huge = ctx.xlat.huge;
        let leaf = if huge { 2 } else { 1 };
        let mut top = 4;
        if let Some(pwc) = ctx.pwc.as_deref_mut() {
            // Deepest hit wins; the walk fills the caches of the non-leaf levels it
            // reads, which are exactly those looked up and missed (`access` does both).
            if !huge && pwc.pde.access(addr >> 21) {
                top = 1;
            } else if pwc.pdpte.access(addr >> 30) {
                top = 2;
            } else if pwc.pml4e.access(addr >> 39) {
                top = 3;
            }
            if top < 4 {
                steps.push(Step::pwc_hit());
            }
        }
        let prefetch = matches!(self.mode, Mode::Asap(_));
        for level in (leaf..=top).rev() {
            let node = self.node(level, addr, &mut ctx)?;
            let index = (addr >> (12 + 9 * (level - 1))) & 511;
            let flags = if prefetch && level <= 2 {
                Step::PREFETCH
            } else {
                0
            };
            steps.push(Step {
                addr: node + index * 8,
                flags,
            });
        }
        Ok(())
    }

    /// Calls `entry` with the addresses of the leaf entry for `addr` and the one above
    /// it, where both tables exist already (plain radix tables only: DMT and ASAP place
    /// theirs elsewhere). Changes nothing; for host prefetches ahead of the walk.
    #[inline]
    pub(crate) fn peek_entries(&self, addr: u64, huge: bool, mut entry: impl FnMut(u64)) {
        if !matches!(self.mode, Mode::Plain) {
            return;
        }
        let index = |level: u32| (addr >> (12 + 9 * (level - 1))) & 511;
        if !huge {
            if let Some(pt) = self.pt.get(addr >> 21) {
                entry(pt + index(1) * 8);
            }
        }
        if let Some(pd) = self.pd.get(addr >> 30) {
            entry(pd + index(2) * 8);
        }
    }

    /// The physical address of the table page holding `addr`'s entry at `level`.
    fn node(&mut self, level: u32, addr: u64, ctx: &mut WalkCtx) -> Result<u64> {
        let area = ctx.xlat.area;
        let memories: &mut [PhysMemory] = ctx.memories;
        let placed = match &mut self.mode {
            Mode::Plain => None,
            Mode::Dmt(teas) => teas.table_page(level, addr, area, ctx.mapping, memories)?,
            Mode::Asap(runs) => runs.table_page(level, addr, area, ctx.mapping, memories)?,
        };
        if let Some(page) = placed {
            return Ok(page);
        }
        let memory = &mut memories[self.memory];
        match level {
            4 => match self.root {
                Some(root) => Ok(root),
                None => {
                    let root = memory.alloc_page()?;
                    self.root = Some(root);
                    Ok(root)
                }
            },
            3 => self.pdpt.get_or_insert(addr >> 39, || memory.alloc_page()),
            2 => self.pd.get_or_insert(addr >> 30, || memory.alloc_page()),
            _ => self.pt.get_or_insert(addr >> 21, || memory.alloc_page()),
        }
    }
}
