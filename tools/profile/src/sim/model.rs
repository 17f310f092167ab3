//! Replaying the tracer's batches through the cache model: per load instruction, how
//! often it ran and how often it missed the last-level cache; an IP-stride prefetcher
//! per core.
use super::cache::Hierarchy;
use msh_tracer::Access;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Per load instruction: how often it ran and how often it missed the LLC.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
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

/// The model asks the host to fetch the cache-model sets of the access this many
/// places ahead in a batch (enough to cover a host DRAM miss at the model's pace).
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

/// The cache model with its per-load counts.
pub struct Simulator {
    hierarchy: Hierarchy,
    prefetchers: Vec<Prefetcher>,
    /// By instruction address.
    pub loads: HashMap<u64, LoadStats, BuildHasherDefault<AddressHasher>>,
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
            loads: HashMap::default(),
            accesses: 0,
            load_accesses: 0,
            llc_load_misses: 0,
            model_time: Duration::ZERO,
        }
    }

    /// Simulates one thread's batch on that thread's core.
    pub fn batch(&mut self, thread: u32, accesses: &[Access]) {
        let started = Instant::now();
        let core = thread as usize;
        while self.prefetchers.len() <= core {
            self.prefetchers.push(Prefetcher::new());
        }
        let memory = self.hierarchy.memory_level();
        let prefetcher = &mut self.prefetchers[core];
        for (index, access) in accesses.iter().enumerate() {
            if let Some(next) = accesses.get(index + HOST_PREFETCH_DISTANCE) {
                self.hierarchy.prefetch(core, next.addr);
            }
            let served = self.hierarchy.access(core, access.addr, access.size as u64);
            if access.is_write {
                continue;
            }
            self.load_accesses += 1;
            let load = self.loads.entry(access.ip).or_default();
            load.executions += 1;
            if served == memory {
                load.llc_misses += 1;
                self.llc_load_misses += 1;
            }
            if let Some(ahead) = prefetcher.observe(access.ip, access.addr) {
                self.hierarchy.access(core, ahead, 1);
            }
        }
        self.accesses += accesses.len() as u64;
        self.model_time += started.elapsed();
    }
}

#[cfg(test)]
mod tests {
    use super::super::cache::HierarchyConfig;
    use super::*;

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
            sim.loads[&0x10],
            LoadStats {
                executions: 2,
                llc_misses: 1
            }
        );
        assert_eq!(
            sim.loads[&0x20],
            LoadStats {
                executions: 1,
                llc_misses: 1
            }
        );
        assert!(!sim.loads.contains_key(&0x30), "stores are not loads");
        // Another thread has its own L1/L2 but shares the last level (here L2 is last).
        sim.batch(1, &[load(0x10, 0x1000)]);
        assert_eq!(sim.loads[&0x10].llc_misses, 1, "found in the shared level");
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
            sim.loads[&ip].llc_misses as f64 / sim.loads[&ip].executions as f64
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
}
