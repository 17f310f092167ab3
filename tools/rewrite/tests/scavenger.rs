//! `msh rewrite --scavenger`: a scavenger that never calls `msh_yield()` (tight and
//! nested loops, recursion, calls through pointers, libc calls), rewritten, gives the
//! same result loaded with plain `dlopen` (the checks are no-ops outside msh) and run
//! to completion as a pool scavenger under libmsh, where its checks do yield.

mod common;
use common::*;
use msh_rewrite::{rewrite, Options, Report, Selection};
use std::path::{Path, PathBuf};
use std::process::Command;

fn include_dir() -> String {
    format!("{}/../../include", env!("CARGO_MANIFEST_DIR"))
}

fn rewrite_scavenger(input: &Path, output: &Path, every_ns: u64) -> anyhow::Result<Report> {
    rewrite(&Options {
        input: input.into(),
        output: output.into(),
        selection: Selection::Scavenger {
            every_ns,
            profile: None,
        },
        allow_call_windows: false,
    })
}

/// Runs `plain_dlopen OBJECT OUT ROUNDS` and returns what the scavenger wrote.
fn plain(driver: &Path, object: &Path, out: &Path, rounds: &str) -> String {
    let status = Command::new(driver)
        .arg(object)
        .arg(out)
        .arg(rounds)
        .status()
        .unwrap();
    assert!(status.success(), "{} under plain dlopen", object.display());
    std::fs::read_to_string(out).unwrap()
}

fn build_shapes(dir: &Path, opt: &str) -> PathBuf {
    build(
        dir,
        "shapes_scavenger.c",
        &format!("shapes{opt}.so"),
        &[opt, "-fPIC", "-shared"],
    )
}

#[test]
fn rewritten_scavenger_is_unchanged_outside_msh_and_yields_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let driver = build(d, "plain_dlopen.c", "plain_dlopen", &["-O2"]);
    let primary = d.join("primary");
    cc(&[
        "-O2",
        "-I",
        &include_dir(),
        "-o",
        primary.to_str().unwrap(),
        &format!("{}/../../tests/c/primary.c", env!("CARGO_MANIFEST_DIR")),
    ]);
    for opt in ["-O2", "-O0"] {
        let original = build_shapes(d, opt);
        let rewritten = d.join(format!("shapes{opt}.msh.so"));
        let report = rewrite_scavenger(&original, &rewritten, 200).unwrap();
        let scav = report.scavenger.as_ref().unwrap();
        assert!(
            scav.checks.get("function-entry").copied().unwrap_or(0) >= 5,
            "{scav:?}"
        );
        assert!(
            scav.checks.get("loop-header").copied().unwrap_or(0) >= 6,
            "{scav:?}"
        );
        assert!(report.patched * 10 >= report.candidates * 8, "{report:?}");
        if opt == "-O2" {
            // The tight loops count their passes in a free register.
            assert!(scav.pass_counters >= 1, "{scav:?}");
        }

        let expected = plain(&driver, &original, &d.join("expected"), "20");
        assert_eq!(plain(&driver, &rewritten, &d.join("plain"), "20"), expected);

        let out = d.join(format!("under-msh{opt}"));
        let pool = d.join("pool.txt");
        std::fs::write(
            &pool,
            format!("{} {} 20\n", rewritten.display(), out.display()),
        )
        .unwrap();
        let run = Command::new(&primary)
            .args(["65536", "3000000"])
            .env("LD_PRELOAD", msh_tests::libmsh_so())
            .env("MSH_SCAV_POOL_PATH", &pool)
            .env("MSH_STATS", "1")
            .env("MSH_STRICT", "1")
            .env("MSH_EXIT_WAIT_MS", "60000")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(5), "{stderr}");
        let stats = stderr
            .lines()
            .find_map(|l| l.strip_prefix("msh-stats: "))
            .expect("msh-stats line");
        let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
        let total = &stats["total"];
        assert_eq!(total["scavengers_completed"].as_u64(), Some(1), "{stats}");
        // The scavenger yields only through its rewritten checks; it must have given
        // the core back many times, not run to the end in one switch.
        assert!(total["switches"].as_u64().unwrap() > 100, "{stats}");
        assert!(
            total["scavenger_yields"].as_u64().unwrap() > 1000,
            "{stats}"
        );
        // Sample runs measured its yield gaps (values are a benchmark's business).
        let gaps = &stats["scavengers"][0];
        assert!(gaps["gap_samples"].as_u64().unwrap_or(0) > 0, "{stats}");
        assert!(
            gaps["gap_ns_p50"].as_u64().unwrap() <= gaps["gap_ns_max"].as_u64().unwrap(),
            "{stats}"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    }
}

#[test]
fn a_rewritten_scavenger_is_refused_a_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let original = build_shapes(dir.path(), "-O2");
    let once = dir.path().join("once.so");
    rewrite_scavenger(&original, &once, 100).unwrap();
    let err = rewrite_scavenger(&once, &dir.path().join("twice.so"), 100).unwrap_err();
    assert!(format!("{err:#}").contains("already rewritten"), "{err:#}");
}
