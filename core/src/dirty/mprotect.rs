//! The `mprotect` backend: armed pages are `PROT_READ`; the first write raises
//! `SIGSEGV`, whose handler makes the page writable again and marks it in a bitmap.
//! Works on any kernel, and on private file mappings, at ≈ 6 µs per first write.
//!
//! Limits, inherent to the mechanism:
//! - Every written run becomes its own VMA. The kernel caps a process at
//!   `vm.max_map_count` (65,530 by default); when `mprotect` fails with `ENOMEM`, the
//!   handler makes the whole range writable and the next collection reports every page
//!   of it (safe, never a lost write).
//! - Kernel writes into an armed page (`read(2)` into it) fail with `EFAULT`: no signal.
//! - `MADV_DONTNEED` on an armed page is not seen unless the page is written later.
//! - A mapping placed over the range (`mmap(MAP_FIXED)`) is not detected; an unmapped
//!   range is.
//!
//! The handler is installed with the first tracker and stays; a fault outside every
//! tracked range goes to the disposition it replaced (or the default action). If the
//! program installs its own `SIGSEGV` handler later without chaining, the next tracker
//! creation puts ours back on top, chaining to the program's.

use super::bitmap::{PageBitmap, Protect};
use super::sys;
use super::{Error, Limit, Run, Unavailable};
use crate::os::{self, errno, set_errno};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};

const SEGV_ACCERR: i32 = 2;
/// Tracked ranges the handler can look up, over all mprotect trackers of the process.
const SLOTS: usize = 64;

/// One tracked range as the signal handler sees it. `start == 0` marks a free slot.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    bitmap: AtomicPtr<PageBitmap>,
    /// Set when `mprotect` failed in the handler and the whole range went writable.
    overflowed: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    bitmap: AtomicPtr::new(core::ptr::null_mut()),
    overflowed: AtomicBool::new(false),
};
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
/// Handlers running now; a tracker being destroyed waits for 0 before freeing its bitmap.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
static CLAIM_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// The `SIGSEGV` disposition found when ours was installed.
struct Previous(UnsafeCell<libc::sigaction>);
// SAFETY: written only under INSTALL_LOCK while our handler is not the disposition
// (so it cannot start running), read by the handler afterwards.
unsafe impl Sync for Previous {}
// SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask).
static PREVIOUS: Previous = Previous(UnsafeCell::new(unsafe { core::mem::zeroed() }));
static INSTALL_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Makes `on_sigsegv` the `SIGSEGV` handler, remembering the disposition it replaces.
/// Checked at every tracker creation: if a program installed its own handler over
/// ours, ours goes back on top and chains to it.
fn install_handler() -> Result<(), Error> {
    let _guard = INSTALL_LOCK.lock();
    // SAFETY: zeroed sigactions are valid; sigaction only reads/writes them.
    unsafe {
        let mut current: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, core::ptr::null(), &mut current) != 0 {
            return Err(Error::Os {
                op: "sigaction(SIGSEGV)",
                errno: errno(),
            });
        }
        if current.sa_sigaction == on_sigsegv as *const () as usize {
            return Ok(());
        }
        *PREVIOUS.0.get() = current;
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_sigsegv as *const () as usize;
        // NODEFER: a fault inside a chained handler must not find SIGSEGV blocked.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSEGV, &action, core::ptr::null_mut()) != 0 {
            return Err(Error::Os {
                op: "sigaction(SIGSEGV)",
                errno: errno(),
            });
        }
    }
    Ok(())
}

/// The handler. Async-signal-safe: atomics and `mprotect` only, errno preserved.
extern "C" fn on_sigsegv(signal: i32, info: *mut libc::siginfo_t, context: *mut c_void) {
    let saved_errno = errno();
    IN_HANDLER.fetch_add(1, SeqCst);
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let handled = code == SEGV_ACCERR && resolve(addr);
    IN_HANDLER.fetch_sub(1, SeqCst);
    set_errno(saved_errno);
    if !handled {
        // SAFETY: forwarding the kernel's own arguments.
        unsafe { chain(signal, info, context) };
    }
}

