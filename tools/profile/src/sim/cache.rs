//! A set-associative, LRU, write-allocate cache hierarchy (L1d, L2, LLC) fed one data
//! access at a time. Every core (a traced thread) has its own copy of the levels but
//! the last, and all share the last-level cache, as on the Intel cores msh targets. A
//! miss at a level fills every level above it (mostly-inclusive). The hardware
//! prefetcher is modelled next to the per-load bookkeeping (an IP-stride prefetcher,
//! see `model.rs`), since it needs to know which instruction made each access.
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Geometry of one level.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelConfig {
    /// `L1d`, `L2`, `L3`, …
    pub name: String,
    /// Capacity in bytes.
    pub size: u64,
    /// Associativity.
    pub ways: u64,
    /// Line size in bytes.
    pub line: u64,
}

impl LevelConfig {
    /// Sets in the level.
    pub fn sets(&self) -> u64 {
        self.size / (self.ways * self.line)
    }
}

/// The whole hierarchy, nearest level first; the last level is the LLC.
#[derive(Debug, Clone, PartialEq)]
pub struct HierarchyConfig {
    /// The levels, nearest first.
    pub levels: Vec<LevelConfig>,
}

impl HierarchyConfig {
    /// Parses `L1=48K:12,L2=2M:16,L3=8M:16` (size with K/M/G suffix, then ways;
    /// optional `:LINE`, default 64 bytes).
    pub fn parse(text: &str) -> Result<HierarchyConfig> {
        let mut levels = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, geometry) = part
                .split_once('=')
                .with_context(|| format!("cache level {part:?}: expected NAME=SIZE:WAYS"))?;
            let mut fields = geometry.split(':');
            let size = parse_size(fields.next().unwrap_or(""))
                .with_context(|| format!("cache level {part:?}: bad size"))?;
            let ways: u64 = fields
                .next()
                .with_context(|| format!("cache level {part:?}: missing :WAYS"))?
                .parse()
                .with_context(|| format!("cache level {part:?}: bad ways"))?;
            let line = match fields.next() {
                Some(l) => l
                    .parse()
                    .with_context(|| format!("cache level {part:?}: bad line size"))?,
                None => 64,
            };
            levels.push(LevelConfig {
                name: name.to_owned(),
                size,
                ways,
                line,
            });
        }
        let config = HierarchyConfig { levels };
        config.validate()?;
        Ok(config)
    }

    /// Reads the data/unified caches of CPU 0 from sysfs
    /// (`/sys/devices/system/cpu/cpu0/cache/index*`).
    pub fn from_sysfs(root: &Path) -> Result<HierarchyConfig> {
        let mut levels: Vec<(u64, LevelConfig)> = Vec::new();
        let entries =
            std::fs::read_dir(root).with_context(|| format!("cannot read {}", root.display()))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            if !entry.file_name().to_string_lossy().starts_with("index") {
                continue;
            }
            let read =
                |name: &str| std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_owned());
            let kind = read("type")?;
            if kind == "Instruction" {
                continue;
            }
            let level: u64 = read("level")?.parse()?;
            let size = parse_size(&read("size")?)?;
            let ways: u64 = read("ways_of_associativity")?.parse()?;
            let line: u64 = read("coherency_line_size")?.parse()?;
            levels.push((
                level,
                LevelConfig {
                    name: format!("L{level}"),
                    size,
                    ways,
                    line,
                },
            ));
        }
        levels.sort_by_key(|(level, _)| *level);
        let config = HierarchyConfig {
            levels: levels.into_iter().map(|(_, l)| l).collect(),
        };
        config
            .validate()
            .with_context(|| format!("cache description in {}", root.display()))?;
        Ok(config)
    }

    /// This machine's data-cache hierarchy, from cpu0's sysfs cache directory.
    pub fn host() -> Result<HierarchyConfig> {
        HierarchyConfig::from_sysfs(Path::new("/sys/devices/system/cpu/cpu0/cache"))
    }

    fn validate(&self) -> Result<()> {
        if self.levels.is_empty() {
            bail!("no cache levels");
        }
        for level in &self.levels {
            if level.ways == 0
                || !level.line.is_power_of_two()
                || level.sets() == 0
                || level.size % (level.ways * level.line) != 0
            {
                bail!("cache level {}: {} bytes is not a whole number of {}-way sets of {}-byte lines", level.name, level.size, level.ways, level.line);
            }
        }
        if self.levels.windows(2).any(|w| w[0].line != w[1].line) {
            bail!("all cache levels must have the same line size");
        }
        Ok(())
    }

    /// One line naming each level's geometry, for messages.
    pub fn describe(&self) -> String {
        self.levels
            .iter()
            .map(|l| format!("{}={}:{}", l.name, format_size(l.size), l.ways))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let (digits, multiplier) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let value: u64 = digits
        .parse()
        .with_context(|| format!("bad size {text:?}"))?;
    value
        .checked_mul(multiplier)
        .filter(|&v| v > 0)
        .with_context(|| format!("bad size {text:?}"))
}

