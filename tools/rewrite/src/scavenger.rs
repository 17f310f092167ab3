//! `msh rewrite --scavenger`: budget checks that bound the time between a
//! scavenger's yields, in code that never calls `msh_yield()`.
//!
//! Where the checks go, per function (PLT stubs excepted):
//! - at its entry (after an `endbr64`): bounds recursion and calls through pointers;
//! - at every loop header, the target of a backward direct branch: bounds loops;
//! - inside straight-line stretches, wherever the cost since the previous check (in
//!   address order) reaches half the interval.
//!
//! A check that cannot be placed where wanted (no window, a call there, …) may move
//! up to [`MAX_SHIFT`] instructions forward inside its basic block, preferring a
//! place where the flags are dead (the check is then `subq; js`, otherwise it is
//! wrapped in `pushfq`/`popfq`); if none is safe it is skipped under its reason.
//!
//! Each placed check subtracts the estimated cost of the instructions from it to the
//! next placed check in address order (loops therefore pay for their body at their
//! header, and code after an inner loop is paid for on each inner iteration: the
//! estimate errs towards yielding early). The cost model ([`cost`]) is in units of
//! [`UNIT_NS`] ns, for a core near 3 GHz: most instructions 2 units (an IPC of ~1.5),
//! memory reads +2, multiplies 10 (a dependent chain), divisions 100, floating-point
//! divisions and square roots 50, atomics 60, `rep` string instructions 100, calls 5
//! plus [`LIBRARY_CALL`] when the callee is outside the object's instrumented code
//! (a PLT stub, an indirect call, or code no function covers). With `--profile`, every
//! load the profile names costs [`PROFILED_MISS`] more: those are the loads that miss.

use crate::code::{direct_target, Code, Function};
use crate::liveness::RegSet;
use crate::liveness::{self as regs, RBP, RSP};
use crate::skip::Skip;
use crate::trampoline::{Budget, PassCounter, YieldPoint};
use crate::window::{self, Window};
use iced_x86::{FlowControl, Instruction, InstructionInfoFactory, Mnemonic};
use serde::Serialize;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

/// Nanoseconds per cost unit.
pub const UNIT_NS: f64 = 0.1;
/// Default interval between yields, in ns: finer than the runtime's default budget
/// (150 ns), so that the switch back overruns a budget by at most one interval.
pub const DEFAULT_EVERY_NS: u64 = 100;
/// Estimated cost of a call into uninstrumented code (a library), in units.
pub const LIBRARY_CALL: i32 = 200;
/// Extra cost of a load a profile names (an LLC miss, partly overlapped), in units.
pub const PROFILED_MISS: i32 = 300;
/// How far (in instructions) a check may move forward from where it is wanted.
pub const MAX_SHIFT: usize = 4;

/// What `--scavenger` was asked for.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Target interval between two yields, in ns.
    pub every_ns: u64,
    /// Addresses of loads a profile names (they cost [`PROFILED_MISS`] more).
    pub profiled_loads: HashSet<u64>,
}

impl Settings {
    /// The counter's refill: the interval in cost units.
    pub fn refill(&self) -> i32 {
        (self.every_ns as f64 / UNIT_NS)
            .round()
            .clamp(1.0, (i32::MAX / 2) as f64) as i32
    }
}

/// Why a check is where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A function's entry.
    Entry,
    /// A loop header.
    Loop,
    /// Inside a long straight-line stretch.
    Straight,
}

impl Kind {
    fn text(self) -> &'static str {
        match self {
            Kind::Entry => "function-entry",
            Kind::Loop => "loop-header",
            Kind::Straight => "straight-line",
        }
    }
}

/// The `scavenger` part of the report.
#[derive(Serialize, Debug, Default)]
pub struct ScavengerReport {
    /// The target interval between yields, in ns.
    pub yield_every_ns: u64,
    /// Nanoseconds per cost unit of the static model.
    pub cost_unit_ns: f64,
    /// The counter's refill after a yield, in cost units.
    pub refill: i32,
    /// Loads a profile named (costed as misses); 0 without `--profile`.
    pub profiled_loads: usize,
    /// Checks placed, by why they are there.
    pub checks: BTreeMap<&'static str, usize>,
    /// Checks placed where the flags are live (wrapped in `pushfq`/`popfq`).
    pub flags_wrapped: usize,
    /// Loop checks that count passes in a free register and reach the per-thread
    /// counter only once in 2^k passes (see [`pass_counter`]).
    pub pass_counters: usize,
    /// Functions given no check: PLT stubs are not counted; the others by reason.
    pub functions_skipped: BTreeMap<&'static str, usize>,
}

