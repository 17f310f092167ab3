//! Idle harvesting (`MSH_HARVEST_IDLE=1`): a primary that would block in
//! `epoll_wait`, `epoll_pwait`, `poll`, `ppoll` or `select` runs its scavengers instead, and asks the
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
//! Before each probe the thread offers its CPU to the kernel (`sched_yield`): a
//! harvesting thread looks busy, and another thread of the server that was woken on
//! the same CPU (memcached's worker while its listener harvests) must not wait for a
//! time slice. With no scavenger to run (all finished) it blocks for real for what is
//! left of the timeout. Calls made by a scavenger itself are passed through.
//! Timeouts finer than a millisecond (`ppoll`, `select`) are rounded up to one, as
//! the kernel may do; `select` still leaves the time not slept in its `timeout`.

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
        if rdtsc().wrapping_sub(last_probe) < interval {
            return true;
        }
        // Offer the CPU first, then probe: on a busy machine the yield may last
        // milliseconds, and the answer must be fresh when the thread is back. The
        // next interval of harvest counts from then, not from before the yield.
        // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
        unsafe { libc::sched_yield() };
        answer = probe();
        last_probe = rdtsc();
        if answer != 0 {
            return false;
        }
        timed_out = deadline.is_some_and(|d| Instant::now() >= d);
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

real_fn!(
    real_ppoll,
    c"ppoll",
    unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int
);
real_fn!(
    real_select,
    c"select",
    unsafe extern "C" fn(
        c_int,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::fd_set,
        *mut libc::timeval,
    ) -> c_int
);

/// A timeout in ms for [`wait`], rounded up.
fn timeout_ms(secs: i64, nanos: i64) -> c_int {
    let ms = (secs.max(0) as u128 * 1000) + (nanos.max(0) as u128).div_ceil(1_000_000);
    ms.min(c_int::MAX as u128) as c_int
}

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

/// # Safety
/// As ppoll(2).
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    let call = real_ppoll();
    // SAFETY: the caller's timeout, read if given.
    let ms = match unsafe { timeout.as_ref() } {
        None => -1,
        Some(t) => timeout_ms(t.tv_sec, t.tv_nsec),
    };
    if ms == 0 || !may_harvest() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { call(fds, nfds, timeout, sigmask) };
    }
    let spec = |ms: c_int| libc::timespec {
        tv_sec: libc::time_t::from(ms / 1000),
        tv_nsec: libc::c_long::from(ms % 1000) * 1_000_000,
    };
    // SAFETY: the caller's arguments, forwarded unchanged but for the timeout.
    wait(
        ms,
        || unsafe { call(fds, nfds, &spec(0), sigmask) },
        |t| unsafe {
            call(
                fds,
                nfds,
                if t < 0 { core::ptr::null() } else { &spec(t) },
                sigmask,
            )
        },
    )
}

/// # Safety
/// As select(2).
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    let call = real_select();
    // SAFETY: the caller's timeout, read if given.
    let ms = match unsafe { timeout.as_ref() } {
        None => -1,
        Some(t) => timeout_ms(t.tv_sec, t.tv_usec.saturating_mul(1000)),
    };
    if ms == 0 || !may_harvest() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { call(nfds, readfds, writefds, exceptfds, timeout) };
    }
    // Each probe that finds nothing clears the sets: every call starts from a copy.
    let sets = [readfds, writefds, exceptfds];
    // SAFETY: the caller's sets, each valid when not null.
    let copies = sets.map(|set| unsafe { set.as_ref().copied() });
    let restore = || {
        for (set, copy) in sets.iter().zip(&copies) {
            if let Some(copy) = copy {
                // SAFETY: `set` is the caller's non-null set the copy was taken from.
                unsafe { **set = *copy };
            }
        }
    };
    let started = Instant::now();
    let timeval = |ms: c_int| libc::timeval {
        tv_sec: libc::time_t::from(ms / 1000),
        tv_usec: libc::suseconds_t::from(ms % 1000) * 1000,
    };
    let result = wait(
        ms,
        || {
            restore();
            let mut zero = timeval(0);
            // SAFETY: the caller's sets and a zero timeout.
            unsafe { call(nfds, readfds, writefds, exceptfds, &mut zero) }
        },
        |t| {
            restore();
            let mut left = timeval(t.max(0));
            let left: *mut libc::timeval = if t < 0 {
                core::ptr::null_mut()
            } else {
                &mut left
            };
            // SAFETY: the caller's sets and what is left of its timeout.
            unsafe { call(nfds, readfds, writefds, exceptfds, left) }
        },
    );
    // Like Linux's select, leave the time not slept in the caller's timeout.
    // SAFETY: the caller's timeout, written if given.
    if let Some(t) = unsafe { timeout.as_mut() } {
        let given = Duration::new(
            t.tv_sec.max(0) as u64,
            (t.tv_usec.clamp(0, 999_999) * 1000) as u32,
        );
        let left = given.saturating_sub(started.elapsed());
        t.tv_sec = left.as_secs() as libc::time_t;
        t.tv_usec = left.subsec_micros() as libc::suseconds_t;
    }
    result
}
