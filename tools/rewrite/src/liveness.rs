//! Which registers are live before each instruction of a function.
//!
//! A yield clobbers every register but `%rsp` (core/src/abi.rs), so a trampoline saves
//! exactly the registers live at its site. The analysis is a backward dataflow over the
//! function's instructions with deliberately conservative boundaries:
//! - at `ret`, what the callers need: the SysV callee-saved and return registers, plus
//!   whatever a caller in this object keeps live across its call (GCC's `-fipa-ra` lets
//!   callers keep values in caller-saved registers across a call to a function known
//!   not to clobber them); `interproc` solves this over the call graph.
//! - at a jump out of the function, an indirect jump, or falling off the end, EVERY
//!   register is live (flags too, except at indirect jumps).
//! - a call reads the argument registers and kills nothing (`-fipa-ra` again).
//! - instructions whose effect is unknown (traps, `xbegin`) make everything live.

use iced_x86::{
    EncodingKind, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register,
    RflagsBits,
};

/// A set of registers: bits 0-15 the GPRs in encoding order (rax, rcx, rdx, rbx, rsp,
/// rbp, rsi, rdi, r8-r15), bits 16-47 vector registers 0-31, bit 48 the status flags.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct RegSet(pub u64);

/// The GPRs' names by encoding number.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
/// Encoding number of `%rax`.
pub const RAX: u32 = 0;
/// Encoding number of `%rcx`.
pub const RCX: u32 = 1;
/// Encoding number of `%rdx`.
pub const RDX: u32 = 2;
/// Encoding number of `%rsp`.
pub const RSP: u32 = 4;
/// Encoding number of `%rbp`.
pub const RBP: u32 = 5;
/// Encoding number of `%rsi`.
pub const RSI: u32 = 6;
/// Encoding number of `%rdi`.
pub const RDI: u32 = 7;
/// Encoding number of `%r8`.
pub const R8: u32 = 8;
/// Encoding number of `%r9`.
pub const R9: u32 = 9;
/// Encoding number of `%r10`.
pub const R10: u32 = 10;
/// Encoding number of `%r11`.
pub const R11: u32 = 11;
const VEC_BASE: u32 = 16;
const FLAGS_BIT: u32 = 48;
const STATUS_FLAGS: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::PF
    | RflagsBits::CF;

impl RegSet {
    /// No register.
    pub const EMPTY: RegSet = RegSet(0);
    /// The status flags.
    pub const FLAGS: RegSet = RegSet(1 << FLAGS_BIT);
    /// All sixteen GPRs.
    pub const ALL_GPRS: RegSet = RegSet(0xffff);
    /// Vector registers 0-15 (the ones without AVX-512).
    pub const LOW_VECTORS: RegSet = RegSet(0xffff << VEC_BASE);
    /// What an unknown callee may read: every GPR, the low vectors and the flags.
    pub const ALL: RegSet = RegSet(Self::ALL_GPRS.0 | Self::LOW_VECTORS.0 | Self::FLAGS.0);

    /// GPR number `n` (encoding order).
    pub const fn gpr(n: u32) -> RegSet {
        RegSet(1 << n)
    }
    /// Vector register number `n`.
    pub const fn vector(n: u32) -> RegSet {
        RegSet(1 << (VEC_BASE + n))
    }
    /// Registers in either set.
    pub fn union(self, other: RegSet) -> RegSet {
        RegSet(self.0 | other.0)
    }
    /// Registers in `self` but not in `other`.
    pub fn minus(self, other: RegSet) -> RegSet {
        RegSet(self.0 & !other.0)
    }
    /// Whether every register of `other` is in `self`.
    pub fn contains(self, other: RegSet) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether the status flags are in the set.
    pub fn has_flags(self) -> bool {
        self.contains(Self::FLAGS)
    }
    /// The GPR numbers in the set.
    pub fn gprs(self) -> impl Iterator<Item = u32> {
        (0..16).filter(move |n| self.0 & (1 << n) != 0)
    }
    /// The vector register numbers in the set.
    pub fn vectors(self) -> impl Iterator<Item = u32> {
        (0..32).filter(move |n| self.0 & (1 << (VEC_BASE + n)) != 0)
    }
    /// Names for the report: `rbx`, `xmm3` (at the given vector width), `flags`.
    pub fn names(self, vector_prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .gprs()
            .map(|n| GPR_NAMES[n as usize].to_string())
            .collect();
        out.extend(self.vectors().map(|n| format!("{vector_prefix}{n}")));
        if self.has_flags() {
            out.push("flags".into());
        }
        out
    }
}

