//! `cargo bench -p msh-rewrite --bench scavenger_gaps`: what `msh rewrite --scavenger`
//! gives and costs on the shapes fixture (tight and nested loops, recursion, calls
//! through pointers, and libc calls unless `nolibc`), for N = 100, 200, 500, 1000 ns:
//! - the yield gaps `msh run --stats` measures (p50, p99, max; medians of RUNS runs)
//!   under libmsh with a pointer-chasing primary (budget 2 µs, so that a run holds
//!   several gaps), with and without the libc calls;
//! - the overhead of the checks alone: wall time of the rewritten object against the
//!   original under plain `dlopen` (no msh), interleaved, median of the ratios.

use msh_profile::stats::median;
use msh_rewrite::{rewrite, Options, Selection};
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const RUNS: usize = 5;

fn cc(args: &[&str]) {
    assert!(Command::new("cc").args(args).status().unwrap().success());
}

/// `msh-stats` gaps of one run: (p50, p99, max) in ns.
fn gaps(primary: &Path, pool: &Path) -> (f64, f64, f64) {
    let out = Command::new(primary)
        .args(["65536", "30000000"])
        .env("LD_PRELOAD", msh_tests::libmsh_so())
        .env("MSH_SCAV_POOL_PATH", pool)
        .env("MSH_STATS", "1")
        .env("MSH_BUDGET_NS", "2000")
        .env("MSH_EXIT_WAIT_MS", "60000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("msh-stats: "))
        .expect("msh-stats line");
    let stats: serde_json::Value = serde_json::from_str(line).unwrap();
    let s = &stats["scavengers"][0];
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    (f("gap_ns_p50"), f("gap_ns_p99"), f("gap_ns_max"))
}

/// Wall time the scavenger reports for itself under plain dlopen, ns.
fn alone(driver: &Path, object: &Path) -> f64 {
    let out = Command::new(driver)
        .arg(object)
        .args(["/dev/null", "200"])
        .env("SHAPES_TIME", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("shapes: elapsed_ns "))
        .expect("elapsed line")
        .trim()
        .parse()
        .unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shapes = d.join("shapes.so");
    let driver = d.join("plain_dlopen");
    let primary = d.join("primary");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    cc(&[
        "-O2",
        "-fPIC",
        "-shared",
        "-o",
        &s(&shapes),
        &format!("{FIXTURES}/shapes_scavenger.c"),
    ]);
    cc(&[
        "-O2",
        "-o",
        &s(&driver),
        &format!("{FIXTURES}/plain_dlopen.c"),
    ]);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    cc(&[
        "-O2",
        "-I",
        &format!("{root}/include"),
        "-o",
        &s(&primary),
        &format!("{root}/tests/c/primary.c"),
    ]);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("scavenger_gaps: load average {}", load.trim());
    let mut rewritten: Vec<(u64, PathBuf)> = Vec::new();
    for n in [100u64, 200, 500, 1000] {
        let out = d.join(format!("shapes.{n}.so"));
        rewrite(&Options {
            input: shapes.clone(),
            output: out.clone(),
            selection: Selection::Scavenger {
                every_ns: n,
                profile: None,
            },
            allow_call_windows: false,
        })
        .unwrap();
        rewritten.push((n, out));
    }
    for (n, object) in &rewritten {
        for libc in ["libc", "nolibc"] {
            let pool = d.join("pool.txt");
            std::fs::write(
                &pool,
                format!("{} /dev/null 100 {libc}\n", object.display()),
            )
            .unwrap();
            let (mut p50, mut p99, mut max) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let (a, b, c) = gaps(&primary, &pool);
                p50.push(a);
                p99.push(b);
                max.push(c);
            }
            let (p50, p99, max) = (median(&mut p50), median(&mut p99), median(&mut max));
            println!(
                "N={n:>4} {libc:>6}: gap_ns_p50 {p50:>6.0} p99 {p99:>6.0} ({:.2} N) max {max:>8.0} ({:.1} N)",
                p99 / *n as f64,
                max / *n as f64
            );
        }
    }
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); rewritten.len()];
    for _ in 0..(2 * RUNS + 1) {
        let base = alone(&driver, &shapes);
        for (i, (_, object)) in rewritten.iter().enumerate() {
            ratios[i].push(alone(&driver, object) / base);
        }
    }
    for (i, (n, _)) in rewritten.iter().enumerate() {
        println!(
            "N={n:>4}: checks alone (plain dlopen, no msh): {:.3}x the original's time",
            median(&mut ratios[i])
        );
    }
}
