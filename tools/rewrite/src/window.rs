//! Choosing patch windows: runs of whole instructions, at least 5 bytes (a `jmp rel32`),
//! inside one basic block, that no jump can enter except at their first instruction.

use crate::code::Function;
use crate::skip::Skip;
use iced_x86::{FlowControl, Instruction, Mnemonic};
use std::collections::HashSet;

/// Bytes of the `jmp rel32` that replaces a window.
pub const JMP_REL32_LEN: u64 = 5;
/// How many instructions before the load a window may start.
const MAX_BACKWARD: usize = 4;
/// How many instructions a window may hold at most.
const MAX_INSNS: usize = 6;

/// Instruction indices `first..=last` of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Index of the first instruction.
    pub first: usize,
    /// Index of the last instruction.
    pub last: usize,
}

/// What a window may not break.
pub struct Rules<'a> {
    /// Addresses something may jump to: only a window's first instruction may be one.
    pub leaders: &'a HashSet<u64>,
    /// Sorted addresses dynamic relocations write to.
    pub text_relocations: &'a [u64],
    /// A call may end a window (its return address then lies in the trampoline).
    pub allow_call: bool,
}

fn is_endbr(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Endbr64 | Mnemonic::Endbr32)
}

/// May this instruction be the last of a window? Everything but a few that cannot be
/// relocated (or should not be, like `call` when calls are not allowed).
fn can_end(insn: &Instruction, rules: &Rules) -> bool {
    match insn.flow_control() {
        FlowControl::Next
        | FlowControl::ConditionalBranch
        | FlowControl::UnconditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::Return => true,
        FlowControl::Call | FlowControl::IndirectCall => rules.allow_call,
        FlowControl::Interrupt | FlowControl::XbeginXabortXend | FlowControl::Exception => false,
    }
}

/// The smallest window holding instruction `site`, starting at or after `not_before`
/// (the first instruction not claimed by an earlier window), or why there is none.
pub fn find(f: &Function, site: usize, not_before: usize, rules: &Rules) -> Result<Window, Skip> {
    let insns = &f.insns;
    if is_endbr(&insns[site]) {
        return Err(Skip::Endbr64);
    }
    match insns[site].flow_control() {
        FlowControl::Call | FlowControl::IndirectCall if !rules.allow_call => {
            return Err(Skip::Call)
        }
        _ if !can_end(&insns[site], rules) => return Err(Skip::SiteNotRelocatable),
        _ => {}
    }
    let mut best: Option<Window> = None;
    let lowest = site.saturating_sub(MAX_BACKWARD).max(not_before);
    if site < not_before {
        return Err(Skip::InsideAnotherWindow);
    }
    // `first` walks backwards; every instruction in first..site must fall through, and
    // every one in first+1..=site must not be a jump target.
    let mut first = site;
    loop {
        if let Some(w) = extend_forward(f, first, site, rules) {
            let better = best.is_none_or(|b| w.last - w.first < b.last - b.first);
            if better {
                best = Some(w);
            }
        }
        if first == lowest {
            break;
        }
        let prev = first - 1;
        let p = &insns[prev];
        if p.flow_control() != FlowControl::Next
            || is_endbr(p)
            || rules.leaders.contains(&insns[first].ip())
        {
            break;
        }
        first = prev;
    }
    let w = best.ok_or(Skip::NoWindow)?;
    let start = insns[w.first].ip();
    let end = insns[w.last].next_ip();
    let r = rules.text_relocations;
    let i = r.partition_point(|&a| a < start);
    if r.get(i).is_some_and(|&a| a < end) {
        return Err(Skip::TextRelocation);
    }
    Ok(w)
}

fn extend_forward(f: &Function, first: usize, site: usize, rules: &Rules) -> Option<Window> {
    let insns = &f.insns;
    let start = insns[first].ip();
    let mut last = site;
    loop {
        let insn = &insns[last];
        if is_endbr(insn)
            || (last > first && rules.leaders.contains(&insn.ip()))
            || !can_end(insn, rules)
        {
            return None;
        }
        if insn.next_ip() - start >= JMP_REL32_LEN {
            return Some(Window { first, last });
        }
        if insn.flow_control() != FlowControl::Next
            || last + 1 >= insns.len()
            || last + 1 - first >= MAX_INSNS
        {
            return None;
        }
        last += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::test_function as function;

    // 0x1000 mov (%rdi),%rax (3) ; 0x1003 add $1,%rax (4) ; 0x1007 ret
    const CODE: &[u8] = &[0x48, 0x8b, 0x07, 0x48, 0x83, 0xc0, 0x01, 0xc3];

    #[test]
    fn extends_forward_over_non_targets() {
        let f = function(CODE);
        let leaders = HashSet::from([0x1000]);
        let rules = Rules {
            leaders: &leaders,
            text_relocations: &[],
            allow_call: false,
        };
        assert_eq!(find(&f, 0, 0, &rules), Ok(Window { first: 0, last: 1 }));
    }

    #[test]
    fn refuses_to_cover_a_jump_target() {
        let f = function(CODE);
        let leaders = HashSet::from([0x1000, 0x1003, 0x1007]);
        let rules = Rules {
            leaders: &leaders,
            text_relocations: &[],
            allow_call: false,
        };
        assert!(find(&f, 0, 0, &rules).is_err());
    }

    #[test]
    fn may_start_before_the_site() {
        // 0x1000 add $1,%rax (4) ; 0x1004 mov (%rdi),%rax (3) ; 0x1007 ret (target)
        let f = function(&[0x48, 0x83, 0xc0, 0x01, 0x48, 0x8b, 0x07, 0xc3]);
        let leaders = HashSet::from([0x1000, 0x1007]);
        let rules = Rules {
            leaders: &leaders,
            text_relocations: &[],
            allow_call: false,
        };
        assert_eq!(find(&f, 1, 0, &rules), Ok(Window { first: 0, last: 1 }));
        assert!(
            find(&f, 1, 1, &rules).is_err(),
            "cannot reach back into a claimed window"
        );
        let text_relocations = [0x1002];
        let rules = Rules {
            leaders: &leaders,
            text_relocations: &text_relocations,
            allow_call: false,
        };
        assert_eq!(find(&f, 1, 0, &rules), Err(Skip::TextRelocation));
    }
}
