//! Reading a hosted executable with the `object` crate: whether a file is an
//! executable at all (a pool line may name a shared object or a program), why one
//! cannot be hosted, and the tables the loader needs (segments, relocations,
//! dynamic symbols, the init/fini arrays, DT_NEEDED).

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader, Sym};
use object::LittleEndian as LE;

type Header = elf::FileHeader64<LE>;

/// What a pool line's file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A shared object: dlopen'ed by `loader` as before.
    SharedObject,
    /// A program (ET_EXEC, or ET_DYN with an interpreter or DF_1_PIE): hosted here.
    Executable,
}

/// Tells a program from a shared object; None when `data` is not a 64-bit
/// little-endian ELF file (dlopen will say what it is). An ET_DYN file is a program
/// when it is marked DF_1_PIE, or has an interpreter and no DT_SONAME (older
/// linkers do not mark PIEs; runnable libraries such as libc.so.6 have a soname).
pub fn kind(data: &[u8]) -> Option<Kind> {
    let header = Header::parse(data).ok()?;
    let phdrs = header.program_headers(LE, data).ok()?;
    let has_interp = phdrs.iter().any(|p| p.p_type(LE) == elf::PT_INTERP);
    let dynamic = dynamic(phdrs, data);
    let tag = |t: u32| dynamic.iter().find(|d| d.d_tag(LE) == t as u64);
    let pie = tag(elf::DT_FLAGS_1).is_some_and(|d| d.d_val(LE) & elf::DF_1_PIE as u64 != 0);
    let soname = tag(elf::DT_SONAME).is_some();
    match header.e_type(LE) {
        elf::ET_EXEC => Some(Kind::Executable),
        elf::ET_DYN if pie || (has_interp && !soname) => Some(Kind::Executable),
        _ => Some(Kind::SharedObject),
    }
}

fn dynamic<'d>(phdrs: &'d [elf::ProgramHeader64<LE>], data: &'d [u8]) -> &'d [elf::Dyn64<LE>] {
    phdrs
        .iter()
        .find_map(|p| p.dynamic(LE, data).ok().flatten())
        .unwrap_or(&[])
}

/// One PT_LOAD segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Where it goes, relative to the load base.
    pub vaddr: u64,
    /// Bytes in memory (the tail past `file` is zero: .bss).
    pub memsz: u64,
    /// Its bytes in the file: offset and length.
    pub file: (u64, u64),
    /// PF_R | PF_W | PF_X.
    pub flags: u32,
}

/// One dynamic relocation (all RELA on x86-64).
#[derive(Debug, Clone, Copy)]
pub struct Reloc {
    /// The place patched, relative to the load base.
    pub offset: u64,
    /// R_X86_64_*.
    pub kind: u32,
    /// Index into `Exe::symbols` (0: none).
    pub sym: usize,
    /// The addend.
    pub addend: i64,
}

/// One dynamic symbol.
#[derive(Debug, Clone)]
pub struct Symbol {
    /// Its name (without version).
    pub name: String,
    /// Defined in the executable itself: its value relative to the load base.
    pub defined: Option<u64>,
    /// Its size in bytes (what a COPY relocation copies).
    pub size: u64,
    /// STB_WEAK: may stay unresolved (0).
    pub weak: bool,
    /// The version it was linked against (`GLIBC_2.2.5`), for an import.
    pub version: Option<String>,
}

/// What the loader needs of an executable, checked to be hostable.
#[derive(Debug, Clone)]
pub struct Exe {
    /// The PT_LOAD segments.
    pub segments: Vec<Segment>,
    /// `_start`, relative to the load base.
    pub entry: u64,
    /// PT_GNU_RELRO: made read-only after relocation (vaddr, size).
    pub relro: Option<(u64, u64)>,
    /// DT_NEEDED libraries.
    pub needed: Vec<String>,
    /// Dynamic relocations, `.rela.dyn` then `.rela.plt`.
    pub relocs: Vec<Reloc>,
    /// The dynamic symbol table.
    pub symbols: Vec<Symbol>,
    /// DT_PREINIT_ARRAY, DT_INIT_ARRAY, DT_FINI_ARRAY: (vaddr, entries).
    pub preinit_array: (u64, u64),
    /// See `preinit_array`.
    pub init_array: (u64, u64),
    /// See `preinit_array`.
    pub fini_array: (u64, u64),
    /// DT_INIT and DT_FINI, when present.
    pub init: Option<u64>,
    /// See `init`.
    pub fini: Option<u64>,
}

