//! Flattened page tables (Park et al., ASPLOS'22).
//!
//! Two radix levels merge into one 2 MiB node: L4+L3 (indexed by VA[47:30], one per
//! process) and L2+L1 (VA[29:12], one per 1 GiB touched). A walk is two references.
//! With a 2 MiB page the lower node cannot be flattened and is an ordinary PD page
//! whose entry is the leaf, still two references. The PDPTE page-walk cache holds
//! L4+L3 entries (they map 1 GiB, as a PDPTE does): a hit leaves one reference.
//!
//! ```text
//!  CR3 ─▶ L4L3[47:30] ─▶ L2L1[29:12] ─▶ 4 KiB page        2 references
//!  virt: each of the 2 guest references and the data gPA take a 2-reference host
//!        walk: 2×(2+1) + 2 = 8
//! ```
use super::{Step, WalkCtx};
use crate::phys::{HUGE, PAGE};
use crate::space::SparseMap;
use anyhow::Result;

pub(crate) struct Fpt {
    memory: usize,
    root: Option<u64>,
    /// Flattened L2+L1 nodes (2 MiB, contiguous), by VA >> 30.
    lower: SparseMap,
    /// PD pages for 1 GiB regions mapped with 2 MiB pages, by VA >> 30.
    lower_huge: SparseMap,
}

impl Fpt {
    pub(crate) fn new(memory: usize) -> Fpt {
        Fpt {
            memory,
            root: None,
            lower: SparseMap::default(),
            lower_huge: SparseMap::default(),
        }
    }

    pub(crate) fn plan(&mut self, addr: u64, ctx: WalkCtx, steps: &mut Vec<Step>) -> Result<()> {
        let memory = &mut ctx.memories[self.memory];
        let root = match self.root {
            Some(root) => root,
            None => *self.root.insert(memory.alloc_contiguous(HUGE)?),
        };
        let upper_hit = match ctx.pwc {
            Some(pwc) => pwc.pdpte.access(addr >> 30),
            None => false,
        };
        if upper_hit {
            steps.push(Step::pwc_hit());
        } else {
            steps.push(Step::read(root + ((addr >> 30) & 0x3_ffff) * 8));
        }
        let lower = if ctx.xlat.huge {
            let page = self
                .lower_huge
                .get_or_insert(addr >> 30, || memory.alloc_page())?;
            page + ((addr >> 21) & 511) * 8
        } else {
            let node = self
                .lower
                .get_or_insert(addr >> 30, || memory.alloc_contiguous(HUGE))?;
            node + ((addr / PAGE) & 0x3_ffff) * 8
        };
        steps.push(Step::read(lower));
        Ok(())
    }
}