/// The bit of a register, if it is one the analysis tracks.
pub fn reg_bit(reg: Register) -> Option<RegSet> {
    if reg.is_gpr() {
        let full = reg.full_register();
        let n = full as u32 - Register::RAX as u32;
        return (n < 16).then(|| RegSet::gpr(n));
    }
    if reg.is_xmm() || reg.is_ymm() || reg.is_zmm() {
        return Some(RegSet::vector(reg.number() as u32));
    }
    None
}

/// What the SysV ABI passes in registers to a call.
pub fn call_arguments() -> RegSet {
    let mut set = RegSet::EMPTY;
    for n in [RAX, RDI, RSI, RDX, RCX, R8, R9] {
        set = set.union(RegSet::gpr(n));
    }
    for v in 0..8 {
        set = set.union(RegSet::vector(v));
    }
    set
}

/// Registers one instruction reads (`uses`) and overwrites completely (`defs`).
#[derive(Clone, Copy, Default, Debug)]
pub struct Effect {
    /// Registers read.
    pub uses: RegSet,
    /// Registers overwritten completely.
    pub defs: RegSet,
}

/// `vector_width_bytes`: the widest vector register the object uses. A legacy-SSE write
/// to an xmm register keeps the upper lanes, so it only kills when nothing wider is used.
pub fn effect(
    factory: &mut InstructionInfoFactory,
    instr: &Instruction,
    vector_width_bytes: usize,
) -> Effect {
    let mut e = Effect::default();
    let info = factory.info(instr);
    for used in info.used_registers() {
        let reg = used.register();
        let Some(bit) = reg_bit(reg) else { continue };
        match used.access() {
            OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite => {
                e.uses = e.uses.union(bit);
            }
            OpAccess::Write => {
                let kills = if reg.is_gpr() {
                    reg.is_gpr64() || reg.is_gpr32()
                } else {
                    instr.encoding() != EncodingKind::Legacy || reg.size() >= vector_width_bytes
                };
                if kills {
                    e.defs = e.defs.union(bit);
                }
            }
            _ => {}
        }
    }
    if instr.rflags_read() != 0 {
        e.uses = e.uses.union(RegSet::FLAGS);
    }
    if instr.rflags_modified() & STATUS_FLAGS == STATUS_FLAGS {
        e.defs = e.defs.union(RegSet::FLAGS);
    }
    match instr.mnemonic() {
        Mnemonic::Syscall => {
            for n in [RAX, RDI, RSI, RDX, R10, R8, R9] {
                e.uses = e.uses.union(RegSet::gpr(n));
            }
            e.defs = e
                .defs
                .union(RegSet::gpr(RAX))
                .union(RegSet::gpr(RCX))
                .union(RegSet::gpr(R11));
        }
        // Register-zeroing idioms read nothing.
        Mnemonic::Xor
        | Mnemonic::Pxor
        | Mnemonic::Xorps
        | Mnemonic::Xorpd
        | Mnemonic::Sub
        | Mnemonic::Vpxor
        | Mnemonic::Vxorps
        | Mnemonic::Vxorpd
            if zeroing_idiom(instr) =>
        {
            e.uses = e.uses.minus(e.defs).minus(RegSet::FLAGS);
        }
        _ => {}
    }
    match instr.flow_control() {
        FlowControl::Call | FlowControl::IndirectCall => {
            e.uses = e.uses.union(call_arguments());
            e.defs = RegSet::EMPTY;
        }
        _ => {}
    }
    // %rsp is never saved by a trampoline: keep it out of the sets.
    e.uses = e.uses.minus(RegSet::gpr(RSP));
    e.defs = e.defs.minus(RegSet::gpr(RSP));
    e
}

fn zeroing_idiom(instr: &Instruction) -> bool {
    use iced_x86::OpKind;
    let n = instr.op_count();
    n >= 2 && (0..n).all(|i| instr.op_kind(i) == OpKind::Register) && {
        let first = instr.op_register(n - 2);
        first == instr.op_register(n - 1)
            && (n == 2 || instr.op_register(0).full_register() == first.full_register())
    }
}

/// Where control goes after an instruction, as the dataflow sees it.
#[derive(Clone, Debug)]
pub enum Successors {
    /// Fall through and/or branch to instructions of this function (by index).
    Local(Vec<usize>),
    /// Leaves the function: this is what is live on the way out (plus any local ones).
    Exit {
        /// Registers live where it leaves.
        live: RegSet,
        /// Instructions of this function it may also go to.
        local: Vec<usize>,
    },
    /// `ret`: what the function's callers need preserved (see `interproc`).
    Return,
    /// A tail call: the callee's arguments, what our callers need (it returns to
    /// them), and any local successors.
    TailCall {
        /// Instructions of this function it may also go to.
        local: Vec<usize>,
    },
}

