//! An x86-64 ELF executable or shared object, read through `object`'s typed ELF
//! structures: header, program headers, allocated sections, symbols, notes and
//! dynamic relocations. Read-only facts; the rewriter writes its output elsewhere.
use crate::bounds::{self, Function};
use crate::decode;
use anyhow::{bail, Context, Result};
use iced_x86::Instruction;
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{
    LittleEndian, Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionFlags, U32, U64,
};

/// An allocated section with content in memory.
#[derive(Debug, Clone)]
pub struct Section {
    /// Its name (`.text`, `.plt`, ...), empty when unnamed.
    pub name: String,
    /// Virtual address.
    pub addr: u64,
    /// Size in memory.
    pub size: u64,
    /// File offset of the bytes, `None` for `SHT_NOBITS`.
    pub file_offset: Option<u64>,
    /// `SHF_EXECINSTR`.
    pub exec: bool,
}

impl Section {
    /// Whether `addr` lies in the section.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size
    }
}

/// A program header, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `PT_*`.
    pub p_type: u32,
    /// `PF_*`.
    pub flags: u32,
    /// File offset.
    pub offset: u64,
    /// Virtual address (also written as the physical address).
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory.
    pub memsz: u64,
    /// Alignment.
    pub align: u64,
}

impl Segment {
    fn read(header: &elf::ProgramHeader64<LittleEndian>) -> Segment {
        let e = LittleEndian;
        Segment {
            p_type: header.p_type(e),
            flags: header.p_flags(e),
            offset: header.p_offset(e),
            vaddr: header.p_vaddr(e),
            filesz: header.p_filesz(e),
            memsz: header.p_memsz(e),
            align: header.p_align(e),
        }
    }

    /// The program header as it is stored in a 64-bit little-endian file.
    pub fn to_header(&self) -> elf::ProgramHeader64<LittleEndian> {
        let e = LittleEndian;
        elf::ProgramHeader64 {
            p_type: U32::new(e, self.p_type),
            p_flags: U32::new(e, self.flags),
            p_offset: U64::new(e, self.offset),
            p_vaddr: U64::new(e, self.vaddr),
            p_paddr: U64::new(e, self.vaddr),
            p_filesz: U64::new(e, self.filesz),
            p_memsz: U64::new(e, self.memsz),
            p_align: U64::new(e, self.align),
        }
    }

    /// Whether the file bytes `[offset, offset+filesz)` hold `file_offset`.
    fn holds_file_offset(&self, file_offset: u64) -> bool {
        (self.offset..self.offset + self.filesz).contains(&file_offset)
    }
}

/// A parsed x86-64 ELF executable or shared object.
pub struct Binary {
    /// The whole file.
    pub data: Vec<u8>,
    /// `ET_DYN`: PIE or shared object.
    pub position_independent: bool,
    /// Allocated, non-empty sections.
    pub sections: Vec<Section>,
    /// Every program header, in table order.
    pub segments: Vec<Segment>,
    /// File offset of the program header table.
    pub phoff: u64,
    /// Size of one program header entry.
    pub phentsize: u16,
    /// See [`crate::identity`].
    pub build_id: String,
    /// Sorted by start, not overlapping; see [`crate::bounds`].
    pub functions: Vec<Function>,
    /// Starts of every defined symbol in executable sections (any type).
    pub code_symbol_starts: Vec<u64>,
    /// Addresses dynamic relocations make into pointers (addends, symbol values).
    pub relocated_pointers: Vec<u64>,
    /// Places dynamic relocations write to that lie in executable code, sorted.
    pub text_relocations: Vec<u64>,
    /// Marked IBT (`endbr64`) in its GNU property note.
    pub cet_ibt: bool,
}

/// Checks the ELF header: a 64-bit little-endian x86-64 executable or shared object.
fn check_header(data: &[u8]) -> Result<()> {
    let header = elf::FileHeader64::<LittleEndian>::parse(data).context("not an ELF file")?;
    let ident = &header.e_ident;
    if ident.class != elf::ELFCLASS64 || ident.data != elf::ELFDATA2LSB {
        bail!("not a 64-bit little-endian ELF file");
    }
    let machine = header.e_machine(LittleEndian);
    if machine != elf::EM_X86_64 {
        bail!("not an x86-64 ELF file (e_machine {machine})");
    }
    let e_type = header.e_type(LittleEndian);
    if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
        bail!("not an executable or shared object (e_type {e_type})");
    }
    Ok(())
}

