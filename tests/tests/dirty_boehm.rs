//! End-to-end: Boehm GC (Debian libgc-dev) in incremental manual-VDB mode, with msh as
//! its only source of dirty bits (c-examples/gc_boehm.c).

use msh_tests::field;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The gc_boehm example, built once against this profile's libmsh.
fn gc_boehm() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| msh_tests::make_examples("dirty", &["dirty"]).join("gc_boehm"))
}

fn run(args: &[&str]) -> (Output, String) {
    let out = Command::new(gc_boehm())
        .args(args)
        .output()
        .expect("run gc_boehm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn boehm_gc_with_msh_dirty_bits_keeps_every_live_object() {
    for backend in ["uffd-async", "uffd-sync", "mprotect"] {
        let (out, text) = run(&["--backend", backend, "--rounds", "30"]);
        assert_eq!(out.status.code(), Some(0), "{backend}: {text}");
        assert_eq!(field(&text, "backend"), backend);
        assert_eq!(field(&text, "bad_links"), "0", "{text}");
        // The collector really ran incrementally and really used msh's pages.
        assert!(
            field(&text, "gc_no").parse::<u32>().unwrap() >= 10,
            "{text}"
        );
        assert!(
            field(&text, "pages_fed").parse::<u64>().unwrap() > 100,
            "{text}"
        );
        assert!(
            field(&text, "nodes_checked").parse::<u64>().unwrap() > 1000,
            "{text}"
        );
    }
}

#[test]
fn boehm_gc_without_dirty_bits_frees_live_objects() {
    // The same program with msh's pages withheld: bdwgc believes nothing was written
    // and frees reachable nodes. Shows the check above can fail.
    let (out, text) = run(&["--no-msh", "--rounds", "30"]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert_ne!(field(&text, "bad_links"), "0", "{text}");
}
