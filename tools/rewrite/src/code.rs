//! Decoded code: functions, and every address that could be a jump target.
//!
//! E9Patch's rule (see the crate doc): a patch window may only cover instructions
//! after its first that nothing can jump to. "Nothing" must be proven, so the set of
//! possible targets ("leaders") is an over-approximation gathered from everywhere:
//! direct branch and call targets anywhere in the object, return addresses (after
//! every call), function and symbol starts, code addresses materialised by `lea`,
//! immediates, data words and relocations, and the entries of relative jump tables.

use crate::elf::Image;
use crate::skip::Skip;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};
use std::collections::HashSet;

/// A function whose instructions were decoded from its start to its end.
pub struct Function {
    /// First address.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Its symbol, when the object has one.
    pub name: Option<String>,
    /// Its instructions in address order.
    pub insns: Vec<Instruction>,
    /// Why none of its loads may be patched, if so.
    pub unpatchable: Option<Skip>,
    /// It has PIC jump tables, and every entry of every one lands inside it: its
    /// table dispatches cannot leave it.
    pub jump_tables_local: bool,
    /// Widest vector register its own instructions use, in bytes (16, 32 or 64).
    pub vector_width: usize,
}

impl Function {
    /// Index of the instruction starting exactly at `ip`.
    pub fn index_of(&self, ip: u64) -> Option<usize> {
        self.insns.binary_search_by_key(&ip, |i| i.ip()).ok()
    }
}

/// An object's decoded code: its functions and every possible jump target.
pub struct Code {
    /// Functions in address order.
    pub functions: Vec<Function>,
    /// Every address something might jump to (an over-approximation).
    pub leaders: HashSet<u64>,
    /// Instruction starts found by linear sweep of code outside any function.
    pub unowned_insns: HashSet<u64>,
    /// Widest vector register used anywhere in the object, in bytes (16, 32 or 64).
    pub vector_width: usize,
    /// Targets of direct branches and calls from code whose liveness is not analysed
    /// (outside any function, or in a function that does not decode): the functions
    /// there cannot assume their callers follow the ABI.
    pub targets_of_unanalysed_code: HashSet<u64>,
    /// Targets of direct calls: entries of real functions (a `.cold` fragment is only
    /// ever jumped to).
    pub call_targets: HashSet<u64>,
}

const MAX_JUMP_TABLE_ENTRIES: usize = 1 << 16;

