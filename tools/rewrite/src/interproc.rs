//! Liveness across the call graph: what each function's `ret` must preserve.
//!
//! A caller outside this object, or one reaching a function through a pointer, follows
//! the SysV ABI: it needs the callee-saved registers and the return registers. A caller
//! in this object may have been compiled with GCC's `-fipa-ra` and keep values in
//! caller-saved registers across the call, so whatever is live after each direct call
//! site is live at the callee's `ret` too. A jump out of a function into another (a
//! tail call, or a `.cold` fragment) makes the target return to the jumper's callers.
//! Functions reached from code that is not analysed get everything.
//!
//! Solved with a worklist: a function's liveness is recomputed whenever what its
//! `ret` needs grows, and its call sites then feed its callees.
//!
//! A direct call to a function of this object reads what its callee reads before
//! writing it, in any register: hand-written assembly passes values outside the SysV
//! argument registers (OpenSSL's `__KeccakF1600` takes a table pointer in %r15).
//!
//! Assumptions, from how compilers emit code: a call that ends a function does not
//! return; tail calls and calls through pointers pass arguments in the SysV argument
//! registers.

use crate::code::{direct_target, is_table_dispatch, Code, Function};
use crate::liveness::{self, Effect, RegSet, Successors};
use crate::skip::Skip;
use iced_x86::{FlowControl, InstructionInfoFactory};
use std::collections::HashMap;

/// What a function's ABI-following callers need at its `ret`.
pub fn abi_return_set() -> RegSet {
    let mut set = RegSet::EMPTY;
    for n in [0, 2, 3, 5, 12, 13, 14, 15] {
        // rax, rdx (return values), rbx, rbp, r12-r15 (callee-saved)
        set = set.union(RegSet::gpr(n));
    }
    set.union(RegSet::vector(0)).union(RegSet::vector(1))
}

/// Everything but the flags: what an unknown caller might need.
const UNKNOWN_CALLER: RegSet = RegSet(RegSet::ALL.0 & !RegSet::FLAGS.0);

struct Model {
    effects: Vec<Effect>,
    successors: Vec<Successors>,
}

fn model(f: &Function, code: &Code, factory: &mut InstructionInfoFactory) -> Model {
    let n = f.insns.len();
    let effects = f
        .insns
        .iter()
        .map(|i| liveness::effect(factory, i, code.vector_width))
        .collect();
    let local_leaders: Vec<usize> = (0..n)
        .filter(|&i| code.leaders.contains(&f.insns[i].ip()))
        .collect();
    let leaving = RegSet::ALL;
    let successors = f
        .insns
        .iter()
        .enumerate()
        .map(|(i, insn)| {
            let next = (i + 1 < n && f.insns[i + 1].ip() == insn.next_ip()).then_some(i + 1);
            let fall = |extra: Vec<usize>| match next {
                Some(nx) => Successors::Local([extra, vec![nx]].concat()),
                None => Successors::Exit {
                    live: leaving,
                    local: extra,
                },
            };
            // Leaving by a jump: a tail call if the target is a real function's entry;
            // anything else (a `.cold` fragment, the middle of a function) may use
            // every register.
            let jump_out = |local: Vec<usize>| {
                if code.call_targets.contains(&insn.near_branch_target()) {
                    Successors::TailCall { local }
                } else {
                    Successors::Exit {
                        live: leaving,
                        local,
                    }
                }
            };
            match insn.flow_control() {
                FlowControl::Next => fall(vec![]),
                // A call that ends the function does not return (abort, exit, ...).
                FlowControl::Call | FlowControl::IndirectCall => match next {
                    Some(nx) => Successors::Local(vec![nx]),
                    None => Successors::Exit {
                        live: RegSet::EMPTY,
                        local: vec![],
                    },
                },
                FlowControl::ConditionalBranch => match f.index_of(insn.near_branch_target()) {
                    Some(t) => fall(vec![t]),
                    None => jump_out(next.into_iter().collect()),
                },
                FlowControl::UnconditionalBranch => match f.index_of(insn.near_branch_target()) {
                    Some(t) => Successors::Local(vec![t]),
                    None => jump_out(vec![]),
                },
                // A jump table (its targets are among the local leaders) or a tail call
                // through a pointer (whose callee may return to any of our callers).
                // A dispatch through tables whose entries all lie in this function
                // goes only there.
                FlowControl::IndirectBranch if is_table_dispatch(f, i) => Successors::Exit {
                    live: RegSet::EMPTY,
                    local: local_leaders.clone(),
                },
                FlowControl::IndirectBranch => Successors::Exit {
                    live: UNKNOWN_CALLER,
                    local: local_leaders.clone(),
                },
                FlowControl::Return => Successors::Return,
                FlowControl::Interrupt | FlowControl::XbeginXabortXend => Successors::Exit {
                    live: leaving,
                    local: next.into_iter().collect(),
                },
                FlowControl::Exception => Successors::Exit {
                    live: leaving,
                    local: vec![],
                },
            }
        })
        .collect();
    Model {
        effects,
        successors,
    }
}

