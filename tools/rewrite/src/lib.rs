//! msh rewrite (placeholder; see the issue tracker).
