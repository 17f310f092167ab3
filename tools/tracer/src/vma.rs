//! The traced program's memory areas, as the plugin saw them in qemu's
//! `/proc/self/maps`.
//!
//! qemu-x86_64 on an x86-64 host maps the guest at the guest's own addresses (a guest
//! base of 0): position-independent programs are loaded from 0x40_0000_0000 up, fixed
//! ones where their headers say, and every guest `mmap` lands in that low range too,
//! below qemu's own image and libraries. The plugin keeps the lines that are below every
//! mapping qemu had before loading the guest and were not there then. Read at the first
//! guest instruction, after every guest `mmap` of executable memory (dlopen), before an
//! `execve` and at exit; file mappings that disappeared meanwhile (dlclose) are kept,
//! older first. What is not there: qemu's host-side permissions are shown, not the
//! guest's (code is mapped readable, not executable: QEMU translates it), and anonymous
//! areas the guest unmapped before exit.
use serde::{Deserialize, Serialize};

/// One memory area of the traced program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Host-side permissions as `/proc/PID/maps` shows them, e.g. `rw-p`.
    pub perms: String,
    /// File offset of `start` (0 for anonymous memory).
    pub offset: u64,
    /// The mapped file, or `None` for anonymous memory.
    pub path: Option<String>,
}

impl Vma {
    /// Parses `/proc/PID/maps` lines; malformed lines are skipped.
    pub fn parse_maps(text: &str) -> Vec<Vma> {
        text.lines().filter_map(Vma::parse_line).collect()
    }

    fn parse_line(line: &str) -> Option<Vma> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?.to_owned();
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        let _device = fields.next()?;
        let _inode = fields.next()?;
        let rest = fields.collect::<Vec<_>>().join(" ");
        let path =
            (!rest.is_empty()).then(|| rest.strip_suffix(" (deleted)").unwrap_or(&rest).to_owned());
        Some(Vma {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            offset,
            path,
        })
    }

    /// The file and file offset behind `address`, searching newest first.
    pub fn resolve(vmas: &[Vma], address: u64) -> Option<(&str, u64)> {
        vmas.iter()
            .rev()
            .find(|v| (v.start..v.end).contains(&address))
            .and_then(|v| Some((v.path.as_deref()?, address - v.start + v.offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let vmas = Vma::parse_maps(
            "4000000000-4000003000 r--p 00000000 fe:00 10019123   /tmp/a b\n\
             4000005000-4000026000 rw-p 00000000 00:00 0 \n\
             garbage\n\
             4000003000-4000004000 r--p 00002000 fe:00 10019123   /tmp/x (deleted)\n",
        );
        assert_eq!(vmas.len(), 3);
        assert_eq!(vmas[0].path.as_deref(), Some("/tmp/a b"));
        assert_eq!(vmas[1].path, None);
        assert_eq!(
            Vma::resolve(&vmas, 0x4000001234),
            Some(("/tmp/a b", 0x1234))
        );
        assert_eq!(Vma::resolve(&vmas, 0x4000003010), Some(("/tmp/x", 0x2010)));
        assert_eq!(Vma::resolve(&vmas, 0x4000005010), None);
    }
}
