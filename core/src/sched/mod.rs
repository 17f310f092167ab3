//! The scheduler: each primary thread owns a ring of scavenger slots; a scavenger
//! that finishes is replaced from the shared [`Pool`] by the scavenger itself, on its
//! way out, so the primary's yield path stays a few instructions.
//!
//! All per-thread state lives in a [`Primary`] reached through `%fs:0x40`; it is only
//! touched by code running on that thread (the primary or one of its scavengers,
//! never both at once), so it needs no lock.

pub mod gaps;
mod lending;
pub mod stop;
pub use lending::{lend, reclaim};
pub use stop::{in_scavenger, stop_running, StopReason};

use crate::abi::{Coro, ThreadCtx, TCB_NEXT, TCB_THREAD};
use crate::arch;
use crate::budget;
use crate::pool::{Pool, PoolError};
use crate::stack::{Stack, StackError, DEFAULT_STACK_SIZE};
use crate::tsc;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{compiler_fence, AtomicU64, AtomicUsize, Ordering};

/// A scavenger's body: `func(arg)`, run on its own stack until it returns.
pub type JobFn = unsafe extern "C" fn(*mut c_void);

/// At most this many scavengers wait in the pool.
pub const POOL_CAPACITY: usize = 1 << 16;
/// Default budget per switch: a little under one DRAM miss on these machines (≈165 ns).
pub const DEFAULT_BUDGET_NS: u64 = 150;
/// Default number of scavenger slots per primary thread.
pub const DEFAULT_SLOTS: usize = 4;
/// Most scavenger slots per primary thread accepted: each is a stack, and a ring this
/// long already visits each scavenger rarely.
pub const MAX_SLOTS: usize = 1024;
/// Bytes kept for a scavenger's name (with the terminating NUL).
pub const NAME_LEN: usize = 160;
/// Default watchdog interval: a scavenger that runs this long (CPU time) without
/// yielding is preempted.
pub const DEFAULT_WATCHDOG_MS: u64 = 10;
/// Largest budget accepted: one second per switch.
pub const MAX_BUDGET_NS: u64 = 1_000_000_000;
/// Allowances above this are a fixed budget in disguise.
pub const MAX_SLOWDOWN_PERMILLE: u32 = 1000;
/// The online budget stays within these bounds (ns).
const ADAPTIVE_MIN_NS: u64 = 20;
const ADAPTIVE_MAX_NS: u64 = 5_000;
/// Largest scavenger stack accepted.
pub const MAX_STACK_SIZE: usize = 1 << 30;
/// Largest watchdog interval accepted.
pub const MAX_WATCHDOG_MS: u64 = 60_000;

/// Runtime configuration, fixed between `init` and `shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Usable bytes of each scavenger stack.
    pub stack_size: usize,
    /// Scavenger slots per primary thread.
    pub slots_per_thread: usize,
    /// How long a scavenger may run per switch: fixed, or the starting point when
    /// `max_slowdown_permille` is set.
    pub budget_ns: u64,
    /// Find the budget online (see [`budget::Adaptive`]): the longest that costs the
    /// primary at most this many thousandths of its time. 0 keeps `budget_ns` fixed.
    pub max_slowdown_permille: u32,
    /// At shutdown, drop unfinished scavengers instead of running them to completion.
    pub abandon_at_exit: bool,
    /// Preempt (and stop) a scavenger that runs this many ms of CPU time without
    /// yielding; 0 turns the watchdog off.
    pub watchdog_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stack_size: DEFAULT_STACK_SIZE,
            slots_per_thread: DEFAULT_SLOTS,
            budget_ns: DEFAULT_BUDGET_NS,
            // Opt-in: measured here it did not beat the fixed default (see budget.rs).
            max_slowdown_permille: 0,
            abandon_at_exit: false,
            watchdog_ms: DEFAULT_WATCHDOG_MS,
        }
    }
}

/// Why a runtime call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `init` was called twice without `shutdown`.
    AlreadyInitialized,
    /// The call needs `init` first.
    NotInitialized,
    /// The calling thread is already a primary.
    AlreadyRegistered,
    /// The calling thread is not a primary.
    NotRegistered,
    /// The call is not allowed from inside a scavenger.
    InScavenger,
    /// The pool is full.
    PoolFull,
    /// A configuration value is out of range.
    Invalid,
    /// Threads other than the caller are still registered.
    Busy,
    /// The TCB words msh uses are taken by something else.
    TcbInUse,
    /// mmap/mprotect failed with this errno.
    Os(i32),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::AlreadyInitialized => f.write_str("the runtime is already initialized"),
            Error::NotInitialized => f.write_str("the runtime is not initialized"),
            Error::AlreadyRegistered => f.write_str("this thread is already registered"),
            Error::NotRegistered => f.write_str("this thread is not registered"),
            Error::InScavenger => f.write_str("not allowed inside a scavenger"),
            Error::PoolFull => write!(f, "the scavenger pool is full ({POOL_CAPACITY} waiting)"),
            Error::Invalid => f.write_str("a configuration value is out of range"),
            Error::Busy => f.write_str("other threads are still registered"),
            Error::TcbInUse => write!(
                f,
                "the thread control block words msh uses (%fs:{TCB_NEXT:#x}, \
                 %fs:{TCB_THREAD:#x}) are taken"
            ),
            Error::Os(errno) => write!(f, "cannot map a scavenger stack (errno {errno})"),
        }
    }
}

