//! One ELF object on disk: its identity (build-id), how file offsets map to virtual
//! addresses, function bounds (symbols, or .eh_frame when stripped), and decoding of
//! its instructions (which ones are loads).
use anyhow::{bail, Context, Result};
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpAccess, OpKind,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A function's address range and name.
#[derive(Debug, Clone)]
struct Function {
    start: u64,
    end: u64,
    name: String,
}

/// A `PT_LOAD` segment: file bytes `[file_offset, file_offset+file_size)` appear at
/// virtual address `vaddr`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    file_offset: u64,
    file_size: u64,
}

/// One decoded instruction of a function.
#[derive(Debug, Clone)]
pub struct DecodedInsn {
    pub address: u64,
    pub len: u64,
    /// Reads memory through an explicit operand and falls through to the next
    /// instruction (so a sample's skid lands right after it).
    pub is_load: bool,
}

pub struct ObjectImage {
    pub path: PathBuf,
    pub build_id: String,
    data: Vec<u8>,
    segments: Vec<Segment>,
    /// Sorted by start, non-overlapping.
    functions: Vec<Function>,
    decoded: HashMap<u64, Vec<DecodedInsn>>,
}

impl ObjectImage {
    pub fn open(path: &Path) -> Result<ObjectImage> {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = object::File::parse(&*data)
            .with_context(|| format!("{} is not an ELF object", path.display()))?;
        if file.architecture() != object::Architecture::X86_64 {
            bail!("{} is not an x86-64 object", path.display());
        }
        let build_id = identity(&file, &data);
        let segments = file
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    file_offset,
                    file_size,
                }
            })
            .collect();
        let functions = function_bounds(&file);
        Ok(ObjectImage {
            path: path.to_owned(),
            build_id,
            data,
            segments,
            functions,
            decoded: HashMap::new(),
        })
    }

    /// The virtual address at which the byte at `file_offset` is loaded.
    pub fn vaddr_of_file_offset(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| (s.file_offset..s.file_offset + s.file_size).contains(&file_offset))
            .map(|s| s.vaddr + (file_offset - s.file_offset))
    }

    fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let segment = self
            .segments
            .iter()
            .find(|s| (s.vaddr..s.vaddr + s.file_size).contains(&vaddr))?;
        let start = (segment.file_offset + (vaddr - segment.vaddr)) as usize;
        let end = (segment.file_offset + segment.file_size).min(start as u64 + len) as usize;
        self.data.get(start..end)
    }

    fn function_at(&self, vaddr: u64) -> Option<&Function> {
        let index = self
            .functions
            .partition_point(|f| f.start <= vaddr)
            .checked_sub(1)?;
        let function = &self.functions[index];
        (vaddr < function.end).then_some(function)
    }

    /// `function+0xN` for an address, `?+0x…` outside any known function.
    pub fn symbolize(&self, vaddr: u64) -> String {
        match self.function_at(vaddr) {
            Some(f) => format!("{}+{:#x}", f.name, vaddr - f.start),
            None => format!("?{vaddr:#x}"),
        }
    }

    /// Whether the instruction at `vaddr` is a load in the sense of [`is_load`].
    pub fn is_load_at(&self, vaddr: u64) -> bool {
        let Some(bytes) = self.bytes_at(vaddr, 15) else {
            return false;
        };
        let instruction = Decoder::with_ip(64, bytes, vaddr, DecoderOptions::NONE).decode();
        !instruction.is_invalid() && is_load(&instruction, &mut InstructionInfoFactory::new())
    }

    /// The instruction at `vaddr`, Intel syntax.
    pub fn disassemble(&self, vaddr: u64) -> Option<String> {
        let bytes = self.bytes_at(vaddr, 15)?;
        let mut decoder = Decoder::with_ip(64, bytes, vaddr, DecoderOptions::NONE);
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return None;
        }
        let mut formatter = IntelFormatter::new();
        formatter.options_mut().set_hex_prefix("0x");
        formatter.options_mut().set_hex_suffix("");
        formatter.options_mut().set_uppercase_hex(false);
        let mut text = String::new();
        formatter.format(&instruction, &mut text);
        Some(text)
    }

    /// The load that ends exactly at `next_ip` (the instruction a cpu-clock sample with
    /// a skid of one points to), found by decoding the containing function from its
    /// start. `None` when the previous instruction is not a load or is unknown.
    pub fn load_before(&mut self, next_ip: u64) -> Option<u64> {
        let function = self.function_at(next_ip.checked_sub(1)?)?.clone();
        let decoded = match self.decoded.get(&function.start) {
            Some(d) => d,
            None => {
                let insns = self.decode_function(&function);
                self.decoded.entry(function.start).or_insert(insns)
            }
        };
        let index = decoded.partition_point(|i| i.address + i.len <= next_ip);
        // `index` is the first instruction not ending at or before next_ip; the
        // candidate is the one before it, and it must end exactly at next_ip.
        let previous = decoded.get(index.checked_sub(1)?)?;
        (previous.address + previous.len == next_ip && previous.is_load).then_some(previous.address)
    }

    fn decode_function(&self, function: &Function) -> Vec<DecodedInsn> {
        let Some(bytes) = self.bytes_at(function.start, function.end - function.start) else {
            return Vec::new();
        };
        let mut decoder = Decoder::with_ip(64, bytes, function.start, DecoderOptions::NONE);
        let mut info = InstructionInfoFactory::new();
        let mut out = Vec::new();
        let mut instruction = Instruction::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            if instruction.is_invalid() {
                break; // data in text, or a bad bound: attribute nothing past here
            }
            out.push(DecodedInsn {
                address: instruction.ip(),
                len: instruction.len() as u64,
                is_load: is_load(&instruction, &mut info),
            });
        }
        out
    }
}

