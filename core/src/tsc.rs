//! Converting nanosecond budgets into TSC ticks, calibrated against CLOCK_MONOTONIC.

use crate::arch::rdtsc;
use crate::os::monotonic_ns;
use core::sync::atomic::{AtomicU64, Ordering};

/// TSC ticks per microsecond, once calibrated (0 = not yet).
static TICKS_PER_US: AtomicU64 = AtomicU64::new(0);

/// Measures the TSC rate over `window_ns` (the median of three windows).
pub fn measure_ticks_per_us(window_ns: u64) -> u64 {
    let mut rates = [0u64; 3];
    for rate in rates.iter_mut() {
        let (t0, c0) = (monotonic_ns(), rdtsc());
        let mut t1 = t0;
        while t1 - t0 < window_ns {
            t1 = monotonic_ns();
        }
        let c1 = rdtsc();
        *rate = (c1 - c0) * 1000 / (t1 - t0).max(1);
    }
    rates.sort_unstable();
    rates[1].max(1)
}

/// TSC ticks per microsecond, calibrated on first use (about 6 ms).
pub fn ticks_per_us() -> u64 {
    match TICKS_PER_US.load(Ordering::Relaxed) {
        0 => {
            let rate = measure_ticks_per_us(2_000_000);
            TICKS_PER_US.store(rate, Ordering::Relaxed);
            rate
        }
        rate => rate,
    }
}

/// Converts a budget in nanoseconds to TSC ticks (calibrating on first use).
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns.saturating_mul(ticks_per_us()) / 1000
}

/// Converts TSC ticks back to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (ticks as u128 * 1000 / ticks_per_us() as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_converts_back_to_itself() {
        let ticks = ns_to_ticks(150);
        assert!(ticks > 0);
        let back = ticks_to_ns(ticks);
        assert!(
            (145..=155).contains(&back),
            "150 ns -> {ticks} ticks -> {back} ns"
        );
    }

    #[test]
    fn the_calibrated_rate_agrees_with_the_clock() {
        let rate = ticks_per_us();
        let (t0, c0) = (monotonic_ns(), rdtsc());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (t1, c1) = (monotonic_ns(), rdtsc());
        let measured = (c1 - c0) * 1000 / (t1 - t0);
        let err = measured.abs_diff(rate) as f64 / rate as f64;
        assert!(
            err < 0.02,
            "calibrated {rate} ticks/us, measured {measured}"
        );
    }
}
