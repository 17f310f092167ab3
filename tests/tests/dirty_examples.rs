//! End-to-end: the dirty-tracking C examples, built against libmsh.a and msh.h.

use msh_tests::{assert_success, field};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The dirty-tracking examples, built once against this profile's libmsh.
fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| msh_tests::make_examples("dirty", &["dirty"]))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(examples().join(program))
        .args(args)
        .output()
        .expect("run example")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("msh-dirty-{}-{name}", std::process::id()))
}

#[test]
fn checkpoint_restore_reproduces_the_heap() {
    for backend in ["uffd-async", "mprotect"] {
        let image = temp_path(&format!("{backend}.img"));
        let out = run(
            "checkpoint",
            &[
                image.to_str().unwrap(),
                "--heap-mib",
                "64",
                "--epochs",
                "4",
                "--fraction",
                "0.02",
                "--backend",
                backend,
            ],
        );
        assert!(
            out.status.success(),
            "checkpoint: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let live = stdout(&out);
        assert_eq!(field(&live, "backend"), backend);
        let dirty: usize = field(&live, "dirty_pages_per_epoch").parse().unwrap();
        // 2% of 16384 pages written per epoch, some twice: about 320 distinct pages.
        assert!((250..=330).contains(&dirty), "{live}");

        let restored = run("checkpoint_restore", &[image.to_str().unwrap()]);
        assert!(
            restored.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
        let restored = stdout(&restored);
        assert_eq!(field(&restored, "epochs"), "4");
        assert_eq!(
            field(&restored, "checksum"),
            field(&live, "checksum"),
            "{live}\n{restored}"
        );

        // Dropping the last epoch's end marker must be caught, not restored silently.
        let bytes = std::fs::read(&image).unwrap();
        let truncated = temp_path(&format!("{backend}.truncated"));
        std::fs::write(&truncated, &bytes[..bytes.len() - 16]).unwrap();
        let bad = run("checkpoint_restore", &[truncated.to_str().unwrap()]);
        assert_eq!(bad.status.code(), Some(1));
        let message = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains("epoch without an end marker"), "{message}");
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&truncated);
    }
}

#[test]
fn checkpoint_restore_rejects_bad_images() {
    let junk = temp_path("junk.img");
    std::fs::write(&junk, b"definitely not a checkpoint image").unwrap();
    let out = run("checkpoint_restore", &[junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad magic"));
    let _ = std::fs::remove_file(&junk);
    // A bad argument to the checkpointer: an error, and no image left behind.
    let image = temp_path("never.img");
    let out = run("checkpoint", &[image.to_str().unwrap(), "--fraction", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!image.exists());
}

#[test]
fn mark_sweep_with_msh_cards_never_frees_a_live_object() {
    for backend in ["uffd-async", "uffd-sync", "mprotect"] {
        let out = run("gc_marksweep", &["--cycles", "20", "--backend", backend]);
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{backend}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(field(&text, "live_objects_freed"), "0");
        assert!(
            field(&text, "freed").parse::<usize>().unwrap() > 10_000,
            "{text}"
        );
        assert!(
            field(&text, "dirty_pages").parse::<usize>().unwrap() > 0,
            "{text}"
        );
    }
}

#[test]
fn mark_sweep_without_cards_is_caught_freeing_live_objects() {
    // The verifier is real: without the dirty-page re-scan the collector is unsafe.
    let out = run("gc_marksweep", &["--cycles", "30", "--no-cards"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_ne!(field(&stdout(&out), "live_objects_freed"), "0");
}

#[test]
fn checkpoint_falls_back_when_the_kernel_has_no_userfaultfd() {
    let image = temp_path("nouffd.img");
    let mut command = Command::new(examples().join("checkpoint"));
    command.args([image.to_str().unwrap(), "--heap-mib", "16", "--epochs", "2"]);
    // As on a kernel without userfaultfd.
    msh_tests::deny_userfaultfd(&mut command);
    let out = command.output().expect("run checkpoint under seccomp");
    assert_success(&out);
    let live = stdout(&out);
    assert_eq!(field(&live, "backend"), "mprotect", "{live}");
    let restored = run("checkpoint_restore", &[image.to_str().unwrap()]);
    assert_eq!(
        field(&stdout(&restored), "checksum"),
        field(&live, "checksum")
    );
    // Asking for userfaultfd explicitly is a clear error naming the cause.
    let mut strict = Command::new(examples().join("checkpoint"));
    strict.args([
        image.to_str().unwrap(),
        "--heap-mib",
        "16",
        "--backend",
        "uffd-async",
    ]);
    msh_tests::deny_userfaultfd(&mut strict);
    let out = strict.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("uffd-async is unavailable") && message.contains("userfaultfd"),
        "{message}"
    );
    let _ = std::fs::remove_file(&image);
}

#[test]
fn checkpoint_restore_survives_corrupted_images() {
    // A cheap fuzz of the image parser: truncations and byte flips anywhere must give a
    // restored heap or a one-line error, never a crash.
    let image = temp_path("fuzz.img");
    let out = run(
        "checkpoint",
        &[
            image.to_str().unwrap(),
            "--heap-mib",
            "1",
            "--epochs",
            "3",
            "--fraction",
            "0.2",
        ],
    );
    assert_success(&out);
    let bytes = std::fs::read(&image).unwrap();
    let corrupt = temp_path("fuzz.corrupt");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    for case in 0..40 {
        let mut copy = bytes.clone();
        match case % 3 {
            0 => copy.truncate(next() % bytes.len()),
            1 => {
                // Flip a byte in the header or the epoch records, where parsing happens.
                let structural = [0..24, (1 << 20) + 24..bytes.len()];
                let span = &structural[next() % 2];
                copy[span.start + next() % (span.end - span.start)] ^= 1 << (next() % 8);
            }
            _ => copy[next() % bytes.len()] = 0xff,
        }
        std::fs::write(&corrupt, &copy).unwrap();
        let out = run("checkpoint_restore", &[corrupt.to_str().unwrap()]);
        let message = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => assert!(message.is_empty(), "case {case}: {message}"),
            Some(1) => assert_eq!(message.lines().count(), 1, "case {case}: {message}"),
            other => panic!("case {case}: restore ended with {other:?} (a crash?): {message}"),
        }
    }
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&corrupt);
}