impl Binary {
    /// Parses `data`; the error says in a few words what the file is instead.
    pub fn parse(data: Vec<u8>) -> Result<Binary> {
        check_header(&data)?;
        let file = ElfFile64::<LittleEndian>::parse(&*data).context("malformed ELF file")?;
        let header = file.elf_header();
        let e = LittleEndian;
        let segments: Vec<Segment> = file
            .elf_program_headers()
            .iter()
            .map(Segment::read)
            .collect();
        let mut sections = Vec::new();
        for s in file.sections() {
            let SectionFlags::Elf { sh_flags } = s.flags() else {
                continue;
            };
            if sh_flags & u64::from(elf::SHF_ALLOC) == 0 || s.size() == 0 {
                continue;
            }
            sections.push(Section {
                name: s.name().unwrap_or("").to_string(),
                addr: s.address(),
                size: s.size(),
                file_offset: s.file_range().map(|(offset, _)| offset),
                exec: sh_flags & u64::from(elf::SHF_EXECINSTR) != 0,
            });
        }
        let is_code = |a: u64| sections.iter().any(|s| s.exec && s.contains(a));
        let generic = object::File::parse(&*data).context("malformed ELF file")?;
        let build_id = crate::identity::of(&generic, &data);
        let functions = bounds::functions(&generic, is_code)?;

        let mut code_symbol_starts: Vec<u64> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.is_definition() && is_code(s.address()))
            .map(|s| s.address())
            .collect();
        code_symbol_starts.sort_unstable();
        code_symbol_starts.dedup();

        let mut relocated_pointers = Vec::new();
        let mut text_relocations = Vec::new();
        if let Some(relocations) = file.dynamic_relocations() {
            for (offset, relocation) in relocations {
                if is_code(offset) {
                    text_relocations.push(offset);
                }
                let base = match relocation.target() {
                    RelocationTarget::Symbol(index) => file
                        .symbol_by_index(index)
                        .map(|s| s.address())
                        .unwrap_or(0),
                    _ => 0,
                };
                relocated_pointers.push(base.wrapping_add(relocation.addend() as u64));
            }
        }
        text_relocations.sort_unstable();
        let cet_ibt = gnu_property_ibt(&file);
        Ok(Binary {
            position_independent: header.e_type(e) == elf::ET_DYN,
            phoff: header.e_phoff(e),
            phentsize: header.e_phentsize(e),
            sections,
            segments,
            build_id,
            functions,
            code_symbol_starts,
            relocated_pointers,
            text_relocations,
            cet_ibt,
            data,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn open(path: &std::path::Path) -> Result<Binary> {
        let data = crate::read_object(path)?;
        Binary::parse(data).with_context(|| path.display().to_string())
    }

    /// Executable sections.
    pub fn exec_sections(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(|s| s.exec)
    }

    /// Whether `addr` lies in an executable section.
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

    /// Up to `len` file bytes from `addr`, cut at the end of its section.
    pub fn bytes_from(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let s = self.sections.iter().find(|s| s.contains(addr))?;
        self.bytes_at(addr, len.min(s.size - (addr - s.addr)))
    }

    /// File offset of a virtual address, through the `PT_LOAD` that maps it from the file.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.loads()
            .find(|s| addr >= s.vaddr && addr < s.vaddr + s.filesz)
            .map(|s| s.offset + (addr - s.vaddr))
    }

    /// The virtual address at which the byte at `file_offset` is loaded.
    pub fn vaddr_of_file_offset(&self, file_offset: u64) -> Option<u64> {
        self.loads()
            .find(|s| s.holds_file_offset(file_offset))
            .map(|s| s.vaddr + (file_offset - s.offset))
    }

    fn loads(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.p_type == elf::PT_LOAD)
    }

    /// The function containing `addr`.
    pub fn function_at(&self, addr: u64) -> Option<&Function> {
        bounds::containing(&self.functions, addr)
    }

    /// `function+0xN` for an address, `?0x…` outside any known function.
    pub fn symbolize(&self, addr: u64) -> String {
        match self.function_at(addr) {
            Some(f) => f.symbolize(addr),
            None => format!("?{addr:#x}"),
        }
    }

    /// The instruction at `addr`, if it decodes.
    pub fn instruction_at(&self, addr: u64) -> Option<Instruction> {
        decode::decode_one(self.bytes_from(addr, 15)?, addr)
    }

