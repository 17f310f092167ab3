//! Mapping a hosted executable and relocating it: what ld.so does for a program,
//! done for one that is not the process's main program.
//!
//! One anonymous private mapping per pool line holds the whole image, so every line
//! has its own globals; the file's bytes are copied in (not mapped from the file).
//! For Debian's gzip:
//!
//! ```text
//!  base + 0x00000  PT_LOAD R    ELF header, .dynsym, .rela.dyn, .rela.plt
//!  base + 0x03000  PT_LOAD R X  .text (_start, main, ...): the scavenger's own
//!                               code, where faults and the watchdog stop it
//!  base + 0x12000  PT_LOAD R    .rodata, .eh_frame
//!  base + 0x178f0  PT_LOAD RW   .init_array .fini_array .dynamic .got   (RELRO:
//!                               read-only once relocated), then .got.plt (imports,
//!                               bound by `bind`), .data, .bss with the COPY'd libc
//!                               variables (stdout, optind, ...) this line owns
//!  base + 0xe0000  end (pages in no segment stay PROT_NONE)
//! ```

use super::elf::{Exe, Reloc};
use object::elf;

/// A mapped executable. Never unmapped: a stopped scavenger's frames may point in.
pub struct Image {
    /// Load address: vaddr 0 of the file.
    pub base: usize,
    span: usize,
}

fn page() -> usize {
    msh_core::os::page_size()
}

