//! The msh C ABI (`libmsh.a`, `libmsh.so`). Every exported function goes through the
//! panic boundary in [`error`]; the header `include/msh.h` is generated from this crate
//! by cbindgen (see `tests/header.rs`).
#![warn(missing_docs)]
#![allow(non_camel_case_types)]

pub mod attach;
mod dirty;
pub mod error;
pub mod runtime;
mod track_dirty;

pub use error::msh_status;
