//! Idle harvesting (`MSH_HARVEST_IDLE=1`): a primary that would block in
//! `epoll_wait`, `epoll_pwait` or `poll` runs its scavengers instead, and asks the
//! kernel, without blocking, whether its descriptors are ready every
//! [`PROBE_INTERVAL_NS`]. The first ready answer (or an error, or the caller's
//! timeout) returns at once, so the primary gets its CPU back within about one probe
//! interval plus one scavenger budget of its events.
//!
//! ```text
//!   primary: epoll_wait(fd, …, 100 ms)
//!     probe(timeout 0) -> 0 ready
//!     scavenger ─ budget ─> scavenger ─ budget ─> … (5 µs) probe -> 0
//!     scavenger ─ budget ─> …                       probe -> 3 ready: return 3
//! ```
//!
//! After each empty probe the thread offers its CPU to the kernel (`sched_yield`): a
//! harvesting thread looks busy, and another thread of the server that was woken on
//! the same CPU (memcached's worker while its listener harvests) must not wait for a
//! time slice. With no scavenger to run (all finished) it blocks for real for what is
//! left of the timeout. Calls made by a scavenger itself are passed through.

use super::interpose::{real, real_fn};
use core::ffi::c_int;
use core::sync::atomic::AtomicUsize;
use msh_core::{arch::rdtsc, sched, tsc};
use std::time::{Duration, Instant};

/// How often the descriptors are probed while scavengers run. A probe is one system
/// call (~0.3–1 µs here); 5 µs keeps it under a fifth of the harvest and adds a few
/// microseconds to the primary's wake-up, well under a server's request time.
const PROBE_INTERVAL_NS: u64 = 5_000;

/// Whether this call may harvest: attached, asked for, a primary, not a scavenger.
fn may_harvest() -> bool {
    super::attached() && super::harvest_idle() && sched::is_registered() && !sched::in_scavenger()
}

enum Idle {
    /// The probe's non-zero answer (events, or -1 with errno set).
    Answer(c_int),
    /// The timeout passed with nothing ready.
    TimedOut,
    /// No scavenger to run: block for real this long (`None`: forever).
    Block(Option<Duration>),
}

/// Runs scavengers while `probe()` answers 0 and `timeout_ms` (negative: forever)
/// has not passed.
fn harvest(timeout_ms: c_int, mut probe: impl FnMut() -> c_int) -> Idle {
    let started = Instant::now();
    let deadline = (timeout_ms >= 0).then(|| started + Duration::from_millis(timeout_ms as u64));
    let interval = tsc::ns_to_ticks(PROBE_INTERVAL_NS);
    let mut last_probe = rdtsc();
    let mut answer = 0;
    let mut timed_out = false;
    let all_finished = sched::run_pending_while(|| {
        let now = rdtsc();
        if now.wrapping_sub(last_probe) < interval {
            return true;
        }
        last_probe = now;
        answer = probe();
        if answer != 0 {
            return false;
        }
        timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
        unsafe { libc::sched_yield() };
        !timed_out
    });
    match all_finished {
        Ok(false) if answer != 0 => Idle::Answer(answer),
        Ok(false) if timed_out => Idle::TimedOut,
        _ => Idle::Block(deadline.map(|d| d.saturating_duration_since(Instant::now()))),
    }
}

/// The shared shape of the three calls: probe, harvest, or block for real.
fn wait(
    timeout_ms: c_int,
    probe: impl FnMut() -> c_int,
    block: impl FnOnce(c_int) -> c_int,
) -> c_int {
    if timeout_ms == 0 || !may_harvest() {
        return block(timeout_ms);
    }
    let mut probe = probe;
    let first = probe();
    if first != 0 {
        return first;
    }
    match harvest(timeout_ms, probe) {
        Idle::Answer(answer) => answer,
        Idle::TimedOut => 0,
        Idle::Block(None) => block(-1),
        Idle::Block(Some(left)) => block(left.as_millis().min(c_int::MAX as u128) as c_int),
    }
}

real_fn!(
    real_epoll_wait,
    c"epoll_wait",
    unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int
);
real_fn!(
    real_epoll_pwait,
    c"epoll_pwait",
    unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        c_int,
        *const libc::sigset_t,
    ) -> c_int
);
real_fn!(
    real_poll,
    c"poll",
    unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int
);

/// # Safety
/// As epoll_wait(2).
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
) -> c_int {
    let call = real_epoll_wait();
    // SAFETY: the caller's arguments, forwarded unchanged but for the timeout.
    wait(
        timeout,
        || unsafe { call(epfd, events, maxevents, 0) },
        |t| unsafe { call(epfd, events, maxevents, t) },
    )
}

/// # Safety
/// As epoll_pwait(2).
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    let call = real_epoll_pwait();
    // SAFETY: the caller's arguments, forwarded unchanged but for the timeout.
    wait(
        timeout,
        || unsafe { call(epfd, events, maxevents, 0, sigmask) },
        |t| unsafe { call(epfd, events, maxevents, t, sigmask) },
    )
}

/// # Safety
/// As poll(2).
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    let call = real_poll();
    // SAFETY: the caller's arguments, forwarded unchanged but for the timeout.
    wait(
        timeout,
        || unsafe { call(fds, nfds, 0) },
        |t| unsafe { call(fds, nfds, t) },
    )
}
