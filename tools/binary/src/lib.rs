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
