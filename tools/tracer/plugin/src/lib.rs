//! The QEMU TCG plugin behind `msh-tracer`.
//!
//! Built as a `cdylib` (`libmsh_tracer_plugin.so`), it is loaded by `qemu-x86_64
//! -plugin libmsh_tracer_plugin.so,shm=FD` and streams every guest load and store, in
//! batches, through the shared memory the tracer passed as descriptor `FD` (see
//! [`shm`]). The same crate is an rlib so that the tracer uses the one definition of
//! that layout.
#![warn(missing_docs)]

mod plugin;
mod qemu;
pub mod shm;

pub use plugin::{qemu_plugin_install, qemu_plugin_version};
