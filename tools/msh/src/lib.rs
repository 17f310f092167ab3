//! The `msh` command's library: each subcommand in a module of its own.
#![warn(missing_docs)]
pub mod bench;
pub mod checkpoint;
pub mod demo;
pub mod doctor;
pub mod examples;
pub mod memcached;
pub mod run;
