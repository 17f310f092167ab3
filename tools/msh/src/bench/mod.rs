//! `msh bench …`: measurements as ratios against a baseline taken in the same run.
pub mod attach;
pub mod checkpoint;
pub mod dirty;
pub mod gc;
pub mod harvest;
pub mod switch;
