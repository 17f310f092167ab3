//! The binary contract between libmsh, code compiled against `msh.h`, and
//! trampolines written by `msh rewrite`. Everything here is `#[repr(C)]` and its
//! offsets are fixed: inline asm in C headers and in rewritten binaries hard-codes them.
//!
//! # Where a thread finds its context
//!
//! Two words of glibc's x86-64 thread control block, `tcbhead_t.unused_vgetcpu_cache[2]`
//! at `%fs:0x38` and `%fs:0x40`, are unused by glibc and zero in every new thread:
//!
//! | slot | holds |
//! |---|---|
//! | `%fs:0x38` ([`TCB_NEXT`]) | the [`Coro`] the primary switches to at its next yield; 0 = nothing to run |
//! | `%fs:0x40` ([`TCB_THREAD`]) | this thread's [`ThreadCtx`]; 0 = not an msh thread |
//! | `%fs:0x80` ([`TCB_SCAV_BUDGET`]) | the yield-check counter of code rewritten with `msh rewrite --scavenger` (below) |
//!
//! So the no-op path of a primary yield is one instruction and a branch,
//! `cmpq $0, %fs:0x38; je skip`, and it is safe when libmsh is not loaded at all.
//! (`%gs` as in the MSH prototype faults when its base is 0, and `rdgsbase` to test it
//! costs 2.7 ns here against 0.46 ns for an `%fs` load.) glibc reuses the TCB of a
//! cached thread stack without clearing these words, so libmsh clears both when a
//! thread it set them on exits.
//!
//! # The primary's yield
//!
//! Every register but `%rsp` is clobbered across a switch, including callee-saved ones:
//! a scavenger is not a callee. The caller saves whatever is live. `%rbp` and `%rbx`
//! are pushed by the sequence itself because Rust cannot list them as clobbers. This
//! is [`crate::arch::primary_yield`] instruction for instruction, with its `const`
//! operands written as the constants they are (`TCB_*`, [`RED_ZONE`] and the
//! offsets in [`off`]):
//! ```text
//!     cmpq  $0, %fs:TCB_NEXT                ; nothing to run (or no libmsh):
//!     je    9f                              ;   fall through
//!     mov   %fs:TCB_THREAD, %rsi            ; %rsi = ThreadCtx
//!     mov   %fs:TCB_NEXT, %rcx              ; %rcx = Coro to run
//!     lea   -RED_ZONE(%rsp), %rsp           ; step over the red zone
//!     push  %rbp
//!     push  %rbx
//!     mov   %rsp, PRIMARY_SP(%rsi)          ; the primary resumes here, at 2
//!     lea   2f(%rip), %rdx
//!     mov   %rdx, PRIMARY_IP(%rsi)
//!     mov   %rcx, RUNNING(%rsi)
//!     incq  SWITCHES(%rsi)
//!     mov   CORO_SP(%rcx), %rsp             ; onto the scavenger's stack
//!     jmp   *CORO_IP(%rcx)
//! 2:  pop   %rbx                            ; a scavenger switched back
//!     pop   %rbp
//!     lea   RED_ZONE(%rsp), %rsp
//! 9:
//! ```
//! Prefetch-and-yield puts a `prefetcht0` before it. The C header's copy
//! (`include/msh.h`) lists `%rbx` as clobbered instead of pushing it. The rewriter's
//! trampolines (`tools/rewrite/src/trampoline.rs`) test the slot without touching
//! live flags or registers, save the live registers themselves, keep the ThreadCtx in
//! `%rax`, and do not yield when they run inside a scavenger.
//!
//! No `call`/`ret` pair is split across contexts, so the return-stack predictor stays
//! aligned.
//!
//! # The scavenger's yield
//! `ThreadCtx::running` is non-null while a scavenger runs. Its yield decrements
//! `quota` and, at zero, switches back to the primary at `PRIMARY_SP`/`PRIMARY_IP`,
//! setting `%fs:0x38` to `running->next` so that the primary's next yield goes round
//! the ring. The budget is a number of scavenger yields, calibrated against the TSC:
//! one switch in [`SAMPLE_EVERY`] is a sample run, timed by a call to `calibrate`.
//! The TSC is never read on the ordinary path, because here a TSC read issued while
//! the primary's prefetch is in flight often waits for it (measured: 4-7x longer on
//! average), which would turn every budget into "until the miss completes".
//!
//! # The rewritten scavenger's yield check
//! `msh rewrite --scavenger` puts a check at function entries, loop headers and inside
//! long straight-line stretches of a scavenger that never calls `msh_yield()`. Each
//! check subtracts the estimated cost of the code up to the next check from a signed
//! per-thread counter that one instruction reaches, and takes its cold path when the
//! counter goes negative:
//! ```text
//!     subq  $COST, %fs:TCB_SCAV_BUDGET
//!     js    cold                            ; cold: the scavenger's yield, then
//!                                           ;   movq $REFILL, %fs:TCB_SCAV_BUDGET
//! ```
//! The slot is the first word of glibc's `tcbhead_t.__glibc_unused2` (kept only for
//! the size of `tcbhead_t`; zero in a new thread, like the two words above). The cold
//! path is the scavenger's yield of [`crate::arch::yield_now`] (it counts one
//! scavenger yield and switches back when the quota is spent), after which it re-arms
//! the counter with the object's refill. Outside msh (`%fs:0x40` zero) or in a primary
//! it does not yield: it sets the counter to `i32::MAX`, so the checks stay one
//! subtraction and a not-taken branch. A scavenger starts with the counter at 0
//! (`scav_entry`), so its first check re-arms it with its own object's refill.
//!
//! # Per-thread state a scavenger shares with its primary
//!
//! A scavenger runs on its primary's thread, so everything the C library or the CPU
//! keeps per thread is shared. What a switch keeps, and why:
//!
//! | state | kept? | how, or why not |
//! |---|---|---|
//! | general registers, flags, vector registers | yes | clobbered by the switch; each side's compiler (or trampoline) saves what is live |
//! | `errno` | yes | swapped by the scavenger side (below): a server that checks `errno == EAGAIN` after a yield sees its own |
//! | MXCSR (SSE rounding, exception masks, FTZ/DAZ, sticky exception flags) | yes | swapped by the scavenger side when the two words differ |
//! | x87 control word (precision, rounding) | yes | likewise |
//! | x87 status/tag words | no | x87 arithmetic is rare in x86-64 code, and `fnstenv`/`fldenv` would cost far more than the switch |
//! | direction flag | no need | the SysV ABI has it clear at every call, and a yield is a call site |
//! | signal mask, alternate signal stack | no | changing them costs a system call per switch; a scavenger must not change them |
//! | `%fs` base and the C library's other thread-locals (`uselocale`, `h_errno`, `dlerror`, `strtok`/`rand` state, stdio locks owned) | no | shared by design: a scavenger uses the primary's thread; scavengers must not `uselocale` or leave a lock held across a yield |
//! | thread attributes (CPU affinity, priority, cancellation state, timers) | no | properties of the thread, not of the code running on it |
//!
//! The primary's fast path is untouched: the scavenger does the swap. On resume it
//! stores the primary's `errno`, MXCSR and x87 control word in the [`ThreadCtx`]
//! and loads its own from the top of its stack ([`off::SCAV_SAVE_AREA`] bytes:
//! `errno` at [`off::SAVE_ERRNO`], MXCSR at [`off::SAVE_MXCSR`], control word at
//! [`off::SAVE_FPUCW`]); on the way out it does the reverse. `ldmxcsr`/`fldcw` are
//! issued only when the two sides' words differ. The MXCSR is compared whole, its
//! sticky exception flags (bits 0-5) included: a scavenger's inexact or overflow flag
//! must not appear in the primary's `fetestexcept`, and equal words (the common case)
//! cost no `ldmxcsr`; the C header's inline switch follows the same rule. A fresh
//! scavenger starts with `errno` 0 and its primary's control words; one that ends
//! (returns, faults, exits, is preempted) gives the primary back its own.