/// Live-in sets per instruction, by iterating to a fixpoint; `at_return` is what is
/// live at a `ret`.
pub fn live_in(effects: &[Effect], successors: &[Successors], at_return: RegSet) -> Vec<RegSet> {
    let n = effects.len();
    let mut live = vec![RegSet::EMPTY; n];
    let mut changed = true;
    while changed {
        changed = false;
        for i in (0..n).rev() {
            let out = match &successors[i] {
                Successors::Local(next) => next
                    .iter()
                    .fold(RegSet::EMPTY, |acc, &s| acc.union(live[s])),
                Successors::Exit { live: exit, local } => {
                    local.iter().fold(*exit, |acc, &s| acc.union(live[s]))
                }
                Successors::Return => at_return,
                Successors::TailCall { local } => local
                    .iter()
                    .fold(at_return.union(call_arguments()), |acc, &s| {
                        acc.union(live[s])
                    }),
            };
            let new = effects[i].uses.union(out.minus(effects[i].defs));
            if new != live[i] {
                live[i] = new;
                changed = true;
            }
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE);
        let mut v = Vec::new();
        while d.can_decode() {
            v.push(d.decode());
        }
        v
    }

    #[test]
    fn effects_of_common_instructions() {
        let mut f = InstructionInfoFactory::new();
        // mov (%rdi),%eax: reads rdi, kills rax (32-bit write zero-extends).
        let i = decode(&[0x8b, 0x07]);
        let e = effect(&mut f, &i[0], 16);
        assert_eq!(e.uses, RegSet::gpr(RDI));
        assert_eq!(e.defs, RegSet::gpr(RAX));
        // mov (%rdi),%al: partial write, not a kill.
        let e = effect(&mut f, &decode(&[0x8a, 0x07])[0], 16);
        assert_eq!(e.defs, RegSet::EMPTY);
        // cmp %rsi,%rdi: defines flags.
        let e = effect(&mut f, &decode(&[0x48, 0x39, 0xf7])[0], 16);
        assert!(e.defs.has_flags() && !e.uses.has_flags());
        // jne: reads flags.
        let e = effect(&mut f, &decode(&[0x75, 0x00])[0], 16);
        assert!(e.uses.has_flags());
        // xor %eax,%eax: reads nothing.
        let e = effect(&mut f, &decode(&[0x31, 0xc0])[0], 16);
        assert_eq!(e.uses, RegSet::EMPTY);
        assert!(e.defs.contains(RegSet::gpr(RAX)));
        // inc %rax: leaves CF, so does not define the flags.
        let e = effect(&mut f, &decode(&[0x48, 0xff, 0xc0])[0], 16);
        assert!(!e.defs.has_flags());
        // movaps %xmm1,%xmm0 kills xmm0 only when nothing wider than xmm is in use.
        let i = decode(&[0x0f, 0x28, 0xc1]);
        assert!(effect(&mut f, &i[0], 16).defs.contains(RegSet::vector(0)));
        assert!(!effect(&mut f, &i[0], 32).defs.contains(RegSet::vector(0)));
        // call: reads arguments, kills nothing.
        let e = effect(&mut f, &decode(&[0xe8, 0, 0, 0, 0])[0], 16);
        assert!(e.uses.contains(RegSet::gpr(RDI)) && e.defs == RegSet::EMPTY);
    }

    #[test]
    fn dataflow_through_a_loop() {
        // 0: mov (%rdi),%rax ; 1: add %rax,%rbx ; 2: jne 0 ; 3: ret
        let effects = vec![
            Effect {
                uses: RegSet::gpr(RDI),
                defs: RegSet::gpr(RAX),
            },
            Effect {
                uses: RegSet::gpr(RAX).union(RegSet::gpr(3)),
                defs: RegSet::gpr(3).union(RegSet::FLAGS),
            },
            Effect {
                uses: RegSet::FLAGS,
                defs: RegSet::EMPTY,
            },
            Effect::default(),
        ];
        let ret_live = RegSet::gpr(3);
        let succ = vec![
            Successors::Local(vec![1]),
            Successors::Local(vec![2]),
            Successors::Local(vec![0, 3]),
            Successors::Return,
        ];
        let live = live_in(&effects, &succ, ret_live);
        assert_eq!(live[0], RegSet::gpr(RDI).union(RegSet::gpr(3)));
        assert!(live[2].has_flags());
        assert!(!live[0].has_flags());
    }
}
