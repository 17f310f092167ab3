//! How long a dependent random read over a region of a given size takes on this
//! machine, measured: the part of a load's cost that sysfs cannot tell.
//!
//! A load whose footprint overflows L2 may still hit the last-level cache, and a
//! prefetch+yield there saves tens of nanoseconds, not the hundreds a DRAM access
//! costs. The LLC's useful size is not what sysfs says: in a VM it is the host's,
//! shared with other cores and tenants (one machine here reports 260 MiB and a 64 MiB
//! chase already costs DRAM latency; another reports 32 MiB and a 4 MiB table costs
//! LLC latency). So the profiler asks the machine: it chases random lines of a region
//! of the footprint's size and compares the time per read with a region that fits in
//! L2 and with one of [`REFERENCE_BYTES`], far past any LLC's share.
//!
//! Each chase is short (a few thousand reads, milliseconds) and repeated in rounds
//! that measure every size back to back; the caller compares sizes within a round and
//! takes the median over rounds, so a burst of other work on a busy machine moves one
//! round, not the answer.

use std::time::Instant;

/// The region whose reads count as DRAM accesses: 128 MiB.
pub const REFERENCE_BYTES: u64 = 128 << 20;

/// Reads per chase.
const HOPS: u32 = 8192;
/// Rounds of chases (see [`Probe::rounds`]).
const ROUNDS: usize = 9;
const LINE: u64 = 64;

/// A buffer of [`REFERENCE_BYTES`], every page of it written (untouched pages would all
/// read the kernel's one zero page).
pub struct Probe {
    words: Vec<u64>,
}

impl Probe {
    /// Maps and writes the buffer; `None` when the memory is not there.
    pub fn new() -> Option<Probe> {
        let len = (REFERENCE_BYTES / 8) as usize;
        let mut words = Vec::new();
        words.try_reserve_exact(len).ok()?;
        // Nonzero, so every page is written rather than left to the zero page.
        words.resize(len, 1);
        Some(Probe { words })
    }

    /// Nanoseconds per read over the first `bytes` of the buffer (at most
    /// [`REFERENCE_BYTES`]) for each of `sizes`, in each of several rounds: a round
    /// measures every size, one after the other, so that a burst of load elsewhere
    /// falls on all of them alike and ratios within a round hold.
    ///
    /// Before each chase the region is read once in order, so the caches hold what a
    /// load spreading its reads over it would leave in them (the last LLC-full of it),
    /// not what the previous chase left; and the chase goes on where the last one
    /// stopped, never repeating a sequence of lines the caches could remember.
    pub fn rounds(&self, sizes: &[u64]) -> Vec<Vec<f64>> {
        let mut state = 0u64;
        let rounds = (0..ROUNDS)
            .map(|_| {
                sizes
                    .iter()
                    .map(|&bytes| {
                        let bytes = bytes.clamp(LINE, REFERENCE_BYTES);
                        // The reference is far past any LLC: nothing to warm.
                        if bytes < REFERENCE_BYTES {
                            sweep(&self.words[..(bytes / 8) as usize]);
                        }
                        let start = Instant::now();
                        state = chase(&self.words, bytes / LINE, HOPS, state);
                        start.elapsed().as_nanos() as f64 / f64::from(HOPS)
                    })
                    .collect()
            })
            .collect();
        std::hint::black_box(state);
        rounds
    }
}

/// Reads one word of every line of `words`, in order.
fn sweep(words: &[u64]) {
    let words_per_line = (LINE / 8) as usize;
    let sum = words
        .iter()
        .step_by(words_per_line)
        .fold(0u64, |sum, &w| sum.wrapping_add(w));
    std::hint::black_box(sum);
}

/// `hops` dependent reads of random lines among the first `lines` of `words`, from
/// `state` (returned for the next chase): each address is computed from the word the
/// previous read returned, so the reads cannot overlap, and spread uniformly by a
/// multiplicative hash.
fn chase(words: &[u64], lines: u64, hops: u32, mut state: u64) -> u64 {
    let words_per_line = (LINE / 8) as usize;
    let mut line = ((u128::from(state) * u128::from(lines)) >> 64) as u64;
    for hop in 0..hops {
        (state, line) = next_line(state, words[line as usize * words_per_line], hop, lines);
    }
    state
}

/// The chase's step: the next line, in `0..lines`, from the word just read.
#[inline(always)]
fn next_line(state: u64, word: u64, hop: u32, lines: u64) -> (u64, u64) {
    let state = (state ^ word ^ u64::from(hop)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (
        state,
        ((u128::from(state) * u128::from(lines)) >> 64) as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_stays_inside_the_region_and_spreads_over_it() {
        let mut seen = [0u32; 64];
        let mut state = 0u64;
        for hop in 0..64 * 256 {
            let line;
            (state, line) = next_line(state, 1, hop, 64);
            seen[line as usize] += 1;
        }
        // Uniform: each of the 64 lines about 256 times.
        assert!(seen.iter().all(|&n| (128..512).contains(&n)), "{seen:?}");
        // Chases go on from each other's state: never the same lines twice.
        let words = vec![1u64; 64 * 8];
        let first = chase(&words, 64, 100, 0);
        assert_ne!(chase(&words, 64, 100, first), first);
    }
}
