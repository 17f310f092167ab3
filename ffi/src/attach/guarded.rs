//! Running code that may try to end the process — a scavenger object's constructors
//! and init functions — so that it cannot. The code runs on a coroutine of its own;
//! if it calls `exit`, `_exit` or `abort` (libmsh interposes them), the coroutine is
//! abandoned and the caller gets an error naming the call.
//!
//! An abandoned coroutine never resumes: its stack is leaked, and whatever it held
//! stays held. For a constructor that is the dynamic loader's lock, which glibc holds
//! (recursively, for the main thread) while constructors run: afterwards `dlopen`
//! and `dlsym` from other threads would block, so the line that did it is named.

use msh_core::abi::Coro;
use msh_core::arch;
use msh_core::stack::Stack;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Stack of the coroutine: constructors may be deep.
const STACK_SIZE: usize = 1 << 20;

struct Call {
    caller: Coro,
    callee: Coro,
    job: Option<Box<dyn FnOnce()>>,
    /// Why the job did not return.
    ended: Option<String>,
}

thread_local! {
    static CURRENT: Cell<*mut Call> = const { Cell::new(core::ptr::null_mut()) };
}

/// Runs `job` on a coroutine and returns its result, or why it did not return.
pub fn run<T: 'static>(job: impl FnOnce() -> T + 'static) -> Result<T, String> {
    let result: Box<Cell<Option<T>>> = Box::new(Cell::new(None));
    let slot: *const Cell<Option<T>> = &*result;
    let stack = Stack::new(STACK_SIZE).map_err(|e| format!("cannot map a stack: {e}"))?;
    let mut call = Box::new(Call {
        caller: Coro::empty(),
        callee: Coro::empty(),
        // SAFETY (of the deref): `result` outlives the coroutine's run.
        job: Some(Box::new(move || unsafe { (*slot).set(Some(job())) })),
        ended: None,
    });
    let arg = &mut *call as *mut Call as *mut ();
    // SAFETY: a fresh stack; `trampoline` never returns.
    call.callee.sp = unsafe { arch::init_stack(stack.top(), trampoline, arg) };
    call.callee.ip = arch::coro_entry_ip();
    let previous = CURRENT.with(|c| c.replace(&mut *call));
    // SAFETY: `callee` was laid out by init_stack; the coroutine switches back to
    // `caller` when the job returns or is abandoned.
    unsafe { arch::switch(&mut call.caller, &call.callee) };
    CURRENT.with(|c| c.set(previous));
    match call.ended.take() {
        None => result
            .take()
            .ok_or_else(|| "the job did not finish".to_string()),
        Some(why) => {
            // Frames on the abandoned stack may still be pointed at: never unmap it.
            std::mem::forget(stack);
            std::mem::forget(result);
            Err(why)
        }
    }
}

unsafe extern "C" fn trampoline(arg: *mut ()) -> ! {
    let call = arg.cast::<Call>();
    // SAFETY: `arg` is the live Call of `run`, which waits for us.
    unsafe {
        if let Some(job) = (*call).job.take() {
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                (*call).ended = Some("it panicked".into());
            }
        }
        arch::switch(&mut (*call).callee, &(*call).caller);
    }
    // Never resumed.
    std::process::abort()
}

/// Whether guarded code is running on this thread.
pub fn active() -> bool {
    CURRENT.with(|c| !c.get().is_null())
}

/// Abandons the guarded code running on this thread, which called `what` (e.g.
/// `exit(3)`): `run` returns the error. Returns only when no guarded code runs.
pub fn escape(what: &str) {
    let call = CURRENT.with(|c| c.replace(core::ptr::null_mut()));
    if call.is_null() {
        return;
    }
    // SAFETY: `call` is the live Call whose coroutine we are running on.
    unsafe {
        (*call).ended = Some(format!("it called {what}"));
        arch::switch(&mut (*call).callee, &(*call).caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_returns_its_value() {
        assert_eq!(run(|| 6 * 7), Ok(42));
        assert!(!active());
    }

    #[test]
    fn an_escaping_job_is_abandoned_and_named() {
        let result = run(|| {
            escape("exit(3)");
            unreachable!("escape returned inside a guarded job")
        });
        assert_eq!(result, Err::<(), _>("it called exit(3)".to_string()));
        assert!(!active());
        escape("exit(0)"); // nothing guarded: returns
    }
}
