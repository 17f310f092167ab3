//! Which file is mapped where, per process: seeded from `/proc/PID/maps`, then kept up
//! to date from the kernel's mmap/fork/exec records. Turns a runtime instruction
//! address into (object path, file offset), which works for PIE and shared libraries.
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;

/// One mapping of a process's address space.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub pgoff: u64,
    /// The mapped file.
    pub path: PathBuf,
    /// Build-id of the file when it was mapped (from the kernel; unknown for mappings
    /// read from /proc/PID/maps).
    pub build_id: Option<String>,
}

/// Mappings of one process, newest last: a newer mapping hides older ones it overlaps.
#[derive(Debug, Clone, Default)]
pub struct AddressSpace {
    mappings: Vec<Mapping>,
}

impl AddressSpace {
    /// Adds a mapping, which hides the older ones it overlaps.
    pub fn add(&mut self, mapping: Mapping) {
        // Drop mappings the new one covers completely, so the list stays short.
        self.mappings
            .retain(|m| !(mapping.start <= m.start && m.end <= mapping.end));
        self.mappings.push(mapping);
    }

    /// The file and file offset behind an address.
    pub fn resolve(&self, address: u64) -> Option<(&PathBuf, u64)> {
        self.mappings
            .iter()
            .rev()
            .find(|m| (m.start..m.end).contains(&address))
            .map(|m| (&m.path, address - m.start + m.pgoff))
    }

    /// Records each mapped file's identity now (`identify` gives it from the path), for
    /// mappings that predate the kernel's records: a file replaced on disk later is
    /// then noticed.
    pub fn identify_files(&mut self, identify: impl Fn(&PathBuf) -> Option<String>) {
        let mut known: HashMap<PathBuf, Option<String>> = HashMap::new();
        for mapping in self.mappings.iter_mut().filter(|m| m.build_id.is_none()) {
            let id = known
                .entry(mapping.path.clone())
                .or_insert_with(|| identify(&mapping.path));
            mapping.build_id = id.clone();
        }
    }

    /// The build-id recorded when the file behind `address` was mapped, if known.
    pub fn build_id_at(&self, address: u64) -> Option<&str> {
        self.mappings
            .iter()
            .rev()
            .find(|m| (m.start..m.end).contains(&address))?
            .build_id
            .as_deref()
    }

    /// Parses the text of `/proc/PID/maps`, keeping file-backed mappings.
    pub fn parse_proc_maps(text: &str) -> AddressSpace {
        let mut space = AddressSpace::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(_inode)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let path: String = fields.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                continue; // anonymous, [heap], [stack], [vdso]
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(pgoff)) = (
                u64::from_str_radix(start, 16),
                u64::from_str_radix(end, 16),
                u64::from_str_radix(offset, 16),
            ) else {
                continue;
            };
            let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
            space.add(Mapping {
                start,
                end,
                pgoff,
                path: PathBuf::from(path),
                build_id: None,
            });
        }
        space
    }

    /// The current mappings of process `pid`, from `/proc/PID/maps`.
    pub fn read_proc(pid: i32) -> Result<AddressSpace> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .with_context(|| format!("cannot read /proc/{pid}/maps"))?;
        Ok(AddressSpace::parse_proc_maps(&text))
    }
}

/// Address spaces of every process in the profiled tree, by pid.
#[derive(Debug, Default)]
pub struct ProcessTree {
    spaces: HashMap<u32, AddressSpace>,
}

impl ProcessTree {
    /// Sets the address space of `pid`, replacing what was known.
    pub fn insert(&mut self, pid: u32, space: AddressSpace) {
        self.spaces.insert(pid, space);
    }

    /// Records a new mapping in `pid`.
    pub fn mmap(&mut self, pid: u32, mapping: Mapping) {
        self.spaces.entry(pid).or_default().add(mapping);
    }

    /// A new process starts with a copy of its parent's mappings.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if parent != child {
            let space = self.spaces.get(&parent).cloned().unwrap_or_default();
            self.spaces.insert(child, space);
        }
    }

    /// After exec the old image is gone; the new one's mmaps follow.
    pub fn exec(&mut self, pid: u32) {
        self.spaces.insert(pid, AddressSpace::default());
    }

    /// The file and file offset behind `address` in process `pid`.
    pub fn resolve(&self, pid: u32, address: u64) -> Option<(&PathBuf, u64)> {
        self.spaces.get(&pid)?.resolve(address)
    }

    /// The build-id recorded when the file behind `address` in `pid` was mapped.
    pub fn build_id_at(&self, pid: u32, address: u64) -> Option<&str> {
        self.spaces.get(&pid)?.build_id_at(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000028000-7f100019d000 r-xp 00028000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
7f2000000000-7f2000001000 r-xp 00000000 fe:01 789 /tmp/a b (deleted)
";

    #[test]
    fn resolves_pie_and_libraries() {
        let space = AddressSpace::parse_proc_maps(MAPS);
        let (path, offset) = space.resolve(0x55d0c0a01189).unwrap();
        assert_eq!((path.to_str().unwrap(), offset), ("/usr/bin/prog", 0x1189));
        let (path, offset) = space.resolve(0x7f1000028010).unwrap();
        assert_eq!(
            (path.to_str().unwrap(), offset),
            ("/usr/lib/x86_64-linux-gnu/libc.so.6", 0x28010)
        );
        assert_eq!(space.resolve(0x7ffd00000010), None);
        assert_eq!(space.resolve(0x7f0000000010), None);
        assert_eq!(
            space.resolve(0x7f2000000010).unwrap().0.to_str().unwrap(),
            "/tmp/a b"
        );
    }

    #[test]
    fn newer_mappings_hide_older_and_fork_copies() {
        let mut tree = ProcessTree::default();
        tree.insert(1, AddressSpace::parse_proc_maps(MAPS));
        tree.mmap(
            1,
            Mapping {
                start: 0x55d0c0a01000,
                end: 0x55d0c0a01800,
                pgoff: 0,
                path: "/x".into(),
                build_id: Some("abcd".into()),
            },
        );
        assert_eq!(
            tree.resolve(1, 0x55d0c0a01010).unwrap().0.to_str().unwrap(),
            "/x"
        );
        assert_eq!(
            tree.resolve(1, 0x55d0c0a01810).unwrap().0.to_str().unwrap(),
            "/usr/bin/prog"
        );
        assert_eq!(tree.build_id_at(1, 0x55d0c0a01010), Some("abcd"));
        assert_eq!(tree.build_id_at(1, 0x55d0c0a01810), None);
        tree.fork(1, 2);
        assert!(tree.resolve(2, 0x55d0c0a01010).is_some());
        tree.exec(2);
        assert!(tree.resolve(2, 0x55d0c0a01010).is_none());
        assert!(tree.resolve(1, 0x55d0c0a01010).is_some());
    }
}
