//! `cargo bench -p msh-rewrite --bench harvest_rewritten`: the harvest of the plain
//! ptrchase (built with no msh source change, `--mode alone`) rewritten at its chase
//! load, run with libmsh.so preloaded (as `msh run` does) and the compute scavenger.
//! Same fields as `msh bench harvest --json`, mode "rewritten"; medians of per-run
//! ratios, all runs interleaved. Also the cost of the patched site with no scavenger.
//!
//! No profiler output is needed: the site is the first load of `chase` (the one that
//! misses), found in the rewriter's own --all-loads report and written as a
//! one-site version-1 profile, which then goes through `--profile` like any other.
//!
//! Environment: HARVEST_RUNS (default 5), HARVEST_HOPS (default 2000000), HARVEST_MIB (64).

use msh_rewrite::{rewrite, Options, Selection};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cc(args: &[&str]) {
    let ok = Command::new("cc").args(args).status().unwrap().success();
    assert!(ok, "cc {args:?}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Deserialize)]
struct Chase {
    elapsed_ns: f64,
    checksum: u64,
}

fn run_line<T: for<'de> Deserialize<'de>>(cmd: &mut Command, prefix: &str) -> (T, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"));
    (serde_json::from_str(line).unwrap(), stderr)
}

fn libmsh() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let lib = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("libmsh.so");
    assert!(
        lib.exists(),
        "{} is missing: cargo build --release -p msh-ffi",
        lib.display()
    );
    lib
}

fn main() {
    let runs = env_or("HARVEST_RUNS", 5) as usize;
    let hops = env_or("HARVEST_HOPS", 2_000_000);
    let mib = env_or("HARVEST_MIB", 64);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let include = format!("-I{ROOT}/include");
    let (ptrchase_c, compute_c) = (
        format!("{ROOT}/c-examples/ptrchase.c"),
        format!("{ROOT}/c-examples/compute.c"),
    );
    let ptrchase = d.join("ptrchase");
    cc(&[
        "-O2",
        "-g",
        &include,
        &ptrchase_c,
        &compute_c,
        "-o",
        &s(&ptrchase),
        "-lpthread",
    ]);
    let compute = d.join("compute");
    cc(&[
        "-O2",
        &include,
        "-DCOMPUTE_MAIN",
        &compute_c,
        "-o",
        &s(&compute),
    ]);
    let compute_so = d.join("compute_scav.so");
    cc(&[
        "-O2",
        &include,
        "-fPIC",
        "-shared",
        "-DCOMPUTE_SCAVENGER_SO",
        &compute_c,
        "-o",
        &s(&compute_so),
    ]);
    let pool = d.join("pool.txt");
    std::fs::write(&pool, format!("{}\n", compute_so.display())).unwrap();

    // The site: the first load of `chase`.
    let scratch = rewrite(&Options {
        input: ptrchase.clone(),
        output: d.join("scratch"),
        selection: Selection::AllLoads,
        allow_call_windows: false,
    })
    .unwrap();
    let site = scratch
        .sites
        .iter()
        .filter(|x| x.symbol.as_deref().is_some_and(|n| n.starts_with("chase+")))
        .min_by_key(|x| x.offset.clone())
        .expect("a load in chase");
    let profile = d.join("ptrchase.profile.json");
    std::fs::write(
        &profile,
        format!(
            r#"{{"version":1,"backend":"bench","objects":[{{"path":"ptrchase","build_id":"{}","sites":[{{"offset":"{}","symbol":"{}","share":1.0}}]}}]}}"#,
            scratch.build_id,
            site.offset,
            site.symbol.as_deref().unwrap()
        ),
    )
    .unwrap();
    let rewritten = d.join("ptrchase.msh");
    let report = rewrite(&Options {
        input: ptrchase.clone(),
        output: rewritten.clone(),
        selection: Selection::Profile {
            path: profile,
            min_share: None,
            top: None,
        },
        allow_call_windows: false,
    })
    .unwrap();
    eprintln!(
        "patched {} ({}), saves [{}]",
        site.offset,
        site.symbol.as_deref().unwrap(),
        report.sites[0].saved
    );

    let args = [
        "-m".to_string(),
        mib.to_string(),
        "-n".to_string(),
        hops.to_string(),
        "--mode".to_string(),
        "alone".to_string(),
    ];
    let lib = libmsh();
    let (
        mut slowdown,
        mut fraction,
        mut noop_ns,
        mut alone_v,
        mut msh_v,
        mut scav_alone,
        mut scav_msh,
    ) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..runs {
        #[derive(Deserialize)]
        struct Compute {
            units_per_s: f64,
        }
        let (c, _): (Compute, _) =
            run_line(Command::new(&compute).args(["-t", "0.3"]), "compute: ");
        let (alone, _): (Chase, _) = run_line(Command::new(&ptrchase).args(&args), "ptrchase: ");
        let (noop, _): (Chase, _) = run_line(Command::new(&rewritten).args(&args), "ptrchase: ");
        let (with, stderr): (Chase, _) = run_line(
            Command::new(&rewritten)
                .args(&args)
                .env("LD_PRELOAD", &lib)
                .env("MSH_SCAV_POOL_PATH", &pool)
                .env("MSH_STATS", "1")
                .env("MSH_AT_EXIT", "abandon"),
            "ptrchase: ",
        );
        assert_eq!(
            with.checksum, alone.checksum,
            "the rewritten chase computed another checksum"
        );
        assert_eq!(noop.checksum, alone.checksum);
        let stats = stderr
            .lines()
            .find_map(|l| l.strip_prefix("msh-stats: "))
            .expect("msh-stats");
        let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
        let yields = stats["total"]["scavenger_yields"].as_f64().unwrap();
        let units_per_s = yields / (with.elapsed_ns / 1e9);
        slowdown.push(with.elapsed_ns / alone.elapsed_ns - 1.0);
        fraction.push(units_per_s / c.units_per_s);
        noop_ns.push((noop.elapsed_ns - alone.elapsed_ns) / hops as f64);
        alone_v.push(alone.elapsed_ns);
        msh_v.push(with.elapsed_ns);
        scav_alone.push(c.units_per_s);
        scav_msh.push(units_per_s);
    }
    let (a, m) = (median(alone_v), median(msh_v));
    let json = serde_json::json!({
        "mode": "rewritten",
        "mib": mib, "hops": hops, "runs": runs,
        "primary_alone_ns": a, "primary_msh_ns": m,
        "primary_slowdown": median(slowdown),
        "ns_per_hop_alone": a / hops as f64, "ns_per_hop_msh": m / hops as f64,
        "scavenger_alone_units_per_s": median(scav_alone),
        "scavenger_msh_units_per_s": median(scav_msh),
        "scavenger_core_fraction": median(fraction),
        "noop_ns_per_hit": median(noop_ns),
        "saved_registers": report.sites[0].saved,
    });
    println!("{json}");
}
