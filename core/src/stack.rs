//! Coroutine stacks: an anonymous mapping with a PROT_NONE guard page at the low end,
//! so an overflow faults (and is reported by [`crate::overflow`]) instead of writing
//! into whatever lies below.

use crate::os::{errno, page_size};
use core::ptr;

/// Default usable stack size.
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;
/// Smallest usable size accepted.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// An mmap'd stack with a guard page below it.
#[derive(Debug)]
pub struct Stack {
    base: *mut u8,
    len: usize,
    guard: usize,
}

// SAFETY: a Stack is plain owned memory; moving it between threads is fine.
unsafe impl Send for Stack {}

/// Why a stack could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackError {
    /// mmap or mprotect failed with this errno.
    Os(i32),
}

impl core::fmt::Display for StackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StackError::Os(errno) => write!(f, "mmap or mprotect failed (errno {errno})"),
        }
    }
}

impl Stack {
    /// Maps a stack of at least `size` usable bytes (rounded up to pages).
    pub fn new(size: usize) -> Result<Stack, StackError> {
        let page = page_size();
        let usable = size.max(MIN_STACK_SIZE).div_ceil(page) * page;
        let guard = page;
        let len = usable + guard;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(StackError::Os(errno()));
        }
        // SAFETY: the first page of the mapping we just made.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            let err = errno();
            // SAFETY: unmapping the mapping we just made.
            unsafe { libc::munmap(base, len) };
            return Err(StackError::Os(err));
        }
        Ok(Stack {
            base: base.cast(),
            len,
            guard,
        })
    }

    /// One past the highest usable byte (16-byte aligned).
    pub fn top(&self) -> *mut u8 {
        // SAFETY: within (one past) the mapping.
        unsafe { self.base.add(self.len) }
    }

    /// Usable bytes.
    pub fn usable(&self) -> usize {
        self.len - self.guard
    }

    /// Whether `addr` lies in the guard page.
    pub fn guard_contains(&self, addr: usize) -> bool {
        let lo = self.base as usize;
        addr >= lo && addr < lo + self.guard
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing runs on it any more (owner's duty).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_and_guard_is_below_the_stack() {
        let stack = Stack::new(20_000).unwrap();
        assert_eq!(stack.usable() % page_size(), 0);
        assert!(stack.usable() >= 20_000);
        assert_eq!(stack.top() as usize % 16, 0);
        let low = stack.top() as usize - stack.usable();
        assert!(stack.guard_contains(low - 1));
        assert!(!stack.guard_contains(low));
        // The usable part is writable end to end.
        unsafe { core::ptr::write_bytes(low as *mut u8, 0xa5, stack.usable()) };
    }

    #[test]
    fn tiny_sizes_get_the_minimum() {
        assert!(Stack::new(1).unwrap().usable() >= MIN_STACK_SIZE);
    }
}
