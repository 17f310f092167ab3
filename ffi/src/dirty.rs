//! C ABI for dirty-page tracking (issue 6).
