//! The six will-it-scale workloads of kernel-patches/workloads, from a
//! profile recorded on this machine to a patch: which lock each profile
//! selects, that the patch applies and rewrites every site of that field
//! and nothing else (against an independent grep), the `--livepatch` form,
//! and one live recording. The fixtures were made with
//! kernel-patches/workloads/record.sh (Linux 6.18; the tree is 6.1, so some
//! profiled functions are not in it: the run notes them).

mod common;

use common::*;
use msh_kpatch::Selection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

fn profile(name: &str) -> Selection {
    Selection::Profile {
        script: fixture(&format!("perf-{name}.txt")),
        lock: None,
        field: None,
    }
}

/// The lock each workload's profile selects: (workload, family, STRUCT.FIELD).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("dup1", "spinlock", "files_struct.file_lock"),
    ("open1", "spinlock", "files_struct.file_lock"),
    ("open2", "spinlock", "files_struct.file_lock"),
    // shmem's page cache insertions and removals: mapping->i_pages.xa_lock.
    ("fallocate1", "spinlock", "xarray.xa_lock"),
    // spin_lock_irq sections show up at their unlocks (cpu-clock is an hrtimer).
    ("signal1", "spinlock", "sighand_struct.siglock"),
    ("mmap1", "rwsem_write", "mm_struct.mmap_lock"),
];

/// One generated patch per workload, shared by the tests.
fn generated(workload: &str) -> &'static Generated {
    static RUNS: OnceLock<Mutex<BTreeMap<String, &'static Generated>>> = OnceLock::new();
    let mut runs = RUNS.get_or_init(Default::default).lock().unwrap();
    runs.entry(workload.to_owned())
        .or_insert_with(|| Box::leak(Box::new(generate(profile(workload)))))
}

#[test]
fn each_workload_profile_selects_its_contended_lock() {
    for (workload, family, lock) in EXPECTED {
        let report = &generated(workload).report;
        assert_eq!(
            (
                report.family.key,
                format!("{}.{}", report.structure, report.field)
            ),
            (*family, lock.to_string()),
            "{workload}"
        );
    }
}

#[test]
fn each_workload_patch_applies_and_rewrites_every_site_of_its_field_only() {
    for (workload, _, lock) in EXPECTED {
        let generated = generated(workload);
        let family = generated.report.family;
        let apis: Vec<&str> = family
            .acquire
            .iter()
            .chain(family.release)
            .copied()
            .collect();
        let field = lock.split('.').nth(1).unwrap();
        let rewritten = check_applies_and_changes_only_sites(generated, &apis, field);
        // Independent oracle: every call of the family's API on a `field`
        // member, minus the sites msh typed as another structure's.
        let grep: BTreeSet<(String, usize)> = grep_tree(&format!(
            r"\b({})\(&[A-Za-z0-9_>().-]*(->|\.)\s*{field}\b",
            apis.join("|")
        ))
        .into_iter()
        .collect();
        let others: BTreeSet<(String, usize)> = generated
            .report
            .other_structures
            .iter()
            .chain(&generated.report.unresolved)
            .map(|s| (s.path.clone(), s.line))
            .chain(
                // Files that never name the structure (not parsed: they cannot type a site as its).
                grep.iter()
                    .filter(|(p, _)| generated.report.files_not_naming_structure.contains(p))
                    .cloned(),
            )
            .collect();
        let word = regex::Regex::new(&format!(r"\b{}\b", generated.report.structure)).unwrap();
        for path in &generated.report.files_not_naming_structure {
            let text = std::fs::read_to_string(kernel_tree().join(path)).unwrap_or_default();
            assert!(
                !word.is_match(&text),
                "{workload}: {path} names the structure"
            );
        }
        let expected: BTreeSet<_> = grep.difference(&others).cloned().collect();
        assert_eq!(rewritten, expected, "{workload}: {lock}");
        assert_eq!(
            rewritten.len(),
            generated.report.sites.len(),
            "{workload}: one site per line"
        );
    }
}

/// One `--livepatch` patch per lock, shared by the tests.
pub fn livepatch(workload: &str) -> &'static Generated {
    static RUNS: OnceLock<Mutex<BTreeMap<String, &'static Generated>>> = OnceLock::new();
    let mut runs = RUNS.get_or_init(Default::default).lock().unwrap();
    runs.entry(workload.to_owned()).or_insert_with(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.patch");
        let mut options = options(profile(workload), &out);
        options.livepatch = true;
        let report = msh_kpatch::run(&options)
            .unwrap_or_else(|e| panic!("{workload}: msh kpatch --livepatch: {e}"));
        let patch = std::fs::read_to_string(&out).unwrap();
        Box::leak(Box::new(Generated { report, patch, dir }))
    })
}

/// The workloads with distinct locks: dup1, open1 and open2 share file_lock.
fn distinct_locks() -> Vec<&'static str> {
    let mut seen = BTreeSet::new();
    EXPECTED
        .iter()
        .filter(|(_, _, lock)| seen.insert(*lock))
        .map(|(w, _, _)| *w)
        .collect()
}