fn format_size(bytes: u64) -> String {
    match bytes {
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

struct Level {
    sets: u64,
    /// `log2(sets)` when `sets` is a power of two (a mask and a shift instead of a
    /// division).
    set_bits: Option<u32>,
    ways: usize,
    /// Per way, the line's number above its set index, + 1 (0 = empty); `ways` entries
    /// per set, most recently used first. One array, no timestamps, and 32-bit tags
    /// while they fit: a 16-way set of the LLC is then one host cache line, which
    /// matters because the model of a large LLC misses the host's caches itself.
    tags: Tags,
}

enum Tags {
    Narrow(Vec<u32>),
    /// After a tag too large for 32 bits (lines above 2^32 sets' worth).
    Wide(Vec<u64>),
}

impl Level {
    fn new(config: &LevelConfig) -> Level {
        let sets = config.sets();
        let mut tags = vec![0u32; (sets * config.ways) as usize];
        advise_huge_pages(&mut tags);
        // Fault the (lazily zeroed) pages in now, so a large LLC's first touches are
        // not charged to the simulation. Volatile: the compiler knows they hold zero.
        for tag in tags.iter_mut().step_by(1024) {
            // SAFETY: `tag` is a valid, exclusive reference into the vector.
            unsafe { std::ptr::write_volatile(tag, 0) };
        }
        Level {
            sets,
            set_bits: sets.is_power_of_two().then_some(sets.trailing_zeros()),
            ways: config.ways as usize,
            tags: Tags::Narrow(tags),
        }
    }

    /// Looks `line` up; on a miss installs it, evicting the least recently used way.
    /// Returns hit.
    #[inline(always)]
    fn access(&mut self, line: u64) -> bool {
        let (set, tag) = match self.set_bits {
            Some(bits) => (line & ((1 << bits) - 1), (line >> bits) + 1),
            None => (line % self.sets, line / self.sets + 1),
        };
        let ways = set as usize * self.ways..(set as usize + 1) * self.ways;
        match &mut self.tags {
            Tags::Narrow(tags) if tag <= u64::from(u32::MAX) => {
                move_to_front_u32(&mut tags[ways], tag as u32)
            }
            Tags::Narrow(_) => {
                self.widen();
                match &mut self.tags {
                    Tags::Wide(tags) => move_to_front(&mut tags[ways], tag),
                    Tags::Narrow(_) => unreachable!("just widened"),
                }
            }
            Tags::Wide(tags) => move_to_front(&mut tags[ways], tag),
        }
    }

    /// Asks the host to bring `line`'s set into its caches: the tags of a large level
    /// miss the host's own caches, and the model knows its next accesses in advance.
    #[inline(always)]
    fn prefetch(&self, line: u64) {
        let set = match self.set_bits {
            Some(bits) => line & ((1 << bits) - 1),
            None => line % self.sets,
        } as usize;
        let (first, last) = (set * self.ways, (set + 1) * self.ways - 1);
        // A set may straddle two host lines: fetch the lines of its first and last way.
        match &self.tags {
            Tags::Narrow(tags) => {
                prefetch_host_line(&tags[first]);
                prefetch_host_line(&tags[last]);
            }
            Tags::Wide(tags) => {
                prefetch_host_line(&tags[first]);
                prefetch_host_line(&tags[last]);
            }
        }
    }

    #[cold]
    fn widen(&mut self) {
        if let Tags::Narrow(tags) = &self.tags {
            self.tags = Tags::Wide(tags.iter().map(|&t| u64::from(t)).collect());
        }
    }
}

/// Makes `tag` the most recent way of `ways` (most recent first), evicting the last
/// way on a miss; returns hit. One pass that searches and shifts at once: a
/// search followed by `copy_within` costs a second pass and a `memmove` call, which
/// dominated simulators built on this (msh pagewalk).
#[inline]
pub fn move_to_front<T: Copy + PartialEq>(ways: &mut [T], tag: T) -> bool {
    if ways.first() == Some(&tag) {
        return true;
    }
    let mut carry = tag;
    for way in ways.iter_mut() {
        let old = std::mem::replace(way, carry);
        if old == tag {
            return true;
        }
        carry = old;
    }
    false
}

/// [`move_to_front`] for 32-bit tags, four ways at a time with SSE2 (part of every
/// x86-64) when the ways are a multiple of four: one pass that compares four ways
/// with the tag and moves them back one lane in registers, up to the way holding it
/// (all of them on a miss). The scalar loop costs several instructions per way on a miss, and a
/// large level misses on most accesses of a page-walk or GUPS-like stream.
#[inline]
pub fn move_to_front_u32(ways: &mut [u32], tag: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    if ways.len().is_multiple_of(4) {
        return sse2::move_to_front(ways, tag);
    }
    move_to_front(ways, tag)
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// `ways.len()` is a multiple of 4.
    #[inline]
    pub(super) fn move_to_front(ways: &mut [u32], tag: u32) -> bool {
        debug_assert!(ways.len().is_multiple_of(4));
        if ways.first() == Some(&tag) {
            return true;
        }
        let base = ways.as_mut_ptr().cast::<__m128i>();
        // SAFETY: SSE2 is part of x86-64; every chunk index below is < len / 4, so each
        // unaligned 16-byte load and store stays inside `ways`, which we borrow mutably.
        unsafe {
            let wanted = _mm_set1_epi32(tag as i32);
            let lanes = _mm_setr_epi32(0, 1, 2, 3);
            // One pass: every chunk before the one holding `tag` moves back one lane
            // whole (its last lane into the next chunk's first, way 0 taking `tag`); in
            // the chunk holding it, only the lanes up to it move. A miss moves them all.
            let mut carry = wanted;
            for chunk in 0..ways.len() / 4 {
                let v = _mm_loadu_si128(base.add(chunk));
                let shifted = _mm_or_si128(_mm_slli_si128::<4>(v), _mm_srli_si128::<12>(carry));
                let equal = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(v, wanted)));
                if equal != 0 {
                    let at = _mm_set1_epi32(equal.trailing_zeros() as i32);
                    let keep = _mm_cmpgt_epi32(lanes, at);
                    let merged =
                        _mm_or_si128(_mm_and_si128(keep, v), _mm_andnot_si128(keep, shifted));
                    _mm_storeu_si128(base.add(chunk), merged);
                    return true;
                }
                _mm_storeu_si128(base.add(chunk), shifted);
                carry = v;
            }
            false
        }
    }
}