/// Live-in registers of every instruction of every analysable function (`None` for
/// functions that do not decode or are PLT stubs).
pub fn solve(code: &Code) -> Vec<Option<Vec<RegSet>>> {
    let mut factory = InstructionInfoFactory::new();
    let analysable =
        |f: &Function| !matches!(f.unpatchable, Some(Skip::Undecodable | Skip::PltStub));
    let mut models: Vec<Option<Model>> = code
        .functions
        .iter()
        .map(|f| analysable(f).then(|| model(f, code, &mut factory)))
        .collect();
    let by_start: HashMap<u64, usize> = code
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| (f.start, i))
        .collect();
    let containing = |addr: u64| code.index_containing(addr);

    let abi = abi_return_set();
    let mut at_return: Vec<RegSet> = code
        .functions
        .iter()
        .map(|f| {
            if code.targets_of_unanalysed_code.contains(&f.start) {
                UNKNOWN_CALLER
            } else {
                abi
            }
        })
        .collect();
    // Calls or jumps into the middle of a function from unanalysed code.
    for &t in &code.targets_of_unanalysed_code {
        if let Some(g) = containing(t) {
            at_return[g] = UNKNOWN_CALLER;
        }
    }
    // Direct calls to analysable functions read what their callee reads.
    let arguments = liveness::call_arguments();
    let mut calls: Vec<Vec<(usize, usize)>> = vec![Vec::new(); code.functions.len()];
    let mut callers: Vec<Vec<usize>> = vec![Vec::new(); code.functions.len()];
    for (fi, f) in code.functions.iter().enumerate() {
        if models[fi].is_none() {
            continue;
        }
        for (i, insn) in f.insns.iter().enumerate() {
            if insn.flow_control() != FlowControl::Call {
                continue;
            }
            let Some(&g) = direct_target(insn).and_then(|t| by_start.get(&t)) else {
                continue;
            };
            if models[g].is_some() {
                calls[fi].push((i, g));
                callers[g].push(fi);
            }
        }
    }
    let mut entry_reads = vec![RegSet::EMPTY; code.functions.len()];

    let mut live: Vec<Option<Vec<RegSet>>> = vec![None; code.functions.len()];
    let mut queued = vec![true; code.functions.len()];
    let mut worklist: Vec<usize> = (0..code.functions.len()).rev().collect();
    while let Some(fi) = worklist.pop() {
        queued[fi] = false;
        let Some(m) = &mut models[fi] else { continue };
        for &(i, g) in &calls[fi] {
            m.effects[i].uses = entry_reads[g];
        }
        let f = &code.functions[fi];
        let l = liveness::live_in(&m.effects, &m.successors, at_return[fi]);
        // What the function itself reads, not what passes through it to its callers
        // (their call sites keep that live already: a call defines nothing).
        let entry = if callers[fi].is_empty() {
            entry_reads[fi]
        } else {
            liveness::live_in(&m.effects, &m.successors, RegSet::EMPTY)
                .first()
                .copied()
                .unwrap_or(arguments)
                .minus(RegSet::FLAGS)
        };
        if entry != entry_reads[fi] {
            entry_reads[fi] = entry;
            for &caller in &callers[fi] {
                if !queued[caller] {
                    queued[caller] = true;
                    worklist.push(caller);
                }
            }
        }
        for (i, insn) in f.insns.iter().enumerate() {
            let Some(target) = direct_target(insn) else {
                continue;
            };
            if f.start <= target && target < f.end && insn.flow_control() != FlowControl::Call {
                continue;
            }
            let Some(g) = containing(target) else {
                continue;
            };
            let needed = if insn.flow_control() == FlowControl::Call {
                if by_start.get(&target) != Some(&g) {
                    UNKNOWN_CALLER // a call into the middle of a function
                } else {
                    l.get(i + 1)
                        .copied()
                        .filter(|_| i + 1 < f.insns.len())
                        .unwrap_or(UNKNOWN_CALLER)
                        .minus(RegSet::FLAGS)
                }
            } else {
                at_return[fi]
            };
            let grown = at_return[g].union(needed);
            if grown != at_return[g] {
                at_return[g] = grown;
                if !queued[g] {
                    queued[g] = true;
                    worklist.push(g);
                }
            }
        }
        live[fi] = Some(l);
    }
    live
}

/// The width at which each function's live vector registers must be saved: the widest
/// its own code or any caller in this object uses. A caller compiled with `-fipa-ra`
/// may keep a ymm (or zmm, or mask) value in a register its callee leaves alone, so
/// a callee's width flows down direct calls and jumps; a function that code outside
/// the analysis reaches gets the object's widest.
pub fn vector_widths(code: &Code) -> Vec<usize> {
    let containing = |addr: u64| code.index_containing(addr);
    let mut width: Vec<usize> = code.functions.iter().map(|f| f.vector_width).collect();
    for &t in &code.targets_of_unanalysed_code {
        if let Some(g) = containing(t) {
            width[g] = code.vector_width;
        }
    }
    // Direct edges out of each function (calls, tail calls, jumps to `.cold` parts).
    let edges: Vec<Vec<usize>> = code
        .functions
        .iter()
        .map(|f| {
            f.insns
                .iter()
                .filter_map(direct_target)
                .filter(|&t| !(f.start <= t && t < f.end))
                .filter_map(containing)
                .collect()
        })
        .collect();
    let mut worklist: Vec<usize> = (0..code.functions.len()).collect();
    while let Some(fi) = worklist.pop() {
        for &g in &edges[fi] {
            if width[g] < width[fi] {
                width[g] = width[fi];
                worklist.push(g);
            }
        }
    }
    width
}
