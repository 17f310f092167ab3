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
}
