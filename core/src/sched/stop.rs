//! Ending a scavenger before its function returns: a fault in its own code, a call
//! to `exit`/`_exit`/`abort` from it (libmsh interposes them), or the watchdog.
//!
//! Every way ends on the scavenger's own stack, in ordinary (not signal) context, in
//! [`stop_running`]: one line on stderr naming the scavenger and the cause, the
//! counters, and the same exit as a scavenger that returns (its slot is refilled from
//! the pool, its stack freed at the next retirement, the primary resumed where it
//! yielded with its own `errno` and control words). A signal handler gets there by
//! editing the interrupted context: the thread leaves the handler through
//! `sigreturn`, which restores its signal mask and alternate-stack state, straight
//! into [`stopped_from_signal`].

use super::{current, retire, Primary, Scavenger};
use crate::fault;
use core::fmt::{self, Write};
use core::sync::atomic::{compiler_fence, Ordering};

/// Why a scavenger was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A fault in its own code.
    Fault {
        /// SIGSEGV, SIGBUS, SIGFPE or SIGILL.
        signal: i32,
        /// The faulting instruction.
        ip: usize,
        /// The faulting address (`si_addr`).
        addr: usize,
        /// The address is in the guard page below its stack.
        overflow: bool,
    },
    /// It ran for this many ms of CPU time without yielding.
    Preempted {
        /// The watchdog interval.
        watchdog_ms: u64,
    },
    /// It called `call` (`exit`, `_exit` or `_Exit`) with `status`.
    Exit {
        /// The function it called.
        call: &'static str,
        /// The status it passed.
        status: i32,
    },
    /// It called `abort`.
    Abort,
}

/// A line built without allocating (signal handlers use it too).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - 1 - self.len;
        let take = s.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    fn print(mut self) {
        self.buf[self.len] = b'\n';
        // SAFETY: write(2) of our own buffer; async-signal-safe.
        unsafe { libc::write(2, self.buf.as_ptr().cast(), self.len + 1) };
    }
}

/// `msh: scavenger NAME: CAUSE; OUTCOME`
fn report(scav: &Scavenger, reason: &StopReason, outcome: &str) {
    let mut line = Line::new();
    let name = core::str::from_utf8(scav.name()).unwrap_or("?");
    let _ = write!(line, "msh: scavenger {name}: ");
    let _ = match *reason {
        StopReason::Fault {
            signal,
            ip,
            addr,
            overflow,
        } => {
            let _ = write!(
                line,
                "{} at {ip:#x} (addr {addr:#x})",
                fault::signal_name(signal)
            );
            if overflow {
                let _ = write!(
                    line,
                    ", overflowed its stack ({} KiB; give scavengers a larger stack size)",
                    scav.stack().usable() / 1024
                );
            }
            Ok(())
        }
        StopReason::Preempted { watchdog_ms } => write!(
            line,
            "did not yield for {watchdog_ms} ms of CPU time (preempted by the watchdog)"
        ),
        StopReason::Exit { call, status } => write!(line, "called {call}({status})"),
        StopReason::Abort => write!(line, "called abort()"),
    };
    let _ = write!(line, "; {outcome}");
    line.print();
}

/// The scavenger running on this thread, if a scavenger from the slots runs (not
/// the refill coroutine) and msh's own code is not running on its behalf.
fn running_slot_scavenger(me: *mut Primary) -> Option<*mut Scavenger> {
    if me.is_null() {
        return None;
    }
    // SAFETY: `me` is this thread's Primary; reading fields. The handlers that call
    // this interrupt this same thread, and every field read is a single word.
    unsafe {
        let running = (*me).ctx.running.cast::<Scavenger>();
        if running.is_null() {
            return None;
        }
        let in_slots = (*me)
            .slots
            .iter()
            .any(|slot| slot.as_deref().is_some_and(|s| core::ptr::eq(s, running)));
        in_slots.then_some(running)
    }
}

/// Whether the calling code runs in a scavenger (as opposed to a primary, the
/// refill coroutine, or a thread msh does not know).
pub fn in_scavenger() -> bool {
    running_slot_scavenger(current()).is_some()
}

/// Ends the scavenger running on this thread, from its own stack, and resumes the
/// primary. Returns only if no scavenger is running (then nothing happens).
/// `exit(0)` counts as the scavenger's completion and says nothing; anything else
/// prints one line.
pub fn stop_running(reason: StopReason) {
    let me = current();
    let Some(scav) = running_slot_scavenger(me) else {
        return;
    };
    // SAFETY: we run on `scav`'s stack as the running scavenger of `me` (checked),
    // so the primary is suspended and its state is ours.
    unsafe {
        (*me).in_runtime = true;
        compiler_fence(Ordering::SeqCst);
        let completed = matches!(reason, StopReason::Exit { status: 0, .. });
        if !completed {
            report(&*scav, &reason, "scavenger stopped");
            (*me).stopped += 1;
        }
        if matches!(reason, StopReason::Preempted { .. }) {
            (*me).preempted += 1;
        }
        retire(me, scav, completed)
    }
}