#[test]
fn livepatch_form_of_every_workload_changes_only_c_files_and_applies() {
    for workload in distinct_locks() {
        let lp = livepatch(workload);
        let out = lp.dir.path().join("out.patch");
        let paths = patched_paths(&lp.patch);
        assert!(!paths.is_empty());
        for (path, is_new) in &paths {
            assert!(path.ends_with(".c") && !is_new, "{workload}: {path}");
        }
        assert!(lp.patch.contains("msh kpatch --livepatch layout"));
        let copy = tempfile::tempdir().unwrap();
        copy_touched(&lp.patch, copy.path());
        for (program, args) in [
            ("patch", vec!["-p1", "--dry-run"]),
            ("git", vec!["apply", "--check", out.to_str().unwrap()]),
        ] {
            let stdin = (program == "patch").then_some(out.as_path());
            let result = run_in(copy.path(), program, &args, stdin);
            assert!(
                result.status.success(),
                "{workload}: {program} {args:?}: {}{}",
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            );
        }
        assert_eq!(
            lp.report.sites.len(),
            generated(workload).report.sites.len(),
            "{workload}: the same sites as the header form"
        );
    }
}

/// Every site in a header is in a copied helper (or listed as not
/// covered), and every `.c` file of the tree that calls a copied helper
/// (an independent grep) is in the patch, its calls renamed.
#[test]
fn livepatch_copies_cover_every_header_site_and_every_c_caller() {
    for workload in distinct_locks() {
        let generated = livepatch(workload);
        let report = &generated.report;
        let layout = report.livepatch.as_ref().expect("a --livepatch run");
        let policy = &report.policy_var;
        // Helpers some .c file needs (a site helper no .c file reaches, such as
        // xa_lock_nested(), has no copy: no path from .c code goes through it).
        let needed: BTreeSet<&str> = layout
            .callers
            .keys()
            .flat_map(|path| layout.helpers_for(path))
            .map(|h| h.name.as_str())
            .collect();
        for site in report.sites.iter().filter(|s| !s.path.ends_with(".c")) {
            let holder = layout
                .helpers
                .iter()
                .find(|h| h.sites.iter().any(|s| s == site));
            let copied = holder.is_some();
            let listed = layout
                .uncovered
                .iter()
                .any(|u| u.starts_with(&format!("{}:{}:", site.path, site.line)));
            assert!(
                copied || listed,
                "{workload}: {}:{} neither copied nor listed",
                site.path,
                site.line
            );
            if holder.is_some_and(|h| needed.contains(h.name.as_str())) {
                let rewritten = format!("+bpf_policy_{}(", site.api);
                assert!(
                    generated.patch.lines().any(|l| l.contains(&rewritten[1..])
                        && l.starts_with('+')
                        && l.contains(policy.as_str())),
                    "{workload}: no rewritten copy of {}:{}",
                    site.path,
                    site.line
                );
            }
        }
        // Not covered: only other architectures' headers and bare names.
        for line in &layout.uncovered {
            assert!(
                line.contains("another architecture")
                    || line.contains("without a call")
                    || line.contains("defined in several places"),
                "{workload}: {line}"
            );
        }
        let touched: BTreeSet<String> = patched_paths(&generated.patch)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for helper in &layout.helpers {
            assert!(
                !needed.contains(helper.name.as_str())
                    || generated
                        .patch
                        .contains(&format!("bpf_policy_{}", helper.name)),
                "{workload}: {} never copied",
                helper.name
            );
            let tree = kernel_tree();
            for (path, line) in grep_tree(&format!(r"\b{}\s*\(", helper.name)) {
                if !path.ends_with(".c") || touched.contains(&path) {
                    continue;
                }
                let file = std::fs::read_to_string(tree.join(&path)).unwrap();
                let text = file.lines().nth(line - 1).unwrap().trim_start();
                let comment =
                    text.starts_with('*') || text.starts_with("/*") || text.starts_with("//");
                // Its own same-named macro, or a definition at column 0.
                let call = format!("{}(", helper.name);
                let defines_own = file.lines().any(|l| {
                    l.contains(&format!("define {call}"))
                        || (l.starts_with(|c: char| c.is_ascii_alphabetic())
                            && l.contains(&call)
                            && !l.trim_end().ends_with(';'))
                });
                assert!(
                    comment || defines_own,
                    "{workload}: {path}:{line} calls {}() but is not in the patch: {text}",
                    helper.name
                );
            }
        }
    }
}

/// Records dup1 for 2 s with `perf record -a -g -e cpu-clock` (root: kernel
/// call chains) and picks the lock from dup1's own samples (`--comms`:
/// other programs run on this machine too).
#[test]
fn a_live_recording_of_dup1_selects_files_struct_file_lock() {
    let dir = tempfile::tempdir().unwrap();
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel-patches/workloads");
    let binary = dir.path().join("dup1");
    let gcc = std::process::Command::new("gcc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&binary)
        .arg(root.join("dup1.c"))
        .status()
        .expect("gcc runs");
    assert!(gcc.success());
    let data = dir.path().join("perf.data");
    let record = std::process::Command::new("perf")
        .args(["record", "-q", "-a", "-g", "-e", "cpu-clock", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&binary)
        .arg("2")
        .output()
        .unwrap_or_else(|e| panic!("perf (Debian package linux-perf) must be installed: {e}"));
    assert!(
        record.status.success(),
        "perf record (needs root for kernel call chains): {}",
        String::from_utf8_lossy(&record.stderr)
    );
    let script = std::process::Command::new("perf")
        .args(["script", "--comms", "dup1", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(script.status.success());
    let text = dir.path().join("perf.txt");
    std::fs::write(&text, &script.stdout).unwrap();
    let generated = generate(Selection::Profile {
        script: text,
        lock: None,
        field: None,
    });
    assert_eq!(
        (
            generated.report.structure.as_str(),
            generated.report.field.as_str()
        ),
        ("files_struct", "file_lock")
    );
}