/// A check placed: its window's function, window and yield points.
pub struct PlannedWindow {
    /// Index of the function.
    pub function: usize,
    /// The window.
    pub window: Window,
    /// The checks inside it.
    pub yields: Vec<YieldPoint>,
}

/// Estimated cost of one instruction, in units of [`UNIT_NS`] ns (module doc).
pub fn cost(
    insn: &Instruction,
    factory: &mut InstructionInfoFactory,
    code: &Code,
    settings: &Settings,
) -> i32 {
    use Mnemonic::*;
    let mut c = match insn.mnemonic() {
        Imul | Mul | Mulx => 10,
        Div | Idiv => 100,
        Divsd | Divss | Divpd | Divps | Vdivsd | Vdivss | Vdivpd | Vdivps | Sqrtsd | Sqrtss
        | Sqrtpd | Sqrtps | Vsqrtsd | Vsqrtss | Vsqrtpd | Vsqrtps => 50,
        Syscall => 1000,
        _ if insn.has_lock_prefix() || insn.mnemonic() == Xchg && insn.op_count() == 2 => 60,
        _ if insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix() => 100,
        _ => 2,
    };
    if msh_binary::classify_load(insn, factory).is_some() {
        c += 2;
        if settings.profiled_loads.contains(&insn.ip()) {
            c += PROFILED_MISS;
        }
    }
    match insn.flow_control() {
        FlowControl::Call => {
            c += 5;
            if !instrumented(code, insn.near_branch_target()) {
                c += LIBRARY_CALL;
            }
        }
        FlowControl::IndirectCall => c += 5 + LIBRARY_CALL,
        FlowControl::Return => c += 5,
        _ => {}
    }
    c
}

/// Is `target` the start of code that gets checks (a function that is not a PLT stub)?
fn instrumented(code: &Code, target: u64) -> bool {
    let i = code.functions.partition_point(|f| f.start <= target);
    i > 0 && {
        let f = &code.functions[i - 1];
        target < f.end && f.unpatchable.is_none()
    }
}

fn is_endbr(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Endbr64 | Mnemonic::Endbr32)
}

/// Where checks are wanted in `f`, by kind, in address order.
fn wanted(f: &Function, costs: &[i32], half: i32) -> BTreeMap<usize, Kind> {
    let mut at: BTreeMap<usize, Kind> = BTreeMap::new();
    let skip_endbr = |i: usize| {
        if f.insns.get(i).is_some_and(is_endbr) {
            i + 1
        } else {
            i
        }
    };
    if !f.insns.is_empty() {
        at.insert(skip_endbr(0), Kind::Entry);
    }
    for insn in &f.insns {
        let Some(t) = direct_target(insn) else {
            continue;
        };
        if insn.flow_control() == FlowControl::Call || t < f.start || t > insn.ip() {
            continue;
        }
        if let Some(i) = f.index_of(t) {
            at.entry(skip_endbr(i)).or_insert(Kind::Loop);
        }
    }
    let mut acc = 0i32;
    for (i, &c) in costs.iter().enumerate() {
        match at.entry(i) {
            Entry::Occupied(_) => acc = 0,
            Entry::Vacant(slot) if acc >= half => {
                slot.insert(Kind::Straight);
                acc = 0;
            }
            Entry::Vacant(_) => {}
        }
        acc = acc.saturating_add(c);
    }
    at.retain(|&i, _| i < f.insns.len());
    at
}

/// A check placed in a window: (instruction index, why, the index it was wanted at).
type Point = (usize, Kind, usize);