impl Image {
    /// Maps `exe`'s segments and copies their bytes from `data`; all writable until
    /// [`Image::protect`].
    pub fn map(exe: &Exe, data: &[u8]) -> Result<Image, String> {
        let end = exe
            .segments
            .iter()
            .map(|s| s.vaddr.saturating_add(s.memsz))
            .max()
            .unwrap_or(0);
        if end > 1 << 40 {
            return Err("malformed ELF: segments span more than 1 TiB".into());
        }
        let span = (end as usize).div_ceil(page()) * page();
        // SAFETY: a fresh anonymous mapping that nothing else uses.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "cannot map {span} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        let image = Image {
            base: base as usize,
            span,
        };
        for s in &exe.segments {
            let (offset, len) = (s.file.0 as usize, s.file.1 as usize);
            // SAFETY: `read` checked the file range; the destination lies in the
            // mapping (vaddr + filesz <= vaddr + memsz <= span).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data[offset..offset + len].as_ptr(),
                    image.at(s.vaddr),
                    len,
                )
            };
        }
        Ok(image)
    }

    /// The address of `vaddr` in the image.
    pub fn at(&self, vaddr: u64) -> *mut u8 {
        (self.base + vaddr as usize) as *mut u8
    }

    /// Whether `[vaddr, vaddr + len)` lies in the image.
    fn holds(&self, vaddr: u64, len: u64) -> bool {
        vaddr
            .checked_add(len)
            .is_some_and(|end| end <= self.span as u64)
    }

    /// Applies the relocations. `lookup` gives a symbol's address (0: an unresolved
    /// weak one); for a COPY relocation, the library's variable copied from (the
    /// loader then replaces some copies, see `hosted::load`).
    pub fn relocate(
        &self,
        exe: &Exe,
        lookup: &mut dyn FnMut(usize) -> Result<usize, String>,
    ) -> Result<(), String> {
        for r in &exe.relocs {
            self.apply(exe, r, lookup)?;
        }
        Ok(())
    }

    fn apply(
        &self,
        exe: &Exe,
        r: &Reloc,
        lookup: &mut dyn FnMut(usize) -> Result<usize, String>,
    ) -> Result<(), String> {
        if !self.holds(r.offset, 8) {
            return Err("malformed ELF: a relocation outside the image".into());
        }
        let place = self.at(r.offset).cast::<u64>();
        let value = match r.kind {
            elf::R_X86_64_NONE => return Ok(()),
            elf::R_X86_64_RELATIVE => (self.base as i64).wrapping_add(r.addend) as u64,
            elf::R_X86_64_GLOB_DAT | elf::R_X86_64_JUMP_SLOT => lookup(r.sym)? as u64,
            elf::R_X86_64_64 => (lookup(r.sym)? as i64).wrapping_add(r.addend) as u64,
            elf::R_X86_64_IRELATIVE => {
                let resolver = (self.base as i64).wrapping_add(r.addend) as usize;
                // SAFETY: an IFUNC resolver of the executable: it takes no
                // arguments we must supply (x86-64 resolvers read cpu features
                // themselves) and returns the implementation's address.
                let address =
                    unsafe { core::mem::transmute::<usize, extern "C" fn() -> usize>(resolver)() };
                address as u64
            }
            elf::R_X86_64_COPY => {
                let size = exe.symbols.get(r.sym).map_or(0, |s| s.size);
                if !self.holds(r.offset, size) {
                    return Err("malformed ELF: a COPY relocation outside the image".into());
                }
                let from = lookup(r.sym)?;
                if from != 0 {
                    // SAFETY: `from` is the library's variable of that symbol, of
                    // the size the executable was linked against; the place is ours.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            from as *const u8,
                            place.cast(),
                            size as usize,
                        )
                    };
                }
                return Ok(());
            }
            other => return Err(format!("it has a relocation of unsupported type {other}")),
        };
        // SAFETY: checked to lie in the image, which is writable until `protect`.
        unsafe { place.write_unaligned(value) };
        Ok(())
    }

    /// Gives each page its segment's protection (pages of two segments get both),
    /// then makes PT_GNU_RELRO read-only.
    pub fn protect(&self, exe: &Exe) -> Result<(), String> {
        let pages = self.span / page();
        let mut prot = vec![libc::PROT_NONE; pages];
        for s in &exe.segments {
            let first = s.vaddr as usize / page();
            let last = (s.vaddr + s.memsz).div_ceil(page() as u64) as usize;
            let flags = (if s.flags & elf::PF_R != 0 {
                libc::PROT_READ
            } else {
                0
            }) | (if s.flags & elf::PF_W != 0 {
                libc::PROT_WRITE
            } else {
                0
            }) | (if s.flags & elf::PF_X != 0 {
                libc::PROT_EXEC
            } else {
                0
            });
            for p in &mut prot[first..last.min(pages)] {
                *p |= flags;
            }
        }
        if let Some((vaddr, size)) = exe.relro {
            // Only whole pages: the tail of the last one holds .got.plt or .data.
            let first = (vaddr as usize).div_ceil(page());
            let last = (vaddr + size) as usize / page();
            for p in prot.iter_mut().take(last.min(pages)).skip(first) {
                *p &= !libc::PROT_WRITE;
            }
        }
        let mut start = 0;
        while start < pages {
            let mut end = start + 1;
            while end < pages && prot[end] == prot[start] {
                end += 1;
            }
            // SAFETY: pages of our own mapping.
            let status = unsafe {
                libc::mprotect(
                    (self.base + start * page()) as *mut libc::c_void,
                    (end - start) * page(),
                    prot[start],
                )
            };
            if status != 0 {
                return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
            }
            start = end;
        }
        Ok(())
    }

    /// The executable segment: the scavenger's own code, `(start, end)`.
    pub fn text(&self, exe: &Exe) -> (usize, usize) {
        exe.segments
            .iter()
            .find(|s| s.flags & elf::PF_X != 0)
            .map_or((0, 0), |s| {
                (
                    self.base + s.vaddr as usize,
                    self.base + (s.vaddr + s.memsz) as usize,
                )
            })
    }

    /// Reads the pointer array at `(vaddr, entries)` (init/fini arrays), once
    /// relocated.
    pub fn array(&self, (vaddr, entries): (u64, u64)) -> Vec<usize> {
        if vaddr == 0 || !self.holds(vaddr, entries.saturating_mul(8)) {
            return Vec::new();
        }
        (0..entries as usize)
            // SAFETY: inside the image (checked), which stays mapped.
            .map(|i| unsafe { self.at(vaddr).cast::<usize>().add(i).read_unaligned() })
            .filter(|&f| f != 0 && f != usize::MAX)
            .collect()
    }
}