/// Asks for transparent huge pages under a level's tags (this VM grants them only on
/// request): a large LLC's tags span thousands of 4 KiB pages, each model access a
/// host TLB miss otherwise. Advice only: failure changes nothing but speed.
fn advise_huge_pages(tags: &mut [u32]) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = (tags.as_mut_ptr() as usize).next_multiple_of(HUGE_PAGE);
    let end = (tags.as_mut_ptr() as usize + std::mem::size_of_val(tags)) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside the vector's allocation, which this
        // process owns; MADV_HUGEPAGE only changes how the kernel backs it.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// A hint to load the host cache line holding `value` (a no-op off x86-64).
#[inline(always)]
pub fn prefetch_host_line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes nothing the program sees.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The simulated hierarchy: private levels per core, one shared last level.
pub struct Hierarchy {
    /// The geometry of every level but the last, copied for each new core.
    private_config: Vec<LevelConfig>,
    /// Per core: its private levels, nearest first.
    cores: Vec<Vec<Level>>,
    /// Per core: the line it touched last (`NO_LINE` before any). That line is the most
    /// recent way of the core's first level, so touching it again changes nothing and
    /// hits there: the common case (the next field, the next element) costs a compare.
    last_line: Vec<u64>,
    shared: Level,
    line_shift: u32,
}

