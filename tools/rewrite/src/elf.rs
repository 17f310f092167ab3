//! The input binary: what the rewriter needs to know about an x86-64 ELF file.
//!
//! Everything here is read-only facts: executable ranges, function bounds (symbols and
//! `.eh_frame`), addresses that could be jump targets (relocations, data words), the
//! build-id. `writer` produces the output.

use anyhow::{bail, Context, Result};
use gimli::UnwindSection;
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SectionFlags};
use sha2::{Digest, Sha256};

/// Marks the start of a trampoline segment written by `msh rewrite`.
pub const TRAMPOLINE_MAGIC: &[u8; 16] = b"msh-trampolines\0";

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    /// File offset of the bytes, `None` for `SHT_NOBITS`.
    pub file_offset: Option<u64>,
    pub exec: bool,
}

impl Section {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// A function's bounds, from an FDE or a symbol.
#[derive(Debug, Clone)]
pub struct FunctionBounds {
    pub start: u64,
    pub end: u64,
    /// Has a language-specific data area (C++ exception landing pads).
    pub has_lsda: bool,
    pub name: Option<String>,
}

pub struct Image {
    pub data: Vec<u8>,
    /// `ET_DYN`: PIE or shared object.
    pub position_independent: bool,
    pub sections: Vec<Section>,
    pub segments: Vec<Segment>,
    pub phoff: u64,
    pub phentsize: u16,
    pub build_id: String,
    /// Functions, sorted by start, not overlapping.
    pub functions: Vec<FunctionBounds>,
    /// Starts of every symbol in executable sections (any type): possible jump targets.
    pub symbol_starts: Vec<u64>,
    /// Addresses dynamic relocations make into pointers (addends, symbol values).
    pub relocated_pointers: Vec<u64>,
    /// Places dynamic relocations write to that lie in executable code (text relocations).
    pub text_relocations: Vec<u64>,
    /// Marked IBT (endbr64) in its GNU property note.
    pub cet_ibt: bool,
}

fn check_header(data: &[u8]) -> Result<()> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if data[4] != elf::ELFCLASS64 || data[5] != elf::ELFDATA2LSB {
        bail!("not a 64-bit little-endian ELF file");
    }
    let machine = u16::from_le_bytes([data[18], data[19]]);
    if machine != elf::EM_X86_64 {
        bail!("not an x86-64 ELF file (e_machine {machine})");
    }
    let e_type = u16::from_le_bytes([data[16], data[17]]);
    if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
        bail!("not an executable or shared object (e_type {e_type})");
    }
    Ok(())
}

impl Image {
    pub fn parse(data: Vec<u8>) -> Result<Image> {
        check_header(&data)?;
        let file = ElfFile64::<Endianness>::parse(&*data).context("malformed ELF file")?;
        let header = file.elf_header();
        let endian = file.endian();
        let position_independent = header.e_type(endian) == elf::ET_DYN;
        let phoff = header.e_phoff(endian);
        let phentsize = header.e_phentsize(endian);

        let segments: Vec<Segment> = file
            .elf_program_headers()
            .iter()
            .map(|p| Segment {
                p_type: p.p_type(endian),
                flags: p.p_flags(endian),
                offset: p.p_offset(endian),
                vaddr: p.p_vaddr(endian),
                filesz: p.p_filesz(endian),
                memsz: p.p_memsz(endian),
                align: p.p_align(endian),
            })
            .collect();

        let mut sections = Vec::new();
        for s in file.sections() {
            let SectionFlags::Elf { sh_flags } = s.flags() else {
                continue;
            };
            if sh_flags & u64::from(elf::SHF_ALLOC) == 0 || s.size() == 0 {
                continue;
            }
            let name = s.name().unwrap_or("").to_string();
            sections.push(Section {
                name,
                addr: s.address(),
                size: s.size(),
                file_offset: s.file_range().map(|(offset, _)| offset),
                exec: sh_flags & u64::from(elf::SHF_EXECINSTR) != 0,
            });
        }
        if !sections.iter().any(|s| s.exec) {
            bail!("no executable sections (section headers stripped?)");
        }
        if let Some(tramp) = segments
            .iter()
            .find(|s| s.p_type == elf::PT_LOAD && is_trampoline_segment(&data, s))
        {
            bail!(
                "already rewritten by msh (trampoline segment at {:#x})",
                tramp.vaddr
            );
        }

        let build_id = match file.build_id().ok().flatten() {
            Some(id) if !id.is_empty() => hex(id),
            _ => format!("sha256:{}", hex(&Sha256::digest(&data))),
        };

        let mut functions = Vec::new();
        if let Some(eh) = file.section_by_name(".eh_frame") {
            let bytes = eh.data().context("reading .eh_frame")?;
            functions =
                parse_eh_frame(bytes, eh.address(), &sections).context("malformed .eh_frame")?;
        }

        let mut symbol_starts = Vec::new();
        let mut symbol_functions = Vec::new();
        for sym in file.symbols().chain(file.dynamic_symbols()) {
            let addr = sym.address();
            if !sym.is_definition() || !sections.iter().any(|s| s.exec && s.contains(addr)) {
                continue;
            }
            symbol_starts.push(addr);
            if sym.kind() == object::SymbolKind::Text && sym.size() > 0 {
                symbol_functions.push(FunctionBounds {
                    start: addr,
                    end: addr + sym.size(),
                    has_lsda: false,
                    name: sym.name().ok().map(str::to_string),
                });
            }
        }
        symbol_starts.sort_unstable();
        symbol_starts.dedup();
        let functions = merge_bounds(functions, symbol_functions);

        let mut relocated_pointers = Vec::new();
        let mut text_relocations = Vec::new();
        if let Some(relocs) = file.dynamic_relocations() {
            for (offset, reloc) in relocs {
                if sections.iter().any(|s| s.exec && s.contains(offset)) {
                    text_relocations.push(offset);
                }
                let base = match reloc.target() {
                    object::RelocationTarget::Symbol(index) => file
                        .symbol_by_index(index)
                        .map(|s| s.address())
                        .unwrap_or(0),
                    _ => 0,
                };
                relocated_pointers.push(base.wrapping_add(reloc.addend() as u64));
            }
        }
        text_relocations.sort_unstable();

        let cet_ibt = gnu_property_ibt(&file);
        Ok(Image {
            data,
            position_independent,
            sections,
            segments,
            phoff,
            phentsize,
            build_id,
            functions,
            symbol_starts,
            relocated_pointers,
            text_relocations,
            cet_ibt,
        })
    }

