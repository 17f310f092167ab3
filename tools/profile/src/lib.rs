//! msh profile (placeholder; see the issue tracker).
