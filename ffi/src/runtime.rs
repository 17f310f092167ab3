//! C ABI of the harvesting runtime: init, threads, scavengers, statistics.
//! The yields themselves are static inline functions in the header (see the trailer
//! in `cbindgen.toml`): a call into the library would split call/ret across contexts.

use crate::error::{guard, guard_value, msh_status, non_null};
use core::ffi::{c_char, c_void, CStr};
use msh_core::abi;
use msh_core::sched::{self, Config, Error};
use std::cell::Cell;

/// `%fs` offset of the next-scavenger pointer (0 when there is nothing to run).
pub const MSH_TCB_NEXT: usize = 0x38;
/// `%fs` offset of the thread's context block pointer (0 when not an msh thread).
pub const MSH_TCB_THREAD: usize = 0x40;
/// Context block: the running scavenger (NULL while the primary runs).
pub const MSH_CTX_RUNNING: usize = 0;
/// Context block: the primary's saved stack pointer.
pub const MSH_CTX_PRIMARY_SP: usize = 8;
/// Context block: the primary's resume address.
pub const MSH_CTX_PRIMARY_IP: usize = 16;
/// Context block: TSC at the start of a sample run (0 = none under way).
pub const MSH_CTX_SAMPLE_START: usize = 24;
/// Context block: budget per switch in TSC ticks.
pub const MSH_CTX_BUDGET: usize = 32;
/// Context block: scavenger yields left before switching back.
pub const MSH_CTX_QUOTA: usize = 40;
/// Context block: scavenger yields per switch (the calibrated budget).
pub const MSH_CTX_QUOTA_REFILL: usize = 48;
/// Context block: switch counter.
pub const MSH_CTX_SWITCHES: usize = 56;
/// Context block: scavenger yield counter.
pub const MSH_CTX_SCAV_YIELDS: usize = 64;
/// Context block: switches left until the next sample run.
pub const MSH_CTX_SAMPLE_COUNTDOWN: usize = 80;
/// Context block: the calibration function, called on sample runs.
pub const MSH_CTX_CALIBRATE: usize = 88;
/// Context block: the address of this thread's `errno`.
pub const MSH_CTX_ERRNO_ADDR: usize = 104;
/// Context block: the primary's `errno` while a scavenger runs.
pub const MSH_CTX_PRIMARY_ERRNO: usize = 112;
/// Context block: the primary's MXCSR while a scavenger runs.
pub const MSH_CTX_PRIMARY_MXCSR: usize = 116;
/// Context block: the primary's x87 control word while a scavenger runs.
pub const MSH_CTX_PRIMARY_FPUCW: usize = 120;
/// Yield context: saved stack pointer.
pub const MSH_CORO_SP: usize = 0;
/// Yield context: resume address.
pub const MSH_CORO_IP: usize = 8;
/// Yield context: next in the thread's ring.
pub const MSH_CORO_NEXT: usize = 16;

const _: () = {
    use abi::off;
    assert!(MSH_TCB_NEXT == abi::TCB_NEXT && MSH_TCB_THREAD == abi::TCB_THREAD);
    assert!(MSH_CTX_RUNNING == off::RUNNING && MSH_CTX_PRIMARY_SP == off::PRIMARY_SP);
    assert!(MSH_CTX_PRIMARY_IP == off::PRIMARY_IP && MSH_CTX_SAMPLE_START == off::SAMPLE_START);
    assert!(MSH_CTX_BUDGET == off::BUDGET_TICKS && MSH_CTX_QUOTA == off::QUOTA);
    assert!(MSH_CTX_QUOTA_REFILL == off::QUOTA_REFILL && MSH_CTX_SWITCHES == off::SWITCHES);
    assert!(
        MSH_CTX_SCAV_YIELDS == off::SCAV_YIELDS
            && MSH_CTX_SAMPLE_COUNTDOWN == off::SAMPLE_COUNTDOWN
    );
    assert!(MSH_CTX_CALIBRATE == off::CALIBRATE);
    assert!(MSH_CTX_ERRNO_ADDR == off::ERRNO_ADDR && MSH_CTX_PRIMARY_ERRNO == off::PRIMARY_ERRNO);
    assert!(
        MSH_CTX_PRIMARY_MXCSR == off::PRIMARY_MXCSR && MSH_CTX_PRIMARY_FPUCW == off::PRIMARY_FPUCW
    );
    assert!(
        MSH_CORO_SP == off::CORO_SP
            && MSH_CORO_IP == off::CORO_IP
            && MSH_CORO_NEXT == off::CORO_NEXT
    );
};

/// `msh_config.flags`: at shutdown, drop unfinished scavengers instead of running
/// them to completion.
pub const MSH_FLAG_ABANDON_AT_EXIT: u32 = 1;

