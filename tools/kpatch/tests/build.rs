//! The committed example patches (kept equal to the tool's output by
//! `committed_examples_are_what_the_tool_generates`) compile: every object
//! they touch, plus includers of <linux/mmap_lock.h>, under x86_64_defconfig.
//! Needs gcc, make, flex, bison, bc, libelf-dev (installed by .ci/run).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn example_patches_compile_under_x86_64_defconfig() {
    common::kernel_tree();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg("kernel-patches/check-build.sh")
        .args([
            "kernel-patches/files_struct-file_lock.patch",
            "kernel-patches/mm_struct-mmap_lock.patch",
        ])
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
