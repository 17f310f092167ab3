//! A set-associative LRU tag store: the TLBs, the page-walk caches and the nested TLB.
//! (The data caches are the profiler's cache model, `msh_profile::sim::cache`.)
//! Tags only: what an entry would hold is recomputed from the synthetic OS, which is
//! exact because mappings never change during a run.
use crate::config::AssocConfig;

pub(crate) struct SetAssoc {
    set_mask: u64,
    ways: usize,
    /// Key + 1 per way (0 = empty), most recently used first.
    tags: Vec<u64>,
}

impl SetAssoc {
    /// `config` is validated (sets a power of two, ways > 0).
    pub(crate) fn new(config: AssocConfig) -> SetAssoc {
        let sets = config.entries / config.ways;
        SetAssoc {
            set_mask: sets - 1,
            ways: config.ways as usize,
            tags: vec![0; config.entries as usize],
        }
    }

    /// Looks `key` up; on a miss installs it (evicting the LRU way). Returns hit.
    #[inline]
    pub(crate) fn access(&mut self, key: u64) -> bool {
        let hit = self.lookup(key);
        if !hit {
            self.insert(key);
        }
        hit
    }

    /// Looks `key` up and makes it most recent on a hit.
    #[inline]
    pub(crate) fn lookup(&mut self, key: u64) -> bool {
        let set = self.set(key);
        let tag = key.wrapping_add(1);
        if set[0] == tag {
            return true;
        }
        match set.iter().position(|&t| t == tag) {
            Some(way) => {
                set.copy_within(0..way, 1);
                set[0] = tag;
                true
            }
            None => false,
        }
    }

    /// Installs `key` as most recent (evicting the LRU way); a no-op if present.
    #[inline]
    pub(crate) fn insert(&mut self, key: u64) {
        let set = self.set(key);
        let tag = key.wrapping_add(1);
        let way = set.iter().position(|&t| t == tag).unwrap_or(set.len() - 1);
        set.copy_within(0..way, 1);
        set[0] = tag;
    }

    #[inline]
    fn set(&mut self, key: u64) -> &mut [u64] {
        // Mix the key so that strided keys (page numbers) spread over the sets the way
        // the low bits of real page numbers do, but deterministically.
        let index = (key ^ (key >> 17)) & self.set_mask;
        let base = index as usize * self.ways;
        &mut self.tags[base..base + self.ways]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_within_a_set() {
        let mut fully = SetAssoc::new(AssocConfig {
            entries: 2,
            ways: 2,
        });
        assert!(!fully.access(10));
        assert!(!fully.access(20));
        assert!(fully.access(10)); // 10 most recent, 20 LRU
        assert!(!fully.access(30)); // evicts 20
        assert!(fully.lookup(10));
        assert!(!fully.lookup(20));
        assert!(fully.lookup(30));
    }

    #[test]
    fn capacity_is_entries() {
        let mut tlb = SetAssoc::new(AssocConfig {
            entries: 64,
            ways: 4,
        });
        for round in 0..3 {
            let hits = (0..64u64).filter(|&k| tlb.access(k)).count();
            if round > 0 {
                assert_eq!(hits, 64, "64 keys spread evenly over 16 sets of 4 fit");
            }
        }
        let hits = (0..128u64).filter(|&k| tlb.access(k)).count();
        assert!(hits <= 64);
    }
}
