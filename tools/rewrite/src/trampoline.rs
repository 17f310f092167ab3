//! Trampoline code: the displaced instructions, relocated, with a prefetch and the
//! MSH primary yield (core/src/abi.rs) before each patched load, then a jump back.
//!
//! Per yield point the fast path depends on what is live there:
//! - flags dead: `prefetcht0 M; cmpq $0,%fs:0x38; jne switch` (the contract's check);
//! - flags live, `%rcx` dead: `mov %fs:0x38,%rcx; jrcxz 1f; jmp switch; 1:` (no flags touched);
//! - both live: the same wrapped in `lea -128(%rsp),%rsp; push %rcx … pop %rcx; lea 128(%rsp),%rsp`.
//!
//! The switch path is out of line, in a cold region after all hot parts (so the hot
//! parts stay dense in the i-cache): red-zone skip, `push %rbp`, the
//! live GPRs, the flags (`seto %al; lahf`), the live vector registers at the object's
//! width, the switch, and everything restored in reverse.
//!
//! A scavenger's budget check (`msh rewrite --scavenger`, see `msh_core::abi`, "The
//! rewritten scavenger's yield check") has no prefetch: `subq $COST,%fs:0x80; js cold`
//! when the flags are dead, wrapped in `lea -128(%rsp),%rsp; pushfq … popfq; lea
//! 128(%rsp),%rsp` when they are live. Its cold path saves what is live as above, runs
//! the scavenger's yield and re-arms the counter.

use crate::liveness::{RegSet, RBP, RCX, RSP};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction, MemoryOperand, Register};
use msh_core::abi::{off, RED_ZONE, SCAV_BUDGET_IDLE, TCB_NEXT, TCB_SCAV_BUDGET, TCB_THREAD};

/// A point inside a window that gets a yield before it: a primary's prefetch+yield
/// before a load, or a scavenger's budget check.
pub struct YieldPoint {
    /// Index, within the window's instructions, of the instruction to yield before.
    pub at: usize,
    /// Registers live just before that instruction.
    pub live: RegSet,
    /// `None`: a primary's prefetch+yield at a load. `Some`: a scavenger's budget check.
    pub budget: Option<Budget>,
}

/// A scavenger's budget check: what it subtracts, and what its cold path re-arms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Estimated cost of the code from this check to the next, in cost units (with a
    /// pass counter: of `mask + 1` passes).
    pub cost: i32,
    /// The counter's value after a yield, in cost units.
    pub refill: i32,
    /// At a cheap loop's header: a GPR no instruction of the loop touches or needs,
    /// counting passes (`inc; test $mask; jz check`, the check out of the straight
    /// path), so that only one pass in `mask + 1` reaches the per-thread counter.
    /// The flags are dead there.
    pub pass_counter: Option<PassCounter>,
}

/// A loop's pass counter (see [`Budget::pass_counter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassCounter {
    /// The register's number (`liveness` numbering).
    pub register: u32,
    /// One pass in `mask + 1` (a power of two) is checked.
    pub mask: u32,
}

/// How a budget check keeps the flags.
pub fn budget_keeps_flags(live: RegSet) -> bool {
    live.has_flags()
}

/// The check before a yield point, chosen by what is live there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FastPath {
    /// Flags dead: `cmpq $0,%fs:0x38; jne switch`.
    FlagsDead,
    /// Flags live, `%rcx` dead: `mov %fs:0x38,%rcx; jrcxz` (no flags touched).
    RcxDead,
    /// Both live: as `RcxDead`, with `%rcx` saved below the red zone.
    RcxWrapped,
}

impl FastPath {
    /// The cheapest check that keeps `live` intact.
    pub fn for_live(live: RegSet) -> FastPath {
        if !live.has_flags() {
            FastPath::FlagsDead
        } else if !live.contains(RegSet::gpr(RCX)) {
            FastPath::RcxDead
        } else {
            FastPath::RcxWrapped
        }
    }
}

