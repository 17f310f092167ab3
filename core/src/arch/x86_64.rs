//! x86-64 switch code. The sequences follow [`crate::abi`] to the byte; the C header
//! (`include/msh.h`, static inline functions) carries the same sequences for C.
//!
//! A switch never uses `call`/`ret` across contexts: it stores `%rsp` and a resume
//! address, loads the other side's, and `jmp`s. Each side's compiler saves whatever it
//! has live around the asm (all registers but `%rsp` are clobbered; `%rbx` and `%rbp`,
//! which Rust cannot name as clobbers, are pushed by the sequence).
//!
//! Stack of a suspended primary, from `ThreadCtx::primary_sp` up:
//! ```text
//!   primary_sp -> [ saved %rbx ]
//!                 [ saved %rbp ]
//!                 [ 128-byte red zone of the interrupted frame, untouched ]
//!                 [ the primary's frames ... ]
//! ```
//! Stack of a suspended scavenger, from `Coro::sp` up:
//! ```text
//!   sp -> [ save area: errno, MXCSR, x87 control word ]   abi::off::SCAV_SAVE_AREA bytes
//!         [ saved %rbx ]
//!         [ saved %rbp ]
//!         [ 128-byte red zone, untouched ]
//!         [ the scavenger's frames ... ]
//! ```
//! A fresh coroutine's stack (see [`init_stack`]):
//! ```text
//!   sp -> [ arg  ]   16-byte aligned; `coro_entry` loads it into %rdi
//!         [ main ]   and calls main(arg), which never returns
//! ```
//!
//! No offset is written as a number in the asm: every one is a `const` operand taken
//! from [`crate::abi`] (or, for the fresh stack, from this file), so the build checks
//! the asm and the structs against each other.

use crate::abi::{off, Coro, ThreadCtx, RED_ZONE, TCB_NEXT, TCB_SELF, TCB_THREAD};
use core::arch::asm;

/// Reads the TSC. Not serializing: good enough for budgets of ~100 ns.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects and is available on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The calling thread's context block, or null when it is not an msh thread.
#[inline(always)]
pub fn thread_ctx() -> *mut ThreadCtx {
    let ctx: *mut ThreadCtx;
    // SAFETY: reads a word of this thread's TCB; %fs always points at a valid TCB.
    unsafe {
        asm!("mov {}, qword ptr fs:[{off}]", out(reg) ctx, off = const TCB_THREAD,
             options(nostack, readonly, preserves_flags));
    }
    ctx
}

/// The coroutine the primary switches to at its next yield (null = none).
#[inline(always)]
pub fn next_coro() -> *mut Coro {
    let next: *mut Coro;
    // SAFETY: as in `thread_ctx`.
    unsafe {
        asm!("mov {}, qword ptr fs:[{off}]", out(reg) next, off = const TCB_NEXT,
             options(nostack, readonly, preserves_flags));
    }
    next
}

/// Points this thread's TCB slots at `ctx` and `next`.
///
/// # Safety
/// `ctx` must stay valid until the slots are cleared (both null) again, and `next`
/// must be null or a coroutine that is ready to run on this thread.
#[inline]
pub unsafe fn set_tcb(ctx: *mut ThreadCtx, next: *mut Coro) {
    // SAFETY: the caller guarantees the pointers; the words are reserved for msh.
    unsafe {
        asm!("mov qword ptr fs:[{t}], {c}", "mov qword ptr fs:[{n}], {x}",
             c = in(reg) ctx, x = in(reg) next, t = const TCB_THREAD, n = const TCB_NEXT,
             options(nostack, preserves_flags));
    }
}

/// Sets only the next-coroutine slot.
///
/// # Safety
/// As for [`set_tcb`].
#[inline]
pub unsafe fn set_next_coro(next: *mut Coro) {
    // SAFETY: the caller guarantees `next`; the word is reserved for msh.
    unsafe {
        asm!("mov qword ptr fs:[{n}], {x}", x = in(reg) next, n = const TCB_NEXT,
             options(nostack, preserves_flags));
    }
}

