//! Building and running the bundled C examples (c-examples/), which the demo and the
//! harvest benchmark measure. Each example prints one `name: {json}` line.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The source checkout: `MSH_ROOT`, or where this binary was built from.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MSH_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the examples are built.
pub fn build_dir() -> PathBuf {
    repo_root().join("c-examples/build")
}

/// Builds libmsh (release) and the harvest examples (ptrchase, compute and its
/// scavenger objects) with make: what `msh demo` and the harvest benchmarks run, and
/// nothing else, so a machine without the GC examples' packages runs them too.
pub fn build() -> Result<PathBuf> {
    build_targets(&["harvest"])
}

/// Builds libmsh and the given make targets of the C examples (`all` for every one).
pub fn build_targets(targets: &[&str]) -> Result<PathBuf> {
    let root = repo_root();
    let examples = root.join("c-examples");
    if !examples.join("Makefile").exists() {
        bail!(
            "no C examples at {}: set MSH_ROOT to the msh source checkout",
            examples.display()
        );
    }
    let output = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&examples)
        .args(targets)
        .output()
        .context("cannot run make (install build-essential: apt-get install build-essential)")?;
    if !output.status.success() {
        bail!(
            "building the C examples failed:\n{}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(build_dir())
}

/// Runs `program ARGS` from the build directory and parses its `name: {json}` line.
pub fn run_json<T: DeserializeOwned>(program: &str, args: &[String]) -> Result<T> {
    let path = build_dir().join(program);
    let output = Command::new(&path)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let prefix = format!("{program}: ");
    let alt_prefix = format!("{}: ", program.split('_').next().unwrap_or(program));
    let line = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix(&prefix)
                .or_else(|| line.strip_prefix(&alt_prefix))
        })
        .with_context(|| format!("{program} printed no result line: {stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("{program}: unreadable result {line}"))
}

/// One ptrchase run.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Chase {
    /// Wall time of the primary's chase.
    pub elapsed_ns: f64,
    /// Checksum of the chase, to compare runs.
    pub checksum: u64,
    /// Work units the scavengers finished during the run.
    pub scavenger_units: u64,
    /// The budget per switch the primary ended with, ns (0: not measured).
    #[serde(default)]
    pub budget_ns: u64,
}

impl Chase {
    /// Scavenger work units per second of the primary's run.
    pub fn units_per_s(&self) -> f64 {
        self.scavenger_units as f64 / (self.elapsed_ns / 1e9)
    }
}

/// The compute scavenger alone.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Compute {
    /// Work units per second.
    pub units_per_s: f64,
}
