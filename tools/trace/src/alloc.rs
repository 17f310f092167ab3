//! Allocation lifetimes from the interposer's events, and which allocation an access
//! at a given time and address falls in.
//!
//! Blocks (the malloc family) and regions (mmap, mremap, brk) are kept apart: a block
//! lies inside a region (the heap), and an access is charged to the innermost: the
//! block if one is live there, else the region. A reused address is a new allocation
//! with its own lifetime; realloc ends the old block and starts a new one, moved or not.
use crate::events::{AllocEvent, Kind};
use std::collections::{BTreeMap, HashMap};

/// One allocation: `[address, address + size)` live over `[start_ns, end_ns)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Numbered from 1 in order of start.
    pub id: u64,
    /// `malloc`, `calloc`, `realloc`, `aligned`, `mmap`, `mremap` or `brk`.
    pub kind: &'static str,
    /// First byte.
    pub address: u64,
    /// Bytes.
    pub size: u64,
    /// ns since the run's start.
    pub start_ns: u64,
    /// None while live at the end of the run.
    pub end_ns: Option<u64>,
    /// The allocating thread.
    pub thread: u32,
    /// Return addresses of the allocating call, innermost first.
    pub stack: Vec<u64>,
}

impl Allocation {
    fn is_block(&self) -> bool {
        matches!(self.kind, "malloc" | "calloc" | "realloc" | "aligned")
    }
}

/// Replays the events (in time order) into allocations.
pub fn lifetimes(events: &[AllocEvent]) -> Vec<Allocation> {
    let mut out: Vec<Allocation> = Vec::new();
    let mut blocks: HashMap<u64, usize> = HashMap::new();
    let mut regions: BTreeMap<u64, usize> = BTreeMap::new();
    let start =
        |out: &mut Vec<Allocation>, e: &AllocEvent, kind: &'static str, address: u64, size: u64| {
            out.push(Allocation {
                id: out.len() as u64 + 1,
                kind,
                address,
                size,
                start_ns: e.time_ns,
                end_ns: None,
                thread: e.thread,
                stack: e.stack.clone(),
            });
            out.len() - 1
        };
    for e in events {
        match e.kind {
            Kind::Malloc | Kind::Calloc | Kind::Aligned | Kind::Realloc => {
                if e.kind == Kind::Realloc && e.old != 0 {
                    end_block(&mut out, &mut blocks, e.old, e.time_ns);
                }
                if e.addr != 0 {
                    // A block still live at this address missed its free (freed by glibc
                    // internally): it ends now.
                    end_block(&mut out, &mut blocks, e.addr, e.time_ns);
                    let name = match e.kind {
                        Kind::Malloc => "malloc",
                        Kind::Calloc => "calloc",
                        Kind::Aligned => "aligned",
                        _ => "realloc",
                    };
                    let i = start(&mut out, e, name, e.addr, e.size);
                    blocks.insert(e.addr, i);
                }
            }
            Kind::Free => end_block(&mut out, &mut blocks, e.addr, e.time_ns),
            Kind::Mmap => {
                unmap(&mut out, &mut regions, e.addr, e.size, e.time_ns);
                let i = start(&mut out, e, "mmap", e.addr, e.size);
                regions.insert(e.addr, i);
            }
            Kind::Munmap => unmap(&mut out, &mut regions, e.addr, e.size, e.time_ns),
            Kind::Mremap => {
                unmap(&mut out, &mut regions, e.old, e.old_size, e.time_ns);
                unmap(&mut out, &mut regions, e.addr, e.size, e.time_ns);
                let i = start(&mut out, e, "mremap", e.addr, e.size);
                regions.insert(e.addr, i);
            }
            Kind::Brk => {
                let delta = e.size as i64;
                if delta > 0 {
                    let i = start(&mut out, e, "brk", e.addr, delta as u64);
                    regions.insert(e.addr, i);
                } else if delta < 0 {
                    let shrink = delta.unsigned_abs();
                    unmap(
                        &mut out,
                        &mut regions,
                        e.addr.wrapping_sub(shrink),
                        shrink,
                        e.time_ns,
                    );
                }
            }
        }
    }
    out
}

fn end_block(out: &mut [Allocation], blocks: &mut HashMap<u64, usize>, addr: u64, time: u64) {
    if let Some(i) = blocks.remove(&addr) {
        out[i].end_ns = Some(time);
    }
}

