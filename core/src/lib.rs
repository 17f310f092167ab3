//! msh-core: the no_std heart of msh.
#![no_std]
#![cfg_attr(not(test), deny(unsafe_op_in_unsafe_fn))]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod abi;
pub mod dirty;