/// Imports that mean the program cannot share the primary's process, and why.
const REFUSED: &[(&str, &str)] = &[
    ("pthread_create", "threads"),
    ("thrd_create", "threads"),
    ("clone", "threads"),
    ("clone3", "threads"),
    ("fork", "fork/exec"),
    ("vfork", "fork/exec"),
    ("_Fork", "fork/exec"),
    ("execve", "fork/exec"),
    ("execveat", "fork/exec"),
    ("fexecve", "fork/exec"),
    ("execv", "fork/exec"),
    ("execvp", "fork/exec"),
    ("execvpe", "fork/exec"),
    ("execl", "fork/exec"),
    ("execlp", "fork/exec"),
    ("execle", "fork/exec"),
    ("posix_spawn", "fork/exec"),
    ("posix_spawnp", "fork/exec"),
    ("system", "fork/exec"),
    ("popen", "fork/exec"),
    ("daemon", "fork/exec"),
    ("sigaltstack", "signals"),
    ("alarm", "signals"),
    ("ualarm", "signals"),
    ("setitimer", "signals"),
    ("timer_create", "signals"),
    ("signalfd", "signals"),
    ("sigsuspend", "signals"),
    ("sigwait", "signals"),
    ("sigwaitinfo", "signals"),
    ("sigtimedwait", "signals"),
    ("pause", "signals"),
];

/// Reads `data` as an executable to host, or says in one phrase why it cannot be.
pub fn read(data: &[u8]) -> Result<Exe, String> {
    let bad = |e: object::read::Error| format!("malformed ELF: {e}");
    let header = Header::parse(data).map_err(bad)?;
    if header.e_machine(LE) != elf::EM_X86_64 {
        return Err("not an x86-64 executable".into());
    }
    let phdrs = header.program_headers(LE, data).map_err(bad)?;
    let has = |t: u32| phdrs.iter().any(|p| p.p_type(LE) == t);
    let e_type = header.e_type(LE);
    if !has(elf::PT_INTERP) {
        return Err(if e_type == elf::ET_EXEC {
            "it is statically linked (no PT_INTERP); only dynamically linked PIE executables can be hosted"
        } else {
            "it is a static-pie executable (no PT_INTERP); only dynamically linked ones can be hosted"
        }
        .into());
    }
    if e_type != elf::ET_DYN {
        return Err("it is not position-independent (ET_EXEC); rebuild it with -fPIE -pie".into());
    }
    if has(elf::PT_TLS) {
        return Err("it has thread-local storage of its own (PT_TLS)".into());
    }
    let dynamic = dynamic(phdrs, data);
    if dynamic.is_empty() {
        return Err("it has no dynamic section".into());
    }
    let sections = header.sections(LE, data).map_err(bad)?;
    if sections.is_empty() {
        return Err("it has no section headers (needed to find its relocations)".into());
    }
    let symbols = read_symbols(&sections, data)?;
    for symbol in symbols.iter().filter(|s| s.defined.is_none()) {
        if let Some((_, why)) = REFUSED.iter().find(|(name, _)| *name == symbol.name) {
            return Err(format!(
                "it imports {} ({why}), which cannot share the primary's process",
                symbol.name
            ));
        }
    }
    let mut relocs = Vec::new();
    for section in sections.iter() {
        match section.sh_type(LE) {
            elf::SHT_REL => return Err("it has REL relocations (x86-64 uses RELA)".into()),
            elf::SHT_RELR => {
                return Err("it has packed relative relocations (DT_RELR), not supported".into())
            }
            _ => {}
        }
        if let Some((rela, _)) = section.rela(LE, data).map_err(bad)? {
            relocs.extend(rela.iter().map(|r| Reloc {
                offset: r.r_offset.get(LE),
                kind: r.r_type(LE, false),
                sym: r.r_sym(LE, false) as usize,
                addend: r.r_addend.get(LE),
            }));
        }
    }
    // .rela.plt (JUMP_SLOT, IRELATIVE) after .rela.dyn, as ld.so applies them.
    relocs.sort_by_key(|r| matches!(r.kind, elf::R_X86_64_JUMP_SLOT | elf::R_X86_64_IRELATIVE));
    let tag = |t: u32| {
        dynamic
            .iter()
            .find(|d| d.d_tag(LE) == t as u64)
            .map(|d| d.d_val(LE))
    };
    let array = |at: u32, size: u32| (tag(at).unwrap_or(0), tag(size).unwrap_or(0) / 8);
    let needed = match sections.dynamic(LE, data).map_err(bad)? {
        Some((entries, strings)) => {
            let strings = sections.strings(LE, data, strings).map_err(bad)?;
            entries
                .iter()
                .filter(|d| d.d_tag(LE) == elf::DT_NEEDED as u64)
                .map(|d| {
                    strings
                        .get(d.d_val(LE) as u32)
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .map_err(|()| "malformed DT_NEEDED".to_string())
                })
                .collect::<Result<_, _>>()?
        }
        None => Vec::new(),
    };
    let segments: Vec<Segment> = phdrs
        .iter()
        .filter(|p| p.p_type(LE) == elf::PT_LOAD)
        .map(|p| Segment {
            vaddr: p.p_vaddr(LE),
            memsz: p.p_memsz(LE),
            file: (p.p_offset(LE), p.p_filesz(LE)),
            flags: p.p_flags(LE),
        })
        .collect();
    if segments.is_empty() {
        return Err("it has no loadable segments".into());
    }
    for s in &segments {
        let end = s.file.0.checked_add(s.file.1);
        if end.is_none_or(|end| end > data.len() as u64) || s.file.1 > s.memsz {
            return Err("malformed ELF: a segment lies outside the file".into());
        }
    }
    Ok(Exe {
        segments,
        entry: header.e_entry(LE),
        relro: phdrs
            .iter()
            .find(|p| p.p_type(LE) == elf::PT_GNU_RELRO)
            .map(|p| (p.p_vaddr(LE), p.p_memsz(LE))),
        needed,
        relocs,
        symbols,
        preinit_array: array(elf::DT_PREINIT_ARRAY, elf::DT_PREINIT_ARRAYSZ),
        init_array: array(elf::DT_INIT_ARRAY, elf::DT_INIT_ARRAYSZ),
        fini_array: array(elf::DT_FINI_ARRAY, elf::DT_FINI_ARRAYSZ),
        init: tag(elf::DT_INIT),
        fini: tag(elf::DT_FINI),
    })
}

