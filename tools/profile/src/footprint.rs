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
//! From the footprint, [`MissModel`] estimates how much of a DRAM access each
//! execution costs: none when the footprint fits in L2 (L1 and L2 are private to the
//! core, and sysfs sizes them truly); all of one from [`latency::REFERENCE_BYTES`] up;
//! between the two, measured (see [`latency`]): the LLC that would hold the rest is
//! shared with other cores and, in a VM, other tenants, so its size in sysfs says
//! little about what it holds for us. Random probes and chases spread their accesses
//! evenly over the footprint, as the measurement does; a streaming scan's footprint is
//! its whole range, so it counts as DRAM, though a hardware prefetcher may hide part of
//! it.
use crate::latency::{self, Probe};
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

/// How a load's footprint is turned into the fraction of a DRAM access each of its
/// executions costs (`est_miss_ratio`).
#[derive(Debug, Clone)]
pub struct MissModel {
    l2: u64,
    /// The fraction measured for each footprint bucket asked for ([`bucket`]).
    measured: Vec<(u64, f64)>,
}

impl MissModel {
    /// Every access that leaves L2 counts as a DRAM access: `1 − L2/footprint`. What
    /// the model falls back to when the probe's memory is not there.
    pub fn by_capacity(caches: PrivateCaches) -> MissModel {
        MissModel {
            l2: caches.l2,
            measured: Vec::new(),
        }
    }

    /// Measures the read latency of every footprint in `footprints` that lies between
    /// L2 and the reference (a few tens of milliseconds; nothing when none does).
    pub fn measure(caches: PrivateCaches, footprints: &[u64]) -> MissModel {
        let mut buckets: Vec<u64> = footprints
            .iter()
            .filter(|&&f| f > caches.l2 && f < latency::REFERENCE_BYTES)
            .map(|&f| bucket(f))
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        let probe = match buckets.is_empty() {
            true => None,
            false => Probe::new(),
        };
        let Some(probe) = probe else {
            return MissModel::by_capacity(caches);
        };
        let mut sizes = vec![caches.l2 / 2, latency::REFERENCE_BYTES];
        sizes.extend(&buckets);
        let rounds = probe.rounds(&sizes);
        // Each round places the bucket between L2's latency and the reference's; a
        // round whose reference was no slower than L2 saw nothing and does not count.
        let by_bucket = buckets
            .iter()
            .enumerate()
            .filter_map(|(i, &bucket)| {
                let mut fractions: Vec<f64> = rounds
                    .iter()
                    .filter(|ns| ns[1] > ns[0])
                    .map(|ns| ((ns[2 + i] - ns[0]) / (ns[1] - ns[0])).clamp(0.0, 1.0))
                    .collect();
                (!fractions.is_empty()).then(|| (bucket, crate::stats::median(&mut fractions)))
            })
            .collect();
        MissModel {
            l2: caches.l2,
            measured: by_bucket,
        }
    }

    /// The fraction of a DRAM access an execution of a load with this footprint costs.
    pub fn dram_fraction(&self, footprint: u64) -> f64 {
        if footprint <= self.l2 {
            return 0.0;
        }
        if footprint >= latency::REFERENCE_BYTES {
            return 1.0;
        }
        self.measured
            .iter()
            .find(|(b, _)| *b == bucket(footprint))
            .map_or_else(|| miss_ratio(footprint, self.l2), |&(_, fraction)| fraction)
    }
}

/// Footprints measured alike: rounded up to a power of √2.
fn bucket(footprint: u64) -> u64 {
    let half_steps = (2.0 * (footprint.max(1) as f64).log2()).ceil();
    2f64.powf(half_steps / 2.0).round() as u64
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
    fn the_model_places_a_footprint_between_l2_and_dram() {
        let caches = PrivateCaches {
            l1: 32 << 10,
            l2: 512 << 10,
        };
        let model = MissModel {
            l2: caches.l2,
            measured: vec![(bucket(4 << 20), 0.1), (bucket(40 << 20), 0.7)],
        };
        assert_eq!(model.dram_fraction(256 << 10), 0.0);
        assert_eq!(model.dram_fraction(4 << 20), 0.1);
        // The same bucket: 44 MiB and 40 MiB both round up to 2^25.5 bytes.
        assert_eq!(model.dram_fraction(44 << 20), 0.7);
        assert_eq!(model.dram_fraction(256 << 20), 1.0);
        // A footprint that was not measured: by capacity.
        assert_eq!(model.dram_fraction(1 << 20), 0.5);
        let by_capacity = MissModel::by_capacity(caches);
        assert_eq!(by_capacity.dram_fraction(2 << 20), 0.75);
    }

    #[test]
    fn buckets_round_up_by_half_powers_of_two() {
        assert_eq!(bucket(4 << 20), 4 << 20);
        assert_eq!(bucket((4 << 20) + 1), 5_931_642);
        assert_eq!(bucket(5 << 20), 5_931_642);
        assert_eq!(bucket(6 << 20), 8 << 20);
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
