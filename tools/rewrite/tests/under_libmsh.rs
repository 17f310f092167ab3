//! Rewritten programs under the real runtime: libmsh.so preloaded as `msh run` does,
//! with a pool of scavengers (the bundled compute scavenger, and one that overwrites
//! registers before each yield). Outputs must not change, and switches must happen.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// `target/<profile>/libmsh.so`, built for this profile if need be.
fn libmsh() -> PathBuf {
    msh_tests::libmsh_so()
}

fn include_dir() -> String {
    format!("{}/../../include", env!("CARGO_MANIFEST_DIR"))
}

fn scavenger_pool(dir: &Path) -> PathBuf {
    let compute = dir.join("compute.so");
    let source = format!("{}/../../c-examples/compute.c", env!("CARGO_MANIFEST_DIR"));
    cc(&[
        "-O2",
        "-fPIC",
        "-shared",
        "-DCOMPUTE_SCAVENGER_SO",
        "-I",
        &include_dir(),
        "-o",
        compute.to_str().unwrap(),
        &source,
    ]);
    let scramble = dir.join("scramble.so");
    let source = format!("{FIXTURES}/scramble_scavenger.c");
    cc(&[
        "-O2",
        "-fPIC",
        "-shared",
        "-I",
        &include_dir(),
        "-o",
        scramble.to_str().unwrap(),
        &source,
    ]);
    let pool = dir.join("pool.txt");
    std::fs::write(
        &pool,
        format!(
            "# rewritten-binary tests\n{} 100000000\n{} 100000000\n",
            scramble.display(),
            compute.display()
        ),
    )
    .unwrap();
    pool
}

fn run_with_libmsh(program: &Path, args: &[&str], pool: &Path) -> (Vec<u8>, u64) {
    let lib = libmsh();
    let out = std::process::Command::new(program)
        .args(args)
        .env("LD_PRELOAD", &lib)
        .env("MSH_SCAV_POOL_PATH", pool)
        .env("MSH_STATS", "1")
        .env("MSH_STRICT", "1")
        .env("MSH_AT_EXIT", "abandon")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stats = stderr
        .lines()
        .find_map(|l| l.strip_prefix("msh-stats: "))
        .expect("msh-stats line");
    let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
    let switches = stats
        .pointer("/total/switches")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    (out.stdout, switches)
}

#[test]
fn kitchen_and_gzip_with_real_scavengers() {
    let dir = tempfile::tempdir().unwrap();
    let pool = scavenger_pool(dir.path());

    let kitchen = build(dir.path(), "kitchen.c", "kitchen", &["-O2"]);
    let kitchen_msh = dir.path().join("kitchen.msh");
    rewrite_all_loads(&kitchen, &kitchen_msh);
    let expected = run(&kitchen, &[], &[], None, None).stdout;
    let (stdout, switches) = run_with_libmsh(&kitchen_msh, &[], &pool);
    assert_eq!(stdout, expected);
    assert!(
        switches > 1000,
        "rewritten kitchen switched {switches} times"
    );

    let gzip_msh = dir.path().join("gzip.msh");
    rewrite_all_loads(Path::new("/usr/bin/gzip"), &gzip_msh);
    let input = format!("{FIXTURES}/kitchen.c");
    let expected = run(
        Path::new("/usr/bin/gzip"),
        &["-9", "-c", &input],
        &[],
        None,
        None,
    )
    .stdout;
    let (stdout, switches) = run_with_libmsh(&gzip_msh, &["-9", "-c", &input], &pool);
    assert_eq!(stdout, expected);
    assert!(switches > 1000, "rewritten gzip switched {switches} times");
}

#[test]
fn scavenger_running_rewritten_code_does_not_yield() {
    let dir = tempfile::tempdir().unwrap();
    let Kitchen {
        lib,
        exe,
        lib_dir,
        msh_dir,
    } = kitchen_library(dir.path());
    rewrite_all_loads(&lib, &msh_dir.join("libkitchen.so"));
    let scavenger = dir.path().join("kitchen_scavenger.so");
    cc(&[
        "-O2",
        "-fPIC",
        "-shared",
        "-I",
        &include_dir(),
        "-o",
        scavenger.to_str().unwrap(),
        &format!("{FIXTURES}/kitchen_scavenger.c"),
        "-L",
        lib_dir.to_str().unwrap(),
        "-lkitchen",
    ]);
    let pool = dir.path().join("pool.txt");
    std::fs::write(&pool, format!("{} 1000000\n", scavenger.display())).unwrap();

    let expected = run(
        &exe,
        &[],
        &[("LD_LIBRARY_PATH", lib_dir.to_str().unwrap())],
        None,
        None,
    )
    .stdout;
    let out = std::process::Command::new(&exe)
        .env("LD_LIBRARY_PATH", &msh_dir)
        .env("LD_PRELOAD", libmsh())
        .env("MSH_SCAV_POOL_PATH", &pool)
        .env("MSH_STATS", "1")
        .env("MSH_STRICT", "1")
        .env("MSH_AT_EXIT", "abandon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, expected);
    let stats = stderr
        .lines()
        .find_map(|l| l.strip_prefix("msh-stats: "))
        .expect("msh-stats line");
    let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
    assert!(
        stats["total"]["switches"].as_u64().unwrap() > 100,
        "{stats}"
    );
    assert!(
        stats["total"]["scavenger_yields"].as_u64().unwrap() > 100,
        "{stats}"
    );
}