/// Ends every region overlapping `[addr, addr+len)`; the parts outside it live on as
/// new allocations with the same kind, thread and stack.
fn unmap(
    out: &mut Vec<Allocation>,
    regions: &mut BTreeMap<u64, usize>,
    addr: u64,
    len: u64,
    time: u64,
) {
    if len == 0 {
        return;
    }
    let end = addr.saturating_add(len);
    let hit: Vec<u64> = regions
        .range(..end)
        .rev()
        .take_while(|(_, &i)| out[i].address + out[i].size > addr)
        .map(|(&a, _)| a)
        .collect();
    for a in hit {
        let i = regions.remove(&a).expect("listed");
        out[i].end_ns = Some(time);
        let old = out[i].clone();
        let pieces = [
            (old.address, addr.min(old.address + old.size)),
            (end.max(old.address), old.address + old.size),
        ];
        for (lo, hi) in pieces {
            if lo < hi && (lo, hi) != (old.address, old.address + old.size) {
                out.push(Allocation {
                    id: out.len() as u64 + 1,
                    address: lo,
                    size: hi - lo,
                    start_ns: time,
                    end_ns: None,
                    ..old.clone()
                });
                regions.insert(lo, out.len() - 1);
            }
        }
    }
}

/// Answers "which allocation holds this address at this time" for accesses visited in
/// time order: a sweep over allocation starts and ends.
pub struct Attributor<'a> {
    allocations: &'a [Allocation],
    /// Indices of allocations by start time, and by end time.
    starts: Vec<usize>,
    ends: Vec<usize>,
    next_start: usize,
    next_end: usize,
    blocks: BTreeMap<u64, usize>,
    regions: BTreeMap<u64, usize>,
    /// The allocation that ended last at each address.
    ended: BTreeMap<u64, usize>,
    now: u64,
}

