//! A set-associative LRU tag store: the TLBs, the page-walk caches and the nested TLB.
//! (The data caches are the profiler's cache model, `msh_profile::sim::cache`.)
//! Tags only: what an entry would hold is recomputed from the synthetic OS, which is
//! exact because mappings never change during a run.
use crate::config::AssocConfig;
use msh_profile::sim::cache::{move_to_front, prefetch_host_line};

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

    /// Looks `key` up and makes it most recent; on a miss installs it (evicting the
    /// LRU way). Returns hit. (Every lookup of the simulator's TLBs and PWCs that
    /// misses is followed by an insert of the same key, so this is the only operation.)
    #[inline]
    pub(crate) fn access(&mut self, key: u64) -> bool {
        move_to_front(self.set(key), key.wrapping_add(1))
    }

    /// Asks the host to load `key`'s set into its caches, ahead of an `access`.
    /// Changes nothing.
    #[inline]
    pub(crate) fn prefetch(&self, key: u64) {
        let base = self.set_base(key);
        prefetch_host_line(&self.tags[base]);
        prefetch_host_line(&self.tags[base + self.ways - 1]);
    }

    #[inline]
    fn set(&mut self, key: u64) -> &mut [u64] {
        let base = self.set_base(key);
        &mut self.tags[base..base + self.ways]
    }

    /// Index of the first way of `key`'s set.
    #[inline]
    fn set_base(&self, key: u64) -> usize {
        // Mix the key so that strided keys (page numbers) spread over the sets the way
        // the low bits of real page numbers do, but deterministically.
        let index = (key ^ (key >> 17)) & self.set_mask;
        index as usize * self.ways
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
        assert!(fully.access(10));
        assert!(fully.access(30));
        assert!(!fully.access(20));
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
