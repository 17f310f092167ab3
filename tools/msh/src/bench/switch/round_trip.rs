//! A primary→scavenger→primary round trip, twice: through msh's runtime, and with
//! MSH's own protocol as the baseline (written from its description: a per-thread
//! context block reached from the thread pointer, packed yield contexts `{sp, ip,
//! next}`, a switch stores `%rsp` and the resume address, loads the other side's and
//! `jmp`s; no quota bookkeeping, nothing else kept). MSH points `%gs` at its block;
//! here the block hangs off `%fs:0x40`, the word msh itself uses, in a thread of its
//! own that msh does not know. Both sides save the same registers in both versions
//! (the compiler saves what is live; `%rbp`/`%rbx` are pushed; the red zone is
//! stepped over), so the difference is the protocol.

use anyhow::{anyhow, Result};
use msh_core::abi::{Coro, TCB_THREAD};
use msh_core::{arch, sched};
use std::arch::asm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// MSH's context block: the primary's yield context first, then the running one.
#[repr(C)]
struct Block {
    primary: Coro,
    scavenger: Coro,
    /// The yield context of the coroutine running now.
    current: *mut Coro,
}

/// The primary's yield in MSH's protocol: to `primary.next`.
#[inline(always)]
fn protocol_primary_yield() {
    // SAFETY: the calling thread's %fs:0x40 points at a live Block whose
    // `primary.next` holds a resume point on a live stack; every register the other
    // side may change is declared clobbered.
    unsafe {
        asm!(
            "mov %fs:0x40, %rsi",
            "lea -128(%rsp), %rsp",
            "push %rbp",
            "push %rbx",
            "mov %rsp, 0(%rsi)",
            "lea 2f(%rip), %rdx",
            "mov %rdx, 8(%rsi)",
            "mov 16(%rsi), %rcx",
            "mov %rcx, 48(%rsi)",
            "mov 0(%rcx), %rsp",
            "jmp *8(%rcx)",
            "2:",
            "pop %rbx",
            "pop %rbp",
            "lea 128(%rsp), %rsp",
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}

/// The scavenger's yield in MSH's protocol: back to the primary.
#[inline(always)]
fn protocol_scavenger_yield() {
    // SAFETY: as above; `current` is this scavenger's yield context.
    unsafe {
        asm!(
            "mov %fs:0x40, %rsi",
            "mov 48(%rsi), %rcx",
            "lea -128(%rsp), %rsp",
            "push %rbp",
            "push %rbx",
            "mov %rsp, 0(%rcx)",
            "lea 3f(%rip), %rdx",
            "mov %rdx, 8(%rcx)",
            "mov 0(%rsi), %rsp",
            "jmp *8(%rsi)",
            "3:",
            "pop %rbx",
            "pop %rbp",
            "lea 128(%rsp), %rsp",
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
            options(att_syntax)
        );
    }
}

unsafe extern "C" fn protocol_scavenger(_: *mut ()) -> ! {
    loop {
        protocol_scavenger_yield();
    }
}

fn write_tcb_thread(value: usize) {
    // SAFETY: the word is reserved for msh, and this thread is not an msh thread
    // (checked by the caller), so nothing else reads it.
    unsafe {
        asm!("mov qword ptr fs:[{off}], {v}", v = in(reg) value, off = const TCB_THREAD,
             options(nostack, preserves_flags));
    }
}

/// ns per round trip with MSH's protocol, in a fresh thread.
pub fn msh_protocol(round_trips: u64) -> Result<f64> {
    std::thread::spawn(move || -> Result<f64> {
        if !arch::thread_ctx().is_null() {
            return Err(anyhow!("the measuring thread is already an msh thread"));
        }
        let stack = msh_core::stack::Stack::new(64 * 1024)
            .map_err(|e| anyhow!("cannot map a stack: {e}"))?;
        let mut block = Box::new(Block {
            primary: Coro::empty(),
            scavenger: Coro::empty(),
            current: std::ptr::null_mut(),
        });
        // SAFETY: a fresh stack; `protocol_scavenger` never returns.
        block.scavenger.sp =
            unsafe { arch::init_stack(stack.top(), protocol_scavenger, std::ptr::null_mut()) };
        block.scavenger.ip = arch::coro_entry_ip();
        block.primary.next = &mut block.scavenger;
        write_tcb_thread(&mut *block as *mut Block as usize);
        for _ in 0..round_trips / 10 + 1 {
            protocol_primary_yield();
        }
        let start = Instant::now();
        for _ in 0..round_trips {
            protocol_primary_yield();
        }
        let ns = start.elapsed().as_nanos() as f64 / round_trips as f64;
        write_tcb_thread(0);
        // The scavenger is left suspended; its stack is unmapped with `stack`.
        drop(stack);
        Ok(ns)
    })
    .join()
    .map_err(|_| anyhow!("the measuring thread panicked"))?
}

static STOP: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn yielding_scavenger(_: *mut core::ffi::c_void) {
    while !STOP.load(Ordering::Relaxed) {
        arch::yield_now();
    }
}

/// ns per round trip through msh's runtime (budget 0: one scavenger yield per
/// switch), in a fresh thread registered as a primary.
pub fn msh_runtime(round_trips: u64) -> Result<f64> {
    std::thread::spawn(move || -> Result<f64> {
        let ours = !sched::is_initialized();
        if ours {
            sched::init(sched::Config {
                budget_ns: 0,
                ..sched::Config::default()
            })
            .map_err(|e| anyhow!("msh init: {e}"))?;
        }
        sched::register().map_err(|e| anyhow!("msh register: {e}"))?;
        STOP.store(false, Ordering::Relaxed);
        sched::spawn(
            yielding_scavenger,
            std::ptr::null_mut(),
            Some(b"round-trip"),
        )
        .map_err(|e| anyhow!("msh spawn: {e}"))?;
        for _ in 0..round_trips / 10 + 1 {
            arch::primary_yield();
        }
        let start = Instant::now();
        for _ in 0..round_trips {
            arch::primary_yield();
        }
        let ns = start.elapsed().as_nanos() as f64 / round_trips as f64;
        STOP.store(true, Ordering::Relaxed);
        sched::run_pending().map_err(|e| anyhow!("msh run_pending: {e}"))?;
        sched::unregister().map_err(|e| anyhow!("msh unregister: {e}"))?;
        if ours {
            let _ = sched::shutdown();
        }
        Ok(ns)
    })
    .join()
    .map_err(|_| anyhow!("the measuring thread panicked"))?
}