    /// The instructions of `function`, from its start (empty if its bytes are not in
    /// the file).
    pub fn decode_function(&self, function: &Function) -> Vec<Instruction> {
        match self.bytes_at(function.start, function.end - function.start) {
            Some(bytes) => decode::decode_all(bytes, function.start),
            None => Vec::new(),
        }
    }

    /// The address of the defined function symbol `name`, if there is one.
    pub fn symbol_address(&self, name: &str) -> Option<u64> {
        self.functions
            .iter()
            .find(|f| f.name.as_deref() == Some(name))
            .map(|f| f.start)
    }

    /// Whether program header `index` is a `PT_NOTE` holding the GNU build-id note.
    pub fn note_segment_holds_build_id(&self, index: usize) -> bool {
        let Some(segment) = self.segments.get(index) else {
            return false;
        };
        let header = segment.to_header();
        let Ok(Some(mut notes)) = header.notes(LittleEndian, &*self.data) else {
            return false;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(LittleEndian) == elf::NT_GNU_BUILD_ID
            {
                return true;
            }
        }
        false
    }
}

/// Whether the GNU property note marks the object IBT-enabled (`endbr64` at every
/// indirect branch target).
fn gnu_property_ibt(file: &ElfFile64<LittleEndian>) -> bool {
    let e = LittleEndian;
    for header in file.elf_program_headers() {
        let Ok(Some(mut notes)) = header.notes(e, file.data()) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            let Some(mut properties) = note.gnu_properties(e) else {
                continue;
            };
            while let Ok(Some(property)) = properties.next() {
                if property.pr_type() == elf::GNU_PROPERTY_X86_FEATURE_1_AND {
                    return property
                        .data_u32(e)
                        .is_ok_and(|bits| bits & elf::GNU_PROPERTY_X86_FEATURE_1_IBT != 0);
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_other_machines() {
        let err = Binary::parse(b"hello world".to_vec()).err().unwrap();
        assert_eq!(err.to_string(), "not an ELF file");
        let mut header = std::fs::read("/bin/sh").unwrap();
        // e_machine, the 2 bytes at offset 18 of the header: AArch64.
        header[18..20].copy_from_slice(&elf::EM_AARCH64.to_le_bytes());
        let err = Binary::parse(header).err().unwrap().to_string();
        assert!(err.starts_with("not an x86-64 ELF file"), "{err}");
    }

    #[test]
    fn reads_a_stripped_system_binary() {
        let binary = Binary::open(std::path::Path::new("/bin/sh")).unwrap();
        assert!(binary.position_independent);
        assert!(
            binary.functions.len() > 10,
            "FDEs bound functions when stripped"
        );
        assert!(binary.functions.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(!binary.build_id.starts_with("sha256:"));
        let note = binary
            .segments
            .iter()
            .position(|s| s.p_type == elf::PT_NOTE)
            .expect("a PT_NOTE");
        let holds: Vec<bool> = (0..binary.segments.len())
            .map(|i| binary.note_segment_holds_build_id(i))
            .collect();
        assert!(
            holds.iter().any(|&h| h),
            "one note segment holds the build-id"
        );
        assert!(holds[note] || holds.iter().filter(|&&h| h).count() == 1);
    }

    #[test]
    fn maps_addresses_and_file_offsets_both_ways() {
        let binary = Binary::open(&std::env::current_exe().unwrap()).unwrap();
        let f = binary.functions[binary.functions.len() / 2].clone();
        let offset = binary.file_offset(f.start).unwrap();
        assert_eq!(binary.vaddr_of_file_offset(offset), Some(f.start));
        assert!(!binary.decode_function(&f).is_empty());
        assert!(binary.instruction_at(f.start).is_some());
        let header = binary.segments[0].to_header();
        assert_eq!(Segment::read(&header), binary.segments[0]);
    }

    #[test]
    fn truncated_files_fail_cleanly() {
        let data = std::fs::read("/bin/sh").unwrap();
        for len in [0, 10, 63, 64, 200, 1000, 5000] {
            let Err(err) = Binary::parse(data[..len.min(data.len())].to_vec()) else {
                panic!("a {len}-byte prefix of /bin/sh parsed");
            };
            // Shorter than the ELF header: not an ELF file at all; longer: the header
            // is fine but what it points at is missing.
            let cause = if len < 64 {
                "not an ELF file"
            } else {
                "malformed ELF file"
            };
            assert_eq!(err.to_string(), cause, "a {len}-byte prefix: {err:#}");
            assert!(
                !format!("{err:#}").contains('\n'),
                "a {len}-byte prefix: {err:#}"
            );
        }
    }
}
