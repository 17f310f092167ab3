//! A load's footprint, estimated from a sample of the addresses it read, and from it
//! the chance that it misses this machine's private caches.
//!
//! The estimate counts how often two sampled addresses fall in the same 64-byte line
//! (the birthday argument: `n` samples spread over `N` lines coincide in about
//! `n(n−1)/2N` pairs, so `N ≈ n(n−1)/2·pairs`). With fewer than
//! [`MIN_COINCIDENCES`] coinciding pairs the samples are too spread out to count, and
//! the span (max − min) of the addresses is the estimate: it bounds what accesses to
//! one region can touch. Either way the estimate lies between the lines seen and the
//! span; a load hopping between two small distant regions has many coincidences, so
//! the span does not mislead it.
//!
//! The miss estimate assumes accesses spread evenly over the footprint, as random
//! probes and chases do: a cache of `C` bytes holds `C/F` of it, so the load misses
//! with probability `1 − C/F`. A streaming scan also gets ≈ 1 (every line is new,
//! though a hardware prefetcher may hide part of it).
//!
//! Why L2 and not the LLC: L1 and L2 are private to the core and sysfs sizes them
//! truly, while the LLC is shared with the other cores (and, in a VM, with other
//! tenants): sysfs reports this VM's L3 as 260 MiB, yet a 64 MiB random chase here
//! costs ≈ 165 ns per hop, DRAM latency. So a load that fits in L2 is never
//! delinquent, and past L2 the estimate is the fraction that leaves the core.
use crate::sim::cache::HierarchyConfig;
use std::collections::HashMap;

/// Fewer addresses than this give no estimate.
pub const MIN_ADDRESSES: usize = 16;

/// Fewer coinciding pairs than this: the footprint is the span.
pub const MIN_COINCIDENCES: f64 = 10.0;

/// Cache line size the estimate counts in.
pub const LINE: u64 = 64;

const PAGE: u64 = 4096;

/// What the sampled addresses say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Addresses sampled.
    pub samples: usize,
    /// Distinct cache lines among them.
    pub lines: u64,
    /// Distinct 4 KiB pages among them.
    pub pages: u64,
    /// Highest minus lowest address, plus a line.
    pub span: u64,
    /// Estimated bytes the load touches over the whole run.
    pub bytes: u64,
}

/// Estimates the footprint of the load whose sampled addresses are `addresses`.
pub fn estimate(addresses: &[u64]) -> Option<Footprint> {
    if addresses.len() < MIN_ADDRESSES {
        return None;
    }
    let mut per_line: HashMap<u64, u32> = HashMap::new();
    for &a in addresses {
        *per_line.entry(a / LINE).or_default() += 1;
    }
    let mut pages: Vec<u64> = addresses.iter().map(|a| a / PAGE).collect();
    pages.sort_unstable();
    pages.dedup();
    let lines = per_line.len() as u64;
    let pairs: f64 = per_line
        .values()
        .map(|&k| f64::from(k) * (f64::from(k) - 1.0) / 2.0)
        .sum();
    let (min, max) = (addresses.iter().min()?, addresses.iter().max()?);
    let span = max - min + LINE;
    let span_lines = span.div_ceil(LINE).max(lines);
    let n = addresses.len() as f64;
    let estimated_lines = if pairs < MIN_COINCIDENCES {
        span_lines
    } else {
        ((n * (n - 1.0) / (2.0 * pairs)).round() as u64).clamp(lines, span_lines)
    };
    Some(Footprint {
        samples: addresses.len(),
        lines,
        pages: pages.len() as u64,
        span,
        bytes: estimated_lines * LINE,
    })
}

/// The chance that an access spread evenly over `footprint` bytes misses a cache of
/// `capacity` bytes.
pub fn miss_ratio(footprint: u64, capacity: u64) -> f64 {
    if footprint <= capacity {
        0.0
    } else {
        1.0 - capacity as f64 / footprint as f64
    }
}

/// The core's private data caches, the ones a footprint estimate can be held against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivateCaches {
    /// L1 data cache bytes.
    pub l1: u64,
    /// L2 bytes (the last private level).
    pub l2: u64,
}

impl PrivateCaches {
    /// From a described hierarchy: its first level and its second (or the first, when
    /// there is only one).
    pub fn from_config(config: &HierarchyConfig) -> Option<PrivateCaches> {
        let l1 = config.levels.first()?.size;
        let l2 = config.levels.get(1).map_or(l1, |l| l.size);
        Some(PrivateCaches { l1, l2 })
    }

    /// This machine's, from sysfs.
    pub fn host() -> Option<PrivateCaches> {
        PrivateCaches::from_config(&HierarchyConfig::host().ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn small_tables_are_counted_exactly() {
        // 1,000 random reads from a 16 KiB table: every line seen many times.
        let mut s = 1;
        let addresses: Vec<u64> = (0..1000)
            .map(|_| 0x5000_0000 + xorshift(&mut s) % (16 << 10))
            .collect();
        let f = estimate(&addresses).unwrap();
        assert!(
            (15 << 10..=(16 << 10) + 2 * LINE).contains(&f.bytes),
            "{f:?}"
        );
        assert_eq!(f.pages, 4);
        assert_eq!(miss_ratio(f.bytes, 2 << 20), 0.0);
    }

    #[test]
    fn large_random_regions_are_bounded_by_their_span() {
        for (size, samples) in [(4u64 << 20, 500), (256 << 20, 500), (256 << 20, 50)] {
            let mut s = 7;
            let addresses: Vec<u64> = (0..samples)
                .map(|_| 0x7f00_0000_0000 + (xorshift(&mut s) % size) / 8 * 8)
                .collect();
            let f = estimate(&addresses).unwrap();
            let ratio = f.bytes as f64 / size as f64;
            assert!((0.8..=1.0).contains(&ratio), "{size}: {f:?}");
        }
    }

    #[test]
    fn two_small_distant_regions_are_not_their_span() {
        let mut s = 3;
        let addresses: Vec<u64> = (0..1000)
            .map(|i| {
                let base = if i % 2 == 0 {
                    0x1000_0000
                } else {
                    0x7fff_0000_0000
                };
                base + xorshift(&mut s) % 4096
            })
            .collect();
        let f = estimate(&addresses).unwrap();
        assert!((7 << 10..=9 << 10).contains(&f.bytes), "{f:?}");
        assert!(f.span > 1 << 40);
    }

    #[test]
    fn too_few_addresses_give_no_estimate() {
        assert!(estimate(&[0x1000; MIN_ADDRESSES - 1]).is_none());
        assert_eq!(miss_ratio(4 << 20, 2 << 20), 0.5);
    }

    #[test]
    fn reads_this_machines_private_caches() {
        let caches = PrivateCaches::host().expect("sysfs describes the caches");
        assert!(caches.l1 > 0 && caches.l2 >= caches.l1, "{caches:?}");
    }
}
