//! msh kpatch (placeholder; see the issue tracker).
