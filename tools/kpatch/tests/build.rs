//! The committed example patches (kept equal to the tool's output by
//! `committed_examples_are_what_the_tool_generates`) compile: every object
//! they touch, plus includers of <linux/mmap_lock.h>, under x86_64_defconfig.
//! Needs gcc, make, flex, bison, bc, libelf-dev (installed by .ci/run).

mod common;

use std::path::Path;
use std::process::Command;

/// Runs check-build.sh on `args`; panics with the build log's tail.
fn check_build(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg("kernel-patches/check-build.sh")
        .args(args)
        .current_dir(&root)
        .output()
        .expect("bash runs");
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kernel build failed:\n{}",
        &log[log.len().saturating_sub(4000)..]
    );
    assert!(!log.contains("warning:"), "the build warns:\n{log:.4000}");
}

#[test]
fn example_patches_compile_under_x86_64_defconfig() {
    common::kernel_tree();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    check_build(&[
        "kernel-patches/files_struct-file_lock.patch",
        "kernel-patches/mm_struct-mmap_lock.patch",
    ]);
    workload_patches_compile_under_x86_64_defconfig();
    for object in [
        "fs/file.o",
        "kernel/locking/spinlock.o",
        "kernel/locking/rwsem.o",
        "mm/mmap.o",
    ] {
        assert!(
            root.join("target/kbuild-out").join(object).is_file(),
            "{object} was not built"
        );
    }
}

/// The workloads' other locks, one patch at a time (each spinlock patch
/// creates the same header): signal1's siglock, fallocate1's xa_lock, and
/// the livepatch form of file_lock (dup1, open1, open2). Called from the one
/// test above: the builds share target/kbuild-src and target/kbuild-out.
fn workload_patches_compile_under_x86_64_defconfig() {
    check_build(&[
        "kernel-patches/sighand_struct-siglock.patch",
        "--",
        "kernel/exit.o",
    ]);
    check_build(&[
        "kernel-patches/xarray-xa_lock.patch",
        "--",
        "lib/xarray.o",
        "mm/filemap.o",
        "mm/shmem.o",
    ]);
    check_build(&[
        "kernel-patches/files_struct-file_lock.livepatch.patch",
        "--",
    ]);
    livepatch_forms_compile_under_x86_64_defconfig();
}

/// The `--livepatch` forms of mmap_lock (mmap1), siglock (signal1) and
/// xa_lock (fallocate1), generated here (xa_lock's is 2 MB: not committed),
/// each through check-build-livepatch.sh: every x86-buildable object the
/// patch touches compiles with it, or fails without it too (not buildable
/// standalone in x86_64_defconfig; at most a third of them).
fn livepatch_forms_compile_under_x86_64_defconfig() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (api, field) in [
        ("down_write", "mm_struct.mmap_lock"),
        ("spin_lock", "sighand_struct.siglock"),
        ("spin_lock", "xarray.xa_lock"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("livepatch.patch");
        let mut options = common::options(common::lock(api, field), &out);
        options.livepatch = true;
        msh_kpatch::run(&options).unwrap_or_else(|e| panic!("{field}: {e}"));
        let output = Command::new("bash")
            .arg("kernel-patches/check-build-livepatch.sh")
            .arg(&out)
            .current_dir(&root)
            .output()
            .expect("bash runs");
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{field}: {log}");
        // "check-build-livepatch: BUILT of TOTAL objects compiled ...; UNBUILDABLE do not ..."
        let numbers: Vec<usize> = log
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .take(3)
            .collect();
        let [built, total, unbuildable] = numbers[..] else {
            panic!("{field}: unexpected summary: {log}")
        };
        assert!(total > 0 && built + unbuildable == total, "{field}: {log}");
        assert!(unbuildable * 3 <= total, "{field}: {log}");
    }
}