impl From<StackError> for Error {
    fn from(err: StackError) -> Self {
        match err {
            StackError::Os(errno) => Error::Os(errno),
        }
    }
}

/// Counters, per thread or summed over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Switches from a primary to a scavenger.
    pub switches: u64,
    /// Budget checks made by scavengers.
    pub scav_yields: u64,
    /// Time spent in scavengers.
    pub scav_ns: u64,
    /// Scavengers that began running.
    pub started: u64,
    /// Scavengers whose function returned (or that called `exit(0)`).
    pub completed: u64,
    /// Scavengers stopped by msh: a fault, `exit`/`abort`, the watchdog.
    pub stopped: u64,
    /// Of those, scavengers the watchdog preempted.
    pub preempted: u64,
    /// Threads counted in these figures.
    pub threads: u64,
    /// The budget per switch the thread has now, ns (in totals: the largest).
    pub budget_ns: u64,
}

/// A scavenger coroutine: a yield context, its stack, and what it runs.
#[repr(C)]
pub struct Scavenger {
    /// First, so that a `*mut Coro` in the ring is a `*mut Scavenger`.
    coro: Coro,
    stack: Stack,
    func: JobFn,
    arg: *mut c_void,
    started: bool,
    /// The executable segment holding the scavenger's own code, `(start, end)`:
    /// faults there are contained (see `stop`). `(0, 0)`: none.
    code: (usize, usize),
    name: [u8; NAME_LEN],
    /// Its yield gaps, once a sample run of rewritten code measured one (see `gaps`).
    gaps: Option<Box<gaps::GapHist>>,
}

// SAFETY: a suspended scavenger is a stack and a resume point; it may resume on any
// thread (msh's reallocation). `arg` is the spawner's to make thread-safe.
unsafe impl Send for Scavenger {}

impl Scavenger {
    fn new(
        func: JobFn,
        arg: *mut c_void,
        name: Option<&[u8]>,
        stack_size: usize,
        code: (usize, usize),
    ) -> Result<Box<Self>, Error> {
        let mut scav = Self::with_main(coro_main, func, arg, name, stack_size)?;
        scav.code = code;
        Ok(scav)
    }

    /// A coroutine that starts in `main(self)` rather than in `func(arg)`'s runner.
    fn with_main(
        main: arch::CoroMain,
        func: JobFn,
        arg: *mut c_void,
        name: Option<&[u8]>,
        stack_size: usize,
    ) -> Result<Box<Self>, Error> {
        let stack = Stack::new(stack_size)?;
        let mut scav = Box::new(Scavenger {
            coro: Coro::empty(),
            stack,
            func,
            arg,
            started: false,
            code: (0, 0),
            name: [0; NAME_LEN],
            gaps: None,
        });
        match name {
            Some(name) => {
                let len = name.len().min(NAME_LEN - 1);
                scav.name[..len].copy_from_slice(&name[..len]);
            }
            None => write_fn_name(&mut scav.name, func as usize),
        }
        let arg = &mut *scav as *mut Scavenger as *mut ();
        // SAFETY: the stack is fresh, aligned and deep enough.
        scav.coro.sp = unsafe { arch::init_stack(scav.stack.top(), main, arg) };
        scav.coro.ip = arch::scav_entry_ip();
        Ok(scav)
    }

    /// The name given at spawn, or `fn@0x…`.
    pub fn name(&self) -> &[u8] {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        &self.name[..len]
    }

    /// The scavenger's stack mapping (with its guard page).
    pub fn stack(&self) -> &Stack {
        &self.stack
    }
}

fn write_fn_name(out: &mut [u8; NAME_LEN], addr: usize) {
    let prefix = b"fn@0x";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut pos = prefix.len();
    for shift in (0..16).rev() {
        let digit = (addr >> (shift * 4)) & 0xf;
        if digit != 0 || pos > prefix.len() || shift == 0 {
            out[pos] = b"0123456789abcdef"[digit];
            pos += 1;
        }
    }
}

/// A primary thread's state. `ctx` comes first: `%fs:0x40` points at it.
#[repr(C)]
pub struct Primary {
    ctx: ThreadCtx,
    slots: Vec<Option<Box<Scavenger>>>,
    /// The last scavenger that finished here: freed once we are off its stack.
    zombie: Option<Box<Scavenger>>,
    started: u64,
    completed: u64,
    stopped: u64,
    preempted: u64,
    /// The online budget, when the configuration asks for one.
    adaptive: Option<budget::Adaptive>,
    /// Set while msh's own code runs on a scavenger's behalf (it may hold the pool's
    /// lock or the allocator's): a fault or a tick then is not contained.
    in_runtime: bool,
    /// Why the signal handler redirected the running scavenger to stop (see `stop`).
    pending_stop: Option<StopReason>,
    /// `(running, switches)` at the watchdog's last tick.
    watch_snapshot: (usize, u64),
    watchdog_ms: u64,
    watchdog: Option<crate::watchdog::Timer>,
    altstack: Option<crate::fault::AltStack>,
    /// Runs when another primary has lent scavengers (see `lending`).
    refill_coro: Box<Scavenger>,
    /// TSC after the last sampled yield of rewritten code (see `gaps`).
    last_yield_tsc: u64,
}

