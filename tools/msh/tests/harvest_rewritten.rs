//! `msh bench harvest --mode rewritten`: the plain ptrchase, rewritten at its chase
//! load found by `msh profile`, harvests under `msh run` and keeps its checksum (the
//! bench refuses a mismatch).
use std::process::Command;

#[test]
fn the_rewritten_chase_runs_scavengers() {
    msh_tests::ensure_libmsh();
    let out = Command::new(env!("CARGO_BIN_EXE_msh"))
        .args([
            "bench",
            "harvest",
            "--mode",
            "rewritten",
            "--json",
            "--runs",
            "1",
            // A table far beyond L2 and long enough (0.2-0.5 s) for the profiler's
            // 1 kHz samples to find the chase load whatever the machine's load.
            "--hops",
            "1000000",
            "--mib",
            "64",
        ])
        .output()
        .expect("msh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["mode"], "rewritten");
    // The real pipeline: msh profile chose the chase load, msh rewrite patched it.
    let pipeline = &report["pipeline"];
    assert!(
        pipeline["site"].as_str().unwrap().starts_with("chase+"),
        "{report}"
    );
    assert_eq!(pipeline["patched"], 1, "{report}");
    assert!(
        report["scavenger_msh_units_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["scavenger_core_fraction"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
