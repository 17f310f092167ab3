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

    // Traces: a missing file, and (until msh-tracer is wired in) any file, truncated,
    // foreign or not.
    let missing = dir.join("missing.trace");
    one_line_error(&["--trace", missing.to_str().unwrap()], "cannot open trace");
    let foreign = dir.join("foreign.trace");
    std::fs::write(&foreign, b"not a trace").unwrap();
    one_line_error(&["--trace", foreign.to_str().unwrap()], "foreign.trace");
    one_line_error(&["--", "true"], "not available in this build");
}