static CONFIG: spin::RwLock<Option<Config>> = spin::RwLock::new(None);
static POOL: Pool<Box<Scavenger>> = Pool::new(POOL_CAPACITY);
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

/// Figures of threads that have unregistered.
struct GlobalStats {
    switches: AtomicU64,
    scav_yields: AtomicU64,
    scav_ns: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    stopped: AtomicU64,
    preempted: AtomicU64,
    threads: AtomicU64,
    budget_ns: AtomicU64,
}

static GLOBAL: GlobalStats = GlobalStats {
    switches: AtomicU64::new(0),
    scav_yields: AtomicU64::new(0),
    scav_ns: AtomicU64::new(0),
    started: AtomicU64::new(0),
    completed: AtomicU64::new(0),
    stopped: AtomicU64::new(0),
    preempted: AtomicU64::new(0),
    threads: AtomicU64::new(0),
    budget_ns: AtomicU64::new(0),
};

fn config() -> Result<Config, Error> {
    CONFIG.read().ok_or(Error::NotInitialized)
}

/// Starts the runtime. Calibrates the TSC and installs the fault handlers (and the
/// watchdog's, when it is on).
pub fn init(config: Config) -> Result<(), Error> {
    if config.slots_per_thread == 0
        || config.slots_per_thread > MAX_SLOTS
        || config.budget_ns > MAX_BUDGET_NS
        || config.stack_size > MAX_STACK_SIZE
        || config.watchdog_ms > MAX_WATCHDOG_MS
        || config.max_slowdown_permille > MAX_SLOWDOWN_PERMILLE
    {
        return Err(Error::Invalid);
    }
    let mut slot = CONFIG.write();
    if slot.is_some() {
        return Err(Error::AlreadyInitialized);
    }
    tsc::ticks_per_us();
    crate::fault::install()?;
    if config.watchdog_ms > 0 {
        crate::watchdog::install()?;
    }
    *slot = Some(config);
    Ok(())
}

/// Whether `init` ran (and `shutdown` did not since).
pub fn is_initialized() -> bool {
    CONFIG.read().is_some()
}

/// Stops the runtime. A registered caller first runs the pool dry (unless the
/// configuration abandons scavengers at exit) and is unregistered. Fails with `Busy`
/// while other threads are registered.
pub fn shutdown() -> Result<(), Error> {
    let config = config()?;
    let me = current();
    if !me.is_null() {
        // SAFETY: `me` is this thread's Primary.
        if unsafe { !(*me).ctx.running.is_null() } {
            return Err(Error::InScavenger);
        }
    }
    let others = REGISTERED.load(Ordering::Acquire) - usize::from(!me.is_null());
    if others > 0 {
        return Err(Error::Busy);
    }
    if !me.is_null() {
        if !config.abandon_at_exit {
            run_pending()?;
        }
        unregister()?;
    }
    // Scavengers still here are abandoned: their stacks are unmapped unrun.
    drop(POOL.drain());
    *CONFIG.write() = None;
    Ok(())
}

/// This thread's Primary, or null.
fn current() -> *mut Primary {
    arch::thread_ctx().cast()
}

/// Makes the calling thread a primary: it gets a context block and scavenger slots,
/// filled from the pool.
///
/// The thread must call [`unregister`] before it exits: glibc hands a dead thread's
/// TCB to the next thread it creates without clearing the words msh uses. (The C ABI
/// does this by itself with a thread-local destructor.)
pub fn register() -> Result<(), Error> {
    let config = config()?;
    if !current().is_null() {
        return Err(Error::AlreadyRegistered);
    }
    if !arch::next_coro().is_null() {
        return Err(Error::TcbInUse);
    }
    let mut slots = Vec::with_capacity(config.slots_per_thread);
    slots.resize_with(config.slots_per_thread, || None);
    let mut ctx = ThreadCtx::new(0);
    // SAFETY: __errno_location has no preconditions and returns this thread's errno.
    ctx.errno_addr = unsafe { libc::__errno_location() };
    budget::init(&mut ctx, tsc::ns_to_ticks(config.budget_ns), calibrate);
    ctx.on_sampled_yield = Some(gaps::on_sampled_yield);
    let refill_coro = Scavenger::with_main(
        lending::refill_main,
        no_job,
        ptr::null_mut(),
        Some(b"msh-refill"),
        crate::stack::MIN_STACK_SIZE,
    )?;
    let primary = Box::into_raw(Box::new(Primary {
        ctx,
        slots,
        zombie: None,
        started: 0,
        completed: 0,
        stopped: 0,
        preempted: 0,
        adaptive: (config.max_slowdown_permille > 0).then(|| {
            budget::Adaptive::new(
                u64::from(config.max_slowdown_permille),
                tsc::ns_to_ticks(config.budget_ns),
                tsc::ns_to_ticks(ADAPTIVE_MIN_NS),
                tsc::ns_to_ticks(ADAPTIVE_MAX_NS),
            )
        }),
        in_runtime: false,
        pending_stop: None,
        watch_snapshot: (0, 0),
        watchdog_ms: config.watchdog_ms,
        // Without a timer (none left: EAGAIN) the thread runs unwatched.
        watchdog: (config.watchdog_ms > 0)
            .then(|| crate::watchdog::Timer::start(config.watchdog_ms).ok())
            .flatten(),
        altstack: crate::fault::AltStack::install_if_missing(),
        refill_coro,
        last_yield_tsc: 0,
    }));
    // SAFETY: `primary` stays allocated until `unregister` clears the slots.
    unsafe { arch::set_tcb(primary.cast(), ptr::null_mut()) };
    // SAFETY: just allocated; the refill coroutine lives as long as the Primary.
    lending::join(primary, unsafe { &mut *(*primary).refill_coro });
    REGISTERED.fetch_add(1, Ordering::AcqRel);
    // SAFETY: just installed as this thread's Primary; no scavenger runs yet.
    unsafe { refill(primary) };
    Ok(())
}