fn read_symbols<'d>(
    sections: &object::read::elf::SectionTable<'d, Header, &'d [u8]>,
    data: &'d [u8],
) -> Result<Vec<Symbol>, String> {
    let table = sections
        .symbols(LE, data, elf::SHT_DYNSYM)
        .map_err(|e| format!("malformed ELF: {e}"))?;
    let strings = table.strings();
    let versions = sections
        .versions(LE, data)
        .map_err(|e| format!("malformed ELF: {e}"))?;
    let version = |index: usize| {
        let versions = versions.as_ref()?;
        let at = versions.version_index(LE, object::SymbolIndex(index));
        let found = versions.version(at).ok().flatten()?;
        Some(String::from_utf8_lossy(found.name()).into_owned())
    };
    Ok(table
        .symbols()
        .iter()
        .enumerate()
        .map(|(index, sym)| {
            let defined = (sym.st_shndx(LE) != elf::SHN_UNDEF).then(|| sym.st_value(LE));
            Symbol {
                name: String::from_utf8_lossy(sym.name(LE, strings).unwrap_or(b"")).into_owned(),
                defined,
                size: sym.st_size(LE),
                weak: sym.st_bind() == elf::STB_WEAK,
                version: if defined.is_none() {
                    version(index)
                } else {
                    None
                },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    #[test]
    fn debian_gzip_is_a_hostable_executable() {
        let Some(data) = file("/usr/bin/gzip") else {
            return; // not installed: nothing to check
        };
        assert_eq!(kind(&data), Some(Kind::Executable));
        let exe = read(&data).expect("gzip is hostable");
        assert!(exe.needed.iter().any(|n| n.starts_with("libc.so")));
        let start = exe.symbols.iter().find(|s| s.name == "__libc_start_main");
        assert!(start.is_some_and(|s| s
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("GLIBC_"))));
        assert!(exe.relocs.iter().any(|r| r.kind == elf::R_X86_64_COPY));
        assert!(exe.segments.iter().any(|s| s.flags & elf::PF_X != 0));
    }

    #[test]
    fn a_shared_object_is_not_an_executable() {
        // libc.so.6 has an interpreter (it runs) but is a library.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ];
        let Some(data) = libc.iter().find_map(|p| file(p)) else {
            return;
        };
        assert_eq!(kind(&data), Some(Kind::SharedObject));
    }

    #[test]
    fn garbage_is_neither() {
        assert_eq!(kind(b"#!/bin/sh\necho hi\n"), None);
        assert!(read(b"\x7fELF garbage").is_err());
    }
}
