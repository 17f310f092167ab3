//! msh's one reading of x86-64 ELF binaries, shared by the profiler, the rewriter and
//! the tracer:
//!
//! - [`Binary`]: the file parsed through `object`'s typed ELF structures (header,
//!   program headers, sections, symbols, notes, dynamic relocations);
//! - [`identity`]: the build-id (or `sha256:` content hash) that ties a profile to
//!   the binary it was recorded for;
//! - [`bounds`]: function bounds from `.eh_frame` and the symbol tables, with one
//!   precedence rule;
//! - [`decode`]: decoding with iced-x86, Intel-syntax text, and the one answer to
//!   "is this instruction a load".
#![warn(missing_docs)]

pub mod bounds;
pub mod decode;
mod elf;
pub mod identity;

pub use bounds::Function;
pub use decode::{classify_load, Load};
pub use elf::{Binary, Section, Segment};
pub use identity::build_id;

/// The largest object file read: well above any real binary, far below what a
/// runaway read would take before failing.
pub const MAX_OBJECT_BYTES: u64 = 4 << 30;

/// Reads an object file named by the user or by another file (a profile, a pool):
/// only a regular file, at most [`MAX_OBJECT_BYTES`], never `/dev/zero` or a FIFO.
fn read_object(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    msh_files::read_regular(path, "object", MAX_OBJECT_BYTES)
}
