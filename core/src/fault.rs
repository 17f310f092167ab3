//! Faults in scavengers. A SIGSEGV, SIGBUS, SIGFPE or SIGILL raised by a scavenger's
//! own code ends that scavenger: the handler (on an alternate signal stack, since the
//! faulting one may be unusable) makes the thread resume, once the handler returns,
//! on the scavenger's stack in a function that names it on stderr and switches back
//! to the primary for good (see `sched::stop`). A stack overflow is such a fault, on
//! the guard page below the stack.
//!
//! Containment is unsafe when the fault is elsewhere (in a shared library, which may
//! hold locks the primary will need, or in msh itself): the handler names the
//! scavenger and aborts. A fault while no scavenger runs is the program's: it goes
//! to the disposition installed before ours, exactly as without msh.

use crate::sched::{self, Error};
use crate::stack::Stack;
use core::mem::MaybeUninit;
use core::ptr;
use spin::Once;

/// The signals a fault raises.
pub(crate) const SIGNALS: [libc::c_int; 4] =
    [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL];

/// The dispositions we replaced, for chaining, in the order of [`SIGNALS`].
static PREVIOUS: [Once<libc::sigaction>; 4] = [Once::new(), Once::new(), Once::new(), Once::new()];

/// Installs the handlers once per process.
pub(crate) fn install() -> Result<(), Error> {
    for (signal, previous) in SIGNALS.iter().zip(&PREVIOUS) {
        let mut result = Ok(());
        previous.call_once(|| {
            let (old, status) =
                set_handler(*signal, on_fault as *const () as usize, libc::SA_ONSTACK);
            result = status;
            old
        });
        result?;
    }
    Ok(())
}

/// Installs `handler` (an `SA_SIGINFO` function) for `signal`; returns the old one.
pub(crate) fn set_handler(
    signal: libc::c_int,
    handler: usize,
    flags: libc::c_int,
) -> (libc::sigaction, Result<(), Error>) {
    // SAFETY: sigaction with a valid handler and out-pointer.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_SIGINFO | flags;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous = MaybeUninit::<libc::sigaction>::zeroed();
        let status = if libc::sigaction(signal, &action, previous.as_mut_ptr()) != 0 {
            Err(Error::Os(*libc::__errno_location()))
        } else {
            Ok(())
        };
        (previous.assume_init(), status)
    }
}

pub(crate) fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        _ => "signal",
    }
}

extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo and ucontext. Everything below is
    // async-signal-safe: reads of this thread's own state, formatting into a stack
    // buffer, write(2), sigaction, and editing the interrupted context.
    unsafe {
        let saved_errno = *libc::__errno_location();
        // A fault the kernel raised (si_code > 0), not a signal someone sent.
        let raised = (*info).si_code > 0;
        let uctx = context.cast::<libc::ucontext_t>();
        let ip = (*uctx).uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
        let sp = (*uctx).uc_mcontext.gregs[libc::REG_RSP as usize] as usize;
        let addr = (*info).si_addr() as usize;
        if raised && sched::stop::fault_in_scavenger(uctx, signal, ip, sp, addr) {
            *libc::__errno_location() = saved_errno;
            return;
        }
        let index = SIGNALS.iter().position(|&s| s == signal).unwrap_or(0);
        chain(&PREVIOUS[index], signal, info, context, raised);
        *libc::__errno_location() = saved_errno;
    }
}

/// Passes a signal that is not ours to the disposition installed before ours.
/// `raised`: the kernel raised it for the instruction at hand (it recurs on return).
///
/// # Safety
/// Called from a signal handler with the handler's own arguments.
pub(crate) unsafe fn chain(
    previous: &Once<libc::sigaction>,
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
    raised: bool,
) {
    let Some(previous) = previous.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    // SAFETY: calling or restoring the disposition that was installed before ours.
    unsafe {
        if handler == libc::SIG_IGN && !raised {
            return;
        }
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // Restore the default. A fault recurs when we return and gets the default
            // action (a core dump); a sent signal is sent again.
            let mut default: libc::sigaction = core::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, ptr::null_mut());
            if !raised {
                resend(signal);
            }
        } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                core::mem::transmute(handler);
            f(signal, info, context);
        } else {
            let f: extern "C" fn(libc::c_int) = core::mem::transmute(handler);
            f(signal);
        }
    }
}

/// Sends `signal` to the calling thread, unblocked.
fn resend(signal: libc::c_int) {
    // SAFETY: plain system calls on this thread.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signal);
    }
}

/// Ends the process with SIGABRT, whatever `abort` is interposed with and whatever
/// handler the program installed for SIGABRT.
pub(crate) fn fatal() -> ! {
    // SAFETY: restoring the default disposition and signalling ourselves.
    unsafe {
        let mut default: libc::sigaction = core::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGABRT, &default, ptr::null_mut());
        resend(libc::SIGABRT);
        loop {
            libc::syscall(libc::SYS_exit_group, 134);
        }
    }
}

/// The executable segment of the loaded object that contains `addr`, as
/// `(start, end)`; `(0, 0)` when none does.
pub(crate) fn text_containing(addr: usize) -> (usize, usize) {
    struct Search {
        addr: usize,
        found: (usize, usize),
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for each loaded object, and
        // `data` is the Search below.
        unsafe {
            let search = &mut *data.cast::<Search>();
            let info = &*info;
            for i in 0..info.dlpi_phnum as usize {
                let phdr = &*info.dlpi_phdr.add(i);
                if phdr.p_type != libc::PT_LOAD || phdr.p_flags & libc::PF_X == 0 {
                    continue;
                }
                let start = info.dlpi_addr as usize + phdr.p_vaddr as usize;
                let end = start + phdr.p_memsz as usize;
                if (start..end).contains(&search.addr) {
                    search.found = (start, end);
                    return 1;
                }
            }
            0
        }
    }
    let mut search = Search {
        addr,
        found: (0, 0),
    };
    // SAFETY: the callback only reads what it is given.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    search.found
}

/// A thread's alternate signal stack, installed by msh when the thread had none.
pub(crate) struct AltStack {
    stack: Stack,
}

impl AltStack {
    const SIZE: usize = 64 * 1024;

    pub(crate) fn install_if_missing() -> Option<AltStack> {
        // SAFETY: sigaltstack with valid pointers.
        unsafe {
            let mut current = MaybeUninit::<libc::stack_t>::zeroed();
            if libc::sigaltstack(ptr::null(), current.as_mut_ptr()) != 0 {
                return None;
            }
            if current.assume_init().ss_flags & libc::SS_DISABLE == 0 {
                return None; // the thread has its own
            }
            let stack = Stack::new(Self::SIZE).ok()?;
            let new = libc::stack_t {
                ss_sp: (stack.top() as usize - stack.usable()) as *mut libc::c_void,
                ss_flags: 0,
                ss_size: stack.usable(),
            };
            if libc::sigaltstack(&new, ptr::null_mut()) != 0 {
                return None;
            }
            Some(AltStack { stack })
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: disabling the alternate stack we installed, before unmapping it.
        unsafe {
            let disable = libc::stack_t {
                ss_sp: ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&disable, ptr::null_mut());
        }
        let _ = &self.stack;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_a_function_is_found_and_data_has_none() {
        let code = text_containing(
            the_text_of_a_function_is_found_and_data_has_none as *const () as usize,
        );
        assert!(code.0 < code.1, "{code:?}");
        let on_stack = 0u8;
        assert_eq!(text_containing(&on_stack as *const u8 as usize), (0, 0));
    }
}