/// Runtime configuration. Fill it with `msh_config_init`, then change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct msh_config {
    /// Usable bytes of each scavenger stack (16 KiB to 1 GiB; default 64 KiB).
    pub stack_size: usize,
    /// Scavenger slots per primary thread (1..=1024; default 4).
    pub scavengers_per_thread: u32,
    /// How long a scavenger may run per switch, in ns (0..=10^9; default 150): fixed
    /// when `max_slowdown_permille` is 0, else where the search starts. Enforced as a
    /// count of the scavenger's yields, calibrated against the TSC as it runs.
    pub budget_ns: u64,
    /// `MSH_FLAG_*` bits.
    pub flags: u32,
    /// A scavenger that runs this many ms of CPU time without yielding is preempted
    /// and stopped (0..=60000; 0 = no watchdog; default 10).
    pub watchdog_ms: u32,
    /// Find the budget online: the longest that costs the primary at most this many
    /// thousandths of its time (0..=1000; default 0 = fixed `budget_ns`).
    pub max_slowdown_permille: u32,
}

impl From<Config> for msh_config {
    fn from(config: Config) -> Self {
        msh_config {
            stack_size: config.stack_size,
            scavengers_per_thread: config.slots_per_thread as u32,
            budget_ns: config.budget_ns,
            flags: if config.abandon_at_exit {
                MSH_FLAG_ABANDON_AT_EXIT
            } else {
                0
            },
            watchdog_ms: config.watchdog_ms as u32,
            max_slowdown_permille: config.max_slowdown_permille,
        }
    }
}

impl msh_config {
    fn to_core(self) -> Result<Config, msh_status> {
        if self.flags & !MSH_FLAG_ABANDON_AT_EXIT != 0 {
            return Err(msh_status::MSH_ERR_INVALID);
        }
        Ok(Config {
            stack_size: self.stack_size,
            slots_per_thread: self.scavengers_per_thread as usize,
            budget_ns: self.budget_ns,
            abandon_at_exit: self.flags & MSH_FLAG_ABANDON_AT_EXIT != 0,
            watchdog_ms: u64::from(self.watchdog_ms),
            max_slowdown_permille: self.max_slowdown_permille,
        })
    }
}

/// Counters, for one thread or summed over threads.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct msh_stats {
    /// Switches from a primary to a scavenger.
    pub switches: u64,
    /// Budget checks made by scavengers (their yields).
    pub scavenger_yields: u64,
    /// Time spent running scavengers, in ns.
    pub scavenger_ns: u64,
    /// Scavengers that began running.
    pub started: u64,
    /// Scavengers whose function returned (or that called `exit(0)`).
    pub completed: u64,
    /// Threads counted.
    pub threads: u64,
    /// Scavengers msh stopped: a fault in their own code, `exit`/`_exit`/`abort`
    /// called from them, the watchdog.
    pub stopped: u64,
    /// Of those, scavengers the watchdog preempted.
    pub preempted: u64,
    /// The budget per switch now, in ns (found online unless fixed); in totals, the
    /// largest of the threads counted.
    pub budget_ns: u64,
}

impl From<sched::Stats> for msh_stats {
    fn from(s: sched::Stats) -> Self {
        msh_stats {
            switches: s.switches,
            scavenger_yields: s.scav_yields,
            scavenger_ns: s.scav_ns,
            started: s.started,
            completed: s.completed,
            threads: s.threads,
            stopped: s.stopped,
            preempted: s.preempted,
            budget_ns: s.budget_ns,
        }
    }
}

/// A scavenger's body.
pub type msh_scavenger_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

pub(crate) fn status(err: Error) -> msh_status {
    use msh_status::*;
    match err {
        Error::AlreadyInitialized => MSH_ERR_ALREADY_INITIALIZED,
        Error::NotInitialized => MSH_ERR_NOT_INITIALIZED,
        Error::AlreadyRegistered => MSH_ERR_ALREADY_REGISTERED,
        Error::NotRegistered => MSH_ERR_NOT_REGISTERED,
        Error::InScavenger => MSH_ERR_BUSY,
        Error::PoolFull => MSH_ERR_NO_SLOT,
        Error::Invalid => MSH_ERR_INVALID,
        Error::Busy => MSH_ERR_BUSY,
        Error::TcbInUse => MSH_ERR_UNSUPPORTED,
        Error::Os(libc::ENOMEM) => MSH_ERR_NO_MEMORY,
        Error::Os(_) => MSH_ERR_OS,
    }
}

thread_local! {
    /// Set while the thread is registered, so that a thread that exits without
    /// `msh_thread_unregister` still hands its scavengers back.
    static AUTO_UNREGISTER: Cell<Option<Unregister>> = const { Cell::new(None) };
}

struct Unregister;
impl Drop for Unregister {
    fn drop(&mut self) {
        crate::attach::thread_exiting();
        let _ = sched::unregister();
    }
}

/// Fills `config` with the defaults.
///
/// # Safety
/// `config` is NULL or points to writable memory for an `msh_config`.
#[no_mangle]
pub unsafe extern "C" fn msh_config_init(config: *mut msh_config) -> msh_status {
    guard(|| {
        non_null(config)?;
        // SAFETY: non-null, and the caller provides a writable msh_config.
        unsafe { config.write(Config::default().into()) };
        Ok(())
    })
}