    pub fn exec_sections(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(|s| s.exec)
    }

    pub fn is_code(&self, addr: u64) -> bool {
        self.exec_sections().any(|s| s.contains(addr))
    }

    /// The file bytes at `addr..addr+len`, if they lie in one section with file content.
    pub fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let s = self
            .sections
            .iter()
            .find(|s| s.contains(addr) && len <= s.size - (addr - s.addr))?;
        let start = usize::try_from(s.file_offset?.checked_add(addr - s.addr)?).ok()?;
        self.data
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    /// File offset of a virtual address, through the `PT_LOAD` that maps it from the file.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.p_type == elf::PT_LOAD && addr >= s.vaddr && addr < s.vaddr + s.filesz)
            .map(|s| s.offset + (addr - s.vaddr))
    }
}

fn is_trampoline_segment(data: &[u8], s: &Segment) -> bool {
    let start = s.offset as usize;
    data.get(start..start + TRAMPOLINE_MAGIC.len()) == Some(TRAMPOLINE_MAGIC.as_slice())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Function bounds from the FDEs of `.eh_frame`: present even in stripped binaries.
fn parse_eh_frame(bytes: &[u8], address: u64, sections: &[Section]) -> Result<Vec<FunctionBounds>> {
    let eh_frame = gimli::EhFrame::new(bytes, gimli::LittleEndian);
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(address);
    if let Some(text) = sections.iter().find(|s| s.name == ".text") {
        bases = bases.set_text(text.addr);
    }
    if let Some(got) = sections.iter().find(|s| s.name == ".got") {
        bases = bases.set_got(got.addr);
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
            out.push(FunctionBounds {
                start: fde.initial_address(),
                end: fde.initial_address() + fde.len(),
                has_lsda: fde.lsda().is_some(),
                name: None,
            });
        }
    }
    Ok(out)
}

/// FDE bounds first (they are what the unwinder trusts), then symbol bounds for code
/// no FDE covers. Overlapping ranges are dropped: their code is left alone.
fn merge_bounds(fdes: Vec<FunctionBounds>, symbols: Vec<FunctionBounds>) -> Vec<FunctionBounds> {
    let mut all: Vec<FunctionBounds> = fdes;
    let mut by_start: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    for s in &symbols {
        if let Some(name) = &s.name {
            by_start.entry(s.start).or_insert_with(|| name.clone());
        }
    }
    for f in &mut all {
        f.name = by_start.get(&f.start).cloned();
    }
    all.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut merged: Vec<FunctionBounds> = Vec::new();
    for f in all {
        if merged.last().is_some_and(|last| f.start < last.end) {
            continue;
        }
        merged.push(f);
    }
    let mut extra: Vec<FunctionBounds> = symbols
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

fn gnu_property_ibt(file: &ElfFile64<Endianness>) -> bool {
    const GNU_PROPERTY_X86_FEATURE_1_AND: u32 = 0xc000_0002;
    const GNU_PROPERTY_X86_FEATURE_1_IBT: u32 = 1;
    let Some(section) = file.section_by_name(".note.gnu.property") else {
        return false;
    };
    let Ok(data) = section.data() else {
        return false;
    };
    // Note header (12 bytes) + "GNU\0", then properties {type u32, size u32, data, pad to 8}.
    let mut at = 16;
    while at + 8 <= data.len() {
        let kind = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        let size = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap()) as usize;
        if kind == GNU_PROPERTY_X86_FEATURE_1_AND && size >= 4 && at + 12 <= data.len() {
            let bits = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap());
            return bits & GNU_PROPERTY_X86_FEATURE_1_IBT != 0;
        }
        at += 8 + size.div_ceil(8) * 8;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_other_machines() {
        assert_eq!(
            Image::parse(b"hello world".to_vec())
                .err()
                .unwrap()
                .to_string(),
            "not an ELF file"
        );
        let mut header = std::fs::read("/bin/sh").unwrap();
        header[18] = elf::EM_AARCH64 as u8;
        header[19] = 0;
        let err = Image::parse(header).err().unwrap().to_string();
        assert!(err.starts_with("not an x86-64 ELF file"), "{err}");
    }

    #[test]
    fn reads_a_system_binary() {
        let image = Image::parse(std::fs::read("/bin/sh").unwrap()).unwrap();
        assert!(image.position_independent);
        assert!(
            image.functions.len() > 10,
            "FDEs give function bounds in a stripped binary"
        );
        assert!(image.functions.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(!image.build_id.is_empty());
    }

    #[test]
    fn truncated_files_fail_cleanly() {
        let data = std::fs::read("/bin/sh").unwrap();
        for len in [0, 10, 63, 64, 200, 1000, 5000] {
            let _ = Image::parse(data[..len.min(data.len())].to_vec());
        }
    }
}
