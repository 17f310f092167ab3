//! One simulated physical memory (the host's, or a guest's) and its frame allocator.
//!
//! ```text
//!  0                                             7/8·size            size
//!  ├── general pool: 2 MiB chunks in a seeded ──────┼── contiguous pool ──┤
//!  │   shuffled order; 4 KiB frames handed out     │  (CMA-like, bump)   │
//!  │   from the current chunk, shuffled within it  │  TEAs, ECPT and FPT │
//!  │   (data pages, page-table pages, THP pages)   │  tables, ASAP runs  │
//! ```
//! The shuffle stands for a long-running OS's scattered free list: page-table pages
//! land at unrelated physical addresses, so they conflict in the caches as real ones
//! do. It is a keyed bijection (no list is stored), so a 64 GiB memory costs nothing.
use anyhow::{bail, Result};

pub(crate) const PAGE: u64 = 4096;
pub(crate) const HUGE: u64 = 2 << 20;
const FRAMES_PER_CHUNK: u64 = HUGE / PAGE;

pub(crate) struct PhysMemory {
    /// Shown in errors: "host", "guest", "L2 guest".
    pub(crate) name: &'static str,
    /// The config field that sets this memory's size (named in errors).
    pub(crate) field: &'static str,
    size: u64,
    general_chunks: u64,
    chunk_order: Permutation,
    /// The shuffle of frames within a chunk, tabulated (1 KiB): every translation of
    /// a populated page reads it.
    frame_order: Box<[u16]>,
    next_chunk: u64,
    /// The chunk 4 KiB frames are being taken from, and how many it has given.
    partial: Option<(u64, u64)>,
    contiguous_next: u64,
}

impl PhysMemory {
    pub(crate) fn new(name: &'static str, field: &'static str, size: u64, seed: u64) -> Self {
        let chunks = size / HUGE;
        let general_chunks = chunks - chunks / 8;
        PhysMemory {
            name,
            field,
            size,
            general_chunks,
            chunk_order: Permutation::new(general_chunks, seed ^ 0x9e37_79b9_7f4a_7c15),
            frame_order: {
                let order = Permutation::new(FRAMES_PER_CHUNK, seed ^ 0xd1b5_4a32_d192_ed03);
                (0..FRAMES_PER_CHUNK).map(|i| order.get(i) as u16).collect()
            },
            next_chunk: 0,
            partial: None,
            contiguous_next: general_chunks * HUGE,
        }
    }

    /// A 4 KiB frame's physical address.
    pub(crate) fn alloc_page(&mut self) -> Result<u64> {
        let (chunk, used) = match self.partial {
            Some((chunk, used)) if used < FRAMES_PER_CHUNK => (chunk, used),
            _ => (self.alloc_chunk()?, 0),
        };
        self.partial = Some((chunk, used + 1));
        Ok(chunk + self.frame_order[used as usize] as u64 * PAGE)
    }

    /// A 2 MiB-aligned 2 MiB page's physical address.
    pub(crate) fn alloc_huge(&mut self) -> Result<u64> {
        self.alloc_chunk()
    }

    /// Reserves `n` whole chunks for a pre-populated range; returns the sequence number
    /// of the first ([`PhysMemory::chunk_at`] gives each one's address).
    pub(crate) fn reserve_chunks(&mut self, n: u64) -> Result<u64> {
        if self.general_chunks - self.next_chunk < n {
            bail!(self.exhausted());
        }
        let first = self.next_chunk;
        self.next_chunk += n;
        Ok(first)
    }

    /// Reserves chunks for `n` 4 KiB pages; returns the slot of the first
    /// ([`PhysMemory::page_at`] gives each one's address).
    pub(crate) fn reserve_pages(&mut self, n: u64) -> Result<u64> {
        Ok(self.reserve_chunks(n.div_ceil(FRAMES_PER_CHUNK))? * FRAMES_PER_CHUNK)
    }

    /// The address of the reserved chunk `seq`: where `alloc_huge` would have put it.
    #[inline]
    pub(crate) fn chunk_at(&self, seq: u64) -> u64 {
        self.chunk_order.get(seq) * HUGE
    }

    /// The address of the reserved page `slot`: where `alloc_page` would have put it.
    #[inline]
    pub(crate) fn page_at(&self, slot: u64) -> u64 {
        self.chunk_at(slot / FRAMES_PER_CHUNK)
            + self.frame_order[(slot % FRAMES_PER_CHUNK) as usize] as u64 * PAGE
    }

