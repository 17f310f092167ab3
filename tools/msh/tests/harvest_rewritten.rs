//! `msh bench harvest --mode rewritten`: the plain ptrchase, rewritten at its chase
//! load, harvests under `msh run` and keeps its checksum (the bench refuses a mismatch).
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
            "--hops",
            "200000",
            "--mib",
            "8",
        ])
        .output()
        .expect("msh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["mode"], "rewritten");
    assert!(
        report["scavenger_msh_units_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["scavenger_core_fraction"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
