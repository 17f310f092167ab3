//! Function bounds: where each function starts and ends.
//!
//! The one precedence rule: **`.eh_frame` FDEs first, symbols fill the gaps.** An FDE
//! is what the unwinder trusts, so code the rewriter moves stays unwindable; FDEs are
//! kept by `strip`, so a stripped binary and its unstripped twin get the same bounds
//! (a profile recorded on one lines up with the other); and a symbol's size is
//! whatever the assembler was told, often nothing in hand-written code. Symbols give
//! an FDE its name when one starts at the same address, and give bounds to code no
//! FDE covers. Where ranges overlap, the first kept wins and the other is dropped:
//! its code belongs to no function and is left alone.
use anyhow::{Context, Result};
use gimli::UnwindSection;
use object::{Object, ObjectSection, ObjectSymbol};
use std::collections::HashMap;

/// A function's address range `[start, end)` and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Has a language-specific data area (C++ exception landing pads).
    pub has_lsda: bool,
    /// The symbol starting at `start`, if any.
    pub name: Option<String>,
}

impl Function {
    /// Whether `address` lies inside the function.
    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// `name+0xN`, or `sub_<start>+0xN` for a function without a symbol.
    pub fn symbolize(&self, address: u64) -> String {
        let offset = address - self.start;
        match &self.name {
            Some(name) => format!("{name}+{offset:#x}"),
            None => format!("sub_{:x}+{offset:#x}", self.start),
        }
    }
}

/// The functions of `file`, sorted by start and not overlapping. `is_code` says
/// whether an address lies in an executable section (symbols elsewhere are ignored).
pub fn functions(file: &object::File, is_code: impl Fn(u64) -> bool) -> Result<Vec<Function>> {
    let fdes = match file.section_by_name(".eh_frame") {
        Some(section) => eh_frame(file, &section).context("malformed .eh_frame")?,
        None => Vec::new(),
    };
    let symbols = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| {
            s.is_definition()
                && s.kind() == object::SymbolKind::Text
                && s.size() > 0
                && is_code(s.address())
        })
        .map(|s| Function {
            start: s.address(),
            end: s.address() + s.size(),
            has_lsda: false,
            name: s.name().ok().map(str::to_string),
        })
        .collect();
    Ok(merge(fdes, symbols))
}

/// Function bounds from the FDEs of `.eh_frame`: present even in stripped binaries.
fn eh_frame(file: &object::File, section: &object::Section) -> Result<Vec<Function>> {
    let bytes = section.data().context("reading .eh_frame")?;
    let eh_frame = gimli::EhFrame::new(bytes, gimli::LittleEndian);
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(section.address());
    for (name, set) in [
        (".text", gimli::BaseAddresses::set_text as fn(_, _) -> _),
        (".got", gimli::BaseAddresses::set_got),
        (".eh_frame_hdr", gimli::BaseAddresses::set_eh_frame_hdr),
    ] {
        if let Some(s) = file.section_by_name(name) {
            bases = set(bases, s.address());
        }
    }
    let mut out = Vec::new();
    let mut entries = eh_frame.entries(&bases);
    while let Some(entry) = entries.next()? {
        if let gimli::CieOrFde::Fde(partial) = entry {
            let fde =
                partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset))?;
            if fde.len() == 0 {
                continue;
            }
            out.push(Function {
                start: fde.initial_address(),
                end: fde.initial_address() + fde.len(),
                has_lsda: fde.lsda().is_some(),
                name: None,
            });
        }
    }
    Ok(out)
}

/// The precedence rule of the module documentation.
fn merge(fdes: Vec<Function>, symbols: Vec<Function>) -> Vec<Function> {
    let mut name_at: HashMap<u64, &str> = HashMap::new();
    for s in &symbols {
        if let Some(name) = &s.name {
            name_at.entry(s.start).or_insert(name);
        }
    }
    let mut all = fdes;
    for f in &mut all {
        f.name = name_at.get(&f.start).map(|n| n.to_string());
    }
    all.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut merged: Vec<Function> = Vec::with_capacity(all.len());
    for f in all {
        if merged.last().is_none_or(|last| f.start >= last.end) {
            merged.push(f);
        }
    }
    let mut extra: Vec<Function> = symbols
        .into_iter()
        .filter(|s| {
            let i = merged.partition_point(|m| m.end <= s.start);
            merged.get(i).is_none_or(|m| m.start >= s.end)
        })
        .collect();
    extra.sort_by_key(|f| f.start);
    extra.dedup_by_key(|f| f.start);
    let mut last_end = 0;
    extra.retain(|f| {
        let keep = f.start >= last_end;
        if keep {
            last_end = f.end;
        }
        keep
    });
    merged.extend(extra);
    merged.sort_by_key(|f| f.start);
    merged
}

/// The function containing `address` in `functions` (sorted, not overlapping).
pub fn containing(functions: &[Function], address: u64) -> Option<&Function> {
    let index = functions
        .partition_point(|f| f.start <= address)
        .checked_sub(1)?;
    let function = &functions[index];
    function.contains(address).then_some(function)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(start: u64, end: u64, name: Option<&str>) -> Function {
        Function {
            start,
            end,
            has_lsda: false,
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn fdes_win_symbols_name_them_and_fill_gaps() {
        let fdes = vec![f(0x100, 0x200, None), f(0x300, 0x340, None)];
        let symbols = vec![
            f(0x100, 0x180, Some("short_symbol")), // an FDE bounds it: the FDE's range wins
            f(0x200, 0x280, Some("no_fde")),       // no FDE: the symbol's range
            f(0x310, 0x320, Some("inside")),       // inside an FDE: dropped
        ];
        let merged = merge(fdes, symbols);
        assert_eq!(
            merged,
            vec![
                f(0x100, 0x200, Some("short_symbol")),
                f(0x200, 0x280, Some("no_fde")),
                f(0x300, 0x340, None),
            ]
        );
        assert_eq!(
            containing(&merged, 0x27f).unwrap().symbolize(0x27f),
            "no_fde+0x7f"
        );
        assert_eq!(
            containing(&merged, 0x301).unwrap().symbolize(0x301),
            "sub_300+0x1"
        );
        assert!(containing(&merged, 0x2a0).is_none());
        assert!(containing(&merged, 0x50).is_none());
    }
}