/// No line number is this (addresses are shifted right by the line size's log2).
const NO_LINE: u64 = u64::MAX;

impl Hierarchy {
    /// A hierarchy with one core; more are added as [`Hierarchy::access`] meets them.
    pub fn new(config: &HierarchyConfig) -> Hierarchy {
        let (last, private) = config.levels.split_last().expect("validated: ≥ 1 level");
        let mut hierarchy = Hierarchy {
            private_config: private.to_vec(),
            cores: Vec::new(),
            last_line: Vec::new(),
            shared: Level::new(last),
            line_shift: config.levels[0].line.trailing_zeros(),
        };
        hierarchy.add_core();
        hierarchy
    }

    fn add_core(&mut self) {
        self.cores
            .push(self.private_config.iter().map(Level::new).collect());
        self.last_line.push(NO_LINE);
    }

    /// Gives `core` (and every lower number) its private levels if it has none yet.
    pub fn ensure_core(&mut self, core: usize) {
        while core >= self.cores.len() {
            self.add_core();
        }
    }

    /// The line holding `address`.
    #[inline(always)]
    pub fn line_of(&self, address: u64) -> u64 {
        address >> self.line_shift
    }

    /// Cores modelled so far.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Number of levels; [`Hierarchy::access`] returns this for a miss in all of them.
    pub fn memory_level(&self) -> usize {
        self.private_config.len() + 1
    }

    /// Simulates one access of `size` bytes at `address` by `core` (numbered from 0;
    /// a new number gets fresh private caches); returns the index of the level that
    /// served it (the slowest, if it spans lines), `memory_level()` for memory.
    #[inline]
    pub fn access(&mut self, core: usize, address: u64, size: u64) -> usize {
        while core >= self.cores.len() {
            self.add_core();
        }
        let first = address >> self.line_shift;
        let last = (address + size.max(1) - 1) >> self.line_shift;
        // Not a `first..=last` loop: an inclusive range costs an extra check per step,
        // and nearly every access is within one line.
        let mut served = self.access_line(core, first);
        for line in first + 1..last + 1 {
            served = served.max(self.access_line(core, line));
        }
        served
    }

    /// Hints the host to load the model's sets for `address` in `core`'s private
    /// levels past the first (whose tags stay in the host's L1) and in the shared one,
    /// ahead of the [`Hierarchy::access`] that will read them. Changes no state.
    #[inline]
    pub fn prefetch(&self, core: usize, address: u64) {
        let line = address >> self.line_shift;
        if let Some(private) = self.cores.get(core) {
            for level in private.iter().skip(1) {
                level.prefetch(line);
            }
        }
        self.shared.prefetch(line);
    }

    /// [`Hierarchy::prefetch`] for the shared last level only: the one whose tags are
    /// too large for the host's nearer caches on the usual geometries, at a fraction
    /// of the cost, for callers that prefetch on every access. Changes no state.
    #[inline]
    pub fn prefetch_last_level(&self, address: u64) {
        self.shared.prefetch(address >> self.line_shift);
    }