impl<'a> Attributor<'a> {
    /// An attributor over `allocations`.
    pub fn new(allocations: &'a [Allocation]) -> Attributor<'a> {
        let mut starts: Vec<usize> = (0..allocations.len()).collect();
        starts.sort_by_key(|&i| (allocations[i].start_ns, i));
        let mut ends: Vec<usize> = (0..allocations.len())
            .filter(|&i| allocations[i].end_ns.is_some())
            .collect();
        ends.sort_by_key(|&i| (allocations[i].end_ns, i));
        Attributor {
            allocations,
            starts,
            ends,
            next_start: 0,
            next_end: 0,
            blocks: BTreeMap::new(),
            regions: BTreeMap::new(),
            ended: BTreeMap::new(),
            now: 0,
        }
    }

    /// The id of the innermost allocation live at `time_ns` holding `address`. Calls
    /// must come in non-decreasing time order (earlier times are answered as of the
    /// latest time seen).
    pub fn find(&mut self, time_ns: u64, address: u64) -> Option<u64> {
        if time_ns >= self.now {
            self.advance(time_ns);
        }
        for map in [&self.blocks, &self.regions] {
            if let Some((_, &i)) = map.range(..=address).next_back() {
                let a = &self.allocations[i];
                if address < a.address + a.size {
                    return Some(a.id);
                }
            }
        }
        None
    }

    /// For an access known only to lie in `[earliest, latest]` (`latest` in
    /// non-decreasing order across calls): the allocation live at `latest`, else one
    /// that ended inside the window (the access came before its end).
    pub fn find_in_window(&mut self, earliest: u64, latest: u64, address: u64) -> Option<u64> {
        if let Some(id) = self.find(latest, address) {
            return Some(id);
        }
        let (_, &i) = self.ended.range(..=address).next_back()?;
        let a = &self.allocations[i];
        (address < a.address + a.size
            && a.end_ns.is_some_and(|end| end > earliest)
            && a.start_ns <= latest)
            .then_some(a.id)
    }

    /// Applies starts and ends up to `time`. An allocation is live over
    /// `[start_ns, end_ns)`; ends at a time are applied before starts at it, so an
    /// address freed and reused at the same instant belongs to the new allocation.
    fn advance(&mut self, time: u64) {
        self.now = time;
        loop {
            let end_at = self
                .ends
                .get(self.next_end)
                .map(|&i| self.allocations[i].end_ns.unwrap());
            let start_at = self
                .starts
                .get(self.next_start)
                .map(|&i| self.allocations[i].start_ns);
            match (end_at, start_at) {
                (Some(e), s) if e <= time && s.is_none_or(|s| e <= s) => {
                    let i = self.ends[self.next_end];
                    self.next_end += 1;
                    let a = &self.allocations[i];
                    let map = if a.is_block() {
                        &mut self.blocks
                    } else {
                        &mut self.regions
                    };
                    if map.get(&a.address) == Some(&i) {
                        map.remove(&a.address);
                    }
                    self.ended.insert(a.address, i);
                }
                (_, Some(s)) if s <= time => {
                    let i = self.starts[self.next_start];
                    self.next_start += 1;
                    let a = &self.allocations[i];
                    if a.size == 0 || a.end_ns == Some(a.start_ns) {
                        continue;
                    }
                    let map = if a.is_block() {
                        &mut self.blocks
                    } else {
                        &mut self.regions
                    };
                    map.insert(a.address, i);
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(time_ns: u64, kind: Kind, addr: u64, size: u64, old: u64, old_size: u64) -> AllocEvent {
        AllocEvent {
            time_ns,
            thread: 1,
            kind,
            addr,
            size,
            old,
            old_size,
            stack: vec![0x400000 + time_ns],
        }
    }

    #[test]
    fn reused_addresses_and_realloc_moves_get_their_own_lifetimes() {
        let events = [
            ev(10, Kind::Malloc, 0x1000, 64, 0, 0),
            ev(20, Kind::Free, 0x1000, 0, 0, 0),
            ev(30, Kind::Malloc, 0x1000, 32, 0, 0), // same address, new block
            ev(40, Kind::Realloc, 0x2000, 128, 0x1000, 0), // moved
            ev(50, Kind::Realloc, 0x2000, 256, 0x2000, 0), // in place: still a new block
        ];
        let a = lifetimes(&events);
        assert_eq!(a.len(), 4);
        assert_eq!((a[0].start_ns, a[0].end_ns), (10, Some(20)));
        assert_eq!((a[1].address, a[1].end_ns), (0x1000, Some(40)));
        assert_eq!(
            (a[2].address, a[2].kind, a[2].end_ns),
            (0x2000, "realloc", Some(50))
        );
        assert_eq!((a[3].size, a[3].end_ns), (256, None));

        let mut at = Attributor::new(&a);
        assert_eq!(at.find(5, 0x1000), None); // before the first malloc
        assert_eq!(at.find(15, 0x1000 + 63), Some(1));
        assert_eq!(at.find(15, 0x1000 + 64), None);
        assert_eq!(at.find(25, 0x1000), None); // freed, not yet reused
        assert_eq!(at.find(30, 0x1000), Some(2)); // reused at 30
        assert_eq!(at.find(45, 0x1000), None); // moved away
        assert_eq!(at.find(45, 0x2000 + 100), Some(3));
        assert_eq!(at.find(60, 0x2000 + 200), Some(4));

        // An access somewhere in [15, 35] at the reused address: the block live at 35.
        let mut at = Attributor::new(&a);
        assert_eq!(at.find_in_window(15, 35, 0x1000), Some(2));
        // In [15, 25]: nothing is live at 25, the first block ended inside the window.
        let mut at = Attributor::new(&a);
        assert_eq!(at.find_in_window(15, 25, 0x1000), Some(1));
        assert_eq!(at.find_in_window(21, 25, 0x1000), None);
    }

    #[test]
    fn blocks_inside_regions_and_partial_unmaps() {
        let events = [
            ev(1, Kind::Brk, 0x10000, 0x1000, 0, 0),
            ev(2, Kind::Malloc, 0x10100, 16, 0, 0),
            ev(3, Kind::Mmap, 0x80000, 0x4000, 0, 0),
            ev(4, Kind::Munmap, 0x81000, 0x1000, 0, 0), // a hole in the middle
            ev(5, Kind::Mremap, 0x90000, 0x2000, 0x80000, 0x1000),
        ];
        let a = lifetimes(&events);
        let mut at = Attributor::new(&a);
        assert_eq!(at.find(2, 0x10104), Some(2)); // the block, not the heap
        assert_eq!(at.find(2, 0x10200), Some(1)); // the heap
        assert_eq!(at.find(3, 0x81000), Some(3));
        let hole = at.find(4, 0x81000);
        assert_eq!(hole, None);
        let low = at.find(4, 0x80000).unwrap();
        let high = at.find(4, 0x82000).unwrap();
        assert!(low != 3 && high != 3 && low != high);
        assert_eq!(at.find(5, 0x80000), None); // moved by mremap
        assert_eq!(a[at.find(5, 0x90000).unwrap() as usize - 1].kind, "mremap");
        assert_eq!(at.find(5, 0x82000), Some(high)); // untouched by the mremap
    }
}
