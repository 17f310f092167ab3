//! msh trace: which allocation a program touches, when, and how hard.
//!
//! `msh trace -o DB -- CMD` preloads the allocation interposer (`libmshtrace.so`, in
//! `interposer/`), runs the command under an access source ([`source`]), and appends
//! one run to an SQLite database ([`db`] documents the schema): every allocation with
//! its lifetime and symbolized call site, every sampled access with the allocation it
//! fell in ([`alloc`]), and per-site summaries. `plot` draws time × address heatmaps
//! ([`plot`]); `report` writes one self-contained HTML file ([`report`]).
#![warn(missing_docs)]

pub mod alloc;
pub mod cli;
pub mod db;
pub mod events;
pub mod plot;
pub mod record;
pub mod report;
pub mod source;
pub mod symbols;
