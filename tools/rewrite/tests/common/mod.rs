//! Helpers shared by the integration tests: fixtures built with `cc`, rewriting, and
//! running programs plain or under the register-scrambling test scavenger.
#![allow(dead_code)]

use msh_rewrite::{rewrite, Options, Report, Selection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn cc(args: &[&str]) {
    let status = Command::new("cc")
        .args(args)
        .status()
        .expect("cc is installed");
    assert!(status.success(), "cc {args:?} failed");
}

/// Builds `fixtures/<name>` into `dir/<out>` with extra flags.
pub fn build(dir: &Path, source: &str, out: &str, flags: &[&str]) -> PathBuf {
    let output = dir.join(out);
    let source = format!("{FIXTURES}/{source}");
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["-o", output.to_str().unwrap(), &source]);
    cc(&args);
    output
}

/// The test scavenger: scrambles every register but %rsp at every yield.
pub fn scrambler(dir: &Path) -> PathBuf {
    build(
        dir,
        "scrambler.c",
        "scrambler.so",
        &["-O2", "-shared", "-fPIC"],
    )
}

pub fn rewrite_all_loads(input: &Path, output: &Path) -> Report {
    let options = Options {
        input: input.into(),
        output: output.into(),
        selection: Selection::AllLoads,
        allow_call_windows: false,
    };
    rewrite(&options).unwrap_or_else(|e| panic!("rewriting {}: {e:#}", input.display()))
}

pub struct Run {
    pub stdout: Vec<u8>,
    pub status: i32,
    /// Yields the scrambler counted (0 when it was not loaded).
    pub yields: u64,
}

/// Runs `program args` with `env`, stdin from `stdin` if given, optionally under the
/// scrambler (whose yield count is read back).
pub fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&Path>,
    scrambler: Option<&Path>,
) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::inherit());
    if let Some(input) = stdin {
        cmd.stdin(std::fs::File::open(input).unwrap());
    }
    let counter = tempfile::NamedTempFile::new().unwrap();
    if let Some(so) = scrambler {
        cmd.env("LD_PRELOAD", so)
            .env("MSH_TEST_YIELDS_FILE", counter.path());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let yields = std::fs::read_to_string(counter.path())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Run {
        stdout: out.stdout,
        status: out.status.code().unwrap_or(-1),
        yields,
    }
}

/// `patched / candidates`.
pub fn coverage(report: &Report) -> f64 {
    report.patched as f64 / report.candidates.max(1) as f64
}

/// `kitchen.c` built as a shared library, a driver program linked against it, and an
/// empty folder for the rewritten copy.
pub struct Kitchen {
    /// `DIR/lib/libkitchen.so`.
    pub lib: PathBuf,
    /// `DIR/driver`, which runs the library's `main`.
    pub exe: PathBuf,
    /// `DIR/lib`: put it on `LD_LIBRARY_PATH` to run the original.
    pub lib_dir: PathBuf,
    /// `DIR/msh`: where the rewritten `libkitchen.so` goes.
    pub msh_dir: PathBuf,
}

/// Builds [`Kitchen`] in `dir`.
pub fn kitchen_library(dir: &Path) -> Kitchen {
    let lib_dir = dir.join("lib");
    let msh_dir = dir.join("msh");
    std::fs::create_dir_all(&lib_dir).unwrap();
    std::fs::create_dir_all(&msh_dir).unwrap();
    let lib = build(
        &lib_dir,
        "kitchen.c",
        "libkitchen.so",
        &["-O2", "-shared", "-fPIC", "-Dmain=kitchen_main"],
    );
    let driver = dir.join("driver.c");
    std::fs::write(
        &driver,
        "int kitchen_main(int, char **);\nint main(int c, char **v) { return kitchen_main(c, v); }\n",
    )
    .unwrap();
    let exe = dir.join("driver");
    cc(&[
        "-O2",
        "-o",
        exe.to_str().unwrap(),
        driver.to_str().unwrap(),
        "-L",
        lib_dir.to_str().unwrap(),
        "-lkitchen",
    ]);
    Kitchen {
        lib,
        exe,
        lib_dir,
        msh_dir,
    }
}
