//! `msh bench switch`: one one-way switch between two coroutines, msh's jmp-based
//! switch against corosensei's, measured in the same run.

use anyhow::Result;
use corosensei::Coroutine;
use msh_core::abi::Coro;
use msh_core::arch;
use msh_core::stack::Stack;
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct SwitchReport {
    pub msh_ns: f64,
    pub corosensei_ns: f64,
    pub ratio: f64,
    pub round_trips: u64,
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

pub fn run(round_trips: u64, runs: usize) -> Result<SwitchReport> {
    let mut msh = Vec::with_capacity(runs);
    let mut coro = Vec::with_capacity(runs);
    msh_once(round_trips / 10 + 1);
    corosensei_once(round_trips / 10 + 1);
    for _ in 0..runs {
        msh.push(msh_once(round_trips));
        coro.push(corosensei_once(round_trips));
    }
    let msh_ns = crate::examples::median(&mut msh);
    let corosensei_ns = crate::examples::median(&mut coro);
    Ok(SwitchReport {
        msh_ns,
        corosensei_ns,
        ratio: msh_ns / corosensei_ns,
        round_trips,
        runs,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_switches_run_and_give_positive_times() {
        let report = super::run(10_000, 3).unwrap();
        assert!(report.msh_ns > 0.0 && report.corosensei_ns > 0.0);
        assert!(report.ratio.is_finite());
    }
}
