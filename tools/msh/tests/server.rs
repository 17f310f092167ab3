//! Servers under load: idle harvesting keeps the meaning of waiting calls, and
//! `msh bench server` measures every configuration with checked answers.
use msh_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MSH: &str = env!("CARGO_BIN_EXE_msh");

/// The waiting fixture and the compute scavenger, built once.
fn build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let scavenger = format!("{}/compute_scav.so", scratch("server").display());
        let dir = make_examples("server", &[&scavenger]);
        cc(
            &[repo_root().join("tests/c/idle_wait.c")],
            &dir.join("idle_wait"),
            &[],
        );
        std::fs::write(
            dir.join("compute.pool"),
            format!("{}/compute_scav.so\n", dir.display()),
        )
        .unwrap();
        dir
    })
}

/// One wait of the fixture: the call, the case, its result, ms, scavenger units.
type Wait = (String, String, i64, f64, u64);

/// Runs the fixture under `msh run` (with `extra` options); returns its lines and
/// the compute units its scavengers did.
fn run_waits(name: &str, extra: &[&str]) -> (Vec<Wait>, u64) {
    let dir = build();
    let counter = dir.join(format!("{name}.units"));
    std::fs::write(&counter, 0u64.to_le_bytes()).unwrap();
    let out = Command::new(MSH)
        .arg("run")
        .arg("--pool")
        .arg(dir.join("compute.pool"))
        .args(["--abandon-at-exit", "--strict"])
        .args(extra)
        .arg("--")
        .arg(dir.join("idle_wait"))
        .env("COMPUTE_COUNTER", &counter)
        .output()
        .unwrap();
    assert_success(&out);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    let units = u64::from_le_bytes(std::fs::read(&counter).unwrap()[..8].try_into().unwrap());
    (lines, units)
}

#[test]
fn waiting_calls_keep_their_meaning_while_idle_time_is_harvested() {
    let (plain, plain_units) = run_waits("plain", &[]);
    let (idle, idle_units) = run_waits("idle", &["--harvest-idle"]);
    // Nothing in the fixture yields: scavengers run only while it waits, if asked.
    assert_eq!(plain_units, 0, "scavengers ran without --harvest-idle");
    assert!(idle_units > 0, "no scavenger ran while the primary waited");
    for lines in [&plain, &idle] {
        assert_eq!(lines.len(), 10, "{lines:?}");
        for (call, case, result, elapsed_ms, _) in lines.iter() {
            match case.as_str() {
                // Nothing ready: 0 after the whole 200 ms timeout (bounded above only
                // loosely: the machine may be busy).
                "timeout" => assert!(
                    *result == 0 && (195.0..3000.0).contains(elapsed_ms),
                    "{call} {case} {result} {elapsed_ms}"
                ),
                // Ready after ~50 ms: the one descriptor, long before the 5 s timeout.
                "ready" => assert!(
                    *result == 1 && *elapsed_ms < 2500.0,
                    "{call} {case} {result} {elapsed_ms}"
                ),
                other => panic!("unexpected line {other}"),
            }
        }
    }
    // Every call harvested: 200 ms of waiting is millions of units, far above one
    // batch of the counter even on a busy machine.
    for (call, case, _, _, units) in idle.iter().filter(|w| w.1 == "timeout") {
        assert!(
            *units > 0,
            "{call} {case}: no scavenger ran while it waited"
        );
    }
}

#[test]
fn bench_server_measures_every_configuration_of_memcached() {
    build();
    let out = Command::new(MSH)
        .args([
            "bench",
            "server",
            "--server",
            "memcached",
            "--dataset-mib",
            "8",
            "--seconds",
            "0.5",
        ])
        .args(["--runs", "1", "--json"])
        .output()
        .unwrap();
    let report = json_report(&out);
    let capacity = report["capacity_rps"].as_f64().unwrap();
    let offered = report["offered_rps"].as_f64().unwrap();
    assert!(
        capacity > 0.0 && (offered - capacity / 2.0).abs() < 1.0,
        "{report}"
    );
    let configs = report["configs"].as_array().unwrap();
    let names: Vec<&str> = configs
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let rewritten = !report["rewrite"].is_null();
    if rewritten {
        assert!(
            report["rewrite"]["patched"].as_u64().unwrap() >= 1,
            "{report}"
        );
        assert_eq!(
            names,
            ["alone", "os_thread", "sched_idle", "msh", "msh_idle"]
        );
    } else {
        // A profile with no delinquent load is reported, never hidden.
        assert!(
            report["notes"]
                .to_string()
                .contains("msh configurations skipped"),
            "{report}"
        );
        assert_eq!(names, ["alone", "os_thread", "sched_idle"]);
    }
    let fraction = |name: &str| {
        configs
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["scavenger_core_fraction"].as_f64().unwrap())
    };
    for config in configs {
        // Every answer was checked; each request due in the window was answered.
        assert!(config["achieved_rps"].as_f64().unwrap() > 0.0, "{config}");
        let (p50, p99, p999) = (
            config["p50_us"].as_f64().unwrap(),
            config["p99_us"].as_f64().unwrap(),
            config["p999_us"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{config}");
    }
    assert_eq!(fraction("alone"), Some(0.0));
    // An ordinary process beside the server always gets some of the CPU.
    assert!(fraction("os_thread").unwrap() > 0.0, "{report}");
    if rewritten {
        // The server waits for requests half the time: its scavengers run then.
        assert!(fraction("msh_idle").unwrap() > 0.0, "{report}");
    }
}