/// Whether the calling thread is registered as a primary.
pub fn is_registered() -> bool {
    !current().is_null()
}

/// This thread's Primary, when the caller is a registered primary and not one of its
/// scavengers.
fn current_primary() -> Result<*mut Primary, Error> {
    let me = current();
    if me.is_null() {
        return Err(Error::NotRegistered);
    }
    // SAFETY: `me` is this thread's Primary; reading one field.
    if unsafe { !(*me).ctx.running.is_null() } {
        return Err(Error::InScavenger);
    }
    Ok(me)
}

/// Undoes [`register`]: unfinished scavengers go back to the pool (at its front, so
/// they resume before fresh ones start) and the thread's figures join the totals.
pub fn unregister() -> Result<(), Error> {
    let me = current_primary()?;
    // SAFETY: `me` is this thread's Primary, and we run as the primary, so no
    // scavenger of ours is on a CPU.
    unsafe {
        // No tick may find the Primary half gone.
        drop((*me).watchdog.take());
        lending::leave(me);
        arch::set_tcb(ptr::null_mut(), ptr::null_mut());
        let primary = Box::from_raw(me);
        for scav in primary.slots.into_iter().flatten().rev() {
            POOL.push_front(scav);
        }
        let ctx = &primary.ctx;
        GLOBAL.switches.fetch_add(ctx.switches, Ordering::Relaxed);
        GLOBAL
            .scav_yields
            .fetch_add(ctx.scav_yields, Ordering::Relaxed);
        GLOBAL.scav_ns.fetch_add(
            tsc::ticks_to_ns(budget::scavenger_ticks(ctx)),
            Ordering::Relaxed,
        );
        GLOBAL.started.fetch_add(primary.started, Ordering::Relaxed);
        GLOBAL
            .completed
            .fetch_add(primary.completed, Ordering::Relaxed);
        GLOBAL.stopped.fetch_add(primary.stopped, Ordering::Relaxed);
        GLOBAL
            .preempted
            .fetch_add(primary.preempted, Ordering::Relaxed);
        GLOBAL.threads.fetch_add(1, Ordering::Relaxed);
        GLOBAL
            .budget_ns
            .fetch_max(tsc::ticks_to_ns(ctx.budget_ticks), Ordering::Relaxed);
        drop(primary.zombie);
        drop(primary.altstack);
    }
    REGISTERED.fetch_sub(1, Ordering::AcqRel);
    Ok(())
}

/// Queues a scavenger running `func(arg)`. If the caller is a primary (not one of its
/// scavengers) with a free slot, it starts at the caller's next yield.
pub fn spawn(func: JobFn, arg: *mut c_void, name: Option<&[u8]>) -> Result<(), Error> {
    spawn_with_code(func, arg, name, func as usize)
}

/// As [`spawn`], for a scavenger whose own code is the loaded object containing
/// `code` rather than `func`'s (a wrapper that calls into it): a fault in that
/// object's text is contained, a fault anywhere else aborts.
pub fn spawn_with_code(
    func: JobFn,
    arg: *mut c_void,
    name: Option<&[u8]>,
    code: usize,
) -> Result<(), Error> {
    spawn_with_code_range(func, arg, name, crate::fault::text_containing(code))
}

/// As [`spawn_with_code`], for code the dynamic loader does not know (an executable
/// libmsh mapped itself): `code` is its executable segment, `(start, end)`.
pub fn spawn_with_code_range(
    func: JobFn,
    arg: *mut c_void,
    name: Option<&[u8]>,
    code: (usize, usize),
) -> Result<(), Error> {
    let config = config()?;
    let scav = Scavenger::new(func, arg, name, config.stack_size, code)?;
    POOL.push(scav)
        .map_err(|(PoolError::Full, _)| Error::PoolFull)?;
    let me = current();
    // SAFETY: `me` is this thread's Primary; refilling from the primary is safe.
    unsafe {
        if !me.is_null() && (*me).ctx.running.is_null() {
            refill(me);
        }
    }
    Ok(())
}

/// Scavengers waiting in the pool.
pub fn pending() -> usize {
    POOL.len()
}

/// Runs this primary's scavengers, and any in the pool, until all have finished.
pub fn run_pending() -> Result<(), Error> {
    let me = current_primary()?;
    // SAFETY: `me` is this thread's Primary and we run as the primary.
    unsafe {
        loop {
            refill(me);
            if arch::next_coro().is_null() {
                return Ok(());
            }
            arch::primary_yield();
        }
    }
}

