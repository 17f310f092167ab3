//! Replaying the tracer's batches through the cache model: per load instruction, how
//! often it ran and how often it missed the last-level cache; an IP-stride prefetcher
//! per core.
use super::cache::Hierarchy;
use msh_tracer::Access;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Per load instruction: how often it ran and how often it missed the LLC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Executions (dynamic loads) of the instruction.
    pub executions: u64,
    /// Of those, the ones served by memory.
    pub llc_misses: u64,
}

/// The modelled hardware prefetcher follows strides up to this many bytes (as Intel's
/// L1 IP-stride prefetcher does, within a 4 KiB page's reach)…
const PREFETCH_MAX_STRIDE: i64 = 2048;
/// …and fetches this many bytes ahead of the access, so a stream's lines arrive before
/// its loads do.
const PREFETCH_AHEAD: i64 = 512;
/// Entries of each core's prefetcher table (direct-mapped by instruction address).
const PREFETCH_ENTRIES: usize = 1024;

/// The model asks the host to fetch the private levels' sets of the access this many
/// places ahead in a batch.
const HOST_PREFETCH_DISTANCE: usize = 16;

/// One entry of a core's IP-stride prefetcher.
#[derive(Clone, Copy, Default)]
struct Stride {
    ip: u64,
    last_address: u64,
    last_stride: i64,
}

/// A core's IP-stride prefetcher: once a load repeats the same stride twice, the line
/// `PREFETCH_AHEAD` bytes further along is brought into the caches. Without it, a
/// sequential scan would "miss" once per line, which real hardware hides.
struct Prefetcher {
    table: Vec<Stride>,
}

impl Prefetcher {
    fn new() -> Prefetcher {
        Prefetcher {
            table: vec![Stride::default(); PREFETCH_ENTRIES],
        }
    }

    /// The address to prefetch after `ip` loaded `address`, if any.
    #[inline]
    fn observe(&mut self, ip: u64, address: u64) -> Option<u64> {
        let slot = &mut self.table[(ip as usize ^ (ip >> 10) as usize) % PREFETCH_ENTRIES];
        if slot.ip != ip {
            *slot = Stride {
                ip,
                last_address: address,
                last_stride: 0,
            };
            return None;
        }
        let stride = address.wrapping_sub(slot.last_address) as i64;
        let ahead =
            (stride != 0 && stride == slot.last_stride && stride.abs() <= PREFETCH_MAX_STRIDE)
                .then(|| {
                    let distance = stride.signum() * PREFETCH_AHEAD.max(stride.abs());
                    address.wrapping_add(distance as u64)
                });
        slot.last_stride = stride;
        slot.last_address = address;
        ahead
    }
}

/// Instruction addresses are already well spread: one multiply is enough.
#[derive(Default)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9e3779b97f4a7c15).rotate_left(29);
    }
}

/// Entries of the direct-mapped memo in front of the per-load table (by instruction
/// address): a loop's few loads find their counters without hashing.
const SITE_MEMO: usize = 1024;

/// The per-load counters: a vector indexed through a hash map by instruction address,
/// with a direct-mapped memo of recent lookups in front.
struct Sites {
    stats: Vec<LoadStats>,
    ips: Vec<u64>,
    index: HashMap<u64, u32, BuildHasherDefault<AddressHasher>>,
    /// (ip, index into `stats`); index `u32::MAX` marks an empty entry.
    memo: Vec<(u64, u32)>,
}

impl Sites {
    fn new() -> Sites {
        Sites {
            stats: Vec::new(),
            ips: Vec::new(),
            index: HashMap::default(),
            memo: vec![(0, u32::MAX); SITE_MEMO],
        }
    }

    /// The counters' index for the load at `ip`, created on first sight.
    #[inline]
    fn of(&mut self, ip: u64) -> u32 {
        let slot = &mut self.memo[(ip as usize ^ (ip >> 10) as usize) % SITE_MEMO];
        if slot.0 == ip && slot.1 != u32::MAX {
            return slot.1;
        }
        let next = self.stats.len() as u32;
        let index = *self.index.entry(ip).or_insert(next);
        if index == next {
            self.stats.push(LoadStats::default());
            self.ips.push(ip);
        }
        *slot = (ip, index);
        index
    }
}

/// A line that missed every private level, waiting for the shared one: which access
/// (or prefetch) it belongs to, to charge a miss to its load.
#[derive(Clone, Copy)]
struct Pending {
    line: u64,
    /// Position of the access in the batch.
    access: u32,
    /// The load's counters, or `NOT_A_LOAD` (a store, or the prefetcher's own access).
    site: u32,
}

const NOT_A_LOAD: u32 = u32::MAX;

/// The model asks the host for the shared level's set of the line this many places
/// ahead among the batch's private misses.
const HOST_PREFETCH_SHARED: usize = 32;