impl Code {
    /// Decodes every function of `image` and gathers its possible jump targets.
    pub fn analyse(image: &Image) -> Code {
        let mut leaders: HashSet<u64> = HashSet::new();
        leaders.extend(image.code_symbol_starts.iter().copied());
        leaders.extend(
            image
                .relocated_pointers
                .iter()
                .copied()
                .filter(|&a| image.is_code(a)),
        );

        let mut functions = Vec::with_capacity(image.functions.len());
        for bounds in &image.functions {
            leaders.insert(bounds.start);
            let Some(bytes) = image.bytes_at(bounds.start, bounds.end - bounds.start) else {
                continue;
            };
            if !image.is_code(bounds.start) {
                continue;
            }
            let (insns, clean) = decode_range(bytes, bounds.start);
            let in_plt = image
                .exec_sections()
                .any(|s| s.name.starts_with(".plt") && s.contains(bounds.start));
            let unpatchable = if !clean {
                Some(Skip::Undecodable)
            } else if in_plt {
                Some(Skip::PltStub)
            } else if bounds.has_lsda {
                Some(Skip::LandingPads)
            } else if insns.iter().any(uses_x87_or_mmx) {
                Some(Skip::X87OrMmx)
            } else {
                None
            };
            functions.push(Function {
                start: bounds.start,
                end: bounds.end,
                name: bounds.name.clone(),
                insns,
                unpatchable,
                jump_tables_local: false,
                vector_width: 16,
            });
        }

        // Code no function covers: sweep it too, for the targets it branches to.
        let mut unowned_insns = HashSet::new();
        let mut targets_of_unanalysed_code = HashSet::new();
        for f in functions
            .iter()
            .filter(|f| f.unpatchable == Some(Skip::Undecodable))
        {
            targets_of_unanalysed_code.extend(f.insns.iter().filter_map(direct_target));
        }
        for section in image.exec_sections() {
            let Some(bytes) = image.bytes_at(section.addr, section.size) else {
                continue;
            };
            let mut at = section.addr;
            let end = section.addr + section.size;
            let mut fi = functions.partition_point(|f| f.end <= at);
            while at < end {
                if let Some(f) = functions.get(fi).filter(|f| f.start <= at) {
                    at = at.max(f.end);
                    fi += 1;
                    continue;
                }
                let gap_end = functions.get(fi).map_or(end, |f| f.start.min(end));
                let slice = &bytes[(at - section.addr) as usize..(gap_end - section.addr) as usize];
                let (insns, _) = decode_range(slice, at);
                for insn in &insns {
                    unowned_insns.insert(insn.ip());
                    targets_of_unanalysed_code.extend(direct_target(insn));
                    note_targets(image, insn, &mut leaders);
                }
                at = gap_end;
            }
        }

        let mut vector_width = 16;
        for f in &mut functions {
            let mut has_indirect_jump = false;
            for insn in &f.insns {
                note_targets(image, insn, &mut leaders);
                has_indirect_jump |= insn.flow_control() == FlowControl::IndirectBranch;
                f.vector_width = f.vector_width.max(widest_vector(insn));
            }
            vector_width = vector_width.max(f.vector_width);
            if has_indirect_jump {
                let mut targets = Vec::new();
                for insn in &f.insns {
                    if insn.is_ip_rel_memory_operand() {
                        scan_relative_jump_table(image, insn.ip_rel_memory_address(), &mut targets);
                    }
                }
                f.jump_tables_local =
                    !targets.is_empty() && targets.iter().all(|&t| f.start <= t && t < f.end);
                leaders.extend(targets);
            }
        }
        scan_data_for_code_pointers(image, &mut leaders);
        let call_targets = functions
            .iter()
            .flat_map(|f| f.insns.iter())
            .filter(|i| i.flow_control() == FlowControl::Call)
            .filter_map(direct_target)
            .collect();
        Code {
            call_targets,
            functions,
            leaders,
            unowned_insns,
            vector_width,
            targets_of_unanalysed_code,
        }
    }

    /// The function whose bounds hold `addr`.
    pub fn function_containing(&self, addr: u64) -> Option<&Function> {
        self.index_containing(addr).map(|i| &self.functions[i])
    }

    /// Index of the function whose bounds hold `addr`.
    pub fn index_containing(&self, addr: u64) -> Option<usize> {
        let i = self.functions.partition_point(|f| f.end <= addr);
        self.functions.get(i).filter(|f| f.start <= addr).map(|_| i)
    }
}

/// Decodes `bytes` at `ip`; `false` if an invalid instruction was met or the last one
/// ran past the end.
fn decode_range(bytes: &[u8], ip: u64) -> (Vec<Instruction>, bool) {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut insns = Vec::with_capacity(bytes.len() / 4);
    let mut clean = true;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            clean = false;
            // Resynchronise one byte further, as a linear sweep does.
            let next = decoder.ip() - ip;
            if next as usize >= bytes.len() {
                break;
            }
            continue;
        }
        insns.push(insn);
    }
    (insns, clean)
}

/// Is the indirect jump at `i` a PIC jump-table dispatch? GCC and Clang load the
/// entry with `movslq (base,index,4)` a few instructions before the `jmp`.
pub fn is_table_dispatch(f: &Function, i: usize) -> bool {
    f.jump_tables_local
        && f.insns[i.saturating_sub(4)..i].iter().any(|insn| {
            insn.mnemonic() == Mnemonic::Movsxd
                && insn.op_count() == 2
                && insn.op_kind(1) == OpKind::Memory
                && insn.memory_index_scale() == 4
                && insn.memory_index() != Register::None
                && insn.memory_base() != Register::None
        })
}

/// The target of a direct jump, conditional jump or call.
pub fn direct_target(insn: &Instruction) -> Option<u64> {
    let direct = matches!(
        insn.op0_kind(),
        OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
    );
    let branch = matches!(
        insn.flow_control(),
        FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call
    );
    (direct && branch).then(|| insn.near_branch_target())
}

