//! Shared by the integration tests: building the C fixtures with `cc`.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        remove_stale_build_dirs();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("profile-fixtures-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Removes the build directories of earlier test processes that have exited.
fn remove_stale_build_dirs() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("profile-fixtures-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Compiles `tests/fixtures/NAME.c` with `cc -O2 -g`, `extra` flags after the source,
/// into `OUT`, once per test binary: tests run in parallel, and one test must not
/// execute a binary while another relinks it.
pub fn build(name: &str, out: &str, extra: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(out) {
        return path.clone();
    }
    let output = build_dir().join(out);
    let status = Command::new("cc")
        .args(["-O2", "-g", "-fno-tree-vectorize", "-pthread"])
        .arg("-o")
        .arg(&output)
        .arg(fixtures_dir().join(format!("{name}.c")))
        .args(extra)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cc failed for {name}");
    built.insert(out.to_owned(), output.clone());
    output
}

pub fn argv(program: &Path, args: &[&str]) -> Vec<String> {
    std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

/// The modelled hierarchy the sim tests use: small enough that short runs miss it.
pub const SIM_CACHE: &str = "L1=32K:8,L2=256K:8,L3=2M:16";

pub fn scratch() -> &'static Path {
    build_dir()
}