/// Runs this primary's scavengers, and any in the pool, while `go_on()` holds (it
/// is asked between switches). Returns whether all finished. A scavenger that does
/// not yield holds this up until the watchdog stops it.
pub fn run_pending_while(mut go_on: impl FnMut() -> bool) -> Result<bool, Error> {
    let me = current_primary()?;
    // SAFETY: `me` is this thread's Primary and we run as the primary.
    unsafe {
        loop {
            refill(me);
            if arch::next_coro().is_null() {
                return Ok(true);
            }
            if !go_on() {
                return Ok(false);
            }
            arch::primary_yield();
        }
    }
}

/// Calls `visit` with the name of every unfinished scavenger of this thread and of
/// the pool.
pub fn for_each_unfinished(mut visit: impl FnMut(&[u8])) {
    let me = current();
    if !me.is_null() {
        // SAFETY: `me` is this thread's Primary; we only read its slots.
        for scav in unsafe { (*me).slots.iter().flatten() } {
            visit(scav.name());
        }
    }
    POOL.for_each(|scav| visit(scav.name()));
}

/// Figures of the calling thread, or `None` if it is not a primary.
pub fn thread_stats() -> Option<Stats> {
    let me = current();
    if me.is_null() {
        return None;
    }
    // SAFETY: `me` is this thread's Primary; we only read.
    let primary = unsafe { &*me };
    let ctx = &primary.ctx;
    Some(Stats {
        switches: ctx.switches,
        scav_yields: ctx.scav_yields,
        scav_ns: tsc::ticks_to_ns(budget::scavenger_ticks(ctx)),
        started: primary.started,
        completed: primary.completed,
        stopped: primary.stopped,
        preempted: primary.preempted,
        threads: 1,
        budget_ns: tsc::ticks_to_ns(
            primary
                .adaptive
                .as_ref()
                .map_or(ctx.budget_ticks, |a| a.center_ticks()),
        ),
    })
}

/// Totals over the threads that have unregistered, plus the caller if registered.
pub fn global_stats() -> Stats {
    let mine = thread_stats().unwrap_or_default();
    Stats {
        switches: GLOBAL.switches.load(Ordering::Relaxed) + mine.switches,
        scav_yields: GLOBAL.scav_yields.load(Ordering::Relaxed) + mine.scav_yields,
        scav_ns: GLOBAL.scav_ns.load(Ordering::Relaxed) + mine.scav_ns,
        started: GLOBAL.started.load(Ordering::Relaxed) + mine.started,
        completed: GLOBAL.completed.load(Ordering::Relaxed) + mine.completed,
        stopped: GLOBAL.stopped.load(Ordering::Relaxed) + mine.stopped,
        preempted: GLOBAL.preempted.load(Ordering::Relaxed) + mine.preempted,
        threads: GLOBAL.threads.load(Ordering::Relaxed) + mine.threads,
        budget_ns: GLOBAL.budget_ns.load(Ordering::Relaxed).max(mine.budget_ns),
    }
}

/// Fills empty slots from the pool and relinks the ring.
///
/// # Safety
/// `me` is the calling thread's Primary and the caller runs as the primary.
unsafe fn refill(me: *mut Primary) {
    // SAFETY: guaranteed by the caller.
    let primary = unsafe { &mut *me };
    fill_slots(primary);
    let keep = arch::next_coro();
    let next = relink(primary, keep);
    // SAFETY: `next` is null or a scavenger in this thread's ring.
    unsafe { arch::set_next_coro(next) };
}

/// Moves scavengers from the pool into empty slots.
fn fill_slots(primary: &mut Primary) {
    for slot in primary.slots.iter_mut().filter(|slot| slot.is_none()) {
        match POOL.pop() {
            Some(scav) => *slot = Some(scav),
            None => break,
        }
    }
}

/// The refill coroutine's job: it never runs one.
unsafe extern "C" fn no_job(_: *mut c_void) {}

/// Links the occupied slots into a ring and returns who runs next: `prefer` if it is
/// still in the ring, else the first.
fn relink(primary: &mut Primary, prefer: *mut Coro) -> *mut Coro {
    let ring: Vec<*mut Coro> = primary
        .slots
        .iter_mut()
        .flatten()
        .map(|scav| &mut scav.coro as *mut Coro)
        .collect();
    for (i, &coro) in ring.iter().enumerate() {
        // SAFETY: every pointer is a live scavenger in our slots.
        unsafe { (*coro).next = ring[(i + 1) % ring.len()] };
    }
    // A refill coroutine poked in by a lender is replaced by the ring.
    if ring.contains(&prefer) {
        prefer
    } else {
        ring.first().copied().unwrap_or(ptr::null_mut())
    }
}