    #[inline]
    fn access_line(&mut self, core: usize, line: u64) -> usize {
        match self.private_line(core, line) {
            Some(index) => index,
            None if self.shared_line(line) => self.private_config.len(),
            None => self.private_config.len() + 1,
        }
    }

    /// The private half of an access to `line` by `core` (which must exist, see
    /// [`Hierarchy::ensure_core`]): looks it up in the core's private levels, nearest
    /// first, installing it in each that missed. Returns the level that had it, or
    /// `None` when all missed: the caller must then call [`Hierarchy::shared_line`]
    /// for it before `core` or any other core touches the shared level again. Split so
    /// a batch can run its private lookups first and its shared ones after, in the
    /// same order, with the same result as [`Hierarchy::access`].
    #[inline]
    pub fn private_line(&mut self, core: usize, line: u64) -> Option<usize> {
        let private = &mut self.cores[core];
        if private.is_empty() {
            return None;
        }
        let last = &mut self.last_line[core];
        if *last == line {
            return Some(0);
        }
        *last = line;
        private
            .iter_mut()
            .enumerate()
            .find_map(|(index, level)| level.access(line).then_some(index))
    }

    /// The shared half of an access to `line` (see [`Hierarchy::private_line`]):
    /// returns hit, and installs the line on a miss.
    #[inline]
    pub fn shared_line(&mut self, line: u64) -> bool {
        self.shared.access(line)
    }

    /// Hints the host to load the model's set for `line` in the shared level.
    #[inline]
    pub fn prefetch_shared(&self, line: u64) {
        self.shared.prefetch(line);
    }