/// What the switch path saves: live GPRs (not `%rsp`, and not `%rbp`, which the
/// sequence pushes anyway), flags, and live vector registers.
pub fn saved_registers(live: RegSet) -> RegSet {
    live.minus(RegSet::gpr(RSP)).minus(RegSet::gpr(RBP))
}

const GPRS: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

fn vector_register(n: u32, width: usize) -> Register {
    let base = if width >= 32 {
        Register::YMM0
    } else {
        Register::XMM0
    };
    Register::values()
        .nth(base as usize + n as usize)
        .expect("vector register number in range")
}

fn fs_slot(offset: usize) -> AsmMemoryOperand {
    qword_ptr(offset as u64).fs()
}

/// A prefetch of the load's own memory operand (RIP-relative ones stay absolute
/// targets; the block encoder re-encodes them for the trampoline's address).
fn prefetch_for(load: &Instruction) -> Result<Instruction, IcedError> {
    let mem = MemoryOperand::new(
        load.memory_base(),
        load.memory_index(),
        load.memory_index_scale(),
        load.memory_displacement64() as i64,
        load.memory_displ_size(),
        false,
        load.segment_prefix(),
    );
    Instruction::with1(Code::Prefetcht0_m8, mem)
}

/// A trampoline's hot part: the window's instructions with a prefetch and the fast
/// check before each yield point, then the jump back.
pub struct Hot {
    /// The encoded code.
    pub bytes: Vec<u8>,
    /// Per yield point, where its switch path must return to.
    pub return_ips: Vec<u64>,
}