/// Called by the yield sequences on sample runs (see `budget`). When a sample run
/// ends the thread is in Rust anyway, so it also takes scavengers lent by blocked
/// primaries.
///
/// # Safety
/// `ctx` is the calling thread's context block, which heads its Primary.
unsafe extern "C" fn calibrate(ctx: *mut ThreadCtx) {
    // SAFETY: guaranteed by the caller; only this thread touches its Primary, and a
    // sample run ends inside one of its scavengers. The running scavenger's errno is
    // kept across the Rust code (an allocation may set it).
    unsafe {
        let me = ctx.cast::<Primary>();
        let errno = *(*ctx).errno_addr;
        (*me).in_runtime = true;
        compiler_fence(Ordering::SeqCst);
        if (*ctx).sample_start == 0 {
            // A sample run starts: a window boundary for the online budget.
            if let Some(adaptive) = (*me).adaptive.as_mut() {
                budget::adapt(&mut *ctx, adaptive, crate::arch::rdtsc());
            }
        }
        if budget::on_sample(&mut *ctx) {
            lending::pick_up_lent(me);
        }
        compiler_fence(Ordering::SeqCst);
        (*me).in_runtime = false;
        *(*ctx).errno_addr = errno;
    }
}

/// Where every scavenger begins, on its own stack.
///
/// # Safety
/// Only reached through a switch to a fresh scavenger.
unsafe extern "C" fn coro_main(scav: *mut ()) -> ! {
    let scav = scav.cast::<Scavenger>();
    // SAFETY: the primary switched to us, so %fs:0x40 is its Primary and `scav` is a
    // live scavenger in its ring. After the job returns we may be on another thread.
    unsafe {
        let me = current();
        budget::start_run(&mut (*me).ctx);
        if !(*scav).started {
            (*scav).started = true;
            (*me).started += 1;
        }
        ((*scav).func)((*scav).arg);
        let me = current();
        (*me).in_runtime = true;
        compiler_fence(Ordering::SeqCst);
        retire(me, scav, true)
    }
}

