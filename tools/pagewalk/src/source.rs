//! Where accesses come from. Every source is a plain stream of `(vaddr, is_write)` in
//! batches, so the simulator holds one batch at a time whatever the length.
//!
//! - [`Synthetic`]: GUPS, B-tree lookups, graph traversal, streaming (deterministic
//!   for a seed); they know their areas.
//! - A trace file (`--trace FILE`) or a traced command (`-- CMD`): `msh_tracer`'s
//!   reader and tracer, whose areas are inferred online (`crate::space`). See
//!   [`trace_file`] and [`traced_command`] for where they plug in.
use crate::space::Area;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// One data access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Virtual address.
    pub addr: u64,
    /// A store.
    pub is_write: bool,
}

/// A stream of accesses in batches.
pub trait AccessSource: Send {
    /// The areas (VMAs) the accesses fall in; empty: infer them online.
    fn areas(&self) -> Vec<Area>;
    /// Accesses in total, when known (for the progress bar).
    fn len_hint(&self) -> Option<u64>;
    /// Appends up to `max` accesses to `batch`; appends none at the end.
    fn fill(&mut self, batch: &mut Vec<Access>, max: usize) -> Result<()>;
}

/// The built-in workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Random 8-byte read-modify-writes over the whole footprint (HPCC RandomAccess).
    Gups,
    /// Lookups of random keys in a B+-tree of 256-byte nodes, fanout 16.
    Btree,
    /// Random walks over a CSR graph (offsets array + edges array, degree 8).
    Graph,
    /// STREAM triad over three arrays: a[i] = b[i] + s·c[i].
    Stream,
}

/// Where the first synthetic area starts (1 GiB-aligned, in the usual mmap range).
const BASE: u64 = 0x7e00_0000_0000;
/// Synthetic areas start this far apart (so each may be up to 512 GiB).
const AREA_SPACING: u64 = 1 << 39;
const BTREE_NODE: u64 = 256;
const BTREE_FANOUT: u64 = 16;
const GRAPH_DEGREE: u64 = 8;

/// A synthetic workload over `footprint` bytes, `accesses` accesses long.
pub struct Synthetic {
    workload: Workload,
    areas: Vec<Area>,
    remaining: u64,
    total: u64,
    rng: u64,
    /// Accesses generated but not yet handed out (one operation's worth).
    pending: Vec<Access>,
    /// Workload state: the stream index, the graph vertex, walk length.
    cursor: u64,
    hops: u64,
    /// B-tree: nodes per level.
    levels: Vec<u64>,
}

impl Synthetic {
    /// A generator; `footprint` is rounded up to 2 MiB per area.
    pub fn new(workload: Workload, footprint: u64, accesses: u64, seed: u64) -> Result<Synthetic> {
        if footprint > AREA_SPACING {
            bail!("--footprint {footprint} is larger than a synthetic area can be (512G)");
        }
        if footprint < 1 << 20 {
            bail!("--footprint {footprint} is too small (at least 1M)");
        }
        let round = |b: u64| b.next_multiple_of(2 << 20);
        let area = |i: u64, len: u64| Area {
            start: BASE + i * AREA_SPACING,
            end: BASE + i * AREA_SPACING + round(len),
        };
        let areas = match workload {
            Workload::Gups | Workload::Btree => vec![area(0, footprint)],
            Workload::Graph => {
                let vertices = footprint / (8 + 4 * GRAPH_DEGREE);
                vec![
                    area(0, 8 * (vertices + 1)),
                    area(1, 4 * GRAPH_DEGREE * vertices),
                ]
            }
            Workload::Stream => (0..3).map(|i| area(i, footprint / 3)).collect(),
        };
        let mut levels = Vec::new();
        if workload == Workload::Btree {
            let mut nodes = footprint / BTREE_NODE;
            let mut width = 1;
            while nodes > 0 {
                let here = width.min(nodes);
                levels.push(here);
                nodes -= here;
                width *= BTREE_FANOUT;
            }
        }
        Ok(Synthetic {
            workload,
            areas,
            remaining: accesses,
            total: accesses,
            rng: seed ^ 0x2545_f491_4f6c_dd1d,
            pending: Vec::new(),
            cursor: 0,
            hops: 0,
            levels,
        })
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Generates one operation's accesses into `pending`.
    fn operation(&mut self) {
        let read = |addr| Access {
            addr,
            is_write: false,
        };
        match self.workload {
            Workload::Gups => {
                let a = self.areas[0];
                let addr = a.start + self.next() % ((a.end - a.start) / 8) * 8;
                self.pending.push(read(addr));
                self.pending.push(Access {
                    addr,
                    is_write: true,
                });
            }
            Workload::Btree => {
                let start = self.areas[0].start;
                let mut first = 0; // index of the level's first node
                let mut node = 0; // index within the level
                for level in 0..self.levels.len() {
                    let width = self.levels[level];
                    let node_addr = start + (first + node % width) * BTREE_NODE;
                    // Binary search in the node: its first line, then one more.
                    self.pending.push(read(node_addr));
                    let line = 1 + self.next() % (BTREE_NODE / 64 - 1);
                    self.pending.push(read(node_addr + line * 64));
                    first += width;
                    node = (node % width) * BTREE_FANOUT + self.next() % BTREE_FANOUT;
                }
            }
            Workload::Graph => {
                let (offsets, edges) = (self.areas[0].start, self.areas[1].start);
                let vertices = (self.areas[1].end - edges) / (4 * GRAPH_DEGREE);
                if self.hops.is_multiple_of(16) {
                    self.cursor = self.next() % vertices;
                }
                self.hops += 1;
                let v = self.cursor;
                self.pending.push(read(offsets + 8 * v));
                self.pending.push(read(offsets + 8 * (v + 1)));
                for e in 0..GRAPH_DEGREE {
                    self.pending.push(read(edges + 4 * (v * GRAPH_DEGREE + e)));
                }
                // The neighbour taken: a fixed function of (v, edge), as stored edges are.
                let e = self.next() % GRAPH_DEGREE;
                self.cursor = mix(v * GRAPH_DEGREE + e) % vertices;
            }
            Workload::Stream => {
                let len = (self.areas[0].end - self.areas[0].start) / 8;
                let i = self.cursor % len;
                self.cursor += 1;
                self.pending.push(read(self.areas[1].start + 8 * i));
                self.pending.push(read(self.areas[2].start + 8 * i));
                self.pending.push(Access {
                    addr: self.areas[0].start + 8 * i,
                    is_write: true,
                });
            }
        }
        self.pending.reverse(); // handed out by pop()
    }
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z ^= z >> 29;
    z.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (z >> 32)
}

impl AccessSource for Synthetic {
    fn areas(&self) -> Vec<Area> {
        self.areas.clone()
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.total)
    }

