//! Lock primitives, grouped by the lock they operate on.
//!
//! A policy replaces how one lock (one structure field) waits, so every
//! acquire and release of that field moves together: `--lock spin_lock` also
//! rewrites the field's `spin_lock_irqsave`/`spin_unlock_irqrestore` sites.
//! Trylocks never wait and keep the stock code; both implementations share
//! the lock word, so mixing them is safe.

use crate::Error;

#[derive(Debug, PartialEq, Eq)]
pub struct LockFamily {
    /// Short name, used in file names: `spinlock`, `rwsem_write`, ...
    pub key: &'static str,
    /// Declared types of a field this family locks.
    pub field_types: &'static [&'static str],
    /// Acquire APIs whose sites are rewritten (lock argument first).
    pub acquire: &'static [&'static str],
    /// Release APIs whose sites are rewritten.
    pub release: &'static [&'static str],
    /// Kernel symbols seen in call chains for an acquire API: (symbol, API).
    pub perf_entry_symbols: &'static [(&'static str, &'static str)],
    /// Kernel symbols inside the implementation (slowpaths, spinning helpers).
    pub perf_internal_symbols: &'static [&'static str],
    /// The header that declares the API.
    pub api_header: &'static str,
}

pub const FAMILIES: &[LockFamily] = &[
    LockFamily {
        key: "spinlock",
        field_types: &["spinlock_t"],
        acquire: &[
            "spin_lock",
            "spin_lock_bh",
            "spin_lock_irq",
            "spin_lock_irqsave",
            "spin_lock_nested",
        ],
        release: &[
            "spin_unlock",
            "spin_unlock_bh",
            "spin_unlock_irq",
            "spin_unlock_irqrestore",
        ],
        perf_entry_symbols: &[
            ("_raw_spin_lock", "spin_lock"),
            ("_raw_spin_lock_bh", "spin_lock_bh"),
            ("_raw_spin_lock_irq", "spin_lock_irq"),
            ("_raw_spin_lock_irqsave", "spin_lock_irqsave"),
            ("_raw_spin_lock_nested", "spin_lock_nested"),
        ],
        perf_internal_symbols: &[
            "queued_spin_lock_slowpath",
            "native_queued_spin_lock_slowpath",
            "__pv_queued_spin_lock_slowpath",
            "pv_wait",
            "pv_wait_head_or_lock",
            "do_raw_spin_lock",
        ],
        api_header: "linux/spinlock.h",
    },
    LockFamily {
        key: "rwsem_write",
        field_types: &["struct rw_semaphore"],
        acquire: &[
            "down_write",
            "down_write_killable",
            "down_write_nested",
            "down_write_nest_lock",
        ],
        release: &["up_write"],
        perf_entry_symbols: &[
            ("down_write", "down_write"),
            ("down_write_killable", "down_write_killable"),
            ("down_write_nested", "down_write_nested"),
            ("_down_write_nest_lock", "down_write_nest_lock"),
        ],
        perf_internal_symbols: &[
            "rwsem_down_write_slowpath",
            "rwsem_optimistic_spin",
            "rwsem_spin_on_owner",
            "osq_lock",
            "schedule",
            "schedule_preempt_disabled",
            "__schedule",
        ],
        api_header: "linux/rwsem.h",
    },
    LockFamily {
        key: "rwsem_read",
        field_types: &["struct rw_semaphore"],
        acquire: &[
            "down_read",
            "down_read_killable",
            "down_read_interruptible",
            "down_read_nested",
        ],
        release: &["up_read"],
        perf_entry_symbols: &[
            ("down_read", "down_read"),
            ("down_read_killable", "down_read_killable"),
            ("down_read_interruptible", "down_read_interruptible"),
            ("down_read_nested", "down_read_nested"),
        ],
        perf_internal_symbols: &[
            "rwsem_down_read_slowpath",
            "schedule",
            "schedule_preempt_disabled",
            "__schedule",
        ],
        api_header: "linux/rwsem.h",
    },
    LockFamily {
        key: "mutex",
        field_types: &["struct mutex"],
        acquire: &[
            "mutex_lock",
            "mutex_lock_interruptible",
            "mutex_lock_killable",
            "mutex_lock_nested",
        ],
        release: &["mutex_unlock"],
        perf_entry_symbols: &[
            ("mutex_lock", "mutex_lock"),
            ("mutex_lock_interruptible", "mutex_lock_interruptible"),
            ("mutex_lock_killable", "mutex_lock_killable"),
            ("mutex_lock_nested", "mutex_lock_nested"),
        ],
        perf_internal_symbols: &[
            "__mutex_lock_slowpath",
            "__mutex_lock",
            "__mutex_lock_interruptible_slowpath",
            "__mutex_lock_killable_slowpath",
            "mutex_spin_on_owner",
            "mutex_optimistic_spin",
            "osq_lock",
            "schedule",
            "schedule_preempt_disabled",
            "__schedule",
        ],
        api_header: "linux/mutex.h",
    },
];

impl LockFamily {
    /// The family whose acquire API is `lock_fn` (`spin_lock`, `down_write`, ...).
    pub fn by_acquire_api(lock_fn: &str) -> Result<&'static LockFamily, Error> {
        FAMILIES
            .iter()
            .find(|f| f.acquire.contains(&lock_fn))
            .ok_or_else(|| Error::UnknownPrimitive(lock_fn.to_owned()))
    }

    /// The family and API a kernel symbol in a call chain enters.
    pub fn by_perf_symbol(symbol: &str) -> Option<(&'static LockFamily, &'static str)> {
        FAMILIES.iter().find_map(|f| {
            f.perf_entry_symbols
                .iter()
                .find(|(s, _)| *s == symbol)
                .map(|(_, api)| (f, *api))
        })
    }

    /// Whether `symbol` is inside some lock implementation.
    pub fn is_internal_symbol(symbol: &str) -> bool {
        FAMILIES
            .iter()
            .any(|f| f.perf_internal_symbols.contains(&symbol))
    }

    pub fn is_site_api(&self, api: &str) -> bool {
        self.acquire.contains(&api) || self.release.contains(&api)
    }

    /// Every acquire API of every family, for error messages.
    pub fn known_apis() -> String {
        FAMILIES
            .iter()
            .flat_map(|f| f.acquire.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_apis_and_symbols_to_families() {
        assert_eq!(
            LockFamily::by_acquire_api("spin_lock").unwrap().key,
            "spinlock"
        );
        assert_eq!(
            LockFamily::by_acquire_api("down_write").unwrap().key,
            "rwsem_write"
        );
        assert!(matches!(
            LockFamily::by_acquire_api("spin_lokc"),
            Err(Error::UnknownPrimitive(_))
        ));
        let (family, api) = LockFamily::by_perf_symbol("_raw_spin_lock_irqsave").unwrap();
        assert_eq!((family.key, api), ("spinlock", "spin_lock_irqsave"));
        assert!(LockFamily::is_internal_symbol(
            "native_queued_spin_lock_slowpath"
        ));
        assert!(!LockFamily::is_internal_symbol("alloc_fd"));
    }
}
