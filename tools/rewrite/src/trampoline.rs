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

use crate::liveness::{RegSet, RBP, RCX, RSP};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction, MemoryOperand, Register};
use msh_core::abi::{off, RED_ZONE, TCB_NEXT, TCB_THREAD};

/// A load inside a window that gets a prefetch and a yield before it.
pub struct YieldPoint {
    /// Index, within the window's instructions, of the load to yield before.
    pub at: usize,
    /// Registers live just before the load.
    pub live: RegSet,
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
    for (k, insn) in insns.iter().enumerate() {
        let Some((y, &switch)) = yields.iter().zip(switch_ips).find(|(y, _)| y.at == k) else {
            a.add_instruction(*insn)?;
            continue;
        };
        let mut back = a.create_label();
        let mut unwrapped = None;
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
        emit_switch(
            &mut a,
            y.live,
            FastPath::for_live(y.live),
            vector_width,
            return_to,
        )?;
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
    } else {
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
    let vectors: Vec<u32> = saved.vectors().filter(|&v| v < 16).collect();
    let (store, load) = if vector_width >= 32 {
        (Code::VEX_Vmovdqu_ymmm256_ymm, Code::VEX_Vmovdqu_ymm_ymmm256)
    } else {
        (Code::Movdqu_xmmm128_xmm, Code::Movdqu_xmm_xmmm128)
    };
    let slot = vector_width.min(32) as i64;
    let vector_bytes = slot * vectors.len() as i64;
    if !vectors.is_empty() {
        a.lea(rsp, qword_ptr(rsp - vector_bytes as i32))?;
        for (i, &v) in vectors.iter().enumerate() {
            let mem = MemoryOperand::with_base_displ(Register::RSP, slot * i as i64);
            a.add_instruction(Instruction::with2(
                store,
                mem,
                vector_register(v, vector_width),
            )?)?;
        }
    }

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

    if !vectors.is_empty() {
        for (i, &v) in vectors.iter().enumerate() {
            let mem = MemoryOperand::with_base_displ(Register::RSP, slot * i as i64);
            a.add_instruction(Instruction::with2(
                load,
                vector_register(v, vector_width),
                mem,
            )?)?;
        }
        a.lea(rsp, qword_ptr(rsp + vector_bytes as i32))?;
    }
    if saved.has_flags() {
        a.pop(rax)?;
        a.add(al, 0x7f)?; // OF from %al
        a.sahf()?; // SF ZF AF PF CF from %ah
    }
    for &n in gprs.iter().rev() {
        a.add_instruction(Instruction::with1(Code::Pop_r64, GPRS[n as usize])?)?;
    }
    a.pop(rbp)?;
    if path != FastPath::RcxWrapped {
        a.lea(rsp, qword_ptr(rsp + RED_ZONE as i32))?;
    }
    a.jmp(return_to)?;
    Ok(())
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
            let yields = [YieldPoint { at: 0, live }];
            let hot0 = encode_hot(0x10_0000, &insns, &yields, 0x1008, &[0x5000_0000]).unwrap();
            let cold = encode_cold(0x20_0000, &yields, &hot0.return_ips, 16).unwrap();
            let hot = encode_hot(0x10_0000, &insns, &yields, 0x1008, &cold.switch_ips).unwrap();
            assert_eq!(hot.bytes.len(), hot0.bytes.len());
            assert_eq!(hot.return_ips, hot0.return_ips);
        }
    }
}
