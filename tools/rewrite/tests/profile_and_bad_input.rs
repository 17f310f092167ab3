//! `--profile` mode (build-id checks, --top, --min-share) and bad input: a clear
//! one-line error and no output file.

mod common;
use common::*;
use msh_rewrite::{elf::Image, rewrite, Options, Selection};
use std::path::{Path, PathBuf};

fn profile_options(
    input: &Path,
    output: &Path,
    profile: &Path,
    min_share: Option<f64>,
    top: Option<usize>,
) -> Options {
    Options {
        input: input.into(),
        output: output.into(),
        selection: Selection::Profile {
            path: profile.into(),
            min_share,
            top,
        },
        allow_call_windows: false,
    }
}

/// Writes a version-1 profile (what older `msh profile`s wrote; still read) for
/// `build_id` with `(offset, share)` sites.
fn write_profile(path: &Path, build_id: &str, sites: &[(u64, f64)]) {
    let sites: Vec<String> = sites
        .iter()
        .map(|(o, s)| format!(r#"{{"offset":"{o:#x}","symbol":"walk+0x0","insn":"mov","samples":10,"share":{s},"miss_ratio":null}}"#))
        .collect();
    let json = format!(
        r#"{{"version":1,"backend":"sample","objects":[{{"path":"x","build_id":"{build_id}","sites":[{}]}}]}}"#,
        sites.join(",")
    );
    std::fs::write(path, json).unwrap();
}

/// The fixture, and the addresses of two loads in `walk` (the list walk).
fn fixture(dir: &Path) -> (PathBuf, String, Vec<u64>) {
    let exe = build(dir, "kitchen.c", "kitchen", &["-O2"]);
    let report = rewrite_all_loads(&exe, &dir.join("scratch"));
    let loads: Vec<u64> = report
        .sites
        .iter()
        .filter(|s| s.symbol.as_deref().is_some_and(|n| n.starts_with("walk+")))
        .map(|s| u64::from_str_radix(s.offset.trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert!(loads.len() >= 2, "walk has its two loads: {loads:?}");
    (exe, report.build_id, loads)
}

fn expect_error(options: &Options, needle: &str) {
    let err = format!("{:#}", rewrite(options).expect_err("must fail"));
    assert!(
        err.contains(needle),
        "error {err:?} should mention {needle:?}"
    );
    assert!(!err.contains('\n'), "one line: {err:?}");
    assert!(!options.output.exists(), "no output file on error");
    let leftovers: Vec<_> = std::fs::read_dir(options.output.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".msh-"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left behind");
}

#[test]
fn profile_sites_are_patched_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let (exe, build_id, loads) = fixture(dir.path());
    let profile = dir.path().join("profile.json");
    write_profile(&profile, &build_id, &[(loads[0], 0.9), (loads[1], 0.05)]);
    let out = dir.path().join("kitchen.msh");

    let all = rewrite(&profile_options(&exe, &out, &profile, None, None)).unwrap();
    assert_eq!((all.candidates, all.patched), (2, 2));
    let top = rewrite(&profile_options(&exe, &out, &profile, None, Some(1))).unwrap();
    assert_eq!(top.patched, 1);
    assert_eq!(top.sites[0].offset, format!("{:#x}", loads[0]));
    let share = rewrite(&profile_options(&exe, &out, &profile, Some(0.5), None)).unwrap();
    assert_eq!(share.patched, 1);

    let scrambler = scrambler(dir.path());
    let expected = run(&exe, &[], &[], None, None);
    assert_eq!(run(&out, &[], &[], None, None).stdout, expected.stdout);
    let scrambled = run(&out, &[], &[], None, Some(&scrambler));
    assert!(
        scrambled.yields >= 1000,
        "the walk load yields once per node: {}",
        scrambled.yields
    );
    assert_eq!(scrambled.stdout, expected.stdout);
}

#[test]
fn profile_for_another_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (exe, _, loads) = fixture(dir.path());
    let profile = dir.path().join("profile.json");
    write_profile(
        &profile,
        "0123456789abcdef0123456789abcdef01234567",
        &[(loads[0], 1.0)],
    );
    expect_error(
        &profile_options(&exe, &dir.path().join("out"), &profile, None, None),
        "another binary",
    );
}

#[test]
fn site_not_on_an_instruction_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (exe, build_id, loads) = fixture(dir.path());
    let profile = dir.path().join("profile.json");
    write_profile(&profile, &build_id, &[(loads[0], 0.5), (loads[0] + 1, 0.5)]);
    expect_error(
        &profile_options(&exe, &dir.path().join("out"), &profile, None, None),
        "not on an instruction boundary",
    );
}

#[test]
fn site_in_data() {
    let dir = tempfile::tempdir().unwrap();
    let (exe, build_id, _) = fixture(dir.path());
    let image = Image::parse(std::fs::read(&exe).unwrap()).unwrap();
    let rodata = image
        .sections
        .iter()
        .find(|s| s.name == ".rodata")
        .unwrap()
        .addr;
    let profile = dir.path().join("profile.json");
    write_profile(&profile, &build_id, &[(rodata + 8, 1.0)]);
    expect_error(
        &profile_options(&exe, &dir.path().join("out"), &profile, None, None),
        "not in executable code",
    );
}

#[test]
fn not_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (exe, _, _) = fixture(dir.path());
    let profile = dir.path().join("profile.json");
    std::fs::write(&profile, "{\"hello\": 1}").unwrap();
    expect_error(
        &profile_options(&exe, &dir.path().join("out"), &profile, None, None),
        "not an msh profile",
    );
}

#[test]
fn not_an_elf_and_not_x86_64() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    let all = |input: &Path| Options {
        input: input.into(),
        output: dir.path().join("out"),
        selection: Selection::AllLoads,
        allow_call_windows: false,
    };
    expect_error(&all(&text), "not an ELF file");

    let mut elf = std::fs::read("/usr/bin/gzip").unwrap();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let arm = dir.path().join("arm");
    std::fs::write(&arm, elf).unwrap();
    expect_error(&all(&arm), "not an x86-64 ELF file");
    expect_error(&all(&dir.path().join("missing")), "cannot open input");
}

#[test]
fn already_rewritten_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once");
    rewrite_all_loads(Path::new("/usr/bin/gzip"), &once);
    let twice = Options {
        input: once,
        output: dir.path().join("twice"),
        selection: Selection::AllLoads,
        allow_call_windows: false,
    };
    expect_error(&twice, "already rewritten");
}
