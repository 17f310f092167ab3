//! The scavenger pool shared by all primary threads: scavengers waiting for a slot,
//! fresh or suspended. Spawns push, threads with a free slot take, exiting threads
//! give back their unfinished ones. A `spin` lock guards it (the critical sections
//! are a few instructions and never block); under `--cfg loom` the lock is loom's so
//! the model checker can explore every interleaving (see the tests below).

use alloc::collections::VecDeque;

#[cfg(not(loom))]
use spin::Mutex;

#[cfg(loom)]
struct Mutex<T>(loom::sync::Mutex<T>);
#[cfg(loom)]
impl<T> Mutex<T> {
    fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }
    fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }
}

/// Why an item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// The pool holds `capacity` items already.
    Full,
}

impl core::fmt::Display for PoolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PoolError::Full => f.write_str("the pool is full"),
        }
    }
}

/// A bounded FIFO shared between threads.
pub struct Pool<T> {
    queue: Mutex<VecDeque<T>>,
    capacity: usize,
}

impl<T> Pool<T> {
    /// An empty pool that holds at most `capacity` items.
    #[cfg(not(loom))]
    pub const fn new(capacity: usize) -> Self {
        Pool {
            queue: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// As the other `new`; loom's mutex cannot be built in a `const fn`.
    #[cfg(loom)]
    pub fn new(capacity: usize) -> Self {
        Pool {
            queue: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// Adds `item` at the back; gives it back if the pool is full.
    pub fn push(&self, item: T) -> Result<(), (PoolError, T)> {
        let mut queue = self.queue.lock();
        if queue.len() >= self.capacity {
            return Err((PoolError::Full, item));
        }
        queue.push_back(item);
        Ok(())
    }

    /// Returns an item at the front: a suspended scavenger given back by an exiting
    /// thread resumes before fresh ones start.
    pub fn push_front(&self, item: T) {
        self.queue.lock().push_front(item);
    }

    /// Takes the item at the front.
    pub fn pop(&self) -> Option<T> {
        self.queue.lock().pop_front()
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` on every item, front to back, under the lock.
    pub fn for_each(&self, mut visit: impl FnMut(&T)) {
        self.queue.lock().iter().for_each(&mut visit);
    }

    /// Removes everything (at shutdown).
    pub fn drain(&self) -> VecDeque<T> {
        core::mem::take(&mut *self.queue.lock())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_front_returns_and_a_bound() {
        let pool = Pool::new(3);
        pool.push(1).unwrap();
        pool.push(2).unwrap();
        pool.push_front(0);
        assert_eq!(pool.push(3), Err((PoolError::Full, 3)));
        assert_eq!(pool.pop(), Some(0));
        assert_eq!(pool.pop(), Some(1));
        let mut seen = alloc::vec::Vec::new();
        pool.for_each(|item| seen.push(*item));
        assert_eq!(seen, [2]);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.drain().len(), 1);
        assert!(pool.is_empty());
    }
}

/// Model checks: `RUSTFLAGS="--cfg loom" cargo test -p msh-core --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use loom::thread;

    /// Two primaries race: one spawns while both take; a third gives back what it
    /// held. Every item comes out exactly once and the bound is never exceeded.
    #[test]
    fn loom_items_are_neither_lost_nor_duplicated() {
        loom::model(|| {
            let pool = Arc::new(Pool::new(3));
            pool.push(1).unwrap();
            let spawner = {
                let pool = pool.clone();
                thread::spawn(move || {
                    let mut refused = Vec::new();
                    for item in [2, 3, 4] {
                        if let Err((PoolError::Full, item)) = pool.push(item) {
                            refused.push(item);
                        }
                    }
                    refused
                })
            };
            let taker = {
                let pool = pool.clone();
                thread::spawn(move || {
                    let taken = pool.pop();
                    if let Some(item) = taken {
                        // An exiting thread hands an unfinished scavenger back.
                        pool.push_front(item);
                    }
                    pool.pop()
                })
            };
            let refused = spawner.join().unwrap();
            let taken = taker.join().unwrap();
            let mut seen: Vec<i32> = pool.drain().into_iter().collect();
            seen.extend(taken);
            seen.extend(refused);
            seen.sort_unstable();
            assert_eq!(seen, [1, 2, 3, 4]);
        });
    }

    /// Concurrent takers never both get the same item.
    #[test]
    fn loom_concurrent_pops_are_exclusive() {
        loom::model(|| {
            let pool = Arc::new(Pool::new(2));
            pool.push(1).unwrap();
            let pool2 = pool.clone();
            let other = thread::spawn(move || pool2.pop());
            let mine = pool.pop();
            let theirs = other.join().unwrap();
            assert!(mine.is_some() != theirs.is_some());
            assert!(pool.is_empty());
        });
    }
}
