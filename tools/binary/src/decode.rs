//! Decoding with iced-x86, and the one answer to "is this instruction a load".
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, OpAccess, OpKind,
};

/// An instruction that reads memory through its explicit memory operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Index of the memory operand.
    pub operand: u32,
    /// Execution continues at the next instruction (not a `jmp`/`call` through
    /// memory). A cpu-clock sample's skid of one lands right after such a load, so
    /// only these can be charged with the samples at the next IP.
    pub falls_through: bool,
}

/// Classifies `instruction`: a load is an instruction whose explicit memory operand
/// is read (`mov rax,[rdi]`, `add rax,[rdi]`, `add dword [rdi],1`, `call [rax]`). Not
/// loads: operands that are only addressed (`lea`, `nop`, prefetches), stores, and
/// implicit accesses (`push`/`pop`/`ret` on the stack, string instructions).
pub fn classify_load(instruction: &Instruction, info: &mut InstructionInfoFactory) -> Option<Load> {
    let operand =
        (0..instruction.op_count()).find(|&i| instruction.op_kind(i) == OpKind::Memory)?;
    let access = info.info(instruction).op_access(operand);
    matches!(
        access,
        OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
    .then(|| Load {
        operand,
        falls_through: instruction.flow_control() == FlowControl::Next,
    })
}

/// Decodes `bytes` loaded at `address` until the end or the first invalid
/// instruction (data in text, or a bad bound: nothing past it is trusted).
pub fn decode_all(bytes: &[u8], address: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        out.push(instruction);
    }
    out
}

/// The first instruction of `bytes` loaded at `address`, if it decodes.
pub fn decode_one(bytes: &[u8], address: u64) -> Option<Instruction> {
    let instruction = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE).decode();
    (!instruction.is_invalid()).then_some(instruction)
}

/// Intel syntax with `0x` hex, as profiles and reports print instructions.
pub fn intel(instruction: &Instruction) -> String {
    let mut formatter = IntelFormatter::new();
    formatter.options_mut().set_hex_prefix("0x");
    formatter.options_mut().set_hex_suffix("");
    formatter.options_mut().set_uppercase_hex(false);
    let mut text = String::new();
    formatter.format(instruction, &mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_loads() {
        let mut info = InstructionInfoFactory::new();
        let load = |falls_through| Some(falls_through);
        let cases: [(&[u8], Option<bool>); 11] = [
            (&[0x48, 0x8b, 0x00], load(true)), // mov rax,[rax]
            (&[0x48, 0x03, 0x07], load(true)), // add rax,[rdi]
            (&[0x83, 0x07, 0x01], load(true)), // add dword [rdi],1 (read-modify-write)
            (&[0xff, 0x20], load(false)),      // jmp [rax]
            (&[0xff, 0x10], load(false)),      // call [rax]
            (&[0x48, 0x89, 0x07], None),       // mov [rdi],rax (store)
            (&[0x48, 0x8d, 0x47, 0x08], None), // lea rax,[rdi+8]
            (&[0x0f, 0x18, 0x0f], None),       // prefetcht0 [rdi]
            (&[0x0f, 0x1f, 0x40, 0x00], None), // nop dword [rax]
            (&[0x58], None),                   // pop rax (implicit stack)
            (&[0xc3], None),                   // ret
        ];
        for (bytes, expected) in cases {
            let instruction = decode_one(bytes, 0x1000).unwrap();
            assert_eq!(
                classify_load(&instruction, &mut info).map(|l| l.falls_through),
                expected,
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn decodes_and_formats() {
        let code = [0x48, 0x8b, 0x00, 0xc3, 0xff, 0xff];
        let all = decode_all(&code, 0x1000);
        assert_eq!(all.len(), 2, "stops at the invalid bytes");
        assert_eq!(intel(&all[0]), "mov rax,[rax]");
        assert_eq!(all[1].ip(), 0x1003);
    }
}
