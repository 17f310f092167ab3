//! Recomputing the data address of a sampled load from the user registers of a
//! cpu-clock sample.
//!
//! A sample with a skid of one is taken right after the load retired, so the
//! registers are those the load left behind. Its address `base + index*scale + disp`
//! can be recomputed when the load did not overwrite its base or index register
//! (`add rbx,[rdx+rax*8]`: yes; `mov eax,[rdx+rax*4]`: no, rax is gone). One
//! overwrite is still useful: a load that replaces its own base with the value it
//! read (`mov rax,[rax+8]`, `p = p->next`) leaves the *next* address this load will
//! read, `rax+8`; when those values look like user-space pointers, that is a sample
//! of the chased nodes ([`Recovery::Chased`]).
use crate::perf::Regs;
use iced_x86::{Instruction, InstructionInfoFactory, OpAccess, Register};

/// What the registers of one sample say about the load's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The address this execution read.
    Recovered(u64),
    /// The load overwrote its own base with what it read: the address the next
    /// execution reads, if the value is a pointer. The register is named for the
    /// case it is not.
    Chased(u64, Register),
    /// The address cannot be known from the registers; why.
    Unrecoverable(String),
}

/// Recomputes the address `load` (decoded at its ELF address) read, from the
/// registers of a sample whose IP, `runtime_next_ip`, is the instruction after it.
pub fn recover(
    load: &Instruction,
    info: &mut InstructionInfoFactory,
    regs: &Regs,
    runtime_next_ip: u64,
) -> Recovery {
    let base = load.memory_base();
    let index = load.memory_index();
    let displacement = load.memory_displacement64();
    if matches!(load.memory_segment(), Register::FS | Register::GS) {
        return Recovery::Unrecoverable("fs/gs-relative".into());
    }
    if base == Register::RIP {
        // iced gives the absolute target for the ELF address it decoded at.
        return Recovery::Recovered(
            displacement
                .wrapping_sub(load.next_ip())
                .wrapping_add(runtime_next_ip),
        );
    }
    if index.is_vector_register() {
        return Recovery::Unrecoverable("vector index (gather)".into());
    }
    let written: Vec<Register> = info
        .info(load)
        .used_registers()
        .iter()
        .filter(|r| {
            matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .map(|r| r.register().full_register())
        .collect();
    let clobbered = |r: Register| r != Register::None && written.contains(&r.full_register());
    let value = |r: Register| -> Option<u64> {
        if r == Register::None {
            return Some(0);
        }
        let v = regs.get(r.full_register())?;
        Some(if r.size() == 4 { v & 0xffff_ffff } else { v })
    };
    if clobbered(index) {
        return Recovery::Unrecoverable(format!("{} overwritten", name(index)));
    }
    if clobbered(base) {
        return match (index, value(base)) {
            (Register::None, Some(next)) => Recovery::Chased(next.wrapping_add(displacement), base),
            _ => Recovery::Unrecoverable(format!("{} overwritten", name(base))),
        };
    }
    let (Some(b), Some(i)) = (value(base), value(index)) else {
        return Recovery::Unrecoverable("register not sampled".into());
    };
    let address = b
        .wrapping_add(i.wrapping_mul(u64::from(load.memory_index_scale())))
        .wrapping_add(displacement);
    Recovery::Recovered(if base.size() == 4 || index.size() == 4 {
        address & 0xffff_ffff
    } else {
        address
    })
}

/// `rax`, as the profile names registers.
pub fn name(register: Register) -> String {
    format!("{register:?}").to_lowercase()
}

/// Whether `value` can be a user-space data address on x86-64 (above the first
/// 64 KiB, below the 47-bit canonical limit).
pub fn looks_like_pointer(value: u64) -> bool {
    (0x1_0000..0x8000_0000_0000).contains(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msh_binary::decode::decode_one;

    const NEXT: u64 = 0x1003;

    fn regs(pairs: &[(Register, u64)]) -> Regs {
        let mut regs = Regs([0; Regs::COUNT]);
        for (r, v) in pairs {
            regs.0[Regs::index(*r).unwrap()] = *v;
        }
        regs
    }

    fn recover_bytes(bytes: &[u8], regs: &Regs, runtime_next_ip: u64) -> Recovery {
        let load = decode_one(bytes, 0x1000).unwrap();
        recover(
            &load,
            &mut InstructionInfoFactory::new(),
            regs,
            runtime_next_ip,
        )
    }

    #[test]
    fn base_and_index_intact() {
        // add rbx,[rdx+rax*8+0x10]
        let r = regs(&[(Register::RDX, 0x7000_0000), (Register::RAX, 3)]);
        assert_eq!(
            recover_bytes(&[0x48, 0x03, 0x5c, 0xc2, 0x10], &r, NEXT + 2),
            Recovery::Recovered(0x7000_0000 + 24 + 0x10)
        );
    }

    #[test]
    fn index_overwritten_by_the_load() {
        // mov eax,[rdx+rax*4]: eax is written, so rax is gone.
        let r = regs(&[(Register::RDX, 0x7000_0000), (Register::RAX, 3)]);
        assert_eq!(
            recover_bytes(&[0x8b, 0x04, 0x82], &r, NEXT),
            Recovery::Unrecoverable("rax overwritten".into())
        );
    }

    #[test]
    fn a_chase_leaves_the_next_address() {
        // mov rax,[rax+8]: rax now holds the next node; the next read is rax+8.
        let r = regs(&[(Register::RAX, 0x5555_0000)]);
        assert_eq!(
            recover_bytes(&[0x48, 0x8b, 0x40, 0x08], &r, NEXT + 1),
            Recovery::Chased(0x5555_0008, Register::RAX)
        );
        assert!(looks_like_pointer(0x5555_0008) && !looks_like_pointer(42));
    }

    #[test]
    fn rip_relative_follows_the_load_address() {
        // mov eax,[rip+0x100], decoded at 0x1000 (6 bytes), running at 0x5000.
        let load = [0x8b, 0x05, 0x00, 0x01, 0x00, 0x00];
        assert_eq!(
            recover_bytes(&load, &regs(&[]), 0x5006),
            Recovery::Recovered(0x5006 + 0x100)
        );
    }

    #[test]
    fn thread_local_is_unrecoverable() {
        // mov rax,fs:[0x28]
        let load = [0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00];
        assert!(matches!(
            recover_bytes(&load, &regs(&[]), NEXT),
            Recovery::Unrecoverable(_)
        ));
    }
}
