//! Where accesses come from. Every source is a plain stream of `(vaddr, is_write)` in
//! batches, so the simulator holds one batch at a time whatever the length.
//!
//! - [`Synthetic`]: GUPS, B-tree lookups, graph traversal, streaming (deterministic
//!   for a seed); they know their areas.
//! - A trace file (`--trace FILE`, [`TraceFile`]) or a traced command (`-- CMD`,
//!   [`TracedCommand`]): `msh_tracer`'s reader and tracer, whose areas are inferred
//!   online (`crate::space`).
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

/// A saved trace (`msh_tracer::file`, written by `msh pagewalk record`), streamed one
/// batch at a time. Threads' batches are replayed in the order they were filled, into
/// one address space; areas are inferred online (see `crate::space`).
pub struct TraceFile {
    reader: msh_tracer::file::Reader,
    total: u64,
    pending: Pending,
}

/// One tracer batch being handed out in pieces of at most `max` accesses.
#[derive(Default)]
struct Pending {
    accesses: Vec<Access>,
    taken: usize,
}

impl Pending {
    /// Fills `batch` up to `max` accesses, asking `next` for the following tracer batch
    /// whenever this one is used up; `next` returning None ends the stream.
    fn fill(
        &mut self,
        batch: &mut Vec<Access>,
        max: usize,
        mut next: impl FnMut(&mut Vec<Access>) -> Result<bool>,
    ) -> Result<()> {
        let mut room = max;
        while room > 0 {
            if self.taken == self.accesses.len() {
                self.accesses.clear();
                self.taken = 0;
                if !next(&mut self.accesses)? {
                    break;
                }
            }
            let n = room.min(self.accesses.len() - self.taken);
            batch.extend_from_slice(&self.accesses[self.taken..self.taken + n]);
            self.taken += n;
            room -= n;
        }
        Ok(())
    }
}

/// The simulator's view of one traced access.
fn access(a: &msh_tracer::Access) -> Access {
    Access {
        addr: a.addr,
        is_write: a.is_write,
    }
}

/// Opens `path`; a file that is not a trace, of another version, truncated or corrupt
/// is a one-line error naming it.
pub fn trace_file(path: &Path) -> Result<Box<dyn AccessSource>> {
    let reader = msh_tracer::file::Reader::open(path)?;
    let total = reader.trailer().accesses_delivered;
    Ok(Box::new(TraceFile {
        reader,
        total,
        pending: Pending::default(),
    }))
}

impl AccessSource for TraceFile {
    fn areas(&self) -> Vec<Area> {
        Vec::new()
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.total)
    }

    fn fill(&mut self, batch: &mut Vec<Access>, max: usize) -> Result<()> {
        let reader = &mut self.reader;
        self.pending.fill(batch, max, |into| {
            let Some(next) = reader.next_batch()? else {
                return Ok(false);
            };
            into.extend(next.accesses.iter().map(access));
            Ok(true)
        })
    }
}

/// Batches in flight between the tracer and the simulators: bounds memory while the
/// simulators catch up (the traced program then waits in the tracer's ring).
const TRACED_BATCHES_IN_FLIGHT: usize = 64;

/// Accesses of a command run under the tracer (`msh_tracer::trace`), simulated as they
/// arrive. The tracer runs on its own thread and hands batches over a bounded channel.
pub struct TracedCommand {
    batches: Option<std::sync::mpsc::Receiver<Vec<Access>>>,
    tracer: Option<std::thread::JoinHandle<Result<msh_tracer::TraceSummary>>>,
    pending: Pending,
    command: String,
}

/// Starts `command` under the tracer (stopped after `time_limit`, if given). Errors
/// the tracer finds later (qemu missing, a program QEMU cannot run) come from `fill`.
pub fn traced_command(
    command: &[String],
    time_limit: Option<std::time::Duration>,
) -> Result<Box<dyn AccessSource>> {
    if command.is_empty() {
        bail!("no command to trace");
    }
    let argv: Vec<std::ffi::OsString> = command.iter().map(Into::into).collect();
    let (send, receive) = std::sync::mpsc::sync_channel::<Vec<Access>>(TRACED_BATCHES_IN_FLIGHT);
    let options = msh_tracer::TraceOptions {
        time_limit,
        // Our standard output is the report.
        stdout_to_stderr: true,
        ..Default::default()
    };
    let tracer = std::thread::Builder::new()
        .name("msh-tracer".into())
        .spawn(move || {
            msh_tracer::trace(&argv, &options, |batch| {
                let accesses = batch.accesses.iter().map(access).collect();
                // The simulators stopped (an error): stop tracing too.
                match send.send(accesses) {
                    Ok(()) => std::ops::ControlFlow::Continue(()),
                    Err(_) => std::ops::ControlFlow::Break(()),
                }
            })
        })
        .context("cannot start the tracer thread")?;
    Ok(Box::new(TracedCommand {
        batches: Some(receive),
        tracer: Some(tracer),
        pending: Pending::default(),
        command: command[0].clone(),
    }))
}

impl TracedCommand {
    /// The tracer's outcome once its channel closed: its error, or a note when the
    /// program did not exit cleanly (its accesses so far are still simulated).
    fn finish(&mut self) -> Result<()> {
        self.batches = None;
        let Some(tracer) = self.tracer.take() else {
            return Ok(());
        };
        let summary = tracer
            .join()
            .map_err(|_| anyhow::anyhow!("the tracer thread panicked"))??;
        if let Some(reason) = summary.stopped {
            eprintln!(
                "msh pagewalk: tracing of {} stopped early ({reason:?})",
                self.command
            );
        } else if !summary.exit.success() {
            eprintln!("msh pagewalk: {} ended with {}", self.command, summary.exit);
        }
        Ok(())
    }
}

impl AccessSource for TracedCommand {
    fn areas(&self) -> Vec<Area> {
        Vec::new()
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    fn fill(&mut self, batch: &mut Vec<Access>, max: usize) -> Result<()> {
        let batches = &self.batches;
        let mut ended = false;
        self.pending.fill(batch, max, |into| {
            match batches.as_ref().and_then(|b| b.recv().ok()) {
                Some(next) => *into = next,
                None => ended = true,
            }
            Ok(!ended)
        })?;
        if ended {
            self.finish()?;
        }
        Ok(())
    }
}

impl Drop for TracedCommand {
    fn drop(&mut self) {
        // Closing the channel makes the tracer's next batch stop the program; wait for
        // it so no traced process outlives the command.
        self.batches = None;
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.join();
        }
    }
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
