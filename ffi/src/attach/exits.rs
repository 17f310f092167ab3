//! `exit`, `_exit`, `_Exit` and `abort`, interposed: called from a scavenger they end
//! that scavenger, not the process (one line names it, except for `exit(0)`, which
//! is how a program run as a scavenger finishes); called from a scavenger object's
//! constructor or init function they end the loading of that pool line (see
//! `guarded`). Called from anywhere else they are the C library's.
//!
//! For a scavenger object's own calls to reach these, it is opened without
//! `RTLD_DEEPBIND` (see `loader`).

use super::guarded;
use super::interpose::real;
use core::ffi::c_int;
use core::sync::atomic::AtomicUsize;
use msh_core::sched::{self, StopReason};

/// Ends the caller's scavenger or guarded load, if it is in one. Otherwise it
/// allocates nothing and takes no lock: `_exit` must stay async-signal-safe.
fn end_caller(reason: StopReason) {
    if sched::in_scavenger() {
        sched::stop_running(reason);
    }
    if guarded::active() {
        guarded::escape(&match reason {
            StopReason::Exit { call, status } => format!("{call}({status})"),
            _ => "abort()".to_string(),
        });
    }
}

/// # Safety
/// As exit(3).
#[no_mangle]
pub unsafe extern "C" fn exit(status: c_int) -> ! {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    end_caller(StopReason::Exit {
        call: "exit",
        status,
    });
    // SAFETY: glibc's exit has this signature.
    unsafe {
        core::mem::transmute::<usize, unsafe extern "C" fn(c_int) -> !>(real(&REAL, c"exit"))(
            status,
        )
    }
}

/// # Safety
/// As _exit(2).
#[no_mangle]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    end_caller(StopReason::Exit {
        call: "_exit",
        status,
    });
    // SAFETY: glibc's _exit has this signature.
    unsafe {
        core::mem::transmute::<usize, unsafe extern "C" fn(c_int) -> !>(real(&REAL, c"_exit"))(
            status,
        )
    }
}

/// # Safety
/// As _Exit(2).
#[no_mangle]
pub unsafe extern "C" fn _Exit(status: c_int) -> ! {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    end_caller(StopReason::Exit {
        call: "_Exit",
        status,
    });
    // SAFETY: glibc's _Exit has this signature.
    unsafe {
        core::mem::transmute::<usize, unsafe extern "C" fn(c_int) -> !>(real(&REAL, c"_Exit"))(
            status,
        )
    }
}

/// # Safety
/// As abort(3).
#[no_mangle]
pub unsafe extern "C" fn abort() -> ! {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    end_caller(StopReason::Abort);
    // SAFETY: glibc's abort has this signature.
    unsafe { core::mem::transmute::<usize, unsafe extern "C" fn() -> !>(real(&REAL, c"abort"))() }
}
