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

/// The multiloop fixture as the sim benches run it: 4 M random probes of a 64 MiB
/// table, two scans of 16 MiB, 10 M compute steps, 4 M lookups in a 16 KiB table.
#[allow(dead_code)] // the sim benches use it; `overhead` includes this module too
pub fn multiloop_command(multiloop: &Path) -> Vec<String> {
    let program = multiloop.to_str().expect("a UTF-8 path");
    [program, "64", "4000000", "16", "2", "10000000", "4000000"]
        .map(String::from)
        .to_vec()
}
