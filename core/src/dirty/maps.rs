//! What `/proc/self/maps` says about a range: is it all mapped, writable, private, and
//! anonymous? Checked once when a tracker is created, so that a range no backend can
//! track is a clear error instead of a silent wrong answer.

use super::{Error, MappingProblem};
use alloc::vec::Vec;

/// The kind of memory that covers a whole range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory (heap, `mmap(MAP_PRIVATE|MAP_ANONYMOUS)`): every backend.
    Anonymous,
    /// A private (copy-on-write) file mapping: only `mprotect` tracks it.
    PrivateFile,
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// `r` in the permissions.
    pub readable: bool,
    /// `w` in the permissions.
    pub writable: bool,
    /// `s` (shared) rather than `p` (private) in the permissions.
    pub shared: bool,
    /// The backing file's inode; 0 for anonymous memory.
    pub inode: u64,
}

fn parse_hex(text: &[u8]) -> Option<usize> {
    if text.is_empty() {
        return None;
    }
    let mut value: usize = 0;
    for &c in text {
        let digit = (c as char).to_digit(16)? as usize;
        value = value.checked_mul(16)?.checked_add(digit)?;
    }
    Some(value)
}

fn parse_dec(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &c in text {
        let digit = (c as char).to_digit(10)? as u64;
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    Some(value)
}

/// Parses one maps line: `start-end perms offset dev inode [path]`.
pub fn parse_line(line: &[u8]) -> Option<Mapping> {
    let mut fields = line.split(|&c| c == b' ').filter(|f| !f.is_empty());
    let span = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = parse_dec(fields.next()?)?;
    let dash = span.iter().position(|&c| c == b'-')?;
    let start = parse_hex(&span[..dash])?;
    let end = parse_hex(&span[dash + 1..])?;
    if perms.len() < 4 || start >= end {
        return None;
    }
    Some(Mapping {
        start,
        end,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        shared: perms[3] == b's',
        inode,
    })
}

/// Reads `/proc/self/maps` whole.
fn read_maps() -> Result<Vec<u8>, Error> {
    let fd = super::sys::Fd::open(b"/proc/self/maps\0", libc::O_RDONLY)?;
    let mut text: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        text.reserve(64 * 1024);
        let spare = text.capacity() - text.len();
        // SAFETY: we read into the vector's spare capacity and only then extend its length.
        let n = unsafe { libc::read(fd.0, text.as_mut_ptr().add(text.len()).cast(), spare) };
        let n = super::sys::check("read /proc/self/maps", n as i64)? as usize;
        if n == 0 {
            return Ok(text);
        }
        // SAFETY: the kernel initialized `n` more bytes.
        unsafe { text.set_len(text.len() + n) };
    }
}

/// Every mapping of this process, in address order.
pub fn current_mappings() -> Result<Vec<Mapping>, Error> {
    let text = read_maps()?;
    Ok(text.split(|&c| c == b'\n').filter_map(parse_line).collect())
}

/// Classifies `[start, end)` against `mappings` (sorted by address, as the kernel lists them).
pub fn classify(
    mappings: impl Iterator<Item = Mapping>,
    start: usize,
    end: usize,
) -> Result<Backing, Error> {
    let mut covered = start;
    let mut backing = Backing::Anonymous;
    for m in mappings {
        if m.end <= covered {
            continue;
        }
        if m.start > covered || covered >= end {
            break;
        }
        if !m.writable {
            return Err(Error::Mapping {
                start,
                problem: MappingProblem::NotWritable,
            });
        }
        if m.shared {
            return Err(Error::Mapping {
                start,
                problem: MappingProblem::Shared,
            });
        }
        if m.inode != 0 {
            backing = Backing::PrivateFile;
        }
        covered = m.end;
    }
    if covered < end {
        return Err(Error::Mapping {
            start,
            problem: MappingProblem::Unmapped,
        });
    }
    Ok(backing)
}

/// Classifies each of `ranges` against the live address space.
pub fn classify_ranges(ranges: &[(usize, usize)]) -> Result<Backing, Error> {
    let text = read_maps()?;
    let mut backing = Backing::Anonymous;
    for &(start, end) in ranges {
        let lines = text.split(|&c| c == b'\n').filter_map(parse_line);
        if classify(lines, start, end)? == Backing::PrivateFile {
            backing = Backing::PrivateFile;
        }
    }
    Ok(backing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: usize, end: usize, perms: &str, inode: u64) -> Mapping {
        let p = perms.as_bytes();
        Mapping {
            start,
            end,
            readable: p[0] == b'r',
            writable: p[1] == b'w',
            shared: p[3] == b's',
            inode,
        }
    }

    #[test]
    fn parses_a_maps_line() {
        let line = b"7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 ";
        assert_eq!(
            parse_line(line),
            Some(m(0x7f1c2a000000, 0x7f1c2a021000, "rw-p", 0))
        );
        let file = b"55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1234   /usr/bin/cat";
        assert_eq!(
            parse_line(file),
            Some(m(0x55d0c8a00000, 0x55d0c8a02000, "r--p", 1234))
        );
        assert_eq!(parse_line(b""), None);
        assert_eq!(parse_line(b"zz-10 rw-p 0 0 0"), None);
        assert_eq!(parse_line(b"20-10 rw-p 0 0 0"), None);
    }

    #[test]
    fn classifies_coverage_and_kind() {
        let maps = [
            m(0x1000, 0x3000, "rw-p", 0),
            m(0x3000, 0x5000, "rw-p", 0),
            m(0x6000, 0x7000, "rw-p", 9),
        ];
        let c = |s, e| classify(maps.iter().copied(), s, e);
        assert_eq!(c(0x1000, 0x5000).unwrap(), Backing::Anonymous);
        assert_eq!(c(0x2000, 0x4000).unwrap(), Backing::Anonymous);
        assert_eq!(c(0x6000, 0x7000).unwrap(), Backing::PrivateFile);
        assert!(matches!(
            c(0x4000, 0x7000),
            Err(Error::Mapping {
                problem: MappingProblem::Unmapped,
                ..
            })
        ));
        assert!(matches!(
            c(0x8000, 0x9000),
            Err(Error::Mapping {
                problem: MappingProblem::Unmapped,
                ..
            })
        ));
        let shared = [m(0x1000, 0x2000, "rw-s", 0)];
        assert!(matches!(
            classify(shared.iter().copied(), 0x1000, 0x2000),
            Err(Error::Mapping {
                problem: MappingProblem::Shared,
                ..
            })
        ));
        let ro = [m(0x1000, 0x2000, "r--p", 0)];
        assert!(matches!(
            classify(ro.iter().copied(), 0x1000, 0x2000),
            Err(Error::Mapping {
                problem: MappingProblem::NotWritable,
                ..
            })
        ));
    }

    #[test]
    fn parse_line_never_panics_on_arbitrary_bytes() {
        // A cheap fuzz: every prefix and byte-flip of real lines.
        let line = b"7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 [heap]";
        for cut in 0..line.len() {
            let _ = parse_line(&line[..cut]);
            for flip in [0u8, b' ', b'-', b'f', 0xff] {
                let mut copy = line.to_vec();
                copy[cut] = flip;
                let _ = parse_line(&copy);
            }
        }
    }
}
