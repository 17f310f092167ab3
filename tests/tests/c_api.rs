//! The C API exercised from C (tests/c/api_test.c), against libmsh.a.
use msh_tests::*;
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
fn a_scavenger_that_overflows_its_stack_is_named_and_stopped() {
    let exe = build_api_test();
    let out = run(exe, &["overflow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}, stdout: {stdout}, stderr: {stderr}",
        out.status
    );
    assert!(stdout.contains("primary ran on"), "{stdout}");
    assert!(
        stderr.contains("msh: scavenger deep: SIGSEGV at 0x")
            && stderr.contains(
                "overflowed its stack (16 KiB; give scavengers a larger stack size); scavenger stopped"
            ),
        "stderr: {stderr}"
    );
}

#[test]
fn faulting_exiting_and_spinning_scavengers_are_stopped_through_the_c_api() {
    let exe = build_api_test();
    let out = run(exe, &["contain"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}, stderr: {stderr}"
    );
    assert!(
        stdout.contains("primary ran on: stopped 3, preempted 1"),
        "{stdout}"
    );
    for expected in [
        "msh: scavenger segfaults: SIGSEGV at 0x",
        "msh: scavenger exits: called exit(7); scavenger stopped",
        "msh: scavenger spins: did not yield for 10 ms of CPU time (preempted by the watchdog); scavenger stopped",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
}

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
