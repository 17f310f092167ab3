//! The input binary, as the rewriter needs it: [`msh_binary::Binary`] (sections,
//! segments, function bounds, build-id, possible jump targets from symbols and
//! relocations), plus the checks only a rewriter makes. `writer` produces the output.

use anyhow::{bail, Result};
pub use msh_binary::{Binary as Image, Segment};
use object::elf;

/// Marks the start of a trampoline segment written by `msh rewrite`.
pub const TRAMPOLINE_MAGIC: &[u8; 16] = b"msh-trampolines\0";

/// Parses the file to rewrite, refusing what cannot be rewritten.
pub fn parse(data: Vec<u8>) -> Result<Image> {
    let image = Image::parse(data)?;
    if !image.sections.iter().any(|s| s.exec) {
        bail!("no executable sections (section headers stripped?)");
    }
    if let Some(tramp) = image
        .segments
        .iter()
        .find(|s| s.p_type == elf::PT_LOAD && is_trampoline_segment(&image.data, s))
    {
        bail!(
            "already rewritten by msh (trampoline segment at {:#x})",
            tramp.vaddr
        );
    }
    Ok(image)
}

fn is_trampoline_segment(data: &[u8], s: &Segment) -> bool {
    let start = s.offset as usize;
    data.get(start..start + TRAMPOLINE_MAGIC.len()) == Some(TRAMPOLINE_MAGIC.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_system_binary() {
        let image = parse(std::fs::read("/bin/sh").unwrap()).unwrap();
        assert!(image.position_independent);
        assert!(image.functions.len() > 10);
    }

    #[test]
    fn refuses_its_own_output_shape() {
        let mut data = std::fs::read("/bin/sh").unwrap();
        let image = Image::parse(data.clone()).unwrap();
        let load = image
            .segments
            .iter()
            .find(|s| s.p_type == elf::PT_LOAD && s.offset > 0 && s.filesz >= 16)
            .unwrap();
        let at = load.offset as usize;
        data[at..at + 16].copy_from_slice(TRAMPOLINE_MAGIC);
        let err = parse(data).err().unwrap().to_string();
        assert!(err.starts_with("already rewritten by msh"), "{err}");
    }
}