/// Starts msh. `config` may be NULL for the defaults.
/// Errors: MSH_ERR_ALREADY_INITIALIZED, MSH_ERR_INVALID.
///
/// # Safety
/// `config` is NULL or points to a valid `msh_config`.
#[no_mangle]
pub unsafe extern "C" fn msh_init(config: *const msh_config) -> msh_status {
    guard(|| {
        let config = if config.is_null() {
            Config::default()
        } else {
            // SAFETY: non-null; the caller provides a readable msh_config.
            unsafe { config.read() }.to_core()?
        };
        sched::init(config).map_err(status)
    })
}

/// Stops msh. If the caller is a primary, its scavengers and the pool first run to
/// completion (unless MSH_FLAG_ABANDON_AT_EXIT) and it is unregistered.
/// Errors: MSH_ERR_NOT_INITIALIZED; MSH_ERR_BUSY while other threads are registered.
#[no_mangle]
pub extern "C" fn msh_shutdown() -> msh_status {
    guard(|| {
        sched::shutdown().map_err(status)?;
        AUTO_UNREGISTER.with(|cell| std::mem::forget(cell.take()));
        Ok(())
    })
}

/// Makes the calling thread a primary: its yields may now run scavengers.
/// Errors: MSH_ERR_NOT_INITIALIZED, MSH_ERR_ALREADY_REGISTERED.
#[no_mangle]
pub extern "C" fn msh_thread_register() -> msh_status {
    guard(|| {
        sched::register().map_err(status)?;
        AUTO_UNREGISTER.with(|cell| cell.set(Some(Unregister)));
        Ok(())
    })
}

/// Ends the calling thread's role as a primary; its unfinished scavengers return
/// to the pool. Happens by itself when a registered thread exits.
/// Errors: MSH_ERR_NOT_REGISTERED; MSH_ERR_BUSY from inside a scavenger.
#[no_mangle]
pub extern "C" fn msh_thread_unregister() -> msh_status {
    guard(|| {
        sched::unregister().map_err(status)?;
        AUTO_UNREGISTER.with(|cell| std::mem::forget(cell.take()));
        Ok(())
    })
}

/// Queues a scavenger that runs `fn(arg)` on its own stack. A scavenger should call
/// `msh_yield()` every few tens of ns of work. When it returns, the next one in the
/// pool takes its slot. Errors: MSH_ERR_NULL, MSH_ERR_NOT_INITIALIZED,
/// MSH_ERR_NO_SLOT (pool full), MSH_ERR_NO_MEMORY.
// `arg` is opaque to msh: it is handed to the scavenger, never dereferenced here.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[no_mangle]
pub extern "C" fn msh_spawn(func: msh_scavenger_fn, arg: *mut c_void) -> msh_status {
    // SAFETY: a NULL name is allowed.
    unsafe { msh_spawn_named(core::ptr::null(), func, arg) }
}

/// As `msh_spawn`, with a name used in diagnostics (e.g. a stack overflow report).
/// `name` may be NULL.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn msh_spawn_named(
    name: *const c_char,
    func: msh_scavenger_fn,
    arg: *mut c_void,
) -> msh_status {
    guard(|| {
        let func = func.ok_or(msh_status::MSH_ERR_NULL)?;
        // SAFETY: a non-null name is a NUL-terminated string (caller's contract).
        let name = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_bytes());
        sched::spawn(func, arg, name).map_err(status)
    })
}

/// Runs the caller's scavengers and the pool until all have finished.
/// Errors: MSH_ERR_NOT_REGISTERED; MSH_ERR_BUSY from inside a scavenger.
#[no_mangle]
pub extern "C" fn msh_run_pending() -> msh_status {
    guard(|| sched::run_pending().map_err(status))
}

/// Scavengers waiting in the pool for a slot.
#[no_mangle]
pub extern "C" fn msh_pending() -> usize {
    guard_value(0, sched::pending)
}

/// The calling thread's counters. Errors: MSH_ERR_NULL, MSH_ERR_NOT_REGISTERED.
///
/// # Safety
/// `out` is NULL or points to writable memory for an `msh_stats`.
#[no_mangle]
pub unsafe extern "C" fn msh_thread_stats(out: *mut msh_stats) -> msh_status {
    guard(|| {
        non_null(out)?;
        let stats = sched::thread_stats().ok_or(msh_status::MSH_ERR_NOT_REGISTERED)?;
        // SAFETY: non-null; the caller provides a writable msh_stats.
        unsafe { out.write(stats.into()) };
        Ok(())
    })
}

/// Counters summed over threads that have unregistered (or exited), plus the caller.
/// Errors: MSH_ERR_NULL.
///
/// # Safety
/// `out` is NULL or points to writable memory for an `msh_stats`.
#[no_mangle]
pub unsafe extern "C" fn msh_global_stats(out: *mut msh_stats) -> msh_status {
    guard(|| {
        non_null(out)?;
        // SAFETY: non-null; the caller provides a writable msh_stats.
        unsafe { out.write(sched::global_stats().into()) };
        Ok(())
    })
}