use core::ptr;

/// `%fs` offset of glibc's `tcbhead_t.tcb`: the thread control block's own address.
pub const TCB_SELF: usize = 0;
/// `%fs` offset of the pointer to the next coroutine to run (0 = none).
pub const TCB_NEXT: usize = 0x38;
/// `%fs` offset of the pointer to the thread's [`ThreadCtx`] (0 = not an msh thread).
pub const TCB_THREAD: usize = 0x40;
/// `%fs` offset of the signed yield-check counter of rewritten scavenger code (see
/// "The rewritten scavenger's yield check"): `tcbhead_t.__glibc_unused2`, unused by glibc.
pub const TCB_SCAV_BUDGET: usize = 0x80;
/// The counter's value where checks must not yield (outside msh, in a primary).
pub const SCAV_BUDGET_IDLE: i32 = i32::MAX;
/// One switch in this many is a sample run that recalibrates the quota.
pub const SAMPLE_EVERY: u64 = 256;
/// Bytes below `%rsp` that leaf code may use without moving `%rsp` (SysV ABI).
pub const RED_ZONE: usize = 128;

/// A packed yield context: where a suspended coroutine resumes.
#[repr(C)]
#[derive(Debug)]
pub struct Coro {
    /// Stack pointer to restore.
    pub sp: u64,
    /// Address to `jmp` to.
    pub ip: u64,
    /// Next coroutine in the thread's ring (itself when alone).
    pub next: *mut Coro,
}

