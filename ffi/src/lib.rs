//! The msh C ABI. Every exported function catches panics at the boundary.
mod dirty;
