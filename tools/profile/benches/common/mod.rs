//! Shared by the benches: building the C fixtures.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `tests/fixtures/NAME.c` into `dir` with the flags the tests use.
pub fn build(dir: &Path, name: &str) -> PathBuf {
    let output = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
    let status = Command::new("cc")
        .args(["-O2", "-g", "-fno-tree-vectorize", "-pthread", "-o"])
        .arg(&output)
        .arg(source)
        .status();
    assert!(status.is_ok_and(|s| s.success()), "cc failed");
    output
}
