//! The watchdog: a scavenger that does not yield within an interval is preempted,
//! as Go's runtime preempts goroutines since 1.14.
//!
//! Each primary thread has a periodic timer on its own CPU-time clock
//! (`CLOCK_THREAD_CPUTIME_ID`, delivered to the thread with `SIGEV_THREAD_ID`), so it
//! ticks only while the thread runs: a thread that is descheduled or blocked is never
//! blamed. At each tick the handler looks at the thread's `(running scavenger,
//! switch count)`; the same pair at two ticks in a row means one scavenger run has
//! lasted at least an interval of CPU time. If the thread is then in the scavenger's
//! own code, on its own stack, the run is ended (see `sched::stop`): the scavenger is
//! stopped, not resumed later, because it broke the contract every other scavenger
//! keeps, and resuming it would cost the primary another interval each time. If it is
//! elsewhere (a library call that may hold a lock), the next tick tries again.
//!
//! The signal is SIGURG, as in Go: ignored by default, so a stray one is harmless. A
//! SIGURG that is not our timer's goes to the handler installed before ours.
//! Signals restart interrupted system calls (`SA_RESTART`); the few calls Linux never
//! restarts (`poll`, `epoll_wait`, `nanosleep`, ...) can return `EINTR` if a tick
//! lands just as the thread enters them.

use crate::fault;
use crate::sched::{self, Error};
use core::ptr;
use spin::Once;

/// The timer signal.
pub(crate) const SIGNAL: libc::c_int = libc::SIGURG;
/// `sigev_value` of our timers, to tell their signals from anyone else's.
const MARKER: usize = 0x6d73_685f_7764_6f67;

static PREVIOUS: Once<libc::sigaction> = Once::new();

/// Installs the tick handler once per process.
pub(crate) fn install() -> Result<(), Error> {
    let mut result = Ok(());
    PREVIOUS.call_once(|| {
        let (old, status) = fault::set_handler(
            SIGNAL,
            on_tick as *const () as usize,
            libc::SA_ONSTACK | libc::SA_RESTART,
        );
        result = status;
        old
    });
    result
}

/// A periodic timer on the calling thread's CPU-time clock.
pub(crate) struct Timer(libc::timer_t);

impl Timer {
    /// Starts ticking every `interval_ms` of the calling thread's CPU time.
    pub(crate) fn start(interval_ms: u64) -> Result<Timer, Error> {
        // SAFETY: timer_create/timer_settime with valid arguments; the timer is
        // deleted when the Timer drops.
        unsafe {
            let mut event: libc::sigevent = core::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = SIGNAL;
            event.sigev_value = libc::sigval {
                sival_ptr: MARKER as *mut libc::c_void,
            };
            event.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = ptr::null_mut();
            if libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, &mut timer) != 0 {
                return Err(Error::Os(*libc::__errno_location()));
            }
            let interval = libc::timespec {
                tv_sec: (interval_ms / 1000) as libc::time_t,
                tv_nsec: ((interval_ms % 1000) * 1_000_000) as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: interval,
                it_value: interval,
            };
            if libc::timer_settime(timer, 0, &spec, ptr::null_mut()) != 0 {
                let err = *libc::__errno_location();
                libc::timer_delete(timer);
                return Err(Error::Os(err));
            }
            Ok(Timer(timer))
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: our timer, deleted once; a tick already queued finds the thread
        // unregistered (or not stuck) and does nothing.
        unsafe { libc::timer_delete(self.0) };
    }
}

extern "C" fn on_tick(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext; see `fault::on_fault`
    // for what the handler may do.
    unsafe {
        let saved_errno = *libc::__errno_location();
        let ours =
            (*info).si_code == libc::SI_TIMER && (*info).si_value().sival_ptr as usize == MARKER;
        if ours {
            sched::stop::watchdog_tick(context.cast());
        } else {
            fault::chain(&PREVIOUS, signal, info, context, false);
        }
        *libc::__errno_location() = saved_errno;
    }
}
