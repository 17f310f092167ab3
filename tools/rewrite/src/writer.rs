//! Writing the rewritten ELF: patched windows in place, the trampolines appended in a
//! new `PT_LOAD`, made by converting a `PT_NOTE` program header (E9Patch's trick: the
//! program header table keeps its size and place, so nothing else moves).

use crate::elf::{Image, Segment};
use anyhow::{bail, Context, Result};
use object::elf;

const PAGE: u64 = 0x1000;
const PHDR_SIZE: usize = std::mem::size_of::<elf::ProgramHeader64<object::LittleEndian>>();

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Where the trampoline segment goes, decided before any trampoline is encoded.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Virtual address of the trampoline segment.
    pub vaddr: u64,
    /// Its offset in the output file.
    pub file_offset: u64,
    /// Index in the program header table of the `PT_NOTE` that becomes the `PT_LOAD`.
    note_index: usize,
}

impl Layout {
    /// Places the trampoline segment after everything `image` maps and picks the `PT_NOTE` to convert.
    pub fn plan(image: &Image) -> Result<Layout> {
        let end_of_image = image
            .segments
            .iter()
            .filter(|s| s.p_type == elf::PT_LOAD)
            .map(|s| s.vaddr + s.memsz)
            .max()
            .context("no PT_LOAD segment")?;
        let note_index = choose_note(image)
            .context("no PT_NOTE program header to convert into the trampoline segment")?;
        Ok(Layout {
            vaddr: align_up(end_of_image, PAGE),
            file_offset: align_up(image.data.len() as u64, PAGE),
            note_index,
        })
    }
}

/// Prefer a note the loader never reads through `PT_NOTE`: one duplicated by
/// `PT_GNU_PROPERTY`, then one without the build-id, then any.
fn choose_note(image: &Image) -> Option<usize> {
    let notes: Vec<(usize, &Segment)> = image
        .segments
        .iter()
        .enumerate()
        .filter(|(_, s)| s.p_type == elf::PT_NOTE)
        .collect();
    let property = image
        .segments
        .iter()
        .find(|s| s.p_type == elf::PT_GNU_PROPERTY);
    if let Some(p) = property {
        if let Some((i, _)) = notes
            .iter()
            .find(|(_, s)| s.offset == p.offset && s.filesz == p.filesz)
        {
            return Some(*i);
        }
    }
    notes
        .iter()
        .find(|(i, _)| !image.note_segment_holds_build_id(*i))
        .or(notes.first())
        .map(|(i, _)| *i)
}

/// Bytes to write over the input at an address (a window's `jmp`).
pub struct Patch {
    /// Virtual address of the first byte.
    pub addr: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The output file: `image` with `patches` applied and `trampolines` appended as the new segment at `layout`.
pub fn build(
    image: &Image,
    layout: &Layout,
    patches: &[Patch],
    trampolines: &[u8],
) -> Result<Vec<u8>> {
    let mut out = image.data.clone();
    for patch in patches {
        let offset = image
            .file_offset(patch.addr)
            .with_context(|| format!("patch at {:#x} is not backed by the file", patch.addr))?
            as usize;
        out[offset..offset + patch.bytes.len()].copy_from_slice(&patch.bytes);
    }
    out.resize(layout.file_offset as usize, 0);
    out.extend_from_slice(trampolines);

    let mut headers: Vec<Segment> = image.segments.clone();
    headers.remove(layout.note_index);
    let load = Segment {
        p_type: elf::PT_LOAD,
        flags: elf::PF_R | elf::PF_X,
        offset: layout.file_offset,
        vaddr: layout.vaddr,
        filesz: trampolines.len() as u64,
        memsz: trampolines.len() as u64,
        align: PAGE,
    };
    // The loader wants PT_LOADs in ascending address order: ours is the highest.
    let after_last_load = headers
        .iter()
        .rposition(|s| s.p_type == elf::PT_LOAD)
        .map_or(0, |i| i + 1);
    headers.insert(after_last_load, load);

    if image.phentsize as usize != PHDR_SIZE {
        bail!("unexpected program header size {}", image.phentsize);
    }
    for (i, h) in headers.iter().enumerate() {
        let at = image.phoff as usize + i * PHDR_SIZE;
        let entry = out
            .get_mut(at..at + PHDR_SIZE)
            .context("program header table out of file bounds")?;
        entry.copy_from_slice(object::pod::bytes_of(&h.to_header()));
    }
    Ok(out)
}
