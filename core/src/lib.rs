//! msh-core: the no_std heart of msh — the x86-64 context switch, coroutine stacks
//! with guard pages, the per-thread scheduler and the shared scavenger pool, and
//! dirty-page tracking.
//!
//! The allocator comes from whoever links this crate (libmsh uses the system's).
#![warn(missing_docs)]
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod abi;
pub mod arch;
#[cfg(not(loom))]
pub mod budget;
pub mod dirty;
// Under `--cfg loom` only the pool is built: loom replaces its lock.
#[cfg(not(loom))]
mod fault;
pub mod os;
pub mod pool;
#[cfg(not(loom))]
pub mod sched;
pub mod stack;
pub mod tsc;
#[cfg(not(loom))]
mod watchdog;

pub use arch::{prefetch_yield, primary_yield, yield_now};
#[cfg(not(loom))]
pub use sched::{Config, Error, JobFn, Stats};