// The sequences below are `concat!`ed into several `asm!` blocks; each block passes,
// as `const` operands, exactly the offsets its text names. The names are the same
// everywhere: `{tcb_next}`, `{tcb_thread}` are `%fs` slots; `{running}`, `{psp}`,
// `{pip}`, ... are `ThreadCtx` fields (`abi::off`); `{csp}`, `{cip}`, `{cnext}` are
// `Coro` fields; `{save_*}` are slots of a suspended scavenger's save area.

/// The primary's switch to a scavenger. On entry `%rsi` = ThreadCtx, `%rcx` = the
/// Coro to run; on exit (a scavenger switched back) every register but `%rsp` is
/// garbage. One text for every primary yield.
///
/// Operands: `red_zone`, `psp`, `pip`, `running`, `switches`, `csp`, `cip`.
macro_rules! primary_switch {
    () => {
        concat!(
            // Step over the red zone of the code we interrupted, and keep the two
            // registers Rust cannot declare clobbered.
            "lea -{red_zone}(%rsp), %rsp\n",
            "push %rbp\n",
            "push %rbx\n",
            // The primary resumes on this stack at label 2.
            "mov %rsp, {psp}(%rsi)\n",
            "lea 2f(%rip), %rdx\n",
            "mov %rdx, {pip}(%rsi)\n",
            // The scavenger in %rcx is now running; count the switch.
            "mov %rcx, {running}(%rsi)\n",
            "incq {switches}(%rsi)\n",
            // Onto its stack, at its resume point.
            "mov {csp}(%rcx), %rsp\n",
            "jmp *{cip}(%rcx)\n",
            // A scavenger switched back: %rsp is as we left it.
            "2:\n",
            "pop %rbx\n",
            "pop %rbp\n",
            "lea {red_zone}(%rsp), %rsp",
        )
    };
}

/// The scavenger's side of the per-thread state swap (see `abi`, "Per-thread
/// state"), on its way out: pushes its save area (`errno`, MXCSR, x87 control word)
/// and gives the primary back its own. `%rsi` = ThreadCtx; clobbers `%rax`, `%rdx`.
///
/// Operands: `save_area`, `save_errno`, `save_mxcsr`, `save_fpucw`, `errno_addr`,
/// `perrno`, `pmxcsr`, `pfpucw`.
macro_rules! scav_out {
    () => {
        concat!(
            "sub ${save_area}, %rsp\n",
            // %rax = &errno. Ours to the save area, the primary's back in place.
            "mov {errno_addr}(%rsi), %rax\n",
            "mov (%rax), %edx\n",
            "mov %edx, {save_errno}(%rsp)\n",
            "mov {perrno}(%rsi), %edx\n",
            "mov %edx, (%rax)\n",
            // Our control words to the save area; the primary's are loaded only when
            // they differ from ours. The whole MXCSR is compared, sticky exception
            // flags (bits 0-5) included: flags our FP raised must not show up in the
            // primary's fetestexcept, and words that are equal cost no ldmxcsr. The C
            // header's MSH__SCAV_OUT follows the same rule.
            "stmxcsr {save_mxcsr}(%rsp)\n",
            "fnstcw {save_fpucw}(%rsp)\n",
            "mov {save_mxcsr}(%rsp), %edx\n",
            "cmp {pmxcsr}(%rsi), %edx\n",
            "jne 7f\n",
            "movzwl {save_fpucw}(%rsp), %edx\n",
            "cmp %dx, {pfpucw}(%rsi)\n",
            "je 8f\n",
            "7:\n",
            "ldmxcsr {pmxcsr}(%rsi)\n",
            "fldcw {pfpucw}(%rsi)\n",
            "8:",
        )
    };
}

