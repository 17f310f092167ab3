//! `msh run` on unmodified programs: scavengers in every thread, the program's output
//! and exit status unchanged, and every bad pool failing open with one clear line.
use msh_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MSH: &str = env!("CARGO_BIN_EXE_msh");

/// The C examples and test scavengers, built once.
fn build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("attach");
        ensure_libmsh();
        let status = Command::new("make")
            .args(["-s", "-C"])
            .arg(repo_root().join("c-examples"))
            .arg(format!("BUILD={}", dir.display()))
            .arg(format!("LIBDIR={}", profile_dir().display()))
            .arg("SKIP_CARGO=1")
            .status()
            .expect("make");
        assert!(status.success(), "building the examples failed");
        build_fixtures(
            &dir,
            &["scav_noentry", "scav_failinit", "scav_globals"],
            &["threads"],
        );
        dir
    })
}

fn pool(name: &str, lines: &[String]) -> PathBuf {
    write_pool(&scratch("attach"), name, lines)
}

fn so(name: &str) -> String {
    build().join(name).display().to_string()
}

fn msh_run(pool: &Path, extra: &[&str], program: &[&str]) -> Output {
    let mut cmd = Command::new(MSH);
    cmd.arg("run").arg("--pool").arg(pool).args(extra).arg("--");
    cmd.arg(build().join(program[0])).args(&program[1..]);
    cmd.output().expect("msh run")
}

fn plain(program: &[&str]) -> Output {
    Command::new(build().join(program[0]))
        .args(&program[1..])
        .output()
        .expect("program")
}

fn checksum(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let at = stdout
        .find("checksum")
        .unwrap_or_else(|| panic!("no checksum in {stdout}"));
    stdout[at..].split([',', '\n']).next().unwrap().to_string()
}

/// The `msh-stats: {json}` line.
fn stats(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("msh-stats: "))
        .unwrap_or_else(|| panic!("no msh-stats line in: {stderr}"));
    serde_json::from_str(line).unwrap()
}

const CHASE: [&str; 7] = [
    "ptrchase_yield",
    "-m",
    "4",
    "-n",
    "200000",
    "--mode",
    "yield",
];

#[test]
fn a_program_not_linked_with_libmsh_harvests_under_msh_run() {
    let pool = pool(
        "harvest",
        &[
            format!("{} 50000   # msh's convention", so("compute_scav.so")),
            format!("{} 50000   # the MSH prototype's", so("compute_proto.so")),
        ],
    );
    let out = msh_run(&pool, &["--stats", "--scavengers-per-thread", "2"], &CHASE);
    assert_success(&out);
    assert_eq!(checksum(&out), checksum(&plain(&CHASE)));
    let stats = stats(&out);
    assert_eq!(stats["total"]["scavengers_completed"], 2, "{stats}");
    assert!(
        stats["total"]["switches"].as_u64().unwrap() > 1000,
        "{stats}"
    );
    assert!(
        stats["total"]["scavenger_yields"].as_u64().unwrap() >= 100_000,
        "{stats}"
    );
}

#[test]
fn every_thread_is_a_primary_and_the_exit_status_survives() {
    let lines: Vec<String> = (0..4)
        .map(|_| format!("{} 20000", so("compute_scav.so")))
        .collect();
    let pool = pool("threads", &lines);
    let out = msh_run(&pool, &["--stats"], &["threads"]);
    let expected = plain(&["threads"]);
    assert_eq!(expected.status.code(), Some(3));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, expected.stdout);
    let stats = stats(&out);
    assert_eq!(stats["total"]["scavengers_completed"], 4, "{stats}");
    // main + sleeper + 3 workers registered; the workers did the switching.
    assert!(stats["total"]["threads"].as_u64().unwrap() >= 5, "{stats}");
    // Every thread reported; which ones ran the scavengers depends on timing (blocked
    // threads lend theirs), but together they started and finished all four.
    let threads = stats["threads"].as_array().unwrap();
    assert!(threads.len() >= 5, "{stats}");
    let started: u64 = threads
        .iter()
        .map(|t| t["scavengers_started"].as_u64().unwrap())
        .sum();
    assert_eq!(started, 4, "{stats}");
}

#[test]
fn each_pool_line_gets_its_own_globals() {
    let pool = pool(
        "globals",
        &[
            format!("{} first", so("scav_globals.so")),
            format!("{} second", so("scav_globals.so")),
        ],
    );
    let out = msh_run(&pool, &[], &CHASE);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scav_globals first: instances=1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("scav_globals second: instances=1"),
        "{stderr}"
    );
}

#[test]
fn bad_pools_fail_open_with_one_line_naming_the_cause() {
    let program = ["ptrchase", "-m", "4", "-n", "100000"];
    let expected = checksum(&plain(&program));
    let missing_pool = scratch("attach").join("no-such.pool");
    let cases: Vec<(&str, PathBuf, String)> = vec![
        (
            "missing pool",
            missing_pool.clone(),
            format!("pool {}: No such file", missing_pool.display()),
        ),
        (
            "missing object",
            pool(
                "missing-so",
                &["# comment".into(), "/nonexistent/x.so".into()],
            ),
            "line 2: /nonexistent/x.so: no such file".into(),
        ),
        (
            "no entry point",
            pool("noentry", &[so("scav_noentry.so")]),
            "line 1:".to_string() + &format!(" {} has no entry point", so("scav_noentry.so")),
        ),
        (
            "init fails",
            pool("failinit", &[so("scav_failinit.so")]),
            "line 1: ".to_string()
                + &format!(
                    "{}: msh_scavenger_init failed with status 7",
                    so("scav_failinit.so")
                ),
        ),
        (
            "not an object",
            pool(
                "notso",
                &[pool("x", &["junk".into()]).display().to_string()],
            ),
            "line 1:".into(),
        ),
        (
            "unbalanced quotes",
            pool("quotes", &[format!("{} \"open", so("compute_scav.so"))]),
            "line 1: unbalanced quotes".into(),
        ),
        (
            "empty pool",
            pool("empty", &["# nothing here".into()]),
            "no scavengers to run; running without msh".into(),
        ),
    ];
    for (what, pool, message) in cases {
        let out = msh_run(&pool, &[], &program);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{what}: status {:?}: {stderr}",
            out.status
        );
        assert_eq!(
            checksum(&out),
            expected,
            "{what}: the program's output changed"
        );
        assert!(
            stderr.contains(&message),
            "{what}: expected {message:?} in: {stderr}"
        );
        assert!(
            stderr.lines().all(|l| l.starts_with("msh: ")),
            "{what}: {stderr}"
        );
        let strict = msh_run(&pool, &["--strict"], &program);
        assert_eq!(
            strict.status.code(),
            Some(2),
            "{what}: strict mode must fail"
        );
        assert!(
            strict.stdout.is_empty(),
            "{what}: strict mode ran the program"
        );
    }
}

#[test]
fn msh_run_names_what_it_cannot_run() {
    let pool = pool("ok", &[format!("{} 10", so("compute_scav.so"))]);
    let out = Command::new(MSH)
        .arg("run")
        .arg("--pool")
        .arg(&pool)
        .arg("--")
        .arg("/nonexistent/program")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(127),
        "a shell's status for 'not found'"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("msh: cannot run /nonexistent/program"),
        "{stderr}"
    );
}