    fn alloc_chunk(&mut self) -> Result<u64> {
        if self.next_chunk == self.general_chunks {
            bail!(self.exhausted());
        }
        let chunk = self.chunk_order.get(self.next_chunk);
        self.next_chunk += 1;
        Ok(chunk * HUGE)
    }

    /// `bytes` of physically contiguous memory, 2 MiB-aligned when `bytes` ≥ 2 MiB.
    pub(crate) fn alloc_contiguous(&mut self, bytes: u64) -> Result<u64> {
        let bytes = bytes.max(PAGE).next_multiple_of(PAGE);
        let align = if bytes >= HUGE { HUGE } else { PAGE };
        let start = self.contiguous_next.next_multiple_of(align);
        if start + bytes > self.size {
            bail!(self.exhausted());
        }
        self.contiguous_next = start + bytes;
        Ok(start)
    }

    fn exhausted(&self) -> String {
        format!(
            "the simulated {} physical memory ({} GiB) is exhausted: the footprint and its page tables need more (raise {} with --config, or a smaller --footprint)",
            self.name,
            self.size >> 30,
            self.field
        )
    }
}

/// A keyed bijection on `0..n`: a few invertible mixing rounds on the enclosing power
/// of two, walking the cycle until the value falls inside `0..n`.
struct Permutation {
    n: u64,
    mask: u64,
    bits: u32,
    key: u64,
}

impl Permutation {
    fn new(n: u64, key: u64) -> Permutation {
        let bits = n.max(2).next_power_of_two().trailing_zeros();
        Permutation {
            n,
            mask: (1u64 << bits) - 1,
            bits,
            key,
        }
    }

    fn get(&self, index: u64) -> u64 {
        let mut x = index;
        loop {
            x = self.mix(x);
            if x < self.n {
                return x;
            }
        }
    }

    fn mix(&self, mut x: u64) -> u64 {
        let shift = self.bits.div_ceil(2).max(1);
        for round in 0..3u64 {
            x ^= (self.key.rotate_left(round as u32 * 21)) & self.mask;
            x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15 | 1) & self.mask;
            x ^= x >> shift;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn permutations_are_bijections() {
        for n in [1u64, 2, 3, 7, 512, 1000, 4097] {
            let p = Permutation::new(n, 42);
            let seen: HashSet<u64> = (0..n).map(|i| p.get(i)).collect();
            assert_eq!(seen.len() as u64, n);
            assert!(seen.iter().all(|&v| v < n));
        }
    }

    #[test]
    fn frames_are_distinct_aligned_and_scattered() {
        let mut mem = PhysMemory::new("host", "host_memory_gib", 64 << 20, 7);
        let frames: Vec<u64> = (0..2000).map(|_| mem.alloc_page().unwrap()).collect();
        let set: HashSet<u64> = frames.iter().copied().collect();
        assert_eq!(set.len(), frames.len());
        assert!(frames.iter().all(|f| f % PAGE == 0 && *f < 56 << 20));
        let ascending = frames.windows(2).filter(|w| w[1] == w[0] + PAGE).count();
        assert!(
            ascending < 100,
            "{ascending} of 2000 frames follow their predecessor"
        );
        let huge = mem.alloc_huge().unwrap();
        assert_eq!(huge % HUGE, 0);
        assert!(frames.iter().all(|f| f / HUGE != huge / HUGE));
    }

    #[test]
    fn reserved_frames_are_where_allocation_would_have_put_them() {
        let mut a = PhysMemory::new("host", "host_memory_gib", 64 << 20, 9);
        let mut b = PhysMemory::new("host", "host_memory_gib", 64 << 20, 9);
        let slot = b.reserve_pages(1000).unwrap();
        for i in 0..1000 {
            assert_eq!(a.alloc_page().unwrap(), b.page_at(slot + i));
        }
        let chunk = b.reserve_chunks(3).unwrap();
        // a fills its second chunk (24 more pages); its next chunk is b's first reserved.
        for _ in 0..24 {
            a.alloc_page().unwrap();
        }
        let next = a.alloc_huge().unwrap();
        assert_eq!(next, b.chunk_at(chunk));
        assert!(b.reserve_chunks(100).is_err());
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_memory() {
        let mut mem = PhysMemory::new("guest", "guest_memory_gib", 16 << 20, 1);
        let c = mem.alloc_contiguous(1 << 20).unwrap();
        assert!(c >= 14 << 20);
        assert!(mem.alloc_contiguous(4 << 20).is_err());
        let err = (0..10_000).find_map(|_| mem.alloc_page().err()).unwrap();
        let text = err.to_string();
        assert!(text.contains("guest physical memory") && text.contains("guest_memory_gib"));
    }
}