/// The scavenger's side of the swap on resume: keeps the primary's `errno` and
/// control words in the ThreadCtx and takes back its own from the save area on top
/// of its stack, which it then pops. `%rsi` = ThreadCtx; clobbers `%rax`, `%rdx`.
///
/// Operands: as for `scav_out!`.
macro_rules! scav_in {
    () => {
        concat!(
            // %rax = &errno. The primary's to the ThreadCtx, ours back in place.
            "mov {errno_addr}(%rsi), %rax\n",
            "mov (%rax), %edx\n",
            "mov %edx, {perrno}(%rsi)\n",
            "mov {save_errno}(%rsp), %edx\n",
            "mov %edx, (%rax)\n",
            // The primary's control words to the ThreadCtx; ours are loaded only when
            // the words differ (the whole MXCSR, as in `scav_out!`: the primary's
            // sticky flags stay the primary's).
            "stmxcsr {pmxcsr}(%rsi)\n",
            "fnstcw {pfpucw}(%rsi)\n",
            "mov {save_mxcsr}(%rsp), %edx\n",
            "cmp {pmxcsr}(%rsi), %edx\n",
            "jne 7f\n",
            "movzwl {save_fpucw}(%rsp), %edx\n",
            "cmp %dx, {pfpucw}(%rsi)\n",
            "je 8f\n",
            "7:\n",
            "ldmxcsr {save_mxcsr}(%rsp)\n",
            "fldcw {save_fpucw}(%rsp)\n",
            "8:\n",
            "add ${save_area}, %rsp",
        )
    };
}

/// A sample run's call to `ThreadCtx::calibrate` from inside a yield. `%rsi` =
/// ThreadCtx; the call gets a 16-byte-aligned stack below the red zone, and `%r12`
/// (callee-saved, declared clobbered by every block) keeps our `%rsp`.
///
/// Operands: `red_zone`, `calibrate`.
macro_rules! call_calibrate {
    () => {
        concat!(
            "mov %rsp, %r12\n",
            "lea -{red_zone}(%rsp), %rsp\n",
            "and $-16, %rsp\n",
            "mov %rsi, %rdi\n",
            "call *{calibrate}(%rsi)\n",
            "mov %r12, %rsp",
        )
    };
}

/// A primary's yield: switches to the next scavenger if there is one, and returns
/// when a scavenger switches back. One compare and a branch when there is nothing.
#[inline(always)]
pub fn primary_yield() {
    // SAFETY: follows the protocol in `crate::abi`. When the TCB_NEXT slot is
    // non-null, the runtime guarantees the TCB_THREAD slot is this thread's ThreadCtx
    // and the coroutine is runnable; every register the other side may touch is
    // declared clobbered.
    unsafe {
        asm!(
            // Nothing to run (or no libmsh at all): fall through to 9.
            "cmpq $0, %fs:{tcb_next}",
            "je 9f",
            // %rsi = ThreadCtx, %rcx = the scavenger to run.
            "mov %fs:{tcb_thread}, %rsi",
            "mov %fs:{tcb_next}, %rcx",
            primary_switch!(),
            "9:",
            tcb_next = const TCB_NEXT, tcb_thread = const TCB_THREAD,
            red_zone = const RED_ZONE, psp = const off::PRIMARY_SP, pip = const off::PRIMARY_IP,
            running = const off::RUNNING, switches = const off::SWITCHES,
            csp = const off::CORO_SP, cip = const off::CORO_IP,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}

/// Prefetches `addr` and yields: the primary's side of a harvested stall.
#[inline(always)]
pub fn prefetch_yield<T>(addr: *const T) {
    // SAFETY: prefetch never faults, whatever the address.
    unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr.cast()) };
    primary_yield();
}

