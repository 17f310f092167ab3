//! The objects a profile touches: [`msh_binary::Binary`] plus what attribution needs —
//! the load a sample with a skid of one is charged to, found by decoding the
//! containing function once.
use anyhow::Result;
use iced_x86::{Instruction, InstructionInfoFactory};
use msh_binary::{classify_load, decode, Binary};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use msh_binary::build_id;

/// One ELF object on disk, with its functions decoded on demand.
pub struct ObjectImage {
    /// Where it was read from.
    pub path: PathBuf,
    /// See [`msh_binary::identity`].
    pub build_id: String,
    binary: Binary,
    /// Decoded functions by start address.
    decoded: HashMap<u64, Vec<Instruction>>,
    info: InstructionInfoFactory,
}

impl ObjectImage {
    /// Reads the object at `path`.
    pub fn open(path: &Path) -> Result<ObjectImage> {
        let binary = Binary::open(path)?;
        Ok(ObjectImage {
            path: path.to_owned(),
            build_id: binary.build_id.clone(),
            binary,
            decoded: HashMap::new(),
            info: InstructionInfoFactory::new(),
        })
    }

    /// The virtual address at which the byte at `file_offset` is loaded.
    pub fn vaddr_of_file_offset(&self, file_offset: u64) -> Option<u64> {
        self.binary.vaddr_of_file_offset(file_offset)
    }

    /// `function+0xN` for an address, `?0x…` outside any known function.
    pub fn symbolize(&self, vaddr: u64) -> String {
        self.binary.symbolize(vaddr)
    }

    /// The ELF address of `symbol+offset`, if the function symbol exists and holds it.
    pub fn address_of(&self, symbol: &str, offset: u64) -> Option<u64> {
        let start = self.binary.symbol_address(symbol)?;
        let function = self.binary.function_at(start)?;
        function.contains(start + offset).then_some(start + offset)
    }

    /// The instruction at `vaddr`.
    pub fn instruction_at(&self, vaddr: u64) -> Option<Instruction> {
        self.binary.instruction_at(vaddr)
    }

    /// Whether the instruction at `vaddr` is a load that falls through.
    pub fn is_load_at(&mut self, vaddr: u64) -> bool {
        let Some(instruction) = self.binary.instruction_at(vaddr) else {
            return false;
        };
        classify_load(&instruction, &mut self.info).is_some_and(|l| l.falls_through)
    }

    /// The instruction at `vaddr`, Intel syntax.
    pub fn disassemble(&self, vaddr: u64) -> Option<String> {
        Some(decode::intel(&self.binary.instruction_at(vaddr)?))
    }

    /// The load that ends exactly at `next_ip` (the instruction a cpu-clock sample with
    /// a skid of one points to), found by decoding the containing function from its
    /// start. `None` when the previous instruction is not a load that falls through,
    /// or is unknown.
    pub fn load_before(&mut self, next_ip: u64) -> Option<Instruction> {
        let function = self.binary.function_at(next_ip.checked_sub(1)?)?;
        let start = function.start;
        if !self.decoded.contains_key(&start) {
            let instructions = self.binary.decode_function(function);
            self.decoded.insert(start, instructions);
        }
        let decoded = &self.decoded[&start];
        let index = decoded.partition_point(|i| i.next_ip() <= next_ip);
        // `index` is the first instruction not ending at or before next_ip; the
        // candidate is the one before it, and it must end exactly at next_ip.
        let previous = *decoded.get(index.checked_sub(1)?)?;
        (previous.next_ip() == next_ip
            && classify_load(&previous, &mut self.info).is_some_and(|l| l.falls_through))
        .then_some(previous)
    }
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

    #[test]
    fn charges_a_sample_to_the_load_before_it() {
        let exe = std::env::current_exe().unwrap();
        let mut image = ObjectImage::open(&exe).unwrap();
        // Find any load that falls through in this test binary, then ask for it by the
        // address after it.
        let binary = Binary::open(&exe).unwrap();
        let mut info = InstructionInfoFactory::new();
        let load = binary
            .functions
            .iter()
            .flat_map(|f| binary.decode_function(f))
            .find(|i| classify_load(i, &mut info).is_some_and(|l| l.falls_through))
            .expect("a load in the test binary");
        assert_eq!(image.load_before(load.next_ip()).unwrap().ip(), load.ip());
        assert!(image.is_load_at(load.ip()));
        assert!(image
            .load_before(load.ip() + 1)
            .is_none_or(|i| i.ip() != load.ip()));
    }

    #[test]
    fn rejects_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"not an elf").unwrap();
        assert!(ObjectImage::open(&path).is_err());
        assert!(ObjectCache::default().get(&path).is_none());
    }
}
