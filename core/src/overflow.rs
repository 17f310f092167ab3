//! Reporting a scavenger that overflows its stack. The fault hits the guard page below
//! the stack; a SIGSEGV handler, on an alternate signal stack (the faulting stack is
//! unusable), recognises the running scavenger's guard page, names the scavenger and
//! aborts. Any other SIGSEGV goes to the handler that was installed before ours.

use crate::sched::{running_scavenger, Error};
use crate::stack::Stack;
use core::mem::MaybeUninit;
use core::ptr;
use spin::Once;

/// The SIGSEGV disposition we replaced, for chaining.
static PREVIOUS: Once<libc::sigaction> = Once::new();

/// Installs the reporter once per process.
pub(crate) fn install() -> Result<(), Error> {
    let mut result = Ok(());
    PREVIOUS.call_once(|| {
        // SAFETY: sigaction with a valid handler and out-pointer.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = on_segv as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous = MaybeUninit::<libc::sigaction>::zeroed();
            if libc::sigaction(libc::SIGSEGV, &action, previous.as_mut_ptr()) != 0 {
                result = Err(Error::Os(*libc::__errno_location()));
            }
            previous.assume_init()
        }
    });
    result
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) on a valid buffer; async-signal-safe.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

extern "C" fn on_segv(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; everything below is async-signal-safe
    // (reads of our own state, write(2), abort, sigaction).
    unsafe {
        let addr = (*info).si_addr() as usize;
        let scav = running_scavenger();
        if !scav.is_null() && (*scav).stack().guard_contains(addr) {
            write_stderr(b"msh: scavenger '");
            write_stderr((*scav).name());
            write_stderr(b"' overflowed its stack (");
            let mut digits = [0u8; 20];
            write_stderr(format_decimal((*scav).stack().usable() / 1024, &mut digits));
            write_stderr(b" KiB); give scavengers a larger stack_size\n");
            libc::abort();
        }
        chain(signal, info, context);
    }
}

/// Passes a fault that is not ours to the previous disposition.
unsafe fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    // SAFETY: calling or restoring the disposition that was installed before ours.
    unsafe {
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // Restore the default and return: the faulting instruction runs again and
            // the kernel delivers the default action (a core dump).
            let mut default: libc::sigaction = core::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, ptr::null_mut());
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

fn format_decimal(mut value: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut pos = buf.len();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[pos..];
        }
    }
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
    fn decimal_formatting() {
        let mut buf = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buf), b"0");
        assert_eq!(format_decimal(64, &mut buf), b"64");
        assert_eq!(format_decimal(1_234_567, &mut buf), b"1234567");
    }
}
