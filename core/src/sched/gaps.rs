//! Yield gaps of scavengers: the time between two consecutive yields, measured on
//! sample runs (one switch in [`crate::abi::SAMPLE_EVERY`]) by code rewritten with
//! `msh rewrite --scavenger`, whose checks call [`ThreadCtx::on_sampled_yield`]
//! during a sample run. The first gap of a run counts from the switch into it.
//!
//! Gaps go into a log-linear histogram (8 sub-buckets per power of two: a value is
//! known within 12.5%); percentiles report a bucket's upper bound, the maximum is
//! exact.

use super::{Primary, Scavenger, NAME_LEN};
use crate::abi::ThreadCtx;
use crate::{arch, tsc};
use alloc::vec::Vec;
use core::sync::atomic::{compiler_fence, Ordering};

/// Sub-buckets per power of two.
const SUB: usize = 8;
/// Values below this are counted exactly (one bucket each).
const LINEAR: u64 = 16;
/// Powers of two covered above `LINEAR` (up to 2^40 ns, about 18 minutes).
const OCTAVES: usize = 36;
const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB;

/// A distribution of gaps in ns.
#[derive(Clone)]
pub struct GapHist {
    counts: [u32; BUCKETS],
    /// Gaps recorded.
    pub samples: u64,
    /// The largest gap, ns.
    pub max_ns: u64,
}

impl Default for GapHist {
    fn default() -> Self {
        GapHist {
            counts: [0; BUCKETS],
            samples: 0,
            max_ns: 0,
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < LINEAR {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize; // >= 4
    let sub = ((ns >> (e - 3)) & (SUB as u64 - 1)) as usize;
    (LINEAR as usize + (e - 4) * SUB + sub).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `b`.
fn upper_bound(b: usize) -> u64 {
    if b < LINEAR as usize {
        return b as u64;
    }
    let e = (b - LINEAR as usize) / SUB + 4;
    let sub = ((b - LINEAR as usize) % SUB) as u64;
    ((SUB as u64 + sub + 1) << (e - 3)) - 1
}

impl GapHist {
    /// Counts one gap of `ns`.
    pub fn record(&mut self, ns: u64) {
        let b = bucket(ns);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.samples += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds `other`'s gaps to these.
    pub fn merge(&mut self, other: &GapHist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.samples += other.samples;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The gap at quantile `per_mille`/1000, as its bucket's upper bound (at most the
    /// maximum); 0 without samples.
    pub fn quantile_ns(&self, per_mille: u64) -> u64 {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0;
        }
        let rank = (per_mille.min(1000) * total).div_ceil(1000).clamp(1, total);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return upper_bound(b).min(self.max_ns);
            }
        }
        self.max_ns
    }
}

/// Gaps of scavengers that have finished, by name.
static RETIRED: spin::Mutex<Vec<([u8; NAME_LEN], GapHist)>> = spin::Mutex::new(Vec::new());

/// Keeps a finishing scavenger's gaps under its name.
pub(super) fn retire(scav: &Scavenger) {
    let Some(gaps) = scav.gaps.as_deref() else {
        return;
    };
    let mut retired = RETIRED.lock();
    match retired.iter_mut().find(|(name, _)| *name == scav.name) {
        Some((_, hist)) => hist.merge(gaps),
        None => retired.push((scav.name, gaps.clone())),
    }
}

/// Calls `visit` with the name and gaps of every scavenger that has any: finished
/// ones, the calling thread's, and those waiting in the pool. Several scavengers of
/// one name may be visited separately.
pub fn for_each(mut visit: impl FnMut(&[u8], &GapHist)) {
    fn name(bytes: &[u8; NAME_LEN]) -> &[u8] {
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        &bytes[..len]
    }
    for (n, hist) in RETIRED.lock().iter() {
        visit(name(n), hist);
    }
    let me = super::current();
    if !me.is_null() {
        // SAFETY: `me` is this thread's Primary; we only read its slots.
        for scav in unsafe { (*me).slots.iter().flatten() } {
            if let Some(g) = &scav.gaps {
                visit(scav.name(), g);
            }
        }
    }
    super::POOL.for_each(|scav| {
        if let Some(g) = &scav.gaps {
            visit(scav.name(), g);
        }
    });
}

/// Called by rewritten code at each yield of a sample run (`sample_start` != 0):
/// counts the gap since the previous yield (or the run's start) for the running
/// scavenger. Its own time is added to `sample_start`, so that the calibration of the
/// quota does not see it.
///
/// # Safety
/// `ctx` is the calling thread's context block, which heads its Primary, and a
/// scavenger of that thread is running.
pub(super) unsafe extern "C" fn on_sampled_yield(ctx: *mut ThreadCtx) {
    let start = arch::rdtsc();
    // SAFETY: guaranteed by the caller; only this thread touches its Primary. The
    // running scavenger's errno is kept across the Rust code (an allocation may set it).
    unsafe {
        let me = ctx.cast::<Primary>();
        let errno = *(*ctx).errno_addr;
        (*me).in_runtime = true;
        compiler_fence(Ordering::SeqCst);
        let since = (*me).last_yield_tsc.max((*ctx).sample_start);
        let scav = (*ctx).running.cast::<Scavenger>();
        if !scav.is_null() && (*ctx).sample_start != 0 {
            let gaps = (*scav).gaps.get_or_insert_with(Default::default);
            gaps.record(tsc::ticks_to_ns(start.saturating_sub(since)));
        }
        compiler_fence(Ordering::SeqCst);
        (*me).in_runtime = false;
        *(*ctx).errno_addr = errno;
        let end = arch::rdtsc();
        (*me).last_yield_tsc = end;
        if (*ctx).sample_start != 0 {
            (*ctx).sample_start += end.saturating_sub(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_an_eighth() {
        for ns in [0u64, 5, 15, 16, 17, 100, 127, 128, 1000, 123_456, 1 << 39] {
            let ub = upper_bound(bucket(ns));
            assert!(ub >= ns, "{ns} -> {ub}");
            assert!(ub <= ns + ns / 8 + 1, "{ns} -> {ub}");
        }
        for b in 1..BUCKETS {
            assert_eq!(bucket(upper_bound(b)), b);
            assert_eq!(bucket(upper_bound(b - 1) + 1), b);
        }
    }

    #[test]
    fn quantiles_follow_the_recorded_gaps() {
        let mut h = GapHist::default();
        for ns in 1..=1000u64 {
            h.record(ns);
        }
        let p50 = h.quantile_ns(500);
        assert!((500..=570).contains(&p50), "{p50}");
        let p99 = h.quantile_ns(990);
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.max_ns, 1000);
        let mut merged = GapHist::default();
        merged.merge(&h);
        merged.record(5000);
        assert_eq!(merged.samples, 1001);
        assert_eq!(merged.quantile_ns(1000), 5000);
    }
}
