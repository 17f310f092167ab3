//! Elastic cuckoo page tables (Skarlatos et al., ASPLOS'20; nested: Stojkovic et al.,
//! ASPLOS'22).
//!
//! A d-ary cuckoo hash table per page size: `ways` tables, each a contiguous array of
//! 64-byte lines holding the entries of 8 consecutive pages. A translation may sit in
//! any way, so the walker probes one line in every way in parallel; a cuckoo walk
//! cache tells it which page size to probe (modelled as always right, as the DMT
//! artifact assumes). Tables grow elastically: past half occupancy a twice larger set
//! is allocated (contiguous, as the design needs) and entries move to it.
//!
//! ```text
//!  native:  way0[h0(vpn)] ‖ way1[h1(vpn)] ‖ way2[h2(vpn)]          3 references, 1 step
//!  virt:    each guest probe's gPA ─▶ host probes ‖ ‖  (3×3, parallel)
//!           guest probes ‖ ‖                            (3)
//!           data gPA ─▶ host probes ‖ ‖                 (3)       15 references, 3 steps
//! ```
//! No page-walk caches: a hashed table has no upper levels to cache.
use super::{Step, WalkCtx};
use anyhow::Result;

const LINE: u64 = 64;
const INITIAL_LINES: u64 = 512;

struct Tables {
    /// Base of each way's array.
    bases: Vec<u64>,
    /// Lines per way (a power of two).
    lines: u64,
}

pub(crate) struct Ecpt {
    memory: usize,
    ways: usize,
    seed: u64,
    /// Index 0: 4 KiB pages, 1: 2 MiB pages.
    sizes: [Option<Tables>; 2],
}

impl Ecpt {
    pub(crate) fn new(memory: usize, ways: usize, seed: u64) -> Ecpt {
        Ecpt {
            memory,
            ways,
            seed,
            sizes: [None, None],
        }
    }

    pub(crate) fn plan(&mut self, addr: u64, ctx: WalkCtx, steps: &mut Vec<Step>) -> Result<()> {
        let huge = ctx.xlat.huge;
        let vpn = if huge { addr >> 21 } else { addr >> 12 };
        // Entries are 8 pages to a line: the table needs a line per 8 pages mapped.
        let needed_lines = ctx.mapping.pages() / 8 + 1;
        let memory = &mut ctx.memories[self.memory];
        let ways = self.ways as u64;
        let tables = &mut self.sizes[huge as usize];
        let grow = match tables {
            None => true,
            Some(t) => needed_lines * 2 > t.lines * ways,
        };
        if grow {
            let mut lines = tables.as_ref().map_or(INITIAL_LINES, |t| t.lines);
            while needed_lines * 2 > lines * ways {
                lines *= 2;
            }
            let bases = (0..ways)
                .map(|_| memory.alloc_contiguous(lines * LINE))
                .collect::<Result<Vec<_>>>()?;
            *tables = Some(Tables { bases, lines });
        }
        let tables = tables.as_ref().expect("allocated above");
        let cluster = vpn >> 3;
        for (way, base) in tables.bases.iter().enumerate() {
            let line = hash(cluster, self.seed.wrapping_add(way as u64)) & (tables.lines - 1);
            steps.push(Step {
                addr: base + line * LINE + (vpn & 7) * 8,
                flags: if way == 0 { 0 } else { Step::PARALLEL },
            });
        }
        Ok(())
    }
}

fn hash(key: u64, seed: u64) -> u64 {
    let mut x = key ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