/// The cache model with its per-load counts.
pub struct Simulator {
    hierarchy: Hierarchy,
    prefetchers: Vec<Prefetcher>,
    sites: Sites,
    /// The current batch's private misses, in order (kept to reuse its allocation).
    pending: Vec<Pending>,
    /// Loads and stores simulated.
    pub accesses: u64,
    /// Loads simulated.
    pub load_accesses: u64,
    /// Loads served by memory.
    pub llc_load_misses: u64,
    /// Time spent in [`Simulator::batch`].
    pub model_time: Duration,
}

impl Simulator {
    /// A simulator over `hierarchy`.
    pub fn new(hierarchy: Hierarchy) -> Simulator {
        Simulator {
            hierarchy,
            prefetchers: Vec::new(),
            sites: Sites::new(),
            pending: Vec::new(),
            accesses: 0,
            load_accesses: 0,
            llc_load_misses: 0,
            model_time: Duration::ZERO,
        }
    }

    /// Per load instruction (by address), its counts, in first-seen order.
    pub fn loads(&self) -> impl Iterator<Item = (u64, LoadStats)> + '_ {
        self.sites
            .ips
            .iter()
            .copied()
            .zip(self.sites.stats.iter().copied())
    }

    /// The counts of the load at `ip`, if it ran.
    pub fn load(&self, ip: u64) -> Option<LoadStats> {
        let index = *self.sites.index.get(&ip)?;
        self.sites.stats.get(index as usize).copied()
    }

    /// Simulates one thread's batch on that thread's core.
    ///
    /// In two passes with the result of one access at a time: first every access
    /// (and prefetch) through the core's private levels, collecting the lines that
    /// missed them all, in order; then those lines through the shared level. Only
    /// this core touches the hierarchy during the batch, and the private levels do not
    /// depend on the shared one's answers, so the shared level sees the same lines in
    /// the same order either way. The second pass knows its next lines, so it has
    /// the host fetch their sets ahead, and the first keeps the private tags hot.
    pub fn batch(&mut self, thread: u32, accesses: &[Access]) {
        let started = Instant::now();
        let core = thread as usize;
        while self.prefetchers.len() <= core {
            self.prefetchers.push(Prefetcher::new());
        }
        self.hierarchy.ensure_core(core);
        let hierarchy = &mut self.hierarchy;
        let prefetcher = &mut self.prefetchers[core];
        let sites = &mut self.sites;
        let pending = &mut self.pending;
        pending.clear();
        let mut loads = 0u64;
        for (index, access) in accesses.iter().enumerate() {
            if let Some(next) = accesses.get(index + HOST_PREFETCH_DISTANCE) {
                hierarchy.prefetch_private(core, hierarchy.line_of(next.addr));
            }
            let site = if access.is_write {
                NOT_A_LOAD
            } else {
                loads += 1;
                let site = sites.of(access.ip);
                sites.stats[site as usize].executions += 1;
                site
            };
            let first = hierarchy.line_of(access.addr);
            let last = hierarchy.line_of(access.addr + (access.size as u64).max(1) - 1);
            // Not a `first..=last` loop: an inclusive range costs an extra check per
            // step, and nearly every access is within one line.
            for line in first..last + 1 {
                if hierarchy.private_line(core, line).is_none() {
                    pending.push(Pending {
                        line,
                        access: index as u32,
                        site,
                    });
                }
            }
            if access.is_write {
                continue;
            }
            if let Some(ahead) = prefetcher.observe(access.ip, access.addr) {
                let line = hierarchy.line_of(ahead);
                if hierarchy.private_line(core, line).is_none() {
                    pending.push(Pending {
                        line,
                        access: index as u32,
                        site: NOT_A_LOAD,
                    });
                }
            }
        }
        // The shared level, in the same order; a load spanning two lines that both
        // miss counts once.
        let mut charged = u32::MAX;
        for (k, miss) in pending.iter().enumerate() {
            if let Some(next) = pending.get(k + HOST_PREFETCH_SHARED) {
                hierarchy.prefetch_shared(next.line);
            }
            if !hierarchy.shared_line(miss.line)
                && miss.site != NOT_A_LOAD
                && charged != miss.access
            {
                charged = miss.access;
                sites.stats[miss.site as usize].llc_misses += 1;
                self.llc_load_misses += 1;
            }
        }
        self.load_accesses += loads;
        self.accesses += accesses.len() as u64;
        self.model_time += started.elapsed();
    }
}

#[cfg(test)]
mod tests {
    use super::super::cache::HierarchyConfig;
    use super::*;
    use std::collections::HashMap;

    fn load(ip: u64, addr: u64) -> Access {
        Access {
            ip,
            addr,
            size: 8,
            is_write: false,
        }
    }