    /// Hints the host to load the model's sets for `line` in `core`'s private levels
    /// past the first (whose tags stay in the host's L1).
    #[inline]
    pub fn prefetch_private(&self, core: usize, line: u64) {
        if let Some(private) = self.cores.get(core) {
            for level in private.iter().skip(1) {
                level.prefetch(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> HierarchyConfig {
        HierarchyConfig::parse("L1=1K:2,L2=4K:4,L3=16K:4").unwrap()
    }

    #[test]
    fn parses_configs() {
        let config = tiny();
        assert_eq!(config.levels.len(), 3);
        assert_eq!(
            config.levels[2],
            LevelConfig {
                name: "L3".into(),
                size: 16384,
                ways: 4,
                line: 64
            }
        );
        assert_eq!(config.describe(), "L1=1K:2,L2=4K:4,L3=16K:4");
        for bad in [
            "",
            "L1",
            "L1=1K",
            "L1=xK:2",
            "L1=1K:0",
            "L1=1000:3",
            "L1=1K:2:48",
        ] {
            assert!(HierarchyConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_the_host_description() {
        if Path::new("/sys/devices/system/cpu/cpu0/cache/index0").exists() {
            let host = HierarchyConfig::host().unwrap();
            assert!(host.levels.len() >= 2, "{host:?}");
            assert!(host.levels.windows(2).all(|w| w[0].size <= w[1].size));
        }
    }

    #[test]
    fn hits_misses_and_lru() {
        let mut cache = Hierarchy::new(&tiny());
        assert_eq!(cache.access(0, 0x1000, 8), 3); // cold: from memory
        assert_eq!(cache.access(0, 0x1008, 8), 0); // same line: L1
        assert_eq!(cache.access(0, 0x103c, 8), 3); // spans into the next, cold line
                                                   // L1 has 8 sets of 2 ways: three lines in one set evict the least recently used.
        let set_stride = 8 * 64;
        cache.access(0, 0, 8);
        cache.access(0, set_stride, 8);
        cache.access(0, 0, 8); // 0 is now most recent
        cache.access(0, 2 * set_stride, 8); // evicts set_stride from L1
        assert_eq!(cache.access(0, 0, 8), 0);
        assert_eq!(cache.access(0, set_stride, 8), 1, "still in L2");
    }

    #[test]
    fn move_to_front_u32_matches_the_scalar_lru() {
        let mut rng = 0x1234_5678_u64;
        for ways in [1usize, 2, 3, 4, 8, 12, 16, 20] {
            let mut fast = vec![0u32; ways];
            let mut slow = vec![0u32; ways];
            for _ in 0..20_000 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let tag = (rng >> 33) as u32 % (ways as u32 * 2) + 1;
                assert_eq!(
                    move_to_front_u32(&mut fast, tag),
                    move_to_front(&mut slow, tag),
                    "{ways} ways"
                );
                assert_eq!(fast, slow, "{ways} ways");
            }
        }
    }

    #[test]
    fn tags_beyond_32_bits_are_exact() {
        let mut cache = Hierarchy::new(&tiny());
        let far = 1u64 << 50;
        assert_eq!(cache.access(0, 0x1000, 8), 3);
        assert_eq!(
            cache.access(0, far + 0x1000, 8),
            3,
            "same sets, distinct line"
        );
        assert_eq!(
            cache.access(0, 0x1000, 8),
            0,
            "the near line survived the widening"
        );
        assert_eq!(cache.access(0, far + 0x1000, 8), 0);
        assert_eq!(cache.access(0, 2 * far + 0x1000, 8), 3);
    }

    #[test]
    fn working_sets_land_where_they_fit() {
        let mut cache = Hierarchy::new(&tiny());
        let level_for = |cache: &mut Hierarchy, bytes: u64| {
            for _ in 0..3 {
                for a in (0..bytes).step_by(64) {
                    cache.access(0, a, 8);
                }
            }
            (0..bytes)
                .step_by(64)
                .map(|a| cache.access(0, a, 8))
                .max()
                .unwrap()
        };
        assert_eq!(level_for(&mut cache, 512), 0);
        assert_eq!(level_for(&mut cache, 2048), 1);
        assert_eq!(level_for(&mut cache, 8192), 2);
        assert_eq!(level_for(&mut cache, 65536), 3);
    }

    #[test]
    fn cores_have_private_caches_and_share_the_last_level() {
        let mut cache = Hierarchy::new(&tiny());
        assert_eq!(cache.access(0, 0x1000, 8), 3);
        assert_eq!(cache.access(0, 0x1000, 8), 0, "core 0's L1");
        assert_eq!(
            cache.access(1, 0x1000, 8),
            2,
            "core 1 finds it in the shared L3"
        );
        assert_eq!(cache.access(1, 0x1000, 8), 0, "now in core 1's L1");
        assert_eq!(cache.cores(), 2);
        assert_eq!(cache.memory_level(), 3);
    }

    /// The last-line shortcut and the split into private and shared halves change
    /// nothing: the same answers as the levels' own LRU, driven one line at a time.
    #[test]
    fn the_last_line_shortcut_is_exact() {
        let config = tiny();
        let mut cache = Hierarchy::new(&config);
        let mut cores: Vec<Vec<Level>> = (0..2)
            .map(|_| config.levels[..2].iter().map(Level::new).collect())
            .collect();
        let mut shared = Level::new(&config.levels[2]);
        let mut state = 0x2545f4914f6cdd1du64;
        let mut served_at = [0u64; 4];
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let core = (state >> 60) as usize % 2;
            // Mostly nearby (repeats of the last line), sometimes far.
            let address = if state.is_multiple_of(3) {
                state % 65536
            } else {
                0x1000 + (state >> 20) % 256
            };
            let line = address >> 6;
            let expected = match cores[core].iter_mut().position(|level| level.access(line)) {
                Some(level) => level,
                None if shared.access(line) => 2,
                None => 3,
            };
            assert_eq!(cache.access(core, address, 1), expected);
            served_at[expected] += 1;
        }
        assert!(served_at.iter().all(|&n| n > 100), "{served_at:?}");
    }
}
