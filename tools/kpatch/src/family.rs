//! Lock primitives, grouped by the lock they operate on.
//!
//! A policy replaces how one lock (one structure field) waits, so every
//! acquire and release of that field moves together: `--lock spin_lock` also
//! rewrites the field's `spin_lock_irqsave`/`spin_unlock_irqrestore` sites,
//! and its trylocks (which never wait: their hook is `trylock`, not
//! `contended`). Both implementations share the lock word.

use crate::Error;

/// The acquire and release APIs of one kind of lock, and how perf names them.
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

/// The spinlock_t and raw_spinlock_t families share their out-of-line
/// entry points (`spin_lock_irqsave` and `raw_spin_lock_irqsave` both enter
/// `_raw_spin_lock_irqsave`), so a frame can name either; the function
/// holding the site tells which.
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
            "spin_trylock",
            "spin_trylock_bh",
            "spin_trylock_irq",
            "spin_trylock_irqsave",
        ],
        release: &[
            "spin_unlock",
            "spin_unlock_bh",
            "spin_unlock_irq",
            "spin_unlock_irqrestore",
        ],
        perf_entry_symbols: SPIN_SYMBOLS_FOR_SPINLOCK,
        perf_internal_symbols: SPIN_INTERNALS,
        api_header: "linux/spinlock.h",
    },
    LockFamily {
        key: "raw_spinlock",
        field_types: &["raw_spinlock_t"],
        acquire: &[
            "raw_spin_lock",
            "raw_spin_lock_bh",
            "raw_spin_lock_irq",
            "raw_spin_lock_irqsave",
            "raw_spin_lock_nested",
            "raw_spin_trylock",
            "raw_spin_trylock_irqsave",
        ],
        release: &[
            "raw_spin_unlock",
            "raw_spin_unlock_bh",
            "raw_spin_unlock_irq",
            "raw_spin_unlock_irqrestore",
        ],
        perf_entry_symbols: &[
            ("_raw_spin_lock", "raw_spin_lock"),
            ("_raw_spin_lock_bh", "raw_spin_lock_bh"),
            ("_raw_spin_lock_irq", "raw_spin_lock_irq"),
            ("_raw_spin_lock_irqsave", "raw_spin_lock_irqsave"),
            ("_raw_spin_lock_nested", "raw_spin_lock_nested"),
            ("_raw_spin_trylock", "raw_spin_trylock"),
            ("_raw_spin_unlock", "raw_spin_unlock"),
            ("_raw_spin_unlock_bh", "raw_spin_unlock_bh"),
            ("_raw_spin_unlock_irq", "raw_spin_unlock_irq"),
            ("_raw_spin_unlock_irqrestore", "raw_spin_unlock_irqrestore"),
        ],
        perf_internal_symbols: SPIN_INTERNALS,
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
            "down_write_trylock",
        ],
        release: &["up_write"],
        perf_entry_symbols: &[
            ("down_write", "down_write"),
            ("down_write_killable", "down_write_killable"),
            ("down_write_nested", "down_write_nested"),
            ("_down_write_nest_lock", "down_write_nest_lock"),
            ("down_write_trylock", "down_write_trylock"),
            ("up_write", "up_write"),
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
            "down_read_trylock",
        ],
        release: &["up_read"],
        perf_entry_symbols: &[
            ("down_read", "down_read"),
            ("down_read_killable", "down_read_killable"),
            ("down_read_interruptible", "down_read_interruptible"),
            ("down_read_nested", "down_read_nested"),
            ("down_read_trylock", "down_read_trylock"),
            ("up_read", "up_read"),
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
            "mutex_trylock",
        ],
        release: &["mutex_unlock"],
        perf_entry_symbols: &[
            ("mutex_lock", "mutex_lock"),
            ("mutex_lock_interruptible", "mutex_lock_interruptible"),
            ("mutex_lock_killable", "mutex_lock_killable"),
            ("mutex_lock_nested", "mutex_lock_nested"),
            ("mutex_trylock", "mutex_trylock"),
            ("mutex_unlock", "mutex_unlock"),
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

/// Out-of-line entry points of the spinlock_t API. The unlocks are there
/// because cpu-clock is an hrtimer: a sample due while interrupts are off
/// fires when `_raw_spin_unlock_irq{,restore}` turns them back on, so an
/// `_irq` critical section shows up at its unlock.
const SPIN_SYMBOLS_FOR_SPINLOCK: &[(&str, &str)] = &[
    ("_raw_spin_lock", "spin_lock"),
    ("_raw_spin_lock_bh", "spin_lock_bh"),
    ("_raw_spin_lock_irq", "spin_lock_irq"),
    ("_raw_spin_lock_irqsave", "spin_lock_irqsave"),
    ("_raw_spin_lock_nested", "spin_lock_nested"),
    ("_raw_spin_trylock", "spin_trylock"),
    ("_raw_spin_trylock_bh", "spin_trylock_bh"),
    ("_raw_spin_unlock", "spin_unlock"),
    ("_raw_spin_unlock_bh", "spin_unlock_bh"),
    ("_raw_spin_unlock_irq", "spin_unlock_irq"),
    ("_raw_spin_unlock_irqrestore", "spin_unlock_irqrestore"),
];

const SPIN_INTERNALS: &[&str] = &[
    "queued_spin_lock_slowpath",
    "native_queued_spin_lock_slowpath",
    "__pv_queued_spin_lock_slowpath",
    "pv_wait",
    "pv_wait_head_or_lock",
    "do_raw_spin_lock",
];

impl LockFamily {
    /// The family whose acquire API is `lock_fn` (`spin_lock`, `down_write`, ...).
    pub fn by_acquire_api(lock_fn: &str) -> Result<&'static LockFamily, Error> {
        FAMILIES
            .iter()
            .find(|f| f.acquire.contains(&lock_fn))
            .ok_or_else(|| Error::UnknownPrimitive(lock_fn.to_owned()))
    }

    /// The families and APIs a kernel symbol in a call chain enters.
    pub fn by_perf_symbol(symbol: &str) -> Vec<(&'static LockFamily, &'static str)> {
        FAMILIES
            .iter()
            .flat_map(|f| {
                f.perf_entry_symbols
                    .iter()
                    .filter(move |(s, _)| *s == symbol)
                    .map(move |(_, api)| (f, *api))
            })
            .collect()
    }

    /// Whether `api` releases the lock.
    pub fn is_release(&self, api: &str) -> bool {
        self.release.contains(&api)
    }

    /// Whether `symbol` is inside some lock implementation.
    pub fn is_internal_symbol(symbol: &str) -> bool {
        FAMILIES
            .iter()
            .any(|f| f.perf_internal_symbols.contains(&symbol))
    }

    /// Whether `api` is one of this family's acquire or release APIs.
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
        let entries: Vec<_> = LockFamily::by_perf_symbol("_raw_spin_lock_irqsave")
            .into_iter()
            .map(|(f, api)| (f.key, api))
            .collect();
        assert_eq!(
            entries,
            [
                ("spinlock", "spin_lock_irqsave"),
                ("raw_spinlock", "raw_spin_lock_irqsave")
            ]
        );
        assert_eq!(
            LockFamily::by_perf_symbol("_raw_spin_unlock_irqrestore")[0].1,
            "spin_unlock_irqrestore"
        );
        assert!(LockFamily::is_internal_symbol(
            "native_queued_spin_lock_slowpath"
        ));
        assert!(!LockFamily::is_internal_symbol("alloc_fd"));
    }
}
