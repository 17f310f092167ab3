//! From a real `perf script` capture to the lock, and the bad inputs that
//! must fail with one line and write nothing.
//!
//! The fixtures were recorded on this project's build machine (Linux 6.18)
//! with `perf record -g -e cpu-clock` around threads that open/close files
//! (files_struct.file_lock) or mmap/munmap (mm_struct.mmap_lock); see
//! tests/fixtures/README.md. Some 6.18 functions do not exist in 6.1: the
//! run notes them and decides on the others.

mod common;

use common::*;
use msh_kpatch::{Error, Selection};
use std::path::Path;

fn profile(name: &str) -> Selection {
    Selection::Profile {
        script: fixture(name),
        lock: None,
        field: None,
    }
}

/// Runs with `out` pre-filled; asserts the error and that `out` is untouched.
fn fails(selection: Selection, kernel: Option<&Path>) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.patch");
    std::fs::write(&out, "previous contents\n").unwrap();
    let mut options = options(selection, &out);
    if let Some(kernel) = kernel {
        options.kernel = kernel.to_owned();
    }
    options.emit_cocci = Some(dir.path().join("cocci"));
    let err = msh_kpatch::run(&options).err().expect("the run must fail");
    let message = err.to_string();
    assert!(
        !message.contains('\n') && !message.is_empty(),
        "one line: {message}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "previous contents\n",
        "output untouched"
    );
    assert!(
        !dir.path().join("cocci").exists(),
        "no semantic patch written"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    err
}

#[test]
fn open_close_profile_selects_files_struct_file_lock() {
    let generated = generate(profile("perf-open-close.txt"));
    let report = &generated.report;
    assert_eq!(
        (
            report.family.key,
            report.structure.as_str(),
            report.field.as_str()
        ),
        ("spinlock", "files_struct", "file_lock")
    );
    let inference = report.inference.as_ref().unwrap();
    assert!(inference.candidates[0]
        .callers
        .contains(&"alloc_fd".to_owned()));
    // chrdev_open takes the global cdev_lock: no field, noted, not a candidate.
    assert!(
        inference.notes.iter().any(|n| n.starts_with("chrdev_open")),
        "{:?}",
        inference.notes
    );
    assert!(generated
        .patch
        .contains("+\tbpf_policy_spin_lock(&files->file_lock, &files_struct_file_lock_policy);"));
}

#[test]
fn mmap_profile_selects_mm_struct_mmap_lock_through_the_inline_wrappers() {
    let generated = generate(profile("perf-mmap-munmap.txt"));
    let report = &generated.report;
    assert_eq!(
        (
            report.family.key,
            report.structure.as_str(),
            report.field.as_str()
        ),
        ("rwsem_write", "mm_struct", "mmap_lock")
    );
    // vm_mmap_pgoff calls mmap_write_lock_killable(mm), which calls down_write_killable(&mm->mmap_lock).
    let top = &report.inference.as_ref().unwrap().candidates[0];
    assert!(
        top.callers.contains(&"vm_mmap_pgoff".to_owned()),
        "{:?}",
        top.callers
    );
    assert!(generated.patch.contains(
        "ret = bpf_policy_down_write_killable(&mm->mmap_lock, &mm_struct_mmap_lock_policy);"
    ));
}

#[test]
fn profile_without_lock_frames_is_refused() {
    let err = fails(profile("perf-no-lock-frames.txt"), None);
    assert!(matches!(err, Error::NoLockFrames(..)), "{err}");
}

#[test]
fn text_that_is_not_perf_script_is_refused() {
    let err = fails(
        Selection::Profile {
            script: fixture("README.md"),
            lock: None,
            field: None,
        },
        None,
    );
    assert!(matches!(err, Error::PerfScript(..)), "{err}");
}

#[test]
fn a_field_that_is_never_locked_is_refused() {
    let err = fails(lock("spin_lock", "no_such_field_kpatch"), None);
    assert!(matches!(err, Error::FieldNeverLocked(..)), "{err}");
    // Declared, but a spinlock is not an rwsem.
    let err = fails(lock("down_write", "file_lock"), None);
    assert!(matches!(err, Error::FieldNeverLocked(..)), "{err}");
    let err = fails(lock("spin_lock", "mm_struct.file_lock"), None);
    assert!(matches!(err, Error::FieldNeverLocked(..)), "{err}");
}

#[test]
fn an_ambiguous_field_names_its_structures() {
    let err = fails(lock("spin_lock", "file_lock"), None);
    assert!(matches!(err, Error::AmbiguousField(..)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("files_struct") && message.contains("genwqe_dev"),
        "{message}"
    );
}

#[test]
fn a_directory_that_is_not_a_kernel_tree_is_refused() {
    let not_kernel = tempfile::tempdir().unwrap();
    std::fs::write(not_kernel.path().join("Makefile"), "all:\n\ttrue\n").unwrap();
    let err = fails(lock("spin_lock", "file_lock"), Some(not_kernel.path()));
    assert!(matches!(err, Error::NotKernelTree(..)), "{err}");
    let err = fails(
        lock("spin_lock", "file_lock"),
        Some(Path::new("/nonexistent/kpatch")),
    );
    assert!(matches!(err, Error::NotKernelTree(..)), "{err}");
}

#[test]
fn an_unknown_lock_primitive_is_refused() {
    let err = fails(lock("spin_lokc", "file_lock"), None);
    assert!(matches!(err, Error::UnknownPrimitive(..)), "{err}");
    assert!(
        err.to_string().contains("spin_lock, "),
        "lists the known ones: {err}"
    );
    let err = fails(
        Selection::Profile {
            script: fixture("perf-open-close.txt"),
            lock: Some("rcu_read_lock".into()),
            field: None,
        },
        None,
    );
    assert!(matches!(err, Error::UnknownPrimitive(..)), "{err}");
}

#[test]
fn a_missing_perf_script_is_refused() {
    let err = fails(
        Selection::Profile {
            script: fixture("no-such-file.txt"),
            lock: None,
            field: None,
        },
        None,
    );
    assert!(matches!(err, Error::Files(..)), "{err}");
    assert!(err.to_string().contains("no-such-file.txt"), "{err}");
}
