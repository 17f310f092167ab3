//! The pthread calls libmsh.so interposes when preloaded. Each resolves the real
//! function with `dlsym(RTLD_NEXT)` once. When msh is not attached they only forward.
//!
//! - `pthread_create`: the new thread becomes a primary with its scavengers.
//! - Blocking calls (mutex lock when contended, condition waits, barrier waits,
//!   join): the primary lends its scavengers to others while it blocks and takes
//!   scavengers back afterwards.

use super::attached;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{
    pthread_attr_t, pthread_barrier_t, pthread_cond_t, pthread_mutex_t, pthread_t, timespec,
};
use msh_core::sched;

/// The next definition of `name` after this library's, cached.
pub(super) fn real(cache: &AtomicUsize, name: &core::ffi::CStr) -> usize {
    let cached = cache.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if found == 0 {
        // Without the real function nothing can work; say which and stop.
        let message = format!(
            "msh: cannot find the real {} (dlsym RTLD_NEXT)\n",
            name.to_string_lossy()
        );
        // SAFETY: write(2) of a valid buffer, then abort.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::abort();
        }
    }
    cache.store(found, Ordering::Relaxed);
    found
}

macro_rules! real_fn {
    ($name:ident, $sym:literal, $ty:ty) => {
        fn $name() -> $ty {
            static CACHE: AtomicUsize = AtomicUsize::new(0);
            // SAFETY: the symbol has this C signature in glibc.
            unsafe { core::mem::transmute::<usize, $ty>(real(&CACHE, $sym)) }
        }
    };
}
pub(super) use real_fn;

type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
real_fn!(
    real_create,
    c"pthread_create",
    unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartRoutine, *mut c_void) -> c_int
);
real_fn!(
    real_mutex_lock,
    c"pthread_mutex_lock",
    unsafe extern "C" fn(*mut pthread_mutex_t) -> c_int
);
real_fn!(
    real_mutex_trylock,
    c"pthread_mutex_trylock",
    unsafe extern "C" fn(*mut pthread_mutex_t) -> c_int
);
real_fn!(
    real_cond_wait,
    c"pthread_cond_wait",
    unsafe extern "C" fn(*mut pthread_cond_t, *mut pthread_mutex_t) -> c_int
);
real_fn!(
    real_cond_timedwait,
    c"pthread_cond_timedwait",
    unsafe extern "C" fn(*mut pthread_cond_t, *mut pthread_mutex_t, *const timespec) -> c_int
);
real_fn!(
    real_barrier_wait,
    c"pthread_barrier_wait",
    unsafe extern "C" fn(*mut pthread_barrier_t) -> c_int
);
real_fn!(
    real_join,
    c"pthread_join",
    unsafe extern "C" fn(pthread_t, *mut *mut c_void) -> c_int
);

struct Start {
    routine: StartRoutine,
    arg: *mut c_void,
}

extern "C" fn thread_start(start: *mut c_void) -> *mut c_void {
    // SAFETY: `start` is the Box made in pthread_create below, handed over once.
    let Start { routine, arg } = *unsafe { Box::from_raw(start.cast::<Start>()) };
    super::become_primary();
    routine(arg)
}

/// # Safety
/// As pthread_create(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut pthread_t,
    attr: *const pthread_attr_t,
    routine: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let create = real_create();
    if !attached() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { create(thread, attr, routine, arg) };
    }
    let start = Box::into_raw(Box::new(Start { routine, arg }));
    // SAFETY: the caller's arguments, with our start routine wrapping theirs.
    let status = unsafe { create(thread, attr, thread_start, start.cast()) };
    if status != 0 {
        // SAFETY: the thread was not created, so the Box is still ours.
        drop(unsafe { Box::from_raw(start) });
    }
    status
}

/// Runs a blocking call with the caller's scavengers lent out.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    if !attached() {
        return call();
    }
    let lent = sched::lend();
    let result = call();
    if lent {
        sched::reclaim();
    }
    result
}

/// # Safety
/// As pthread_mutex_lock(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_mutex_lock(mutex: *mut pthread_mutex_t) -> c_int {
    if attached() {
        // Lend only when the lock is contended: an uncontended lock stays one CAS.
        // SAFETY: the caller's mutex.
        let status = unsafe { real_mutex_trylock()(mutex) };
        if status != libc::EBUSY {
            return status;
        }
    }
    // SAFETY: the caller's mutex.
    blocking(|| unsafe { real_mutex_lock()(mutex) })
}

/// # Safety
/// As pthread_cond_wait(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_cond_wait(
    cond: *mut pthread_cond_t,
    mutex: *mut pthread_mutex_t,
) -> c_int {
    // SAFETY: the caller's arguments.
    blocking(|| unsafe { real_cond_wait()(cond, mutex) })
}

/// # Safety
/// As pthread_cond_timedwait(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_cond_timedwait(
    cond: *mut pthread_cond_t,
    mutex: *mut pthread_mutex_t,
    abstime: *const timespec,
) -> c_int {
    // SAFETY: the caller's arguments.
    blocking(|| unsafe { real_cond_timedwait()(cond, mutex, abstime) })
}

/// # Safety
/// As pthread_barrier_wait(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_barrier_wait(barrier: *mut pthread_barrier_t) -> c_int {
    // SAFETY: the caller's barrier.
    blocking(|| unsafe { real_barrier_wait()(barrier) })
}

/// # Safety
/// As pthread_join(3).
#[no_mangle]
pub unsafe extern "C" fn pthread_join(thread: pthread_t, retval: *mut *mut c_void) -> c_int {
    // SAFETY: the caller's arguments.
    blocking(|| unsafe { real_join()(thread, retval) })
}