/// True for an instruction that reads memory through an explicit memory operand and
/// falls through (so `lea`, `nop`, prefetches, stores, stack pushes/pops, `ret` and
/// indirect branches are not loads).
pub fn is_load(instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
    if instruction.flow_control() != FlowControl::Next
        || matches!(instruction.mnemonic(), Mnemonic::Lea | Mnemonic::Nop)
        || !(0..instruction.op_count()).any(|i| instruction.op_kind(i) == OpKind::Memory)
    {
        return false;
    }
    info.info(instruction).used_memory().iter().any(|m| {
        matches!(
            m.access(),
            OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    })
}

/// Function ranges from the symbol tables, completed by .eh_frame FDEs (which stripped
/// binaries keep) for code no symbol covers.
fn function_bounds(file: &object::File) -> Vec<Function> {
    let mut functions: Vec<Function> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok()?.to_owned();
            Some(Function {
                start: s.address(),
                end: s.address() + s.size(),
                name,
            })
        })
        .collect();
    functions.extend(
        eh_frame_functions(file)
            .into_iter()
            .map(|(start, end)| Function {
                start,
                end,
                name: format!("sub_{start:x}"),
            }),
    );
    // Keep the first (symbol-named, then larger) function at each start, drop overlaps.
    functions.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(a.name.starts_with("sub_").cmp(&b.name.starts_with("sub_")))
            .then(b.end.cmp(&a.end))
    });
    let mut out: Vec<Function> = Vec::with_capacity(functions.len());
    for function in functions {
        if out.last().is_none_or(|last| function.start >= last.end) {
            out.push(function);
        }
    }
    out
}

fn eh_frame_functions(file: &object::File) -> Vec<(u64, u64)> {
    use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
    let Some(section) = file.section_by_name(".eh_frame") else {
        return Vec::new();
    };
    let Ok(data) = section.data() else {
        return Vec::new();
    };
    let eh_frame = EhFrame::new(data, LittleEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(hdr.address());
    }
    let mut ranges = Vec::new();
    let mut entries = eh_frame.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry {
            if let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) {
                if fde.len() > 0 {
                    ranges.push((fde.initial_address(), fde.initial_address() + fde.len()));
                }
            }
        }
    }
    ranges
}

/// The identity a profile records for an object: its GNU build-id in hex or, when it
/// has none, `sha256:` and the hex SHA-256 of the whole file.
fn identity(file: &object::File, data: &[u8]) -> String {
    match file.build_id().ok().flatten() {
        Some(id) if !id.is_empty() => hex(id),
        _ => format!("sha256:{}", hex(&Sha256::digest(data))),
    }
}

/// The identity of the ELF file at `path`, as `build_id` in a profile records it.
pub fn build_id(path: &Path) -> Result<String> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF object", path.display()))?;
    Ok(identity(&file, &data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Objects opened so far, by path (a profile touches few objects, each many times).
#[derive(Default)]
pub struct ObjectCache {
    objects: HashMap<PathBuf, Option<ObjectImage>>,
}

impl ObjectCache {
    /// The object at `path`, or `None` if it cannot be read as an x86-64 ELF
    /// (a deleted file, `[vdso]`, JIT code): its samples stay unattributed.
    pub fn get(&mut self, path: &Path) -> Option<&mut ObjectImage> {
        self.objects
            .entry(path.to_owned())
            .or_insert_with(|| ObjectImage::open(path).ok())
            .as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    #[test]
    fn classifies_loads() {
        let mut info = InstructionInfoFactory::new();
        let cases: [(&[u8], bool); 9] = [
            (&[0x48, 0x8b, 0x00], true),        // mov rax,[rax]
            (&[0x48, 0x03, 0x07], true),        // add rax,[rdi]
            (&[0x83, 0x07, 0x01], true),        // add dword [rdi],1 (read-modify-write)
            (&[0x48, 0x89, 0x07], false),       // mov [rdi],rax (store)
            (&[0x48, 0x8d, 0x47, 0x08], false), // lea rax,[rdi+8]
            (&[0x0f, 0x18, 0x0f], false),       // prefetcht0 [rdi]
            (&[0x58], false),                   // pop rax (implicit stack)
            (&[0xc3], false),                   // ret
            (&[0xff, 0x20], false),             // jmp [rax]
        ];
        for (bytes, expected) in cases {
            assert_eq!(is_load(&decode(bytes), &mut info), expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn reads_its_own_executable() {
        let exe = std::env::current_exe().unwrap();
        let image = ObjectImage::open(&exe).unwrap();
        assert!(!image.build_id.is_empty());
        assert!(!image.functions.is_empty());
        assert!(image.functions.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn objects_without_a_build_id_get_a_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("x.c");
        std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
        let exe = dir.path().join("x");
        let built = std::process::Command::new("cc")
            .args(["-Wl,--build-id=none", "-o"])
            .arg(&exe)
            .arg(&source)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            return; // no C compiler: the end-to-end tests will say so
        }
        let id = build_id(&exe).unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
        assert_eq!(ObjectImage::open(&exe).unwrap().build_id, id);
        let with_id = std::env::current_exe().unwrap();
        assert!(!build_id(&with_id).unwrap().starts_with("sha256:"));
    }

    #[test]
    fn rejects_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"not an elf").unwrap();
        assert!(ObjectImage::open(&path).is_err());
    }
}
