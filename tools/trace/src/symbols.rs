//! Naming call sites: raw return addresses, through the process's memory map at exit,
//! to `function+0xN (object)`.
use msh_profile::elf::ObjectCache;
use msh_profile::maps::AddressSpace;
use std::collections::HashMap;

/// Symbolizes addresses of one process, caching each answer.
pub struct Symbolizer {
    space: AddressSpace,
    objects: ObjectCache,
    cache: HashMap<u64, String>,
}

impl Symbolizer {
    /// A symbolizer for the process whose `/proc/PID/maps` text this is.
    pub fn new(maps: &str) -> Symbolizer {
        Symbolizer {
            space: AddressSpace::parse_proc_maps(maps),
            objects: ObjectCache::default(),
            cache: HashMap::new(),
        }
    }

    /// `function+0xN (object)` for a return address; the call instruction is just
    /// before it, so the name is looked up at `ip - 1` and the offset is of the return
    /// address. `0x…` when unknown.
    pub fn name(&mut self, ip: u64) -> String {
        if let Some(name) = self.cache.get(&ip) {
            return name.clone();
        }
        let name = self.lookup(ip).unwrap_or_else(|| format!("{ip:#x}"));
        self.cache.insert(ip, name.clone());
        name
    }

    fn lookup(&mut self, ip: u64) -> Option<String> {
        let (path, offset) = self.space.resolve(ip.checked_sub(1)?)?;
        let path = path.clone();
        let object = path.file_name()?.to_string_lossy().into_owned();
        let Some(image) = self.objects.get(&path) else {
            return Some(format!("{object}+{:#x}", offset + 1));
        };
        let vaddr = image.vaddr_of_file_offset(offset)?;
        let symbol = image.symbolize(vaddr);
        if symbol.starts_with('?') {
            return Some(format!("{object}+{:#x}", offset + 1));
        }
        // symbolize names the call instruction's byte: name the return address.
        Some(
            match symbol
                .rsplit_once("+0x")
                .and_then(|(f, o)| Some((f, u64::from_str_radix(o, 16).ok()?)))
            {
                Some((function, o)) => format!("{function}+{:#x} ({object})", o + 1),
                None => format!("{symbol}+0x1 ({object})"),
            },
        )
    }
}
