//! Why a profiled site is left unpatched: the rewriter's whole list of refusals. The
//! report counts sites under each reason's text (`Skip::text`).

use std::fmt;

/// Why a site was not patched. Each is a case where a patch could change what the
/// program does, or where the rewriter cannot tell that it would not: it refuses
/// rather than guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// No symbol or unwind entry bounds the function, so its jump targets are unknown.
    NoFunctionBounds,
    /// The profile names an address whose instruction does not read memory.
    NotALoad,
    /// Part of the function did not decode: its instructions and targets are unknown.
    Undecodable,
    /// A PLT stub: resolver code that is rewritten at run time, never worth a yield.
    PltStub,
    /// The function has exception landing pads, which the unwinder finds by address.
    LandingPads,
    /// The function uses x87/MMX state, which the trampolines do not save.
    X87OrMmx,
    /// AVX-512 registers are in use in the function or in a caller that may keep
    /// them across the call; trampolines save at most ymm.
    Avx512,
    /// A gather's vector-indexed operand: no single address to prefetch.
    VectorIndexed,
    /// The site is an `endbr64`, an indirect-branch landing pad that must stay put.
    Endbr64,
    /// The site is a call, and call windows were not asked for (`--call-windows`).
    Call,
    /// The site's instruction cannot run from a trampoline (e.g. `%rip`-relative in a
    /// way that cannot be re-encoded).
    SiteNotRelocatable,
    /// An earlier site's window already covers this one.
    InsideAnotherWindow,
    /// No run of instructions in the site's basic block is the 5 bytes a jump needs.
    NoWindow,
    /// A text relocation falls in the window: the loader would write into moved bytes.
    TextRelocation,
    /// The displaced instructions failed to re-encode at the trampoline's address.
    DisplacedNotRelocatable,
}

impl Skip {
    /// The reason as the report and the error messages spell it.
    pub fn text(self) -> &'static str {
        match self {
            Skip::NoFunctionBounds => "no function bounds (no symbol or FDE)",
            Skip::NotALoad => "profile site is not a load",
            Skip::Undecodable => "undecodable function",
            Skip::PltStub => "PLT stub",
            Skip::LandingPads => "function has exception landing pads",
            Skip::X87OrMmx => "function uses x87/MMX state",
            Skip::Avx512 => "AVX-512 state in use in the function or a caller",
            Skip::VectorIndexed => "vector-indexed memory operand (gather)",
            Skip::Endbr64 => "site is an endbr64",
            Skip::Call => "site is a call (see --call-windows)",
            Skip::SiteNotRelocatable => "site cannot be relocated",
            Skip::InsideAnotherWindow => "site inside another window",
            Skip::NoWindow => "no 5-byte window inside its basic block",
            Skip::TextRelocation => "text relocation inside the window",
            Skip::DisplacedNotRelocatable => "displaced instructions cannot be relocated",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn each_reason_has_its_own_one_line_text() {
        use Skip::*;
        let all = [
            NoFunctionBounds,
            NotALoad,
            Undecodable,
            PltStub,
            LandingPads,
            X87OrMmx,
            Avx512,
            VectorIndexed,
            Endbr64,
            Call,
            SiteNotRelocatable,
            InsideAnotherWindow,
            NoWindow,
            TextRelocation,
            DisplacedNotRelocatable,
        ];
        let texts: HashSet<&str> = all.iter().map(|s| s.text()).collect();
        assert_eq!(texts.len(), all.len(), "two reasons share a report key");
        assert!(texts.iter().all(|t| !t.is_empty() && !t.contains('\n')));
        assert_eq!(Call.to_string(), "site is a call (see --call-windows)");
    }
}
