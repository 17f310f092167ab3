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
//! A fresh coroutine's stack (see [`init_stack`]):
//! ```text
//!   sp -> [ arg  ]   16-byte aligned; `coro_entry` loads it into %rdi
//!         [ main ]   and calls main(arg), which never returns
//! ```

use crate::abi::{Coro, ThreadCtx, TCB_NEXT, TCB_THREAD};
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

/// The primary's switch to the scavenger in `%rcx`, with its ThreadCtx in `%rsi`;
/// resumes at the end when a scavenger switches back. One text for every yield.
macro_rules! primary_switch {
    () => {
        concat!(
            "lea -128(%rsp), %rsp\n",
            "push %rbp\n",
            "push %rbx\n",
            "mov %rsp, 8(%rsi)\n",
            "lea 2f(%rip), %rdx\n",
            "mov %rdx, 16(%rsi)\n",
            "mov %rcx, 0(%rsi)\n",
            "incq 56(%rsi)\n",
            "mov 0(%rcx), %rsp\n",
            "jmp *8(%rcx)\n",
            "2:\n",
            "pop %rbx\n",
            "pop %rbp\n",
            "lea 128(%rsp), %rsp",
        )
    };
}

/// The scavenger's side of the per-thread state swap (see `abi`, "Per-thread
/// state"), on its way out: pushes its `errno`, MXCSR and x87 control word and
/// gives the primary back its own. `%rsi` = ThreadCtx; clobbers `%rax`, `%rdx`.
macro_rules! scav_out {
    () => {
        concat!(
            "sub $16, %rsp\n",
            "mov 104(%rsi), %rax\n",
            "mov (%rax), %edx\n",
            "mov %edx, 0(%rsp)\n",
            "mov 112(%rsi), %edx\n",
            "mov %edx, (%rax)\n",
            "stmxcsr 4(%rsp)\n",
            "fnstcw 8(%rsp)\n",
            "mov 4(%rsp), %edx\n",
            "xor 116(%rsi), %edx\n",
            "and $-64, %edx\n",
            "jnz 7f\n",
            "movzwl 8(%rsp), %edx\n",
            "cmp %dx, 120(%rsi)\n",
            "je 8f\n",
            "7:\n",
            "ldmxcsr 116(%rsi)\n",
            "fldcw 120(%rsi)\n",
            "8:",
        )
    };
}

/// The scavenger's side of the swap on resume: keeps the primary's `errno` and
/// control words in the ThreadCtx and takes back its own from the top of its stack.
/// `%rsi` = ThreadCtx; clobbers `%rax`, `%rdx`.
macro_rules! scav_in {
    () => {
        concat!(
            "mov 104(%rsi), %rax\n",
            "mov (%rax), %edx\n",
            "mov %edx, 112(%rsi)\n",
            "mov 0(%rsp), %edx\n",
            "mov %edx, (%rax)\n",
            "stmxcsr 116(%rsi)\n",
            "fnstcw 120(%rsi)\n",
            "mov 4(%rsp), %edx\n",
            "xor 116(%rsi), %edx\n",
            "and $-64, %edx\n",
            "jnz 7f\n",
            "movzwl 8(%rsp), %edx\n",
            "cmp %dx, 120(%rsi)\n",
            "je 8f\n",
            "7:\n",
            "ldmxcsr 4(%rsp)\n",
            "fldcw 8(%rsp)\n",
            "8:\n",
            "add $16, %rsp",
        )
    };
}

