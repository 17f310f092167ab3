//! Rewritten C fixtures behave exactly like the originals: with no scavenger (the
//! no-op path) and under a scavenger that scrambles every register at every yield.

mod common;
use common::*;

fn check_variant(flags: &[&str], strip: bool) {
    let dir = tempfile::tempdir().unwrap();
    let original = build(dir.path(), "kitchen.c", "kitchen", flags);
    if strip {
        let status = std::process::Command::new("strip")
            .arg("-s")
            .arg(&original)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let rewritten = dir.path().join("kitchen.msh");
    let report = rewrite_all_loads(&original, &rewritten);
    assert!(
        coverage(&report) >= 0.8,
        "{flags:?}: coverage {}/{}: {:?}",
        report.patched,
        report.candidates,
        report.skipped
    );

    let scrambler = scrambler(dir.path());
    let expected = run(&original, &[], &[], None, None);
    assert_eq!(expected.status, 0);
    let plain = run(&rewritten, &[], &[], None, None);
    assert_eq!(
        plain.stdout, expected.stdout,
        "{flags:?}: no-op path changed the output"
    );
    let scrambled = run(&rewritten, &[], &[], None, Some(&scrambler));
    assert!(
        scrambled.yields > 10_000,
        "{flags:?}: only {} yields reached the scavenger",
        scrambled.yields
    );
    assert_eq!(
        scrambled.stdout, expected.stdout,
        "{flags:?}: output changed under the scrambling scavenger"
    );
    assert_eq!(scrambled.status, 0);
}

#[test]
fn pie_o2() {
    check_variant(&["-O2"], false);
}

#[test]
fn non_pie() {
    check_variant(&["-O2", "-no-pie", "-fno-pie"], false);
}

#[test]
fn unoptimised() {
    check_variant(&["-O0"], false);
}

#[test]
fn avx2_saves_ymm() {
    let dir = tempfile::tempdir().unwrap();
    let original = build(dir.path(), "kitchen.c", "kitchen", &["-O3", "-mavx2"]);
    let report = rewrite_all_loads(&original, &dir.path().join("k.msh"));
    assert_eq!(
        report.vector_width, 32,
        "ymm in use: vector registers are saved at 32 bytes"
    );
    check_variant(&["-O3", "-mavx2"], false);
}

#[test]
fn cet_endbr64_binary() {
    let dir = tempfile::tempdir().unwrap();
    let original = build(
        dir.path(),
        "kitchen.c",
        "kitchen",
        &["-O2", "-fcf-protection=full"],
    );
    let rewritten = dir.path().join("k.msh");
    rewrite_all_loads(&original, &rewritten);
    // No endbr64 of the original may be overwritten.
    let before = std::fs::read(&original).unwrap();
    let after = std::fs::read(&rewritten).unwrap();
    let endbr = [0xf3, 0x0f, 0x1e, 0xfa];
    let count = |d: &[u8]| d.windows(4).filter(|w| *w == endbr).count();
    assert!(count(&before) > 5);
    let kept = before
        .windows(4)
        .enumerate()
        .filter(|(i, w)| *w == endbr && after[*i..*i + 4] == endbr)
        .count();
    assert_eq!(kept, count(&before));
    check_variant(&["-O2", "-fcf-protection=full"], false);
}

#[test]
fn stripped_binary_uses_eh_frame_bounds() {
    check_variant(&["-O2"], true);
}

#[test]
fn shared_object() {
    let dir = tempfile::tempdir().unwrap();
    let Kitchen {
        lib,
        exe,
        lib_dir,
        msh_dir,
    } = kitchen_library(dir.path());
    let report = rewrite_all_loads(&lib, &msh_dir.join("libkitchen.so"));
    assert!(coverage(&report) >= 0.8, "{:?}", report.skipped);

    let scrambler = scrambler(dir.path());
    let original = run(
        &exe,
        &[],
        &[("LD_LIBRARY_PATH", lib_dir.to_str().unwrap())],
        None,
        None,
    );
    let env = [("LD_LIBRARY_PATH", msh_dir.to_str().unwrap())];
    assert_eq!(run(&exe, &[], &env, None, None).stdout, original.stdout);
    let scrambled = run(&exe, &[], &env, None, Some(&scrambler));
    assert!(scrambled.yields > 10_000);
    assert_eq!(scrambled.stdout, original.stdout);
}
