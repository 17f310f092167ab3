//! msh trace (skeleton)
#![warn(missing_docs)]
