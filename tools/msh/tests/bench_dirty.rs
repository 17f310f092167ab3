//! `msh bench dirty --json`: the report's shape and exactness on a small mapping (the
//! figures themselves are for humans; nothing here is timed).

use msh_tests::json_report;
use std::path::PathBuf;
use std::process::Command;

fn msh() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msh"))
}

#[test]
fn bench_dirty_json_lists_every_backend_and_is_exact() {
    let out = Command::new(msh())
        .args([
            "bench",
            "dirty",
            "--json",
            "--size-mib",
            "16",
            "--reps",
            "1",
            "--fractions",
            "0.01,0.1",
        ])
        .output()
        .unwrap();
    let report = json_report(&out);
    let results = report["results"].as_array().expect("results array");
    assert_eq!(results.len(), 8, "4 backends x 2 fractions");
    for backend in ["uffd-async", "soft-dirty", "uffd-sync", "mprotect"] {
        let rows: Vec<_> = results.iter().filter(|r| r["backend"] == backend).collect();
        assert_eq!(rows.len(), 2, "{backend}");
        for row in rows {
            assert_eq!(row["size_mib"], 16);
            if row["available"] == true {
                assert_eq!(row["exact"], true, "{row}");
                for key in [
                    "arm_ms",
                    "first_write_ns",
                    "baseline_write_ns",
                    "collect_ms",
                ] {
                    assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {row}");
                }
            } else {
                assert!(
                    row["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{row}"
                );
            }
        }
    }
    // This project's kernel (and CI's) has userfaultfd; mprotect works everywhere.
    let available = |b: &str| {
        results
            .iter()
            .any(|r| r["backend"] == b && r["available"] == true)
    };
    assert!(available("mprotect"));
}

#[test]
fn bench_dirty_rejects_bad_arguments_in_one_line() {
    let msh = msh();
    // Ranges are the parser's (exit 2, clap's line naming the option, then its
    // pointer to --help); names it checks later (exit 1, one `msh:` line).
    for (args, code, first_line) in [
        (
            &["--fractions", "1.5"][..],
            2,
            "error: invalid value '1.5' for '--fractions",
        ),
        (&["--backends", "nope"], 1, "msh: unknown backend \"nope\""),
        (&["--reps", "0"], 2, "error: invalid value '0' for '--reps"),
    ] {
        let out = Command::new(&msh)
            .args(["bench", "dirty"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let message = String::from_utf8_lossy(&out.stderr);
        let mut lines = message.trim().lines();
        assert!(
            lines.next().unwrap_or("").starts_with(first_line),
            "{message}"
        );
        if code == 1 {
            assert_eq!(lines.count(), 0, "{message}");
        }
    }
}
