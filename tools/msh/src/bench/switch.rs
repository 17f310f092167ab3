//! `msh bench switch`: one one-way switch between two coroutines, msh's jmp-based
//! switch against corosensei's; and a primary→scavenger→primary round trip through
//! msh's scheduler (quota bookkeeping, errno and control words kept) against MSH's
//! own protocol, written here from its description. All measured in the same run,
//! interleaved.

mod round_trip;

use anyhow::{bail, Result};
use corosensei::Coroutine;
use msh_core::abi::Coro;
use msh_core::arch;
use msh_core::stack::Stack;
use msh_profile::stats::median;
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

/// The report of `msh bench switch` (`--json`): medians, in ns.
#[derive(Debug, Serialize)]
pub struct SwitchReport {
    /// One-way msh switch.
    pub msh_ns: f64,
    /// One-way corosensei switch, the baseline.
    pub corosensei_ns: f64,
    /// `msh_ns / corosensei_ns`.
    pub ratio: f64,
    /// Extra cost of a prefetch-and-yield with nothing to run, over a bare prefetch,
    /// in a thread msh does not know.
    pub noop_yield_ns: f64,
    /// The same in a registered primary with no scavengers.
    pub noop_yield_registered_ns: f64,
    /// One primary→scavenger→primary round trip through msh's runtime: the
    /// primary's prefetch-and-yield sequence, the scavenger's `yield_now` with its
    /// quota bookkeeping and the errno/control-word swap (budget 0: every scavenger
    /// yield switches back).
    pub msh_round_trip_ns: f64,
    /// The same round trip with MSH's protocol: a context block reached from the
    /// thread pointer, store `%rsp` and the resume address, load the other side's,
    /// `jmp`; no quota, no errno.
    pub msh_protocol_round_trip_ns: f64,
    /// `msh_round_trip_ns / msh_protocol_round_trip_ns`.
    pub round_trip_ratio: f64,
    /// Round trips per run.
    pub round_trips: u64,
    /// Runs the medians are over.
    pub runs: usize,
}

/// The two ends of the ping-pong, for the coroutine side to find.
struct PingPong {
    main: Coro,
    other: Coro,
}

unsafe extern "C" fn pong(arg: *mut ()) -> ! {
    let ends = arg.cast::<PingPong>();
    loop {
        // SAFETY: `main` holds the resume point stored by the last `switch` to us.
        unsafe { arch::switch(&mut (*ends).other, &(*ends).main) };
    }
}

/// ns per one-way msh switch over `round_trips` round trips.
fn msh_once(round_trips: u64) -> f64 {
    let stack = Stack::new(64 * 1024).expect("cannot map a stack");
    let mut ends = Box::new(PingPong {
        main: Coro::empty(),
        other: Coro::empty(),
    });
    let arg = &mut *ends as *mut PingPong as *mut ();
    // SAFETY: a fresh stack; `pong` never returns.
    ends.other.sp = unsafe { arch::init_stack(stack.top(), pong, arg) };
    ends.other.ip = arch::coro_entry_ip();
    let start = Instant::now();
    for _ in 0..round_trips {
        // SAFETY: `other` holds a resume point on its live stack.
        unsafe { arch::switch(&mut ends.main, &ends.other) };
    }
    let ns = start.elapsed().as_nanos() as f64 / (2 * round_trips) as f64;
    // The coroutine is left suspended; its stack is unmapped when `stack` drops.
    drop(stack);
    ns
}

fn corosensei_once(round_trips: u64) -> f64 {
    let mut coroutine = Coroutine::new(|yielder, ()| loop {
        yielder.suspend(());
    });
    let start = Instant::now();
    for _ in 0..round_trips {
        black_box(coroutine.resume(()));
    }
    let ns = start.elapsed().as_nanos() as f64 / (2 * round_trips) as f64;
    // SAFETY: the closure holds nothing that needs dropping; unwinding its stack is
    // not needed.
    unsafe { coroutine.force_reset() };
    ns
}

