//! How long a scavenger runs per switch. The budget is set in ns but enforced as a
//! count of the scavenger's own yields (`ThreadCtx::quota`), so the TSC stays off the
//! ordinary path: here a TSC read issued while the primary's prefetch is in flight
//! often waits for it, which would turn every budget into "until the miss completes".
//!
//! The count is calibrated against the TSC on one switch in [`SAMPLE_EVERY`]: that
//! run gets twice the quota (so it outlasts the primary's miss and its closing TSC
//! read is not held up) and is timed. The estimate of ticks per yield tracks the
//! minimum of the samples and may rise by 1/8 per sample, so it follows a scavenger
//! that slows down without being pulled up by a sample that was held up.

use crate::abi::{ThreadCtx, SAMPLE_EVERY};
use crate::arch::rdtsc;

/// Yields per switch are capped: a scavenger that yields very often still goes back.
pub const MAX_QUOTA: u64 = 1 << 20;
/// Guess of one yield interval before the first sample: 16 ns.
const INITIAL_NS_PER_YIELD: u64 = 16;

/// Sets up a fresh context block's budget for `budget_ticks` per switch. `calibrate`
/// is what the yield sequences call on sample runs; it must call [`on_sample`].
pub fn init(
    ctx: &mut ThreadCtx,
    budget_ticks: u64,
    calibrate: unsafe extern "C" fn(*mut ThreadCtx),
) {
    ctx.budget_ticks = budget_ticks;
    let guess = crate::tsc::ns_to_ticks(INITIAL_NS_PER_YIELD).max(1);
    ctx.quota_refill = (budget_ticks / guess).clamp(1, MAX_QUOTA);
    ctx.quota = ctx.quota_refill;
    ctx.ticks_per_yield_x16 = 0;
    ctx.sample_countdown = 1;
    ctx.sample_start = 0;
    ctx.calibrate = Some(calibrate);
}

/// Begins a scavenger's run (the yield sequences do the same inline on resume).
pub fn start_run(ctx: &mut ThreadCtx) {
    ctx.quota = ctx.quota_refill;
    ctx.sample_countdown -= 1;
    if ctx.sample_countdown == 0 {
        on_sample(ctx);
    }
}

/// Abandons a sample run (its scavenger finished) and samples again soon.
pub fn cancel_sample(ctx: &mut ThreadCtx) {
    ctx.sample_start = 0;
    ctx.sample_countdown = 1;
}

/// Starts a sample run, or ends one and recomputes the quota. Returns whether a
/// sample run ended.
pub fn on_sample(ctx: &mut ThreadCtx) -> bool {
    let now = rdtsc();
    if ctx.sample_start == 0 {
        let yields = ctx.quota_refill.saturating_mul(2).min(MAX_QUOTA);
        ctx.quota = yields;
        ctx.sample_yields = yields;
        ctx.sample_start = now.max(1);
        return false;
    }
    let elapsed = now.saturating_sub(ctx.sample_start);
    let sample = (elapsed.saturating_mul(16) / ctx.sample_yields.max(1)).max(1);
    let estimate = ctx.ticks_per_yield_x16;
    ctx.ticks_per_yield_x16 = if estimate == 0 {
        sample
    } else {
        sample.min(estimate + estimate / 8)
    };
    ctx.quota_refill =
        (ctx.budget_ticks.saturating_mul(16) / ctx.ticks_per_yield_x16).clamp(1, MAX_QUOTA);
    ctx.sample_start = 0;
    ctx.sample_countdown = SAMPLE_EVERY;
    true
}

/// Estimated time spent in scavengers: their yields times the calibrated interval.
pub fn scavenger_ticks(ctx: &ThreadCtx) -> u64 {
    (ctx.scav_yields as u128 * ctx.ticks_per_yield_x16 as u128 / 16) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn no_hook(_: *mut ThreadCtx) {}

    fn sample(ctx: &mut ThreadCtx, elapsed_ticks: u64) {
        assert!(!on_sample(ctx));
        assert_ne!(ctx.sample_start, 0);
        ctx.sample_start -= elapsed_ticks.min(ctx.sample_start - 1);
        assert!(on_sample(ctx));
    }

    #[test]
    fn the_quota_follows_the_measured_yield_interval() {
        let mut ctx = ThreadCtx::new(0);
        init(&mut ctx, 3000, no_hook);
        ctx.sample_start = 0;
        // 2 x quota yields took 10 ticks each (plus the time the test takes).
        let yields = ctx.quota_refill * 2;
        sample(&mut ctx, yields * 10);
        let quota = ctx.quota_refill;
        assert!(
            (250..=300).contains(&quota),
            "quota {quota} for 3000 ticks at ~10 ticks/yield"
        );
        assert_eq!(ctx.sample_countdown, SAMPLE_EVERY);
    }

    #[test]
    fn a_held_up_sample_cannot_pull_the_estimate_up_at_once() {
        let mut ctx = ThreadCtx::new(0);
        init(&mut ctx, 1000, no_hook);
        let yields = ctx.quota_refill * 2;
        sample(&mut ctx, yields * 10);
        let before = ctx.ticks_per_yield_x16;
        let yields = ctx.quota_refill * 2;
        sample(&mut ctx, yields * 100); // ten times slower: held up by a miss
        assert!(ctx.ticks_per_yield_x16 <= before + before / 8);
        assert!(ctx.quota_refill >= 1);
    }

    #[test]
    fn a_zero_budget_means_one_yield_per_switch() {
        let mut ctx = ThreadCtx::new(0);
        init(&mut ctx, 0, no_hook);
        assert_eq!(ctx.quota_refill, 1);
        sample(&mut ctx, 50);
        assert_eq!(ctx.quota_refill, 1);
    }
}