impl Coro {
    /// A coroutine that has not run yet: no stack, no resume address, no ring.
    pub const fn empty() -> Self {
        Coro {
            sp: 0,
            ip: 0,
            next: ptr::null_mut(),
        }
    }
}

/// The per-thread context block. Only the leading fields are part of the ABI; the
/// runtime keeps its bookkeeping elsewhere.
#[repr(C)]
#[derive(Debug)]
pub struct ThreadCtx {
    /// The scavenger running now; null while the primary runs.
    pub running: *mut Coro,
    /// Where the primary resumes: stack pointer.
    pub primary_sp: u64,
    /// Where the primary resumes: instruction.
    pub primary_ip: u64,
    /// TSC at the start of a sample run; 0 when no sample is being taken.
    pub sample_start: u64,
    /// Budget per switch, in TSC ticks.
    pub budget_ticks: u64,
    /// Scavenger yields left before the running scavenger switches back.
    pub quota: u64,
    /// Scavenger yields per switch: `budget_ticks` / `ticks_per_yield`.
    pub quota_refill: u64,
    /// Switches from the primary to a scavenger.
    pub switches: u64,
    /// Scavenger yields (checks of the budget), whether or not they switched.
    pub scav_yields: u64,
    /// Calibrated cost of one scavenger yield interval, in TSC ticks x 16.
    pub ticks_per_yield_x16: u64,
    /// Switches left until the next sample run.
    pub sample_countdown: u64,
    /// Starts or ends a sample run (`sample_start` says which); called from the yield
    /// sequences with a 16-byte-aligned stack. Never null in a live context.
    pub calibrate: Option<unsafe extern "C" fn(*mut ThreadCtx)>,
    /// Not used by asm: the quota a sample run was given.
    pub sample_yields: u64,
    /// This thread's `errno` (`__errno_location()`), swapped by the scavenger side.
    pub errno_addr: *mut i32,
    /// The primary's `errno` while a scavenger runs.
    pub primary_errno: i32,
    /// The primary's MXCSR while a scavenger runs.
    pub primary_mxcsr: u32,
    /// The primary's x87 control word while a scavenger runs (upper 16 bits zero).
    pub primary_fpucw: u32,
    /// Padding to a multiple of 8 bytes.
    pub reserved: u32,
    /// Called by code rewritten with `msh rewrite --scavenger` at each of its yields
    /// during a sample run (`sample_start` != 0), with a 16-byte-aligned stack: it
    /// measures the yield gaps (`msh run --stats`). Null: not measured.
    pub on_sampled_yield: Option<unsafe extern "C" fn(*mut ThreadCtx)>,
}

impl ThreadCtx {
    /// A context block for a thread not yet switching, with a quota of `budget_ticks`.
    pub const fn new(budget_ticks: u64) -> Self {
        ThreadCtx {
            running: ptr::null_mut(),
            primary_sp: 0,
            primary_ip: 0,
            sample_start: 0,
            budget_ticks,
            quota: 1,
            quota_refill: 1,
            switches: 0,
            scav_yields: 0,
            ticks_per_yield_x16: 0,
            sample_countdown: 1,
            calibrate: None,
            sample_yields: 0,
            errno_addr: ptr::null_mut(),
            primary_errno: 0,
            primary_mxcsr: 0x1f80,
            primary_fpucw: 0x37f,
            reserved: 0,
            on_sampled_yield: None,
        }
    }
}