/// Plans the checks of every function; skipped checks are counted in `skipped`.
#[allow(clippy::too_many_arguments)] // the rewriter's analyses, and the report's parts
pub fn plan(
    code: &Code,
    liveness: &[Option<Vec<RegSet>>],
    vector_widths: &[usize],
    rules: &window::Rules,
    settings: &Settings,
    report: &mut ScavengerReport,
    candidates: &mut usize,
    skipped: &mut BTreeMap<&'static str, usize>,
) -> Vec<PlannedWindow> {
    let mut factory = InstructionInfoFactory::new();
    let refill = settings.refill();
    let half = (refill / 2).max(1);
    report.yield_every_ns = settings.every_ns;
    report.cost_unit_ns = UNIT_NS;
    report.refill = refill;
    report.profiled_loads = settings.profiled_loads.len();
    let mut planned = Vec::new();
    for (fi, f) in code.functions.iter().enumerate() {
        let reason = match f.unpatchable {
            Some(Skip::PltStub) => continue,
            Some(reason) => Some(reason),
            None if vector_widths[fi] > 32 => Some(Skip::Avx512),
            None if liveness[fi].is_none() => Some(Skip::Undecodable),
            None => None,
        };
        if let Some(reason) = reason {
            *report.functions_skipped.entry(reason.text()).or_default() += 1;
            continue;
        }
        let live = liveness[fi].as_ref().expect("checked above");
        let costs: Vec<i32> = f
            .insns
            .iter()
            .map(|insn| cost(insn, &mut factory, code, settings))
            .collect();
        let wanted = wanted(f, &costs, half);
        *candidates += wanted.len();

        // Place each check: (index, kind) in address order, windows not overlapping.
        let mut windows: Vec<(Window, Vec<Point>)> = Vec::new();
        let ends: Vec<usize> = wanted.keys().copied().skip(1).collect();
        for (n, (&i, &kind)) in wanted.iter().enumerate() {
            let limit = ends.get(n).copied().unwrap_or(f.insns.len());
            if let Some((_, points)) = windows
                .last_mut()
                .filter(|(w, _)| w.first <= i && i <= w.last)
            {
                if points.last().is_some_and(|&(p, _, _)| p < i) {
                    points.push((i, kind, i));
                }
                continue;
            }
            let not_before = windows.last().map_or(0, |(w, _)| w.last + 1);
            let mut first_ok: Option<(usize, Window)> = None;
            let mut flags_dead: Option<(usize, Window)> = None;
            let mut first_err = None;
            let mut k = i;
            while k < limit && k < i + MAX_SHIFT + 1 {
                match window::find(f, k, not_before, rules) {
                    Ok(w) => {
                        first_ok.get_or_insert((k, w));
                        if !live[k].has_flags() {
                            flags_dead = Some((k, w));
                            break;
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
                if f.insns[k].flow_control() != FlowControl::Next {
                    break;
                }
                k += 1;
            }
            match flags_dead.or(first_ok) {
                Some((k, w)) => windows.push((w, vec![(k, kind, i)])),
                None => {
                    let reason = first_err.unwrap_or(Skip::NoWindow);
                    *skipped.entry(reason.text()).or_default() += 1;
                }
            }
        }

        // Each check pays for the code up to the next placed check.
        let placed: Vec<usize> = windows
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(k, _, _)| k))
            .collect();
        let mut next = placed.iter().skip(1);
        let mut segment_cost = |k: usize| -> i32 {
            let end = next.next().copied().unwrap_or(f.insns.len());
            costs[k..end]
                .iter()
                .fold(0i32, |a, &c| a.saturating_add(c))
                .clamp(1, i32::MAX / 4)
        };
        for (w, points) in windows {
            let mut yields = Vec::new();
            for (k, kind, header) in points {
                *report.checks.entry(kind.text()).or_default() += 1;
                if live[k].has_flags() {
                    report.flags_wrapped += 1;
                }
                let cost = segment_cost(k);
                let mut budget = Budget {
                    cost,
                    refill,
                    pass_counter: None,
                };
                if kind == Kind::Loop && !live[k].has_flags() {
                    if let Some((register, bits)) =
                        pass_counter(f, header, k, live, &mut factory, code, cost, half)
                    {
                        budget.pass_counter = Some(PassCounter {
                            register,
                            mask: (1u32 << bits) - 1,
                        });
                        budget.cost = cost.saturating_mul(1 << bits);
                        report.pass_counters += 1;
                    }
                }
                yields.push(YieldPoint {
                    at: k - w.first,
                    live: live[k],
                    budget: Some(budget),
                });
            }
            planned.push(PlannedWindow {
                function: fi,
                window: w,
                yields,
            });
        }
    }
    planned
}

/// Most passes a pass counter lets through between two checks of the per-thread
/// counter: 2^this.
const MAX_COUNTER_BITS: u32 = 12;

/// For the loop whose header is instruction `header` (its check at `at`, in the same
/// block): a register that may count the loop's passes, and how many bits of it to
/// test, or `None`. The loop is `header..=latch`, `latch` the last backward branch to
/// it. A register qualifies when no instruction of the loop reads or writes it and it
/// is live nowhere in the loop (so nothing after the loop needs it either), the loop
/// has no call (a callee could reset it each pass), nothing outside the loop branches
/// into it but forwards to its header, and the function has no indirect jump.
/// Whatever value the register has on entry, the check then reaches the per-thread
/// counter at least once in 2^bits passes, each of which costs at most `cost`; bits
/// is the largest with 2^bits × `cost` ≤ `half` (the interval's half).
#[allow(clippy::too_many_arguments)]
pub fn pass_counter(
    f: &Function,
    header: usize,
    at: usize,
    live: &[RegSet],
    factory: &mut InstructionInfoFactory,
    code: &Code,
    cost: i32,
    half: i32,
) -> Option<(u32, u32)> {
    let bits = (1..=MAX_COUNTER_BITS)
        .rev()
        .find(|&b| i64::from(cost) << b <= i64::from(half))?;
    let head_ip = f.insns[header].ip();
    let latch = f
        .insns
        .iter()
        .rposition(|i| direct_target(i) == Some(head_ip) && i.ip() >= head_ip)?;
    if at > latch {
        return None;
    }
    let (lo, hi) = (head_ip, f.insns[latch].ip());
    for insn in &f.insns {
        if insn.flow_control() == FlowControl::IndirectBranch {
            return None;
        }
        let inside = (lo..=hi).contains(&insn.ip());
        if let Some(t) = direct_target(insn) {
            let into = t > lo && t <= hi || t == lo && insn.ip() > hi;
            if !inside && into {
                return None;
            }
        }
    }
    let mut touched = RegSet::EMPTY;
    for (i, insn) in f.insns.iter().enumerate().take(latch + 1).skip(header) {
        match insn.flow_control() {
            FlowControl::Call
            | FlowControl::IndirectCall
            | FlowControl::Interrupt
            | FlowControl::XbeginXabortXend
            | FlowControl::Exception => return None,
            _ => {}
        }
        let e = regs::effect(factory, insn, code.vector_width);
        touched = touched.union(e.uses).union(e.defs).union(live[i]);
    }
    // Scratch registers first: the least likely to be needed around the loop.
    [11u32, 10, 9, 8, 2, 1, 0, 6, 7, 3, 12, 13, 14, 15]
        .into_iter()
        .filter(|&r| r != RSP && r != RBP)
        .find(|&r| !touched.contains(RegSet::gpr(r)))
        .map(|r| (r, bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::test_function as function;

    #[test]
    fn entry_loop_header_and_straight_line_are_wanted() {
        // 0x1000 endbr64 ; 0x1004 add $1,%rax ; 0x1008 dec %rdi ; 0x100b jne 0x1004 ; ret
        let f = function(&[
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xc0, 0x01, 0x48, 0xff, 0xcf, 0x75, 0xf7, 0xc3,
        ]);
        let costs = vec![2; f.insns.len()];
        let at = wanted(&f, &costs, 1000);
        // Entry after the endbr64 is also the loop header: one check, kind Entry.
        assert_eq!(at.into_iter().collect::<Vec<_>>(), vec![(1, Kind::Entry)]);
        let at = wanted(&f, &costs, 3);
        assert_eq!(
            at.into_iter().collect::<Vec<_>>(),
            vec![(1, Kind::Entry), (3, Kind::Straight)]
        );
    }

    #[test]
    fn refill_is_the_interval_in_units() {
        let s = Settings {
            every_ns: 200,
            profiled_loads: HashSet::new(),
        };
        assert_eq!(s.refill(), 2000);
    }
}