/// A primary's yield: switches to the next scavenger if there is one, and returns
/// when a scavenger switches back. One compare and a branch when there is nothing.
#[inline(always)]
pub fn primary_yield() {
    // SAFETY: follows the protocol in `crate::abi`. When %fs:0x38 is non-null, the
    // runtime guarantees %fs:0x40 is this thread's ThreadCtx and the coroutine is
    // runnable; every register the other side may touch is declared clobbered.
    unsafe {
        asm!(
            "cmpq $0, %fs:0x38",
            "je 9f",
            "mov %fs:0x40, %rsi",
            "mov %fs:0x38, %rcx",
            primary_switch!(),
            "9:",
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
    // SAFETY: as for `primary_yield`. In a scavenger, %fs:0x40 is the thread's
    // ThreadCtx and `running` the scavenger's own Coro; the primary's resume point
    // was stored by its last switch; `calibrate` is set in every live ThreadCtx and
    // is called on a 16-byte-aligned stack below the red zone.
    unsafe {
        asm!(
            "mov %fs:0x40, %rsi",
            "test %rsi, %rsi",
            "jz 9f",
            "mov 0(%rsi), %rcx",
            "test %rcx, %rcx",
            "jz 5f",
            // Scavenger: spend one unit of quota.
            "incq 64(%rsi)",
            "decq 40(%rsi)",
            "jnz 9f",
            // Quota spent. End a sample run if one is under way.
            "cmpq $0, 24(%rsi)",
            "je 4f",
            "mov %rsp, %r12",
            "lea -128(%rsp), %rsp",
            "and $-16, %rsp",
            "mov %rsi, %rdi",
            "call *88(%rsi)",
            "mov %r12, %rsp",
            "mov %fs:0x40, %rsi",
            "mov 0(%rsi), %rcx",
            // Back to the primary.
            "4:",
            "lea -128(%rsp), %rsp",
            "push %rbp",
            "push %rbx",
            scav_out!(),
            "mov %rsp, 0(%rcx)",
            "lea 3f(%rip), %rdx",
            "mov %rdx, 8(%rcx)",
            "mov 16(%rcx), %rdx",
            "mov %rdx, %fs:0x38",
            "movq $0, 0(%rsi)",
            "mov 8(%rsi), %rsp",
            "jmp *16(%rsi)",
            "3:",
            // Resumed, perhaps on another thread: our errno and control words, a new
            // quota, and now and then a sample run.
            "mov %fs:0x40, %rsi",
            scav_in!(),
            "pop %rbx",
            "pop %rbp",
            "lea 128(%rsp), %rsp",
            "mov 48(%rsi), %rax",
            "mov %rax, 40(%rsi)",
            "decq 80(%rsi)",
            "jnz 9f",
            "mov %rsp, %r12",
            "lea -128(%rsp), %rsp",
            "and $-16, %rsp",
            "mov %rsi, %rdi",
            "call *88(%rsi)",
            "mov %r12, %rsp",
            "jmp 9f",
            // Primary: switch to the next scavenger, if any.
            "5:",
            "mov %fs:0x38, %rcx",
            "test %rcx, %rcx",
            "jz 9f",
            primary_switch!(),
            "9:",
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
/// and `ctx.running` already cleared and `%fs:0x38` set by the caller.
pub unsafe fn resume_primary(ctx: *mut ThreadCtx) -> ! {
    // SAFETY: primary_sp/primary_ip were stored by the primary's last switch on this
    // thread, and the primary's stack is intact below them; errno_addr is this
    // thread's errno.
    unsafe {
        asm!(
            "mov 104(%rdi), %rax",
            "mov 112(%rdi), %edx",
            "mov %edx, (%rax)",
            "ldmxcsr 116(%rdi)",
            "fldcw 120(%rdi)",
            "mov 8(%rdi), %rsp",
            "jmp *16(%rdi)",
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
            "mov %rdx, %fs:0x38",
            "lea -128(%rsp), %rsp",
            "push %rbp",
            "push %rbx",
            scav_out!(),
            "mov %rsp, 0(%rdi)",
            "lea 2f(%rip), %rax",
            "mov %rax, 8(%rdi)",
            "movq $0, 0(%rsi)",
            "mov 8(%rsi), %rsp",
            "jmp *16(%rsi)",
            "2:",
            "mov %fs:0x40, %rsi",
            scav_in!(),
            "pop %rbx",
            "pop %rbp",
            "lea 128(%rsp), %rsp",
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
    // SAFETY: glibc's tcbhead_t starts with a pointer to itself (`%fs:0`).
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tcb, options(nostack, readonly, preserves_flags));
    }
    (tcb + TCB_NEXT) as *mut *mut Coro
}

/// A coroutine's first function: it gets the argument given to [`init_stack`] and
/// must never return (there is nothing to return to).
pub type CoroMain = unsafe extern "C" fn(arg: *mut ()) -> !;

/// Lays out a fresh stack so that switching to the returned `sp` with
/// `ip = coro_entry_ip()` calls `main(arg)`.
///
/// # Safety
/// `top` must be the 16-byte-aligned, writable end of a stack at least 32 bytes deep.
pub unsafe fn init_stack(top: *mut u8, main: CoroMain, arg: *mut ()) -> u64 {
    // SAFETY: the caller guarantees the two words below `top` are writable.
    unsafe {
        let sp = top.sub(16).cast::<u64>();
        sp.write(arg as u64);
        sp.add(1).write(main as usize as u64);
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
        "mov %fs:0x40, %rsi",
        "mov 104(%rsi), %rax",
        "mov (%rax), %edx",
        "mov %edx, 112(%rsi)",
        "movl $0, (%rax)",
        "stmxcsr 116(%rsi)",
        "fnstcw 120(%rsi)",
        "mov (%rsp), %rdi",
        "xor %ebp, %ebp",
        "call *8(%rsp)",
        "ud2",
        options(att_syntax)
    )
}

#[unsafe(naked)]
unsafe extern "C" fn coro_entry() -> ! {
    core::arch::naked_asm!(
        "mov (%rsp), %rdi",
        "xor %ebp, %ebp",
        "call *8(%rsp)",
        "ud2",
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
            "push %rbp",
            "push %rbx",
            "mov %rsp, 0(%rdi)",
            "lea 2f(%rip), %rdx",
            "mov %rdx, 8(%rdi)",
            "mov 0(%rsi), %rsp",
            "jmp *8(%rsi)",
            "2:",
            "pop %rbx",
            "pop %rbp",
            in("rdi") from, in("rsi") to,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}
