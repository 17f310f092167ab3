//! Shared by the end-to-end tests: fixtures compiled with cc, the interposer built.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles tests/fixtures/NAME.c into `dir`.
pub fn fixture(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cc {}", source.display());
    out
}

/// Makes sure libmshtrace.so is built next to the test binary's directory
/// (target/PROFILE/), where `record` looks for it.
pub fn ensure_interposer() {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    if profile_dir.join("libmshtrace.so").is_file() {
        return;
    }
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.args(["build", "-p", "msh-trace-interposer"]);
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    assert!(
        cargo.status().unwrap().success(),
        "building msh-trace-interposer"
    );
}