/// Makes the page at `addr` writable and marks it, if a tracker owns it.
fn resolve(addr: usize) -> bool {
    let page = os::page_size();
    for slot in TABLE.iter() {
        let start = slot.start.load(SeqCst);
        if start == 0 || addr < start || addr >= slot.end.load(SeqCst) {
            continue;
        }
        let page_addr = addr & !(page - 1);
        // Writable first, then marked: a collection in between leaves the bit set for
        // the next one, so a writable page is never left unmarked (see `collect`).
        // SAFETY: the page lies in a range the tracker validated as private, writable memory.
        if unsafe {
            libc::mprotect(
                page_addr as *mut c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        } != 0
        {
            // Out of VMAs (vm.max_map_count): give up precision for this range, not safety.
            slot.overflowed.store(true, SeqCst);
            let end = slot.end.load(SeqCst);
            // SAFETY: as above, for the whole tracked range.
            if unsafe {
                libc::mprotect(
                    start as *mut c_void,
                    end - start,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            } != 0
            {
                return false;
            }
            return true;
        }
        let bitmap = slot.bitmap.load(SeqCst);
        // SAFETY: a bitmap outlives its slot: teardown clears the slot and waits for
        // IN_HANDLER to drain before freeing it.
        unsafe { (*bitmap).set((page_addr - start) / page) };
        return true;
    }
    false
}

/// Passes a fault that is not ours to the previous disposition.
///
/// # Safety
/// Arguments as the kernel passed them to `on_sigsegv`.
unsafe fn chain(signal: i32, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: PREVIOUS is immutable once our handler is installed.
    let previous = unsafe { &*PREVIOUS.0.get() };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Restore the default and return: the faulting instruction re-executes and the
        // kernel delivers the default action (a fault cannot be ignored).
        // SAFETY: a zeroed sigaction is SIG_DFL.
        unsafe {
            let default: libc::sigaction = core::mem::zeroed();
            libc::sigaction(signal, &default, core::ptr::null_mut());
        }
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was registered with this signature.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut c_void) =
            unsafe { core::mem::transmute(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: the previous handler was registered with this signature.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute(handler) };
        f(signal);
    }
}

struct TrackedRange {
    start: usize,
    end: usize,
    slot: usize,
    bitmap: Box<PageBitmap>,
}

pub struct Mprotect {
    ranges: Vec<TrackedRange>,
    page: usize,
}

fn protect(start: usize, len: usize, writable: bool) -> Result<(), Error> {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: the ranges were validated as private, writable memory the caller owns.
    let ret = unsafe { libc::mprotect(start as *mut c_void, len, prot) };
    sys::check("mprotect", ret as i64).map(|_| ())
}

impl Mprotect {
    pub fn new(spans: &[(usize, usize)], page: usize) -> Result<Mprotect, Error> {
        install_handler()?;
        let mut tracker = Mprotect {
            ranges: Vec::new(),
            page,
        };
        for &(start, end) in spans {
            let bitmap = Box::new(PageBitmap::new((end - start) / page));
            let _guard = CLAIM_LOCK.lock();
            let slot =
                TABLE
                    .iter()
                    .position(|s| s.start.load(SeqCst) == 0)
                    .ok_or(Error::Invalid(
                        "too many ranges under mprotect tracking (at most 64)",
                    ))?;
            let entry = &TABLE[slot];
            entry
                .bitmap
                .store(&*bitmap as *const PageBitmap as *mut PageBitmap, SeqCst);
            entry.end.store(end, SeqCst);
            entry.overflowed.store(false, SeqCst);
            entry.start.store(start, SeqCst);
            tracker.ranges.push(TrackedRange {
                start,
                end,
                slot,
                bitmap,
            });
        }
        tracker.arm_all()?;
        Ok(tracker)
    }

    pub fn arm_all(&mut self) -> Result<(), Error> {
        for range in &self.ranges {
            TABLE[range.slot].overflowed.store(false, SeqCst);
            range.bitmap.clear();
            protect(range.start, range.end - range.start, false)?;
        }
        Ok(())
    }

    pub fn collect(
        &mut self,
        index: usize,
        from: usize,
        limit: Limit,
        rearm: bool,
        emit: &mut dyn FnMut(Run),
    ) -> Result<Option<usize>, Error> {
        let range = &self.ranges[index];
        let page = self.page;
        if TABLE[range.slot].overflowed.swap(false, SeqCst) {
            // The whole range went writable: every page counts as written.
            range.bitmap.set_range(0, (range.end - range.start) / page);
        }
        let mut reprotect = |start, len| protect(start, len, false);
        let reprotect: Option<Protect<'_>> = rearm.then_some(&mut reprotect);
        range
            .bitmap
            .collect_protected(range.start, page, from, limit, reprotect, emit)
    }

    pub fn teardown(&mut self, _in_owner: bool) {
        // Also in a forked child: its copy of the table points at its copy of the bitmaps.
        for range in &self.ranges {
            let _ = protect(range.start, range.end - range.start, true);
            TABLE[range.slot].start.store(0, SeqCst);
        }
        while IN_HANDLER.load(SeqCst) != 0 {
            core::hint::spin_loop();
        }
        self.ranges.clear(); // frees the bitmaps; a second teardown does nothing
    }
}

impl Drop for Mprotect {
    fn drop(&mut self) {
        self.teardown(true);
    }
}

/// Self-test: the handler installs and a protected page can be written and seen.
pub fn probe() -> Result<(), Unavailable> {
    let page = os::page_size();
    let fail = Unavailable::from_error;
    let scratch = sys::Scratch::new(2 * page).map_err(|e| fail("cannot map a scratch page", e))?;
    let mut tracker = Mprotect::new(&[(scratch.addr, scratch.addr + 2 * page)], page)
        .map_err(|e| fail("cannot install the SIGSEGV handler or mprotect", e))?;
    sys::poke(scratch.ptr(page), 1);
    let mut runs = Vec::new();
    let result = tracker.collect(0, scratch.addr, Limit::NONE, true, &mut |r| runs.push(r));
    tracker.teardown(true);
    result.map_err(|e| fail("mprotect failed", e))?;
    Unavailable::expect_second_page(
        &runs,
        scratch.addr,
        page,
        "self-test: the SIGSEGV handler did not see the write",
    )
}