    fn fill(&mut self, batch: &mut Vec<Access>, max: usize) -> Result<()> {
        let mut n = 0;
        while n < max && self.remaining > 0 {
            if self.pending.is_empty() {
                self.operation();
            }
            batch.push(self.pending.pop().expect("an operation makes accesses"));
            self.remaining -= 1;
            n += 1;
        }
        Ok(())
    }
}

/// A saved trace (`msh_tracer::file`), streamed.
///
/// Not available until msh-tracer is merged. To wire it: add `msh-tracer` to this
/// crate's dependencies and return a source whose `fill` reads the next batch with the
/// tracer's file reader and pushes `Access { addr: a.addr, is_write: a.is_write }` for
/// each `msh_tracer::Access`; `areas()` returns empty (inferred online), `len_hint`
/// the file's access count if its header has one. A truncated or foreign file is then
/// the reader's error, with this file's name as context.
pub fn trace_file(path: &Path) -> Result<Box<dyn AccessSource>> {
    std::fs::metadata(path).with_context(|| format!("cannot open trace {}", path.display()))?;
    bail!(
        "trace {}: trace files are not available in this build (msh-tracer is not wired into msh pagewalk yet)",
        path.display()
    )
}

/// Accesses of a command run under the tracer (`msh_tracer::trace`).
///
/// Not available until msh-tracer is merged. To wire it: run
/// `msh_tracer::trace(cmd, &TraceOptions::default(), |batch| …)` on a thread that sends
/// each batch's `(addr, is_write)` pairs down a bounded `std::sync::mpsc::sync_channel`
/// (returning `ControlFlow::Continue`), and return a source whose `fill` receives from
/// it; the bound keeps memory flat while the simulators catch up.
pub fn traced_command(command: &[String]) -> Result<Box<dyn AccessSource>> {
    bail!(
        "tracing a command ({}) is not available in this build (msh-tracer is not wired into msh pagewalk yet); use --synthetic",
        command.first().map_or("", String::as_str)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut s: Synthetic) -> Vec<Access> {
        let mut out = Vec::new();
        loop {
            let before = out.len();
            s.fill(&mut out, 1000).unwrap();
            if out.len() == before {
                return out;
            }
        }
    }

    #[test]
    fn generators_are_deterministic_exact_in_length_and_inside_their_areas() {
        for w in [
            Workload::Gups,
            Workload::Btree,
            Workload::Graph,
            Workload::Stream,
        ] {
            let make = |seed| Synthetic::new(w, 64 << 20, 10_001, seed).unwrap();
            let areas = make(1).areas();
            let a = all(make(1));
            assert_eq!(a.len(), 10_001, "{w:?}");
            assert!(a == all(make(1)), "{w:?} is not deterministic");
            if w != Workload::Stream {
                assert!(a != all(make(2)), "{w:?} ignores its seed");
            }
            for x in &a {
                assert!(
                    areas
                        .iter()
                        .any(|r| r.start <= x.addr && x.addr + 8 <= r.end),
                    "{w:?} {:#x}",
                    x.addr
                );
            }
        }
    }

    #[test]
    fn gups_covers_its_footprint_and_writes_half() {
        let a = all(Synthetic::new(Workload::Gups, 64 << 20, 100_000, 3).unwrap());
        let pages: std::collections::HashSet<u64> = a.iter().map(|x| x.addr >> 12).collect();
        assert!(pages.len() > 14_000, "{} of 16384 pages", pages.len());
        assert_eq!(a.iter().filter(|x| x.is_write).count(), 50_000);
    }
}
