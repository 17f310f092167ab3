//! Dirty-page tracking (issue 6).