fn uses_x87_or_mmx(insn: &Instruction) -> bool {
    use iced_x86::CpuidFeature;
    insn.cpuid_features().iter().any(|f| {
        matches!(
            f,
            CpuidFeature::FPU | CpuidFeature::MMX | CpuidFeature::FPU287 | CpuidFeature::FPU387
        )
    })
}

fn widest_vector(insn: &Instruction) -> usize {
    let mut width = 16;
    for i in 0..insn.op_count() {
        if insn.op_kind(i) == OpKind::Register {
            let r = insn.op_register(i);
            if r.is_ymm() {
                width = width.max(32);
            } else if r.is_zmm() || r.is_k() {
                width = width.max(64);
            }
        }
    }
    if insn.op_mask() != Register::None {
        width = width.max(64);
    }
    width
}

/// Records every code address this instruction could transfer control to or
/// materialise as a pointer.
fn note_targets(image: &Image, insn: &Instruction, leaders: &mut HashSet<u64>) {
    match insn.flow_control() {
        FlowControl::ConditionalBranch
        | FlowControl::UnconditionalBranch
        | FlowControl::Call
        | FlowControl::XbeginXabortXend => {
            if matches!(
                insn.op0_kind(),
                OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
            ) {
                leaders.insert(insn.near_branch_target());
            }
        }
        _ => {}
    }
    if matches!(
        insn.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall
    ) {
        leaders.insert(insn.next_ip());
    }
    if insn.is_ip_rel_memory_operand() {
        let target = insn.ip_rel_memory_address();
        if image.is_code(target) {
            leaders.insert(target);
        }
    } else if insn.op_count() > 0 && (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
    {
        let displacement = insn.memory_displacement64();
        if insn.memory_base() == Register::None && image.is_code(displacement) {
            leaders.insert(displacement);
        }
    }
    for i in 0..insn.op_count() {
        let value = match insn.op_kind(i) {
            OpKind::Immediate32
            | OpKind::Immediate32to64
            | OpKind::Immediate64
            | OpKind::Immediate8to64 => insn.immediate(i),
            _ => continue,
        };
        if image.is_code(value) {
            leaders.insert(value);
        }
    }
    if insn.mnemonic() == Mnemonic::Endbr64 {
        leaders.insert(insn.ip());
    }
}

/// GCC and Clang emit PIC jump tables as 32-bit offsets from the table's own address,
/// loaded by `lea table(%rip)`. Every entry that lands in code is a possible target;
/// the scan stops at the first one that does not (over-reading only adds targets).
fn scan_relative_jump_table(image: &Image, table: u64, targets: &mut Vec<u64>) {
    if image.is_code(table) {
        return;
    }
    for k in 0..MAX_JUMP_TABLE_ENTRIES as u64 {
        let Some(bytes) = image.bytes_at(table + 4 * k, 4) else {
            return;
        };
        let entry = i32::from_le_bytes(bytes.try_into().unwrap());
        let target = table.wrapping_add(entry as i64 as u64);
        if !image.is_code(target) {
            return;
        }
        targets.push(target);
    }
}

/// Absolute code pointers stored in data (non-PIE jump tables, function pointer
/// tables, vtables): every aligned 8-byte word whose value lies in code.
fn scan_data_for_code_pointers(image: &Image, leaders: &mut HashSet<u64>) {
    for section in image.sections.iter().filter(|s| !s.exec) {
        let Some(bytes) = image.bytes_at(section.addr, section.size) else {
            continue;
        };
        let skew = ((8 - section.addr % 8) % 8) as usize;
        for word in bytes.get(skew..).unwrap_or(&[]).chunks_exact(8) {
            let value = u64::from_le_bytes(word.try_into().unwrap());
            if image.is_code(value) {
                leaders.insert(value);
            }
        }
    }
}

/// A function of `bytes` decoded at 0x1000, for the unit tests of the passes.
#[cfg(test)]
pub(crate) fn test_function(bytes: &[u8]) -> Function {
    let mut decoder = iced_x86::Decoder::with_ip(64, bytes, 0x1000, iced_x86::DecoderOptions::NONE);
    let mut insns = Vec::new();
    while decoder.can_decode() {
        insns.push(decoder.decode());
    }
    Function {
        start: 0x1000,
        end: 0x1000 + bytes.len() as u64,
        name: None,
        insns,
        unpatchable: None,
        jump_tables_local: false,
        vector_width: 16,
    }
}