/// A scavenger that has ended (returned, or stopped: see `stop`) leaves its slot to
/// the next in the pool and switches back to the primary for good.
///
/// # Safety
/// Runs on `scav`'s stack, with `me` the current thread's Primary, whose
/// `in_runtime` the caller has set.
unsafe fn retire(me: *mut Primary, scav: *mut Scavenger, completed: bool) -> ! {
    // SAFETY: guaranteed by the caller; the primary is suspended, so we have its
    // state to ourselves.
    unsafe {
        let primary = &mut *me;
        if completed {
            primary.completed += 1;
        }
        gaps::retire(&*scav);
        let index = primary
            .slots
            .iter()
            .position(|slot| slot.as_deref().is_some_and(|s| ptr::eq(s, scav)))
            .expect("a running scavenger is in its thread's slots");
        // We are still on this scavenger's stack: keep it mapped until the next
        // retirement or unregister (the previous zombie's stack is free by now).
        primary.zombie = primary.slots[index].take();
        primary.slots[index] = POOL.pop();
        let after = match &mut primary.slots[index] {
            Some(fresh) => &mut fresh.coro as *mut Coro,
            None => (*scav).coro.next,
        };
        let next = relink(primary, after);
        let ctx = &mut primary.ctx;
        budget::cancel_sample(ctx);
        ctx.running = ptr::null_mut();
        compiler_fence(Ordering::SeqCst);
        primary.in_runtime = false;
        arch::set_next_coro(next);
        arch::resume_primary(&mut primary.ctx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::os::{errno, set_errno};
    use core::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// The runtime is process-global: tests that use it take turns.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    pub(crate) fn fresh_runtime(config: Config) -> std::sync::MutexGuard<'static, ()> {
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if is_registered() {
            unregister().unwrap();
        }
        if is_initialized() {
            let mut slot = CONFIG.write();
            *slot = None;
            drop(POOL.drain());
        }
        init(config).unwrap();
        guard
    }

    struct Counter {
        count: AtomicU64,
        limit: u64,
    }

    unsafe extern "C" fn count_and_yield(arg: *mut c_void) {
        let counter = unsafe { &*(arg as *const Counter) };
        while counter.count.load(Ordering::Relaxed) < counter.limit {
            counter.count.fetch_add(1, Ordering::Relaxed);
            arch::yield_now();
        }
    }

    #[test]
    fn a_scavenger_runs_between_yields_and_finishes() {
        let _rt = fresh_runtime(Config {
            budget_ns: 0,
            ..Config::default()
        });
        register().unwrap();
        let counter = Counter {
            count: AtomicU64::new(0),
            limit: 1000,
        };
        spawn(
            count_and_yield,
            &counter as *const _ as *mut c_void,
            Some(b"counter"),
        )
        .unwrap();
        let mut yields = 0;
        while counter.count.load(Ordering::Relaxed) < counter.limit {
            arch::primary_yield();
            yields += 1;
            assert!(yields < 100_000, "scavenger made no progress");
        }
        let stats = thread_stats().unwrap();
        assert!(stats.switches >= 2, "{stats:?}");
        assert_eq!(stats.started, 1);
        run_pending().unwrap();
        assert_eq!(thread_stats().unwrap().completed, 1);
        assert!(arch::next_coro().is_null());
        unregister().unwrap();
        assert!(arch::thread_ctx().is_null());
    }

    #[test]
    fn finished_scavengers_are_replaced_from_the_pool_round_robin() {
        let _rt = fresh_runtime(Config {
            slots_per_thread: 2,
            budget_ns: 0,
            ..Config::default()
        });
        register().unwrap();
        let counters: Vec<Counter> = (0..5)
            .map(|i| Counter {
                count: AtomicU64::new(0),
                limit: 10 + i,
            })
            .collect();
        for counter in &counters {
            spawn(count_and_yield, counter as *const _ as *mut c_void, None).unwrap();
        }
        assert_eq!(pending(), 3, "two slots filled, three wait");
        run_pending().unwrap();
        for counter in &counters {
            assert_eq!(counter.count.load(Ordering::Relaxed), counter.limit);
        }
        let stats = thread_stats().unwrap();
        assert_eq!((stats.started, stats.completed), (5, 5));
        unregister().unwrap();
    }

    #[test]
    fn unfinished_scavengers_go_back_to_the_pool_and_resume_elsewhere() {
        let _rt = fresh_runtime(Config {
            budget_ns: 0,
            ..Config::default()
        });
        register().unwrap();
        let counter = Counter {
            count: AtomicU64::new(0),
            limit: 50,
        };
        spawn(count_and_yield, &counter as *const _ as *mut c_void, None).unwrap();
        for _ in 0..10 {
            arch::primary_yield();
        }
        let midway = counter.count.load(Ordering::Relaxed);
        assert!(midway > 0 && midway < 50);
        unregister().unwrap();
        assert_eq!(pending(), 1);
        let counter_addr = &counter as *const Counter as usize;
        std::thread::spawn(move || {
            register().unwrap();
            run_pending().unwrap();
            let counter = unsafe { &*(counter_addr as *const Counter) };
            assert_eq!(counter.count.load(Ordering::Relaxed), 50);
            unregister().unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn misuse_is_reported() {
        let _rt = fresh_runtime(Config::default());
        assert_eq!(init(Config::default()), Err(Error::AlreadyInitialized));
        assert_eq!(unregister(), Err(Error::NotRegistered));
        assert_eq!(run_pending(), Err(Error::NotRegistered));
        register().unwrap();
        assert_eq!(register(), Err(Error::AlreadyRegistered));
        unregister().unwrap();
        shutdown().unwrap();
        assert_eq!(register(), Err(Error::NotInitialized));
        assert_eq!(
            init(Config {
                slots_per_thread: 0,
                ..Config::default()
            }),
            Err(Error::Invalid)
        );
    }

    #[test]
    fn every_error_says_what_went_wrong_in_one_line() {
        use std::string::{String, ToString};
        let all = [
            Error::AlreadyInitialized,
            Error::NotInitialized,
            Error::AlreadyRegistered,
            Error::NotRegistered,
            Error::InScavenger,
            Error::PoolFull,
            Error::Invalid,
            Error::Busy,
            Error::TcbInUse,
            Error::Os(libc::ENOMEM),
        ];
        let texts: Vec<String> = all.iter().map(|e| e.to_string()).collect();
        for (err, text) in all.iter().zip(&texts) {
            assert!(
                !text.is_empty() && !text.contains('\n'),
                "{err:?}: {text:?}"
            );
            assert_eq!(texts.iter().filter(|t| *t == text).count(), 1, "{text}");
        }
        assert!(Error::Os(12).to_string().contains("errno 12"));
    }

    static NO_OP_SCAVENGER_RAN: AtomicBool = AtomicBool::new(false);
    unsafe extern "C" fn note_run(_: *mut c_void) {
        NO_OP_SCAVENGER_RAN.store(true, Ordering::Relaxed);
    }

    #[test]
    fn yields_are_no_ops_outside_msh_threads() {
        let _rt = fresh_runtime(Config::default());
        // A scavenger waits in the pool, but this thread never registered: both TCB
        // words are zero, so every kind of yield falls through without running it.
        spawn(note_run, ptr::null_mut(), None).unwrap();
        assert!(arch::thread_ctx().is_null() && arch::next_coro().is_null());
        set_errno(7);
        arch::primary_yield();
        arch::yield_now();
        arch::prefetch_yield(&0u8);
        assert!(
            !NO_OP_SCAVENGER_RAN.load(Ordering::Relaxed),
            "a yield ran a scavenger"
        );
        assert_eq!(pending(), 1, "the scavenger left the pool");
        assert!(arch::thread_ctx().is_null() && arch::next_coro().is_null());
        assert_eq!(errno(), 7, "a no-op yield changed errno");
        assert_eq!(thread_stats(), None);

        // Registered with nothing to run: the primary's yield does not switch.
        drop(POOL.drain());
        register().unwrap();
        assert!(arch::next_coro().is_null());
        set_errno(9);
        arch::primary_yield();
        arch::prefetch_yield(&0u8);
        assert_eq!(thread_stats().unwrap().switches, 0);
        assert_eq!(errno(), 9, "a no-op yield changed errno");
        unregister().unwrap();
        assert!(!NO_OP_SCAVENGER_RAN.load(Ordering::Relaxed));
    }

    static SAW_OTHER_SCAVENGER: AtomicBool = AtomicBool::new(false);
    unsafe extern "C" fn spawn_from_scavenger(_: *mut c_void) {
        spawn(mark, ptr::null_mut(), None).unwrap();
    }
    unsafe extern "C" fn mark(_: *mut c_void) {
        SAW_OTHER_SCAVENGER.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_scavenger_may_spawn_another() {
        let _rt = fresh_runtime(Config::default());
        register().unwrap();
        spawn(spawn_from_scavenger, ptr::null_mut(), None).unwrap();
        run_pending().unwrap();
        assert!(SAW_OTHER_SCAVENGER.load(Ordering::Relaxed));
        assert_eq!(thread_stats().unwrap().completed, 2);
        shutdown().unwrap();
    }

    #[test]
    fn a_blocked_primary_lends_its_scavenger_to_an_idle_one() {
        use std::sync::mpsc;
        let _rt = fresh_runtime(Config {
            budget_ns: 0,
            ..Config::default()
        });
        let counter = Box::leak(Box::new(Counter {
            count: AtomicU64::new(0),
            limit: 2000,
        }));
        let counter_addr = counter as *const Counter as usize;
        let (lent_tx, lent_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        // B: a primary with nothing to run, yielding in its loop.
        let idle = std::thread::spawn(move || {
            register().unwrap();
            ready_tx.send(()).unwrap();
            let counter = unsafe { &*(counter_addr as *const Counter) };
            let mut spins = 0u64;
            while counter.count.load(Ordering::Relaxed) < counter.limit {
                arch::primary_yield();
                spins += 1;
                assert!(spins < 50_000_000, "the lent scavenger never arrived");
            }
            run_pending().unwrap();
            let stats = thread_stats().unwrap();
            unregister().unwrap();
            stats
        });
        ready_rx.recv().unwrap();
        // A: starts the scavenger, then blocks after lending it.
        let busy = std::thread::spawn(move || {
            register().unwrap();
            spawn(count_and_yield, counter_addr as *mut c_void, Some(b"lent")).unwrap();
            for _ in 0..10 {
                arch::primary_yield();
            }
            lent_tx.send(lend()).unwrap();
            done_rx.recv().unwrap(); // "blocked"
            reclaim();
            unregister().unwrap();
        });
        assert!(lent_rx.recv().unwrap(), "A had a scavenger to lend");
        let stats = idle.join().unwrap();
        done_tx.send(()).unwrap();
        busy.join().unwrap();
        assert_eq!(counter.count.load(Ordering::Relaxed), 2000);
        assert_eq!(stats.completed, 1, "B finished A's scavenger: {stats:?}");
        assert_eq!(stats.started, 0, "it had been started on A");
    }

    fn mxcsr() -> u32 {
        let mut value = 0u32;
        // SAFETY: stmxcsr writes 4 bytes to a valid local.
        unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &mut value, options(nostack)) };
        value
    }

    fn set_mxcsr(value: u32) {
        // SAFETY: ldmxcsr of a value with only defined bits (the default's, or flags).
        unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &value, options(nostack)) };
    }

    /// The MXCSR's sticky exception flags (bits 0-5); 0x20 is "inexact".
    const FLAGS: u32 = 0x3f;

    static SCAV_ERRNO_WRONG: AtomicU64 = AtomicU64::new(0);
    static SCAV_FLAGS_LOST: AtomicU64 = AtomicU64::new(0);
    unsafe extern "C" fn errno_scavenger(arg: *mut c_void) {
        let counter = unsafe { &*(arg as *const Counter) };
        // The scavenger's own sticky "inexact" flag, which must stay its own.
        set_mxcsr(mxcsr() | 0x20);
        while counter.count.load(Ordering::Relaxed) < counter.limit {
            let mine = 7000 + counter.count.load(Ordering::Relaxed) as i32;
            set_errno(mine);
            arch::yield_now();
            if errno() != mine {
                SCAV_ERRNO_WRONG.fetch_add(1, Ordering::Relaxed);
            }
            if mxcsr() & 0x20 == 0 {
                SCAV_FLAGS_LOST.fetch_add(1, Ordering::Relaxed);
            }
            counter.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn errno_and_mxcsr_flags_travel_with_each_side_of_a_rust_switch() {
        let _rt = fresh_runtime(Config {
            budget_ns: 0,
            ..Config::default()
        });
        register().unwrap();
        let counter = Counter {
            count: AtomicU64::new(0),
            limit: 20_000,
        };
        set_mxcsr(mxcsr() & !FLAGS);
        spawn(errno_scavenger, &counter as *const _ as *mut c_void, None).unwrap();
        let (mut wrong, mut leaked) = (0, 0);
        for i in 0..10_000 {
            set_errno(100 + i);
            arch::yield_now();
            wrong += i32::from(errno() != 100 + i);
            leaked += u32::from(mxcsr() & FLAGS != 0);
        }
        set_errno(55);
        run_pending().unwrap();
        assert_eq!(errno(), 55, "the finished scavenger gave errno back");
        assert_eq!(wrong, 0, "primary saw another errno");
        assert_eq!(SCAV_ERRNO_WRONG.load(Ordering::Relaxed), 0);
        assert_eq!(
            leaked, 0,
            "the scavenger's inexact flag reached the primary"
        );
        assert_eq!(
            mxcsr() & FLAGS,
            0,
            "the finished scavenger left its flags behind"
        );
        assert_eq!(
            SCAV_FLAGS_LOST.load(Ordering::Relaxed),
            0,
            "the scavenger lost its flag"
        );
        assert!(thread_stats().unwrap().switches >= 10_000);
        unregister().unwrap();
    }

    #[test]
    fn default_names_show_the_function_address() {
        let mut name = [0u8; NAME_LEN];
        write_fn_name(&mut name, 0x55aa_0010);
        assert_eq!(&name[..15], b"fn@0x55aa0010\0\0");
    }
}
