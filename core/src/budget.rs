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
    on_sample_at(ctx, rdtsc())
}

/// [`on_sample`] at TSC reading `now`.
fn on_sample_at(ctx: &mut ThreadCtx, now: u64) -> bool {
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

/// The budget found online (`msh run --max-slowdown F`): the longest budget that
/// costs the primary at most `F` of its time, whatever the DRAM latency of the moment
/// (170 to 320 ns for the same hop here within an hour).
///
/// A budget shorter than the primary's miss costs it nothing: it would have waited for
/// its data anyway. Past that knee every extra tick of budget is a tick of the
/// primary's time. The windows between sample runs (`SAMPLE_EVERY` switches each) run
/// at the `center` budget, but one in [`CYCLE`] is a reference window at half of it.
/// Over [`CYCLES_PER_STEP`] cycles the controller compares the time per switch
/// (primary and scavenger together) of the center windows with the reference ones:
/// what the upper half of the budget costs. Within the allowance the center grows by
/// 1/16, beyond it it shrinks by as much.
///
/// ```text
///   time per switch
///        |              /   past the knee: +1 tick of budget = +1 tick of primary time
///        |             /
///        |____________/     below: the primary waits for its miss either way
///        +-----^------^-^--- budget
///           center/2   knee  center: settles where center costs F more than center/2
/// ```
///
/// Opt-in (`Config::max_slowdown_permille`): on `msh bench harvest` (64 MiB chase,
/// 2% allowance) it settled near 136 ns with the primary 6% slower and 0.64 of a core
/// harvested, where the fixed 150 ns gave 0-5% and 0.80-0.86; on 1 GiB (420 ns a hop)
/// it shrank to 26 ns and 0.13, against 0.29 fixed. The half-budget reference windows
/// on a noisy shared host cost more than the search finds.
///
/// Budgets are enforced as whole scavenger yields; the fraction left over is carried
/// from window to window, so the average quota follows the center exactly.
#[derive(Debug, Clone)]
pub struct Adaptive {
    /// The allowance, in thousandths of the reference windows' time per switch.
    max_slowdown_permille: u64,
    center: u64,
    min_ticks: u64,
    max_ticks: u64,
    /// Position in the cycle; 0 is the reference window.
    window_index: u32,
    window_start: u64,
    window_switches: u64,
    /// Ticks x 16 per switch of this cycle's reference window (0: none usable).
    reference_x16: u64,
    /// This cycle's center windows: summed ticks x 16 per switch, and how many.
    center_sum_x16: u64,
    center_windows: u64,
    /// Cycles counted towards the next move, and their summed times per switch.
    cycles: u32,
    sum_reference_x16: u64,
    sum_center_x16: u64,
    /// Quota remainder (yields x 16) carried to the next window.
    carry_x16: u64,
}

/// Windows per cycle: one reference window, the rest at the center.
pub const CYCLE: u32 = 8;
/// Cycles averaged per move of the center.
pub const CYCLES_PER_STEP: u32 = 8;
/// Windows with fewer switches than this (the primary rarely yields) are not counted.
const MIN_WINDOW_SWITCHES: u64 = 32;

impl Adaptive {
    /// Starts at `start_ticks`, moving within `min_ticks..=max_ticks`.
    pub fn new(
        max_slowdown_permille: u64,
        start_ticks: u64,
        min_ticks: u64,
        max_ticks: u64,
    ) -> Self {
        let min_ticks = min_ticks.max(1);
        let max_ticks = max_ticks.max(min_ticks);
        Adaptive {
            max_slowdown_permille,
            center: start_ticks.clamp(min_ticks, max_ticks),
            min_ticks,
            max_ticks,
            window_index: 0,
            window_start: 0,
            window_switches: 0,
            reference_x16: 0,
            center_sum_x16: 0,
            center_windows: 0,
            cycles: 0,
            sum_reference_x16: 0,
            sum_center_x16: 0,
            carry_x16: 0,
        }
    }

    /// The budget the controller has settled on, in ticks.
    pub fn center_ticks(&self) -> u64 {
        self.center
    }

    /// Called at a window boundary (the start of a sample run) with the TSC and the
    /// thread's switch count; returns the budget for the next window, in ticks.
    pub fn on_window(&mut self, now: u64, switches: u64) -> u64 {
        let n = switches.wrapping_sub(self.window_switches);
        let usable = self.window_start != 0 && n >= MIN_WINDOW_SWITCHES;
        let per_switch_x16 = now.saturating_sub(self.window_start).saturating_mul(16) / n.max(1);
        match (self.window_index, usable) {
            (0, true) => self.reference_x16 = per_switch_x16,
            (0, false) => self.reference_x16 = 0,
            (_, true) => {
                self.center_sum_x16 += per_switch_x16;
                self.center_windows += 1;
            }
            (_, false) => {}
        }
        self.window_start = now.max(1);
        self.window_switches = switches;
        self.window_index = (self.window_index + 1) % CYCLE;
        if self.window_index == 0 {
            self.end_cycle();
        }
        if self.window_index == 0 {
            (self.center / 2).max(self.min_ticks)
        } else {
            self.center
        }
    }

    fn end_cycle(&mut self) {
        let (reference, windows) = (self.reference_x16, self.center_windows);
        let center = self.center_sum_x16 / windows.max(1);
        self.reference_x16 = 0;
        self.center_sum_x16 = 0;
        self.center_windows = 0;
        // A cycle without a reference, or whose windows differ by more than a quarter
        // (an interrupt, a phase change), says nothing about the budget.
        if reference == 0
            || windows == 0
            || center > reference + reference / 4
            || reference > center + center / 4
        {
            return;
        }
        self.sum_reference_x16 += reference;
        self.sum_center_x16 += center;
        self.cycles += 1;
        if self.cycles < CYCLES_PER_STEP {
            return;
        }
        let cost_x16 = self.sum_center_x16.saturating_sub(self.sum_reference_x16);
        let allowed_x16 = self
            .sum_reference_x16
            .saturating_mul(self.max_slowdown_permille)
            / 1000;
        let step = (self.center / 16).max(1);
        self.center = if cost_x16 <= allowed_x16 {
            self.center.saturating_add(step).min(self.max_ticks)
        } else {
            self.center.saturating_sub(step).max(self.min_ticks)
        };
        self.cycles = 0;
        self.sum_reference_x16 = 0;
        self.sum_center_x16 = 0;
    }

    /// Yields for a window of `budget_ticks`, carrying the fraction to the next one.
    fn quota(&mut self, budget_ticks: u64, ticks_per_yield_x16: u64) -> u64 {
        let wanted_x16 =
            budget_ticks.saturating_mul(256) / ticks_per_yield_x16.max(1) + self.carry_x16;
        self.carry_x16 = wanted_x16 % 16;
        (wanted_x16 / 16).clamp(1, MAX_QUOTA)
    }
}

/// Applies the controller at a window boundary: sets the thread's budget for the
/// next window and the quota that enforces it. Call before a sample run starts.
pub fn adapt(ctx: &mut ThreadCtx, adaptive: &mut Adaptive, now: u64) {
    if ctx.ticks_per_yield_x16 == 0 {
        return; // not calibrated yet: a budget in ticks cannot be turned into yields
    }
    ctx.budget_ticks = adaptive.on_window(now, ctx.switches);
    ctx.quota_refill = adaptive.quota(ctx.budget_ticks, ctx.ticks_per_yield_x16);
}

/// Estimated time spent in scavengers: their yields times the calibrated interval.
pub fn scavenger_ticks(ctx: &ThreadCtx) -> u64 {
    (ctx.scav_yields as u128 * ctx.ticks_per_yield_x16 as u128 / 16) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn no_hook(_: *mut ThreadCtx) {}

    /// One sample run that took exactly `elapsed_ticks` (no real clock: a test
    /// descheduled between two TSC reads would otherwise see a slower scavenger).
    fn sample(ctx: &mut ThreadCtx, elapsed_ticks: u64) {
        let start = 1_000_000;
        assert!(!on_sample_at(ctx, start));
        assert_eq!(ctx.sample_start, start);
        assert!(on_sample_at(ctx, start + elapsed_ticks));
    }

    #[test]
    fn the_quota_follows_the_measured_yield_interval() {
        let mut ctx = ThreadCtx::new(0);
        init(&mut ctx, 3000, no_hook);
        ctx.sample_start = 0;
        // 2 x quota yields took 10 ticks each.
        let yields = ctx.quota_refill * 2;
        sample(&mut ctx, yields * 10);
        let quota = ctx.quota_refill;
        assert!(
            quota == 300,
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

    /// The cost of one switch, primary and scavenger together, on a machine where a
    /// miss takes `miss` ticks, a switch `switch` and the primary's own work `work`.
    fn time_per_switch(budget: u64, miss: u64, switch: u64, work: u64) -> u64 {
        (budget + switch).max(miss) + work
    }

    /// Runs the controller against the model (with a deterministic +-3% jitter) and
    /// returns the center it settles on and the primary's average slowdown there.
    fn settle(miss: u64, permille: u64) -> (u64, f64) {
        let (switch, work) = (4, 200);
        let mut adaptive = Adaptive::new(permille, 150, 10, 5000);
        let (mut now, mut switches, mut budget) = (1_000u64, 0u64, 150u64);
        let mut jitter = 12345u64;
        let (mut spent, mut baseline) = (0u64, 0u64);
        for i in 0..20_000 {
            let per = time_per_switch(budget, miss, switch, work);
            jitter = jitter
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = (jitter >> 33) % (per * 6 / 100 + 1);
            now += (per - per * 3 / 100 + noise) * SAMPLE_EVERY;
            switches += SAMPLE_EVERY;
            if i >= 10_000 {
                // The primary's part: the switch minus the scavenger's budget, against
                // its time with no harvest at all.
                spent += per - budget.min(miss.saturating_sub(switch));
                baseline += miss + work;
            }
            budget = adaptive.on_window(now, switches);
        }
        (
            adaptive.center_ticks(),
            spent as f64 / baseline as f64 - 1.0,
        )
    }

    #[test]
    fn the_budget_settles_at_the_knee_wherever_it_is() {
        for miss in [170u64, 320, 600] {
            let knee = miss - 4;
            let (center, slowdown) = settle(miss, 20);
            assert!(
                center >= knee * 95 / 100 && center <= knee + knee / 10,
                "miss {miss}: settled at {center}, knee {knee}"
            );
            assert!(slowdown <= 0.03, "miss {miss}: slowdown {slowdown}");
        }
    }

    #[test]
    fn a_larger_allowance_goes_further_past_the_knee() {
        let (strict, _) = settle(320, 5);
        let (loose, _) = settle(320, 200);
        assert!(
            loose > strict + 50,
            "5 permille: {strict}, 200 permille: {loose}"
        );
    }

    #[test]
    fn disturbed_or_short_windows_do_not_move_the_budget() {
        let mut adaptive = Adaptive::new(20, 300, 10, 5000);
        let mut now = 1_000;
        for i in 0..1000u64 {
            // Every reference window is ten times slower than the others: disturbed.
            now += if i % CYCLE as u64 == 0 {
                1_000_000
            } else {
                100_000
            };
            adaptive.on_window(now, i * SAMPLE_EVERY);
        }
        assert_eq!(adaptive.center_ticks(), 300);
        // Too few switches per window: nothing is counted either.
        for i in 0..1000u64 {
            now += 100_000;
            adaptive.on_window(now, i);
        }
        assert_eq!(adaptive.center_ticks(), 300);
    }

    #[test]
    fn the_quota_carries_its_fraction() {
        let mut adaptive = Adaptive::new(20, 300, 10, 5000);
        // 3.25 yields per window on average: 100 ticks at 30.77 ticks per yield.
        let quotas: u64 = (0..400).map(|_| adaptive.quota(100, 16 * 400 / 13)).sum();
        assert_eq!(quotas, 1300);
    }
}