/// Encodes the hot part at `address`. `insns` are the window's original instructions,
/// `resume` the address after the window, `switch_ips` the cold switch path of each
/// yield point (any far address when they are not known yet: the size does not change
/// as long as they stay out of reach of a short jump).
pub fn encode_hot(
    address: u64,
    insns: &[Instruction],
    yields: &[YieldPoint],
    resume: u64,
    switch_ips: &[u64],
) -> Result<Hot, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut returns = Vec::new();
    // Pass counters' checks of the per-thread counter, out of the straight path:
    // (their label, where they return, the cost, the switch path).
    let mut counter_checks = Vec::new();
    for (k, insn) in insns.iter().enumerate() {
        let Some((y, &switch)) = yields.iter().zip(switch_ips).find(|(y, _)| y.at == k) else {
            a.add_instruction(*insn)?;
            continue;
        };
        let mut back = a.create_label();
        let mut unwrapped = None;
        if let Some(budget) = y.budget {
            if let Some(counter) = budget.pass_counter {
                let reg = GPRS[counter.register as usize];
                a.add_instruction(Instruction::with1(Code::Inc_rm64, reg)?)?;
                a.add_instruction(Instruction::with2(
                    Code::Test_rm64_imm32,
                    reg,
                    counter.mask,
                )?)?;
                let check = a.create_label();
                a.jz(check)?;
                a.set_label(&mut back)?;
                counter_checks.push((check, back, budget.cost, switch));
            } else if budget_keeps_flags(y.live) {
                let mut unwrap = a.create_label();
                a.lea(rsp, qword_ptr(rsp - RED_ZONE as i32))?;
                a.pushfq()?;
                a.sub(fs_slot(TCB_SCAV_BUDGET), budget.cost)?;
                a.js(switch)?;
                a.set_label(&mut unwrap)?;
                a.popfq()?;
                a.lea(rsp, qword_ptr(rsp + RED_ZONE as i32))?;
                unwrapped = Some(unwrap);
            } else {
                a.sub(fs_slot(TCB_SCAV_BUDGET), budget.cost)?;
                a.js(switch)?;
                a.set_label(&mut back)?;
            }
            returns.push(unwrapped.unwrap_or(back));
            a.add_instruction(*insn)?;
            continue;
        }
        a.add_instruction(prefetch_for(insn)?)?;
        match FastPath::for_live(y.live) {
            FastPath::FlagsDead => {
                a.cmp(fs_slot(TCB_NEXT), 0)?;
                a.jne(switch)?;
            }
            FastPath::RcxDead => {
                a.mov(rcx, fs_slot(TCB_NEXT))?;
                a.jrcxz(back)?;
                a.jmp(switch)?;
            }
            FastPath::RcxWrapped => {
                let mut unwrap = a.create_label();
                a.lea(rsp, qword_ptr(rsp - RED_ZONE as i32))?;
                a.push(rcx)?;
                a.mov(rcx, fs_slot(TCB_NEXT))?;
                a.jrcxz(unwrap)?;
                a.jmp(switch)?;
                a.set_label(&mut unwrap)?;
                a.pop(rcx)?;
                a.lea(rsp, qword_ptr(rsp + RED_ZONE as i32))?;
                unwrapped = Some(unwrap);
            }
        }
        a.set_label(&mut back)?;
        returns.push(unwrapped.unwrap_or(back));
        a.add_instruction(*insn)?;
    }
    a.jmp(resume)?;
    for (mut check, back, cost, switch) in counter_checks {
        a.set_label(&mut check)?;
        a.sub(fs_slot(TCB_SCAV_BUDGET), cost)?;
        a.js(switch)?;
        a.jmp(back)?;
    }
    let result =
        a.assemble_options(address, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let return_ips = returns
        .iter()
        .map(|l| result.label_ip(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Hot {
        bytes: result.inner.code_buffer,
        return_ips,
    })
}

/// A trampoline's cold part: one switch path per yield point.
pub struct Cold {
    /// The encoded code.
    pub bytes: Vec<u8>,
    /// Per yield point, the address of its switch path.
    pub switch_ips: Vec<u64>,
}

/// Encodes the switch paths at `address`; `return_ips` come from [`encode_hot`].
pub fn encode_cold(
    address: u64,
    yields: &[YieldPoint],
    return_ips: &[u64],
    vector_width: usize,
) -> Result<Cold, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut entries = Vec::new();
    for (y, &return_to) in yields.iter().zip(return_ips) {
        let mut entry = a.create_label();
        a.set_label(&mut entry)?;
        match y.budget {
            None => emit_switch(
                &mut a,
                y.live,
                FastPath::for_live(y.live),
                vector_width,
                return_to,
            )?,
            Some(budget) => emit_budget_yield(&mut a, y.live, budget, vector_width, return_to)?,
        }
        entries.push(entry);
    }
    let result =
        a.assemble_options(address, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let switch_ips = entries
        .iter()
        .map(|l| result.label_ip(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Cold {
        bytes: result.inner.code_buffer,
        switch_ips,
    })
}

/// What a cold path saved, for [`restore`] to undo in reverse.
struct Saved {
    gprs: Vec<u32>,
    flags: bool,
    vectors: Vec<u32>,
    vector_width: usize,
    /// The red zone was skipped here (not by the hot part).
    red_zone: bool,
}

impl Saved {
    fn vector_codes(&self) -> (Code, Code, i64) {
        if self.vector_width >= 32 {
            (
                Code::VEX_Vmovdqu_ymmm256_ymm,
                Code::VEX_Vmovdqu_ymm_ymmm256,
                32,
            )
        } else {
            (Code::Movdqu_xmmm128_xmm, Code::Movdqu_xmm_xmmm128, 16)
        }
    }
}

/// Steps over the red zone (unless the hot part did), pushes `%rbp`, the GPRs of
/// `saved`, the flags if in `saved` (through `%rax`, which is saved or dead), and the
/// live vector registers at `vector_width`.
fn save(
    a: &mut CodeAssembler,
    saved: RegSet,
    red_zone: bool,
    vector_width: usize,
) -> Result<Saved, IcedError> {
    if red_zone {
        a.lea(rsp, qword_ptr(rsp - RED_ZONE as i32))?;
    }
    a.push(rbp)?;
    let gprs: Vec<u32> = saved.gprs().collect();
    for &n in &gprs {
        a.add_instruction(Instruction::with1(Code::Push_r64, GPRS[n as usize])?)?;
    }
    if saved.has_flags() {
        // %rax is either saved above or dead.
        a.seto(al)?;
        a.lahf()?;
        a.push(rax)?;
    }
    let s = Saved {
        gprs,
        flags: saved.has_flags(),
        vectors: saved.vectors().filter(|&v| v < 16).collect(),
        vector_width,
        red_zone,
    };
    let (store, _, slot) = s.vector_codes();
    if !s.vectors.is_empty() {
        a.lea(rsp, qword_ptr(rsp - (slot * s.vectors.len() as i64) as i32))?;
        for (i, &v) in s.vectors.iter().enumerate() {
            let mem = MemoryOperand::with_base_displ(Register::RSP, slot * i as i64);
            a.add_instruction(Instruction::with2(
                store,
                mem,
                vector_register(v, vector_width),
            )?)?;
        }
    }
    Ok(s)
}

/// Undoes [`save`] and jumps back to `return_to`.
fn restore(a: &mut CodeAssembler, s: &Saved, return_to: u64) -> Result<(), IcedError> {
    let (_, load, slot) = s.vector_codes();
    if !s.vectors.is_empty() {
        for (i, &v) in s.vectors.iter().enumerate() {
            let mem = MemoryOperand::with_base_displ(Register::RSP, slot * i as i64);
            a.add_instruction(Instruction::with2(
                load,
                vector_register(v, s.vector_width),
                mem,
            )?)?;
        }
        a.lea(rsp, qword_ptr(rsp + (slot * s.vectors.len() as i64) as i32))?;
    }
    if s.flags {
        a.pop(rax)?;
        a.add(al, 0x7f)?; // OF from %al
        a.sahf()?; // SF ZF AF PF CF from %ah
    }
    for &n in s.gprs.iter().rev() {
        a.add_instruction(Instruction::with1(Code::Pop_r64, GPRS[n as usize])?)?;
    }
    a.pop(rbp)?;
    if s.red_zone {
        a.lea(rsp, qword_ptr(rsp + RED_ZONE as i32))?;
    }
    a.jmp(return_to)?;
    Ok(())
}

/// The out-of-line switch: save what is live, the contract's yield, restore, go back.
/// For `RcxWrapped` the red zone is already skipped and `%rcx` saved; `return_to` is
/// then the `pop %rcx` that undoes that.
fn emit_switch(
    a: &mut CodeAssembler,
    live: RegSet,
    path: FastPath,
    vector_width: usize,
    return_to: u64,
) -> Result<(), IcedError> {
    let mut saved = saved_registers(live);
    if path == FastPath::RcxWrapped {
        saved = saved.minus(RegSet::gpr(RCX));
    }
    let s = save(a, saved, path != FastPath::RcxWrapped, vector_width)?;

    let mut resume = a.create_label();
    let mut no_switch = a.create_label();
    a.mov(rax, fs_slot(TCB_THREAD))?;
    // Not an msh thread, or this code runs inside a scavenger (a rewritten library
    // both use): a primary yield would nest, so do nothing.
    a.test(rax, rax)?;
    a.jz(no_switch)?;
    a.cmp(qword_ptr(rax + off::RUNNING as i32), 0)?;
    a.jne(no_switch)?;
    a.mov(rcx, fs_slot(TCB_NEXT))?;
    a.mov(qword_ptr(rax + off::PRIMARY_SP as i32), rsp)?;
    a.lea(rdx, qword_ptr(resume))?;
    a.mov(qword_ptr(rax + off::PRIMARY_IP as i32), rdx)?;
    a.mov(qword_ptr(rax + off::RUNNING as i32), rcx)?;
    // Counted like the header's yields do (flags are already saved).
    a.inc(qword_ptr(rax + off::SWITCHES as i32))?;
    a.mov(rsp, qword_ptr(rcx + off::CORO_SP as i32))?;
    a.jmp(qword_ptr(rcx + off::CORO_IP as i32))?;
    a.set_label(&mut resume)?;
    // The scavenger comes back with an indirect jump: a valid IBT landing pad.
    a.endbr64()?;
    a.set_label(&mut no_switch)?;
    restore(a, &s, return_to)
}

/// `ThreadCtx::calibrate(%rsi)` on a 16-byte-aligned stack, `%r12` keeping `%rsp`
/// (as `call_calibrate!` in msh-core; `%r12` is saved or dead here).
fn call_calibrate(a: &mut CodeAssembler) -> Result<(), IcedError> {
    call_ctx_fn(a, off::CALIBRATE)
}

/// Calls the function pointer at `offset` in the ThreadCtx `%rsi` with it as
/// argument, on a 16-byte-aligned stack below the red zone.
fn call_ctx_fn(a: &mut CodeAssembler, offset: usize) -> Result<(), IcedError> {
    a.mov(r12, rsp)?;
    a.lea(rsp, qword_ptr(rsp - RED_ZONE as i32))?;
    a.and(rsp, -16)?;
    a.mov(rdi, rsi)?;
    a.call(qword_ptr(rsi + offset as i32))?;
    a.mov(rsp, r12)?;
    Ok(())
}

/// Whose control words the CPU holds when [`swap_control_words`] starts.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// The scavenger's, on its way out (`scav_out!`).
    Scavenger,
    /// The primary's, as the scavenger resumes (`scav_in!`).
    Primary,
}

/// The control-word half of the per-thread swap, as `scav_out!`/`scav_in!` in
/// msh-core: the current MXCSR and x87 control word are kept (the scavenger's in its
/// save area at `%rsp`, the primary's in the ThreadCtx at `%rsi`), and the other side's
/// are loaded only when the two differ (the whole MXCSR, sticky flags included).
/// Clobbers `%edx`.
fn swap_control_words(a: &mut CodeAssembler, current: Side) -> Result<(), IcedError> {
    let scavenger = (
        dword_ptr(rsp + off::SAVE_MXCSR as i32),
        word_ptr(rsp + off::SAVE_FPUCW as i32),
    );
    let primary = (
        dword_ptr(rsi + off::PRIMARY_MXCSR as i32),
        word_ptr(rsi + off::PRIMARY_FPUCW as i32),
    );
    let (keep, give) = match current {
        Side::Scavenger => (scavenger, primary),
        Side::Primary => (primary, scavenger),
    };
    a.stmxcsr(keep.0)?;
    a.fnstcw(keep.1)?;
    let mut differ = a.create_label();
    let mut same = a.create_label();
    a.mov(edx, scavenger.0)?;
    a.cmp(primary.0, edx)?;
    a.jne(differ)?;
    a.movzx(edx, scavenger.1)?;
    a.cmp(primary.1, dx)?;
    a.je(same)?;
    a.set_label(&mut differ)?;
    a.ldmxcsr(give.0)?;
    a.fldcw(give.1)?;
    a.set_label(&mut same)?;
    Ok(())
}

/// A budget check's cold path: everything live saved, then the scavenger's yield of
/// `msh_core::arch::yield_now` (one unit of quota; at zero, the `errno`/control-word
/// swap and the switch back to the primary), then the counter re-armed. Outside msh
/// or in a primary it parks the counter at `SCAV_BUDGET_IDLE` instead. When the flags
/// are live the hot part has skipped the red zone and pushed them already.
fn emit_budget_yield(
    a: &mut CodeAssembler,
    live: RegSet,
    budget: Budget,
    vector_width: usize,
    return_to: u64,
) -> Result<(), IcedError> {
    let wrapped = budget_keeps_flags(live);
    let saved = saved_registers(live).minus(RegSet::FLAGS);
    let s = save(a, saved, !wrapped, vector_width)?;

    let mut idle = a.create_label();
    let mut rearm = a.create_label();
    let mut switch_back = a.create_label();
    let mut resume = a.create_label();
    let mut done = a.create_label();
    a.mov(rsi, fs_slot(TCB_THREAD))?;
    a.test(rsi, rsi)?;
    a.jz(idle)?;
    a.mov(rcx, qword_ptr(rsi + off::RUNNING as i32))?;
    a.test(rcx, rcx)?;
    a.jz(idle)?;
    // A scavenger: on a sample run, the runtime measures the gap since the last
    // yield (the call clobbers %rsi and %rcx); then spend one unit of quota.
    a.inc(qword_ptr(rsi + off::SCAV_YIELDS as i32))?;
    let mut unsampled = a.create_label();
    a.cmp(qword_ptr(rsi + off::SAMPLE_START as i32), 0)?;
    a.je(unsampled)?;
    a.cmp(qword_ptr(rsi + off::ON_SAMPLED_YIELD as i32), 0)?;
    a.je(unsampled)?;
    call_ctx_fn(a, off::ON_SAMPLED_YIELD)?;
    a.mov(rsi, fs_slot(TCB_THREAD))?;
    a.mov(rcx, qword_ptr(rsi + off::RUNNING as i32))?;
    a.set_label(&mut unsampled)?;
    a.dec(qword_ptr(rsi + off::QUOTA as i32))?;
    a.jnz(rearm)?;
    // Quota spent: end a sample run if one is under way (the call clobbers %rsi, %rcx).
    a.cmp(qword_ptr(rsi + off::SAMPLE_START as i32), 0)?;
    a.je(switch_back)?;
    call_calibrate(a)?;
    a.mov(rsi, fs_slot(TCB_THREAD))?;
    a.mov(rcx, qword_ptr(rsi + off::RUNNING as i32))?;
    a.set_label(&mut switch_back)?;
    // Our errno and control words to the save area, the primary's back (`scav_out!`).
    a.sub(rsp, off::SCAV_SAVE_AREA as i32)?;
    a.mov(rax, qword_ptr(rsi + off::ERRNO_ADDR as i32))?;
    a.mov(edx, dword_ptr(rax))?;
    a.mov(dword_ptr(rsp + off::SAVE_ERRNO as i32), edx)?;
    a.mov(edx, dword_ptr(rsi + off::PRIMARY_ERRNO as i32))?;
    a.mov(dword_ptr(rax), edx)?;
    swap_control_words(a, Side::Scavenger)?;
    // We resume here at `resume`; the primary's next yield runs the next in the ring.
    a.mov(qword_ptr(rcx + off::CORO_SP as i32), rsp)?;
    a.lea(rdx, qword_ptr(resume))?;
    a.mov(qword_ptr(rcx + off::CORO_IP as i32), rdx)?;
    a.mov(rdx, qword_ptr(rcx + off::CORO_NEXT as i32))?;
    a.mov(fs_slot(TCB_NEXT), rdx)?;
    a.mov(qword_ptr(rsi + off::RUNNING as i32), 0)?;
    a.mov(rsp, qword_ptr(rsi + off::PRIMARY_SP as i32))?;
    a.jmp(qword_ptr(rsi + off::PRIMARY_IP as i32))?;
    // Resumed, perhaps on another thread (`scav_in!`): every register but %rsp garbage.
    a.set_label(&mut resume)?;
    a.endbr64()?;
    a.mov(rsi, fs_slot(TCB_THREAD))?;
    a.mov(rax, qword_ptr(rsi + off::ERRNO_ADDR as i32))?;
    a.mov(edx, dword_ptr(rax))?;
    a.mov(dword_ptr(rsi + off::PRIMARY_ERRNO as i32), edx)?;
    a.mov(edx, dword_ptr(rsp + off::SAVE_ERRNO as i32))?;
    a.mov(dword_ptr(rax), edx)?;
    swap_control_words(a, Side::Primary)?;
    a.add(rsp, off::SCAV_SAVE_AREA as i32)?;
    // A new quota, and now and then a sample run.
    a.mov(rax, qword_ptr(rsi + off::QUOTA_REFILL as i32))?;
    a.mov(qword_ptr(rsi + off::QUOTA as i32), rax)?;
    a.dec(qword_ptr(rsi + off::SAMPLE_COUNTDOWN as i32))?;
    a.jnz(rearm)?;
    call_calibrate(a)?;
    a.set_label(&mut rearm)?;
    a.mov(fs_slot(TCB_SCAV_BUDGET), budget.refill)?;
    a.jmp(done)?;
    a.set_label(&mut idle)?;
    a.mov(fs_slot(TCB_SCAV_BUDGET), SCAV_BUDGET_IDLE)?;
    a.set_label(&mut done)?;
    restore(a, &s, return_to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::RegSet;
    use iced_x86::{Decoder, DecoderOptions};

    #[test]
    fn hot_and_cold_round_trip() {
        // mov 0x10(%rdi),%rax ; add $1,%rax
        let bytes = [0x48, 0x8b, 0x47, 0x10, 0x48, 0x83, 0xc0, 0x01];
        let mut d = Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE);
        let insns: Vec<Instruction> = (0..2).map(|_| d.decode()).collect();
        for live in [
            RegSet::ALL.minus(RegSet::FLAGS),
            RegSet::ALL,
            RegSet::ALL.minus(RegSet::gpr(RCX)),
        ] {
            let yields = [YieldPoint {
                at: 0,
                live,
                budget: None,
            }];
            let hot0 = encode_hot(0x10_0000, &insns, &yields, 0x1008, &[0x5000_0000]).unwrap();
            let cold = encode_cold(0x20_0000, &yields, &hot0.return_ips, 16).unwrap();
            let hot = encode_hot(0x10_0000, &insns, &yields, 0x1008, &cold.switch_ips).unwrap();
            assert_eq!(hot.bytes.len(), hot0.bytes.len());
            assert_eq!(hot.return_ips, hot0.return_ips);
        }
    }

    #[test]
    fn budget_checks_round_trip_in_each_form() {
        // mov 0x10(%rdi),%rax ; add $1,%rax
        let bytes = [0x48, 0x8b, 0x47, 0x10, 0x48, 0x83, 0xc0, 0x01];
        let mut d = Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE);
        let insns: Vec<Instruction> = (0..2).map(|_| d.decode()).collect();
        let counter = Some(PassCounter {
            register: 11,
            mask: 63,
        });
        for (live, pass_counter) in [
            (RegSet::ALL.minus(RegSet::FLAGS), None),
            (RegSet::ALL, None),
            (
                RegSet::ALL.minus(RegSet::FLAGS).minus(RegSet::gpr(11)),
                counter,
            ),
        ] {
            let budget = Some(Budget {
                cost: 640,
                refill: 2000,
                pass_counter,
            });
            let yields = [YieldPoint {
                at: 0,
                live,
                budget,
            }];
            let hot0 = encode_hot(0x10_0000, &insns, &yields, 0x1008, &[0x5000_0000]).unwrap();
            let cold = encode_cold(0x20_0000, &yields, &hot0.return_ips, 32).unwrap();
            let hot = encode_hot(0x10_0000, &insns, &yields, 0x1008, &cold.switch_ips).unwrap();
            assert_eq!(hot.bytes.len(), hot0.bytes.len());
            assert_eq!(hot.return_ips, hot0.return_ips);
            // The hot part subtracts from %fs:0x80 (65 48 83/81 2c 25 80 00 00 00).
            let slot = [0x2c, 0x25, 0x80, 0x00, 0x00, 0x00];
            assert!(hot.bytes.windows(6).any(|w| w == slot));
        }
    }
}