/// ns per loop iteration of `prefetch` (+ yield when `with_yield`) over a small array.
fn prefetch_loop(iterations: u64, with_yield: bool) -> f64 {
    let data = [0u64; 64];
    let start = Instant::now();
    for i in 0..iterations {
        let addr = &data[(i % 64) as usize] as *const u64;
        if with_yield {
            arch::prefetch_yield(black_box(addr));
        } else {
            // SAFETY: prefetch never faults.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    black_box(addr).cast(),
                )
            };
        }
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

/// Median extra ns of a no-op prefetch-and-yield over a bare prefetch.
fn noop_yield_cost(iterations: u64, runs: usize) -> f64 {
    let mut extra: Vec<f64> = (0..runs)
        .map(|_| prefetch_loop(iterations, true) - prefetch_loop(iterations, false))
        .collect();
    median(&mut extra)
}

/// Most runs and round trips accepted: beyond these a run takes hours.
const MAX_RUNS: usize = 1000;
const MAX_ROUND_TRIPS: u64 = 10_000_000_000;

/// Runs `msh bench switch`: `runs` runs of `round_trips` round trips each.
pub fn run(round_trips: u64, runs: usize) -> Result<SwitchReport> {
    if !(1..=MAX_RUNS).contains(&runs) {
        bail!("--runs {runs}: expected 1 to {MAX_RUNS}");
    }
    if !(1..=MAX_ROUND_TRIPS).contains(&round_trips) {
        bail!("--round-trips {round_trips}: expected 1 to {MAX_ROUND_TRIPS}");
    }
    let mut msh = Vec::with_capacity(runs);
    let mut coro = Vec::with_capacity(runs);
    let mut sched_rt = Vec::with_capacity(runs);
    let mut protocol_rt = Vec::with_capacity(runs);
    msh_once(round_trips / 10 + 1);
    corosensei_once(round_trips / 10 + 1);
    for _ in 0..runs {
        msh.push(msh_once(round_trips));
        coro.push(corosensei_once(round_trips));
        protocol_rt.push(round_trip::msh_protocol(round_trips)?);
        sched_rt.push(round_trip::msh_runtime(round_trips)?);
    }
    let msh_ns = median(&mut msh);
    let corosensei_ns = median(&mut coro);
    let msh_round_trip_ns = median(&mut sched_rt);
    let msh_protocol_round_trip_ns = median(&mut protocol_rt);
    let noop_yield_ns = noop_yield_cost(round_trips, runs);
    let noop_yield_registered_ns = registered_noop_yield_cost(round_trips, runs)?;
    Ok(SwitchReport {
        msh_ns,
        corosensei_ns,
        ratio: msh_ns / corosensei_ns,
        noop_yield_ns,
        noop_yield_registered_ns,
        msh_round_trip_ns,
        msh_protocol_round_trip_ns,
        round_trip_ratio: msh_round_trip_ns / msh_protocol_round_trip_ns,
        round_trips,
        runs,
    })
}

/// The no-op cost measured in a fresh thread registered as a primary with nothing to run.
fn registered_noop_yield_cost(iterations: u64, runs: usize) -> Result<f64> {
    std::thread::spawn(move || -> Result<f64> {
        use msh_core::sched;
        let ours = !sched::is_initialized();
        if ours {
            sched::init(sched::Config::default()).map_err(|e| anyhow::anyhow!("msh init: {e}"))?;
        }
        sched::register().map_err(|e| anyhow::anyhow!("msh register: {e}"))?;
        let cost = noop_yield_cost(iterations, runs);
        sched::unregister().map_err(|e| anyhow::anyhow!("msh unregister: {e}"))?;
        if ours {
            let _ = sched::shutdown();
        }
        Ok(cost)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_switch_runs_and_gives_positive_times() {
        let report = super::run(10_000, 3).unwrap();
        assert!(report.msh_ns > 0.0 && report.corosensei_ns > 0.0);
        assert!(report.ratio.is_finite());
        assert!(report.msh_round_trip_ns > 0.0 && report.msh_protocol_round_trip_ns > 0.0);
        assert!(report.round_trip_ratio.is_finite());
    }

    #[test]
    fn zero_or_huge_counts_are_refused() {
        assert!(super::run(10, 0)
            .unwrap_err()
            .to_string()
            .contains("--runs 0"));
        assert!(super::run(0, 1).is_err());
        assert!(super::run(u64::MAX, 1).is_err());
    }
}
