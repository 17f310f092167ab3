//! `cargo bench -p msh-rewrite`: what rewriting costs, measured against the original
//! binary in the same run (medians).
//! - ns per hit of a patched site when no scavenger is attached (the no-op path:
//!   jump to the trampoline, prefetch, `cmpq $0,%fs:0x38`, displaced load, jump back);
//! - the wall-time ratio of sqlite3 rewritten with --all-loads (every load patched) on
//!   the test workload, no scavenger;
//! - tool speed: seconds to rewrite libsqlite3 and sqlite3 with --all-loads.

use msh_profile::stats::median;
use msh_rewrite::{rewrite, Options, Report, Selection};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const RUNS: usize = 7;

fn time_run(program: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&Path>) -> f64 {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    if let Some(input) = stdin {
        cmd.stdin(std::fs::File::open(input).unwrap());
    }
    let start = Instant::now();
    let status = cmd.status().unwrap();
    assert!(status.success());
    start.elapsed().as_secs_f64()
}

fn all_loads(input: &Path, output: &Path) -> Report {
    rewrite(&Options {
        input: input.into(),
        output: output.into(),
        selection: Selection::AllLoads,
        allow_call_windows: false,
    })
    .unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1. A single patched site, hit N times.
    let exe = d.join("hotloop");
    let status = Command::new("cc")
        .args([
            "-O2",
            "-o",
            exe.to_str().unwrap(),
            &format!("{FIXTURES}/hotloop.c"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let report = all_loads(&exe, &d.join("scratch"));
    let site = report
        .sites
        .iter()
        .find(|s| s.symbol.as_deref().is_some_and(|n| n.starts_with("hot+")))
        .expect("the loop's load");
    let profile = d.join("profile.json");
    std::fs::write(
        &profile,
        format!(
            r#"{{"version":1,"backend":"bench","objects":[{{"path":"hotloop","build_id":"{}","sites":[{{"offset":"{}","share":1.0}}]}}]}}"#,
            report.build_id, site.offset
        ),
    )
    .unwrap();
    let patched = d.join("hotloop.msh");
    let one = rewrite(&Options {
        input: exe.clone(),
        output: patched.clone(),
        selection: Selection::Profile {
            path: profile,
            min_share: None,
            top: None,
        },
        allow_call_windows: false,
    })
    .unwrap();
    assert_eq!(one.patched, 1);
    let n: u64 = 200_000_000;
    let arg = n.to_string();
    let (mut base, mut with) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(time_run(&exe, &[&arg], &[], None));
        with.push(time_run(&patched, &[&arg], &[], None));
    }
    let (b, w) = (median(&mut base), median(&mut with));
    let ns_per_hit = (w - b) * 1e9 / n as f64;
    println!("patched site, no scavenger: original {b:.3} s, rewritten {w:.3} s for {n} hits: {ns_per_hit:.2} ns per hit (ratio {:.3})", w / b);

    // 2. sqlite3 with every load patched, no scavenger.
    let lib_dir = d.join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let sqlite = Path::new("/usr/bin/sqlite3");
    let lib = Path::new("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0");
    let mut tool_lib = Vec::new();
    let mut tool_shell = Vec::new();
    let shell = d.join("sqlite3.msh");
    let mut lib_report = None;
    for _ in 0..3 {
        let t = Instant::now();
        lib_report = Some(all_loads(lib, &lib_dir.join("libsqlite3.so.0")));
        tool_lib.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        all_loads(sqlite, &shell);
        tool_shell.push(t.elapsed().as_secs_f64());
    }
    let lib_report = lib_report.unwrap();
    // The test workload, scaled up so that query time dominates start-up.
    let script = d.join("workload.sql");
    let sql = std::fs::read_to_string(format!("{FIXTURES}/workload.sql")).unwrap();
    std::fs::write(
        &script,
        sql.replace("i < 400", "i < 4000")
            .replace("i < 2500", "i < 60000")
            .replace("% 400", "% 4000"),
    )
    .unwrap();
    let env = [("LD_LIBRARY_PATH", lib_dir.to_str().unwrap())];
    let (mut base, mut with) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(time_run(sqlite, &[":memory:"], &[], Some(&script)));
        with.push(time_run(&shell, &[":memory:"], &env, Some(&script)));
    }
    let (b, w) = (median(&mut base), median(&mut with));
    println!("sqlite3 workload, all loads patched, no scavenger: original {b:.3} s, rewritten {w:.3} s (ratio {:.2})", w / b);
    println!(
        "tool speed: libsqlite3 --all-loads {:.2} s ({} sites, {} trampoline bytes), sqlite3 --all-loads {:.2} s",
        median(&mut tool_lib),
        lib_report.patched,
        lib_report.trampoline_bytes,
        median(&mut tool_shell)
    );
}