/// A yield from any code: in a scavenger, switches back to the primary once its
/// quota of yields is spent; in a primary, behaves as [`primary_yield`]; elsewhere,
/// nothing.
#[inline(always)]
pub fn yield_now() {
    // SAFETY: as for `primary_yield`. In a scavenger, the TCB_THREAD slot is the
    // thread's ThreadCtx and `running` the scavenger's own Coro; the primary's resume
    // point was stored by its last switch; `calibrate` is set in every live ThreadCtx
    // and is called on a 16-byte-aligned stack below the red zone.
    unsafe {
        asm!(
            // %rsi = ThreadCtx; none: not an msh thread, nothing to do.
            "mov %fs:{tcb_thread}, %rsi",
            "test %rsi, %rsi",
            "jz 9f",
            // %rcx = the running scavenger (us); none: we are the primary, go to 5.
            "mov {running}(%rsi), %rcx",
            "test %rcx, %rcx",
            "jz 5f",
            // Scavenger: spend one unit of quota.
            "incq {syields}(%rsi)",
            "decq {quota}(%rsi)",
            "jnz 9f",
            // Quota spent. End a sample run if one is under way; the call clobbers
            // %rsi and %rcx, so reload them.
            "cmpq $0, {sstart}(%rsi)",
            "je 4f",
            call_calibrate!(),
            "mov %fs:{tcb_thread}, %rsi",
            "mov {running}(%rsi), %rcx",
            // Back to the primary. %rsi = ThreadCtx, %rcx = our Coro.
            "4:",
            "lea -{red_zone}(%rsp), %rsp",
            "push %rbp",
            "push %rbx",
            scav_out!(),
            // We resume on this stack at label 3; the primary's next yield runs the
            // scavenger after us in the ring.
            "mov %rsp, {csp}(%rcx)",
            "lea 3f(%rip), %rdx",
            "mov %rdx, {cip}(%rcx)",
            "mov {cnext}(%rcx), %rdx",
            "mov %rdx, %fs:{tcb_next}",
            // The primary runs again, on its stack, where it yielded.
            "movq $0, {running}(%rsi)",
            "mov {psp}(%rsi), %rsp",
            "jmp *{pip}(%rsi)",
            // Resumed, perhaps on another thread: every register but %rsp is garbage.
            // %rsi = this thread's ThreadCtx; our errno and control words, a new
            // quota, and now and then a sample run.
            "3:",
            "mov %fs:{tcb_thread}, %rsi",
            scav_in!(),
            "pop %rbx",
            "pop %rbp",
            "lea {red_zone}(%rsp), %rsp",
            "mov {refill}(%rsi), %rax",
            "mov %rax, {quota}(%rsi)",
            "decq {countdown}(%rsi)",
            "jnz 9f",
            call_calibrate!(),
            "jmp 9f",
            // Primary (%rsi = ThreadCtx): switch to the next scavenger, if any.
            "5:",
            "mov %fs:{tcb_next}, %rcx",
            "test %rcx, %rcx",
            "jz 9f",
            primary_switch!(),
            "9:",
            tcb_next = const TCB_NEXT, tcb_thread = const TCB_THREAD,
            red_zone = const RED_ZONE, running = const off::RUNNING,
            psp = const off::PRIMARY_SP, pip = const off::PRIMARY_IP,
            sstart = const off::SAMPLE_START, quota = const off::QUOTA,
            refill = const off::QUOTA_REFILL, switches = const off::SWITCHES,
            syields = const off::SCAV_YIELDS, countdown = const off::SAMPLE_COUNTDOWN,
            calibrate = const off::CALIBRATE,
            errno_addr = const off::ERRNO_ADDR, perrno = const off::PRIMARY_ERRNO,
            pmxcsr = const off::PRIMARY_MXCSR, pfpucw = const off::PRIMARY_FPUCW,
            save_area = const off::SCAV_SAVE_AREA, save_errno = const off::SAVE_ERRNO,
            save_mxcsr = const off::SAVE_MXCSR, save_fpucw = const off::SAVE_FPUCW,
            csp = const off::CORO_SP, cip = const off::CORO_IP, cnext = const off::CORO_NEXT,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}

/// Leaves the running scavenger for good and resumes the primary where it yielded,
/// with its `errno` and control words. The scavenger's stack is not touched again.
///
/// # Safety
/// Must run on a scavenger's stack, with `ctx` the calling thread's context block
/// and `ctx.running` already cleared and the TCB_NEXT slot set by the caller.
pub unsafe fn resume_primary(ctx: *mut ThreadCtx) -> ! {
    // SAFETY: primary_sp/primary_ip were stored by the primary's last switch on this
    // thread, and the primary's stack is intact below them; errno_addr is this
    // thread's errno.
    unsafe {
        asm!(
            // %rdi = ThreadCtx. The primary's errno and control words, unconditionally:
            // this path is rare and ours are not kept.
            "mov {errno_addr}(%rdi), %rax",
            "mov {perrno}(%rdi), %edx",
            "mov %edx, (%rax)",
            "ldmxcsr {pmxcsr}(%rdi)",
            "fldcw {pfpucw}(%rdi)",
            // The primary's stack, where it yielded.
            "mov {psp}(%rdi), %rsp",
            "jmp *{pip}(%rdi)",
            errno_addr = const off::ERRNO_ADDR, perrno = const off::PRIMARY_ERRNO,
            pmxcsr = const off::PRIMARY_MXCSR, pfpucw = const off::PRIMARY_FPUCW,
            psp = const off::PRIMARY_SP, pip = const off::PRIMARY_IP,
            in("rdi") ctx,
            options(att_syntax, noreturn)
        )
    }
}

/// Suspends the running coroutine `own` and resumes the primary, which will switch
/// to `next` at its next yield. Returns when the primary switches back to `own`.
///
/// # Safety
/// Must run on `own`'s stack, with `ctx` the calling thread's context block whose
/// `running` is `own`.
#[inline(always)]
pub unsafe fn suspend_to_primary(own: *mut Coro, ctx: *mut ThreadCtx, next: *mut Coro) {
    // SAFETY: the primary's resume point was stored by its switch to `own`; all
    // registers the primary may change are declared clobbered.
    unsafe {
        asm!(
            // %rdi = own Coro, %rsi = ThreadCtx, %rdx = the primary's next scavenger.
            "mov %rdx, %fs:{tcb_next}",
            "lea -{red_zone}(%rsp), %rsp",
            "push %rbp",
            "push %rbx",
            scav_out!(),
            // We resume on this stack at label 2.
            "mov %rsp, {csp}(%rdi)",
            "lea 2f(%rip), %rax",
            "mov %rax, {cip}(%rdi)",
            // The primary runs again, on its stack, where it yielded.
            "movq $0, {running}(%rsi)",
            "mov {psp}(%rsi), %rsp",
            "jmp *{pip}(%rsi)",
            // Resumed, perhaps on another thread: every register but %rsp is garbage.
            // %rsi = this thread's ThreadCtx; our errno and control words back.
            "2:",
            "mov %fs:{tcb_thread}, %rsi",
            scav_in!(),
            "pop %rbx",
            "pop %rbp",
            "lea {red_zone}(%rsp), %rsp",
            tcb_next = const TCB_NEXT, tcb_thread = const TCB_THREAD,
            red_zone = const RED_ZONE, running = const off::RUNNING,
            psp = const off::PRIMARY_SP, pip = const off::PRIMARY_IP,
            errno_addr = const off::ERRNO_ADDR, perrno = const off::PRIMARY_ERRNO,
            pmxcsr = const off::PRIMARY_MXCSR, pfpucw = const off::PRIMARY_FPUCW,
            save_area = const off::SCAV_SAVE_AREA, save_errno = const off::SAVE_ERRNO,
            save_mxcsr = const off::SAVE_MXCSR, save_fpucw = const off::SAVE_FPUCW,
            csp = const off::CORO_SP, cip = const off::CORO_IP,
            in("rdi") own, in("rsi") ctx, in("rdx") next,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}

/// Address of this thread's next-coroutine TCB word, for other threads to poke.
pub fn next_coro_slot() -> *mut *mut Coro {
    let tcb: usize;
    // SAFETY: glibc's tcbhead_t starts with a pointer to itself (`TCB_SELF`).
    unsafe {
        asm!("mov {}, qword ptr fs:[{off}]", out(reg) tcb, off = const TCB_SELF,
             options(nostack, readonly, preserves_flags));
    }
    (tcb + TCB_NEXT) as *mut *mut Coro
}

/// A coroutine's first function: it gets the argument given to [`init_stack`] and
/// must never return (there is nothing to return to).
pub type CoroMain = unsafe extern "C" fn(arg: *mut ()) -> !;

/// Where [`init_stack`] leaves the argument, as a byte offset from the fresh `sp`.
const ENTRY_ARG: usize = 0;
/// Where [`init_stack`] leaves the first function, as a byte offset from the fresh `sp`.
const ENTRY_MAIN: usize = 8;

/// Lays out a fresh stack so that switching to the returned `sp` with
/// `ip = coro_entry_ip()` calls `main(arg)`.
///
/// # Safety
/// `top` must be the 16-byte-aligned, writable end of a stack at least 32 bytes deep.
pub unsafe fn init_stack(top: *mut u8, main: CoroMain, arg: *mut ()) -> u64 {
    // SAFETY: the caller guarantees the two words below `top` are writable.
    unsafe {
        let sp = top.sub(16);
        sp.add(ENTRY_ARG).cast::<u64>().write(arg as u64);
        sp.add(ENTRY_MAIN).cast::<u64>().write(main as usize as u64);
        sp as u64
    }
}

/// Where every fresh coroutine starts (see [`init_stack`]).
pub fn coro_entry_ip() -> u64 {
    coro_entry as *const () as u64
}

/// Where a fresh scavenger starts when a primary switches to it: as [`coro_entry`],
/// after keeping the primary's `errno` and control words in the ThreadCtx (the
/// scavenger starts with `errno` 0 and the primary's control words).
pub fn scav_entry_ip() -> u64 {
    scav_entry as *const () as u64
}

#[unsafe(naked)]
unsafe extern "C" fn scav_entry() -> ! {
    core::arch::naked_asm!(
        // Switched to by a primary: %rsp = the fresh stack of `init_stack`, every
        // other register garbage. %rsi = ThreadCtx, %rax = &errno.
        "mov %fs:{tcb_thread}, %rsi",
        "mov {errno_addr}(%rsi), %rax",
        // Keep the primary's errno and control words; ours starts at errno 0.
        "mov (%rax), %edx",
        "mov %edx, {perrno}(%rsi)",
        "movl $0, (%rax)",
        "stmxcsr {pmxcsr}(%rsi)",
        "fnstcw {pfpucw}(%rsi)",
        // Rewritten code's first yield check re-arms its counter (see `abi`).
        "movq $0, %fs:{tcb_budget}",
        // main(arg), as the outermost frame (%rbp = 0 ends backtraces).
        "mov {arg}(%rsp), %rdi",
        "xor %ebp, %ebp",
        "call *{main}(%rsp)",
        "ud2",
        tcb_thread = const TCB_THREAD, errno_addr = const off::ERRNO_ADDR,
        perrno = const off::PRIMARY_ERRNO, pmxcsr = const off::PRIMARY_MXCSR,
        pfpucw = const off::PRIMARY_FPUCW, arg = const ENTRY_ARG, main = const ENTRY_MAIN,
        tcb_budget = const crate::abi::TCB_SCAV_BUDGET,
        options(att_syntax)
    )
}

#[unsafe(naked)]
unsafe extern "C" fn coro_entry() -> ! {
    core::arch::naked_asm!(
        // %rsp = the fresh stack of `init_stack`: main(arg), as the outermost frame.
        "mov {arg}(%rsp), %rdi",
        "xor %ebp, %ebp",
        "call *{main}(%rsp)",
        "ud2",
        arg = const ENTRY_ARG, main = const ENTRY_MAIN,
        options(att_syntax)
    )
}

/// A bare symmetric switch between two coroutines, for measuring the switch itself:
/// stores the caller's resume point in `from` and jumps to `to`.
///
/// # Safety
/// `to` must hold a resume point stored by `switch` (or [`init_stack`]).
#[inline(always)]
pub unsafe fn switch(from: *mut Coro, to: *const Coro) {
    // SAFETY: the caller guarantees `to`; all registers the other side may change are
    // declared clobbered.
    unsafe {
        asm!(
            // %rdi = our Coro, %rsi = theirs. We resume on this stack at label 2.
            "push %rbp",
            "push %rbx",
            "mov %rsp, {csp}(%rdi)",
            "lea 2f(%rip), %rdx",
            "mov %rdx, {cip}(%rdi)",
            "mov {csp}(%rsi), %rsp",
            "jmp *{cip}(%rsi)",
            // Switched back: every register but %rsp is garbage.
            "2:",
            "pop %rbx",
            "pop %rbp",
            csp = const off::CORO_SP, cip = const off::CORO_IP,
            in("rdi") from, in("rsi") to,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}
