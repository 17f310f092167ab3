//! `msh pagewalk run`: the JSON shape, exact references through the command line, and a
//! one-line error for every kind of bad input.
use msh_tests::json_report;
use std::process::{Command, Output};

const MSH: &str = env!("CARGO_BIN_EXE_msh");

fn pagewalk(args: &[&str]) -> Output {
    Command::new(MSH)
        .arg("pagewalk")
        .arg("run")
        .args(args)
        .output()
        .expect("msh runs")
}

fn small() -> Vec<&'static str> {
    vec![
        "--synthetic",
        "gups",
        "--footprint",
        "128M",
        "--accesses",
        "20000",
    ]
}

#[test]
fn json_has_the_documented_shape_and_exact_counts() {
    let mut args = small();
    args.extend([
        "--designs",
        "radix,dmt,pvdmt",
        "--env",
        "native,virt",
        "--no-tlb",
        "--no-pwc",
        "--json",
    ]);
    let out = pagewalk(&args);
    let json = json_report(&out);
    assert!(json["accesses_per_s"].as_f64().unwrap() > 0.0);
    let results = json["results"].as_array().unwrap();
    assert_eq!(
        results.len(),
        5,
        "radix, dmt native; radix, dmt, pvdmt virt"
    );
    for r in results {
        for key in [
            "design",
            "env",
            "pages",
            "accesses",
            "walks",
            "refs_per_walk",
            "walk_cycles_mean",
            "pagewalk_speedup",
        ] {
            assert!(!r[key].is_null(), "{key} missing in {r}");
        }
        for key in ["pwc", "l1", "l2", "llc", "mem"] {
            assert!(r["served"][key].is_u64(), "served.{key} missing in {r}");
        }
        assert_exact_walks(r);
    }
}

/// With the TLBs and PWCs off, every access walks, and each walk takes exactly its
/// design's references: the issue's figures.
fn assert_exact_walks(r: &serde_json::Value) {
    let expected = match (r["design"].as_str().unwrap(), r["env"].as_str().unwrap()) {
        ("radix", "native") => 4.0,
        ("dmt", "native") => 1.0,
        ("radix", "virt") => 24.0,
        ("dmt", "virt") => 3.0,
        ("pvdmt", "virt") => 2.0,
        other => panic!("unexpected row {other:?}"),
    };
    assert_eq!(r["refs_per_walk"].as_f64().unwrap(), expected, "{r}");
    assert_eq!(r["walks"], r["accesses"]);
}

fn one_line_error(args: &[&str], cause: &str) {
    let out = pagewalk(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(
        stderr.starts_with("msh: ") && stderr.contains(cause),
        "{args:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed a partial result");
}

#[test]
fn bad_input_is_one_line_naming_the_cause() {
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = small();
        args.extend_from_slice(extra);
        args
    }
    one_line_error(&with(&["--designs", "radix,dnt"]), "unknown design \"dnt\"");
    one_line_error(&with(&["--env", "cloud"]), "unknown environment \"cloud\"");
    one_line_error(&with(&["--pages", "1g"]), "unknown page size \"1g\"");
    one_line_error(
        &["--synthetic", "gups", "--footprint", "60G", "--env", "virt"],
        "does not fit the simulated guest physical memory",
    );
    one_line_error(
        &["--synthetic", "gups", "--footprint", "12Q"],
        "bad size \"12Q\"",
    );
    // A range the parser checks: clap's line naming it, exit 2.
    let out = pagewalk(&with(&["--walk-fraction", "1.5"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: invalid value '1.5' for '--walk-fraction"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    one_line_error(&[], "nothing to simulate");

    let dir = msh_tests::scratch("pagewalk");
    let config = dir.join("machine.json");
    for (json, cause) in [
        (
            r#"{"stlb": {"entries": 1536, "ways": 0}}"#,
            "stlb: zero ways",
        ),
        (
            r#"{"pwc": {"pde": {"entries": 24, "ways": 4}}}"#,
            "pwc.pde: 6 sets is not a power of two",
        ),
        (r#"{"llc": {"size": 8388608, "ways": 0}}"#, "llc: zero ways"),
        (r#"{"l1": "#, "EOF while parsing"),
    ] {
        std::fs::write(&config, json).unwrap();
        one_line_error(&with(&["--config", config.to_str().unwrap()]), cause);
    }

    // Traces: a missing file, a foreign one, and one cut short.
    let missing = dir.join("missing.trace");
    one_line_error(&["--trace", missing.to_str().unwrap()], "missing.trace");
    let foreign = dir.join("foreign.trace");
    std::fs::write(&foreign, b"not a trace").unwrap();
    one_line_error(
        &["--trace", foreign.to_str().unwrap()],
        "is not an msh trace file",
    );
    let trace = record_small_trace(&dir);
    let bytes = std::fs::read(&trace).unwrap();
    let cut = dir.join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    one_line_error(&["--trace", cut.to_str().unwrap()], "is truncated");
    one_line_error(&["--", "/nonexistent/program"], "/nonexistent/program");
}

/// A program whose accesses the tracer records: a small table read at random.
const TRACED_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    long n = 1 << 20, *a = malloc(n * sizeof *a);
    unsigned long x = 1, sum = 0;
    for (long i = 0; i < n; i++) a[i] = i;
    for (long i = 0; i < 100000; i++) { x = x * 6364136223846793005ul + 1; sum += a[(x >> 20) % n]; }
    printf("%lu\n", sum);
    return 0;
}
"#;

/// `msh pagewalk record` of [`TRACED_PROGRAM`] into `dir/small.trace`.
fn record_small_trace(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("traced.c");
    std::fs::write(&source, TRACED_PROGRAM).unwrap();
    let program = dir.join("traced");
    msh_tests::cc(&[source], &program, &[]);
    let trace = dir.join("small.trace");
    let out = Command::new(MSH)
        .args(["pagewalk", "record", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(&program)
        .output()
        .expect("msh runs");
    msh_tests::assert_success(&out);
    trace
}

/// The exact-reference figures hold for a real program's accesses, whether it is
/// traced live (`-- CMD`) or replayed from the file `record` wrote, and the replay
/// simulates exactly the accesses the file holds.
#[test]
fn traced_programs_and_their_trace_files_walk_exactly() {
    let dir = msh_tests::scratch("pagewalk-traced");
    let trace = record_small_trace(&dir);
    let exact = [
        "--designs",
        "radix,dmt,pvdmt",
        "--env",
        "native,virt",
        "--no-tlb",
        "--no-pwc",
        "--json",
    ];
    let mut replay = vec!["--trace", trace.to_str().unwrap()];
    replay.extend(exact);
    let program = dir.join("traced");
    let mut live = exact.to_vec();
    live.extend(["--", program.to_str().unwrap()]);
    // At least the program's own 1 Mi stores and 100,000 loads.
    let floor = (1 << 20) + 100_000;
    let mut replayed_accesses = None;
    for args in [replay, live] {
        let json = json_report(&pagewalk(&args));
        let results = json["results"].as_array().unwrap();
        assert_eq!(results.len(), 5, "{json}");
        for r in results {
            assert_exact_walks(r);
            assert!(r["accesses"].as_u64().unwrap() >= floor, "{r}");
        }
        replayed_accesses.get_or_insert(results[0]["accesses"].as_u64().unwrap());
    }
    // The file's own count (its trailer, read by the reader) is what was replayed.
    let reader = msh_tracer::file::Reader::open(&trace).unwrap();
    assert_eq!(Some(reader.trailer().accesses_delivered), replayed_accesses);
}