    #[test]
    fn counts_loads_and_their_misses() {
        let config = HierarchyConfig::parse("L1=1K:2,L2=4K:4").unwrap();
        let mut sim = Simulator::new(Hierarchy::new(&config));
        let store = Access {
            is_write: true,
            ..load(0x30, 0x9000)
        };
        sim.batch(
            0,
            &[
                load(0x10, 0x1000),
                load(0x10, 0x1008),
                store,
                load(0x20, 0x5000),
            ],
        );
        assert_eq!((sim.accesses, sim.load_accesses), (4, 3));
        assert_eq!(
            sim.load(0x10).unwrap(),
            LoadStats {
                executions: 2,
                llc_misses: 1
            }
        );
        assert_eq!(
            sim.load(0x20).unwrap(),
            LoadStats {
                executions: 1,
                llc_misses: 1
            }
        );
        assert!(sim.load(0x30).is_none(), "stores are not loads");
        // Another thread has its own L1/L2 but shares the last level (here L2 is last).
        sim.batch(1, &[load(0x10, 0x1000)]);
        assert_eq!(
            sim.load(0x10).unwrap().llc_misses,
            1,
            "found in the shared level"
        );
    }

    #[test]
    fn the_stride_prefetcher_hides_a_scan_but_not_random_probes() {
        let config = HierarchyConfig::parse("L1=32K:8,L2=256K:8,L3=2M:16").unwrap();
        let scan: Vec<Access> = (0..100_000u64)
            .map(|i| load(0x401000, 0x1000_0000 + i * 8))
            .collect();
        let mut state = 88172645463325252u64;
        let probes: Vec<Access> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                load(0x402000, 0x2000_0000 + (state % (64 << 20)) / 8 * 8)
            })
            .collect();
        let ratio = |trace: &[Access], ip: u64| {
            let mut sim = Simulator::new(Hierarchy::new(&config));
            for chunk in trace.chunks(4096) {
                sim.batch(0, chunk);
            }
            sim.load(ip).unwrap().llc_misses as f64 / sim.load(ip).unwrap().executions as f64
        };
        assert!(
            ratio(&scan, 0x401000) < 0.01,
            "scan {}",
            ratio(&scan, 0x401000)
        );
        assert!(
            ratio(&probes, 0x402000) > 0.9,
            "probes {}",
            ratio(&probes, 0x402000)
        );
    }

    /// A mix the two-pass batch must get exactly right: strided and random loads,
    /// stores, loads spanning two lines, three cores sharing the last level, batches
    /// of uneven length; checked against one access at a time through
    /// `Hierarchy::access` with the same prefetcher.
    #[test]
    fn two_passes_agree_with_one_access_at_a_time() {
        let config = HierarchyConfig::parse("L1=1K:2,L2=4K:4,L3=16K:4").unwrap();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut sim = Simulator::new(Hierarchy::new(&config));
        let mut reference = Hierarchy::new(&config);
        let mut prefetchers: Vec<Prefetcher> = (0..3).map(|_| Prefetcher::new()).collect();
        let mut expected: HashMap<u64, LoadStats> = HashMap::new();
        let mut expected_misses = 0;
        let mut stride = [0u64; 3];
        for round in 0..300 {
            let thread = (random() % 3) as u32;
            let length = 1 + (random() % 200) as usize + round % 7;
            let batch: Vec<Access> = (0..length)
                .map(|_| {
                    let kind = random() % 4;
                    let core = thread as usize;
                    stride[core] += 24;
                    let (ip, addr) = match kind {
                        0 => (0x100 + thread as u64, 0x10_0000 + stride[core] % 32768),
                        1 => (0x200, 0x20_0000 + random() % 65536),
                        2 => (0x300 + random() % 8, 0x30_0000 + (random() % 512) * 64 + 60),
                        _ => (0x400, 0x40_0000 + random() % 2048),
                    };
                    Access {
                        ip,
                        addr,
                        size: 8,
                        is_write: random() % 5 == 0,
                    }
                })
                .collect();
            sim.batch(thread, &batch);
            let core = thread as usize;
            for access in &batch {
                let served = reference.access(core, access.addr, access.size as u64);
                if access.is_write {
                    continue;
                }
                let load = expected.entry(access.ip).or_default();
                load.executions += 1;
                if served == reference.memory_level() {
                    load.llc_misses += 1;
                    expected_misses += 1;
                }
                if let Some(ahead) = prefetchers[core].observe(access.ip, access.addr) {
                    reference.access(core, ahead, 1);
                }
            }
        }
        assert!(expected_misses > 1000, "the mix misses: {expected_misses}");
        assert_eq!(sim.llc_load_misses, expected_misses);
        let got: HashMap<u64, LoadStats> = sim.loads().collect();
        assert_eq!(got, expected);
    }
}