/// Byte offsets used by hand-written asm, checked against the struct layout below.
pub mod off {
    /// `Coro::sp`.
    pub const CORO_SP: usize = 0;
    /// `Coro::ip`.
    pub const CORO_IP: usize = 8;
    /// `Coro::next`.
    pub const CORO_NEXT: usize = 16;
    /// `ThreadCtx::running`.
    pub const RUNNING: usize = 0;
    /// `ThreadCtx::primary_sp`.
    pub const PRIMARY_SP: usize = 8;
    /// `ThreadCtx::primary_ip`.
    pub const PRIMARY_IP: usize = 16;
    /// `ThreadCtx::sample_start`.
    pub const SAMPLE_START: usize = 24;
    /// `ThreadCtx::budget_ticks`.
    pub const BUDGET_TICKS: usize = 32;
    /// `ThreadCtx::quota`.
    pub const QUOTA: usize = 40;
    /// `ThreadCtx::quota_refill`.
    pub const QUOTA_REFILL: usize = 48;
    /// `ThreadCtx::switches`.
    pub const SWITCHES: usize = 56;
    /// `ThreadCtx::scav_yields`.
    pub const SCAV_YIELDS: usize = 64;
    /// `ThreadCtx::ticks_per_yield_x16`.
    pub const TICKS_PER_YIELD_X16: usize = 72;
    /// `ThreadCtx::sample_countdown`.
    pub const SAMPLE_COUNTDOWN: usize = 80;
    /// `ThreadCtx::calibrate`.
    pub const CALIBRATE: usize = 88;
    /// `ThreadCtx::errno_addr`.
    pub const ERRNO_ADDR: usize = 104;
    /// `ThreadCtx::primary_errno`.
    pub const PRIMARY_ERRNO: usize = 112;
    /// `ThreadCtx::primary_mxcsr`.
    pub const PRIMARY_MXCSR: usize = 116;
    /// `ThreadCtx::primary_fpucw`.
    pub const PRIMARY_FPUCW: usize = 120;
    /// `ThreadCtx::on_sampled_yield`.
    pub const ON_SAMPLED_YIELD: usize = 128;
    /// Bytes a suspended scavenger keeps on top of its stack (`errno`, MXCSR, x87
    /// control word; see the module documentation). A multiple of 16, so that the
    /// stack keeps its alignment.
    pub const SCAV_SAVE_AREA: usize = 16;
    /// Save area: the scavenger's `errno` (4 bytes).
    pub const SAVE_ERRNO: usize = 0;
    /// Save area: the scavenger's MXCSR (4 bytes, `stmxcsr`/`ldmxcsr`).
    pub const SAVE_MXCSR: usize = 4;
    /// Save area: the scavenger's x87 control word (2 bytes, `fnstcw`/`fldcw`).
    pub const SAVE_FPUCW: usize = 8;
}

// The TCB slots are distinct words, and the budget slot lies in glibc's
// `__glibc_unused2` (0x80..0x280 of `tcbhead_t` on x86-64), after `ssp_base` (0x78).
const _: () = {
    assert!(TCB_NEXT != TCB_THREAD && TCB_SCAV_BUDGET != TCB_NEXT);
    assert!(TCB_SCAV_BUDGET != TCB_THREAD && TCB_SCAV_BUDGET.is_multiple_of(8));
    assert!(TCB_SCAV_BUDGET >= 0x80 && TCB_SCAV_BUDGET + 8 <= 0x280);
};

// The asm relies on these: a layout change must fail the build, not corrupt a stack.
const _: () = {
    use memoffset::offset_of;
    assert!(offset_of!(Coro, sp) == off::CORO_SP);
    assert!(offset_of!(Coro, ip) == off::CORO_IP);
    assert!(offset_of!(Coro, next) == off::CORO_NEXT);
    assert!(offset_of!(ThreadCtx, running) == off::RUNNING);
    assert!(offset_of!(ThreadCtx, primary_sp) == off::PRIMARY_SP);
    assert!(offset_of!(ThreadCtx, primary_ip) == off::PRIMARY_IP);
    assert!(offset_of!(ThreadCtx, sample_start) == off::SAMPLE_START);
    assert!(offset_of!(ThreadCtx, budget_ticks) == off::BUDGET_TICKS);
    assert!(offset_of!(ThreadCtx, quota) == off::QUOTA);
    assert!(offset_of!(ThreadCtx, quota_refill) == off::QUOTA_REFILL);
    assert!(offset_of!(ThreadCtx, switches) == off::SWITCHES);
    assert!(offset_of!(ThreadCtx, scav_yields) == off::SCAV_YIELDS);
    assert!(offset_of!(ThreadCtx, ticks_per_yield_x16) == off::TICKS_PER_YIELD_X16);
    assert!(offset_of!(ThreadCtx, sample_countdown) == off::SAMPLE_COUNTDOWN);
    assert!(offset_of!(ThreadCtx, calibrate) == off::CALIBRATE);
    assert!(offset_of!(ThreadCtx, errno_addr) == off::ERRNO_ADDR);
    assert!(offset_of!(ThreadCtx, primary_errno) == off::PRIMARY_ERRNO);
    assert!(offset_of!(ThreadCtx, primary_mxcsr) == off::PRIMARY_MXCSR);
    assert!(offset_of!(ThreadCtx, primary_fpucw) == off::PRIMARY_FPUCW);
    assert!(offset_of!(ThreadCtx, on_sampled_yield) == off::ON_SAMPLED_YIELD);
    // The save area's slots do not overlap and fit in it.
    assert!(off::SAVE_ERRNO + 4 <= off::SAVE_MXCSR);
    assert!(off::SAVE_MXCSR + 4 <= off::SAVE_FPUCW);
    assert!(off::SAVE_FPUCW + 2 <= off::SCAV_SAVE_AREA);
    assert!(off::SCAV_SAVE_AREA.is_multiple_of(16));
};