/// Where a thread resumes after a handler decided to stop its scavenger.
extern "C" fn stopped_from_signal() -> ! {
    let me = current();
    // SAFETY: the handler stored the reason in this thread's Primary before
    // redirecting us here.
    let reason = unsafe { (*me).pending_stop.take() };
    if let Some(reason) = reason {
        stop_running(reason);
    }
    // Not reachable: the handler only redirects a running slot scavenger.
    fault::fatal()
}

/// The scavenger to stop for a signal interrupting `ip`/`sp`, if containing it is
/// safe: a slot scavenger runs, msh's own code is not running on its behalf, the
/// instruction is in the scavenger's own code and the stack is its own (or the
/// guard page below it).
fn containable(me: *mut Primary, ip: usize, sp: usize) -> Option<*mut Scavenger> {
    let scav = running_slot_scavenger(me)?;
    // SAFETY: reading this thread's Primary and its running scavenger (see above).
    unsafe {
        if (*me).in_runtime {
            return None;
        }
        let (lo, hi) = (*scav).code;
        let stack = (*scav).stack();
        let top = stack.top() as usize;
        let bottom = top - stack.usable() - crate::os::page_size();
        ((lo..hi).contains(&ip) && (bottom..=top).contains(&sp)).then_some(scav)
    }
}

/// Makes the interrupted thread resume in [`stopped_from_signal`] on the top of the
/// scavenger's stack (its frames there are dead).
///
/// # Safety
/// `uctx` is the handler's ucontext for this thread; `scav` the running scavenger.
unsafe fn redirect(
    uctx: *mut libc::ucontext_t,
    me: *mut Primary,
    scav: *mut Scavenger,
    reason: StopReason,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*me).pending_stop = Some(reason);
        // As at a function's entry: %rsp + 8 is 16-byte aligned.
        let sp = ((*scav).stack().top() as usize - 256) & !15;
        let gregs = &mut (*uctx).uc_mcontext.gregs;
        gregs[libc::REG_RSP as usize] = (sp - 8) as i64;
        gregs[libc::REG_RIP as usize] = stopped_from_signal as *const () as usize as i64;
    }
}

/// From the fault handler: stops the scavenger if the fault is its own and can be
/// contained (returns true); aborts with the scavenger named if a scavenger faulted
/// where containing it is unsafe; returns false if no scavenger runs.
///
/// # Safety
/// Called from the fault handler with its ucontext.
pub(crate) unsafe fn fault_in_scavenger(
    uctx: *mut libc::ucontext_t,
    signal: i32,
    ip: usize,
    sp: usize,
    addr: usize,
) -> bool {
    let me = current();
    let Some(running) = running_slot_scavenger(me) else {
        return false;
    };
    // SAFETY: reading the running scavenger's stack bounds.
    let overflow = unsafe { (*running).stack().guard_contains(addr) };
    let reason = StopReason::Fault {
        signal,
        ip,
        addr,
        overflow,
    };
    match containable(me, ip, sp) {
        Some(scav) => {
            // SAFETY: guaranteed by the caller; `scav` runs on this thread.
            unsafe { redirect(uctx, me, scav, reason) };
            true
        }
        None => {
            // SAFETY: as above.
            report(
                unsafe { &*running },
                &reason,
                "not in the scavenger's own code, so it may hold locks the program needs: aborting",
            );
            fault::fatal()
        }
    }
}

/// From the watchdog's handler: stops a scavenger that has run a whole interval
/// without a switch, when that is safe; otherwise the next tick looks again.
///
/// # Safety
/// Called from the watchdog's handler with its ucontext.
pub(crate) unsafe fn watchdog_tick(uctx: *mut libc::ucontext_t) {
    let me = current();
    if me.is_null() {
        return;
    }
    // SAFETY: this thread's Primary; the handler interrupts this thread only.
    unsafe {
        let now = ((*me).ctx.running as usize, (*me).ctx.switches);
        if now.0 == 0 {
            (*me).watch_snapshot = (0, 0);
            return;
        }
        if now != (*me).watch_snapshot {
            (*me).watch_snapshot = now;
            return;
        }
        let gregs = &(*uctx).uc_mcontext.gregs;
        let ip = gregs[libc::REG_RIP as usize] as usize;
        let sp = gregs[libc::REG_RSP as usize] as usize;
        if let Some(scav) = containable(me, ip, sp) {
            (*me).watch_snapshot = (0, 0);
            let watchdog_ms = (*me).watchdog_ms;
            redirect(uctx, me, scav, StopReason::Preempted { watchdog_ms });
        }
    }
}
