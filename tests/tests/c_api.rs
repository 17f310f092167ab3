//! The C API exercised from C (tests/c/api_test.c), against libmsh.a.
use msh_tests::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn build_api_test() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let exe = scratch("c_api").join("api_test");
        cc_with_libmsh(&[repo_root().join("tests/c/api_test.c")], &exe, &[]);
        exe
    })
}

#[test]
fn the_c_api_keeps_its_contract() {
    let exe = build_api_test();
    let out = run(exe, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "api_test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok - every scavenger ran to its end"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("0 failed"), "{stdout}");
}

#[test]
fn a_scavenger_that_overflows_its_stack_is_named_and_aborts() {
    let exe = build_api_test();
    let out = run(exe, &["overflow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("msh: scavenger 'deep' overflowed its stack (16 KiB)"),
        "stderr: {stderr}"
    );
}

const SIGABRT: i32 = 6;

#[test]
fn errno_and_the_rounding_mode_travel_with_each_side_of_a_switch() {
    let exe = scratch("c_api").join("errno_test");
    cc_with_libmsh(&[repo_root().join("tests/c/errno_test.c")], &exe, &["-lm"]);
    let out = run(&exe, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "errno_test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("0 failed"), "{stdout}");
}
