//! End-to-end on Debian's linux-source-6.1: the two issue figures
//! (spin_lock on `file_lock`, down_write on `mmap_lock`), checked with
//! `patch`, `git apply`, an independent grep of the tree, and tree-sitter.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::OnceLock;

fn file_lock() -> &'static Generated {
    static RUN: OnceLock<Generated> = OnceLock::new();
    RUN.get_or_init(|| generate(lock("spin_lock", "files_struct.file_lock")))
}

fn mmap_lock() -> &'static Generated {
    static RUN: OnceLock<Generated> = OnceLock::new();
    RUN.get_or_init(|| generate(lock("down_write", "mmap_lock")))
}

#[test]
fn spin_lock_on_file_lock_rewrites_every_site_and_nothing_else() {
    let generated = file_lock();
    let report = &generated.report;
    assert_eq!(
        (report.structure.as_str(), report.field.as_str()),
        ("files_struct", "file_lock")
    );
    let apis = [
        "spin_lock",
        "spin_unlock",
        "spin_lock_irqsave",
        "spin_unlock_irqrestore",
        "spin_lock_irq",
        "spin_unlock_irq",
        "spin_lock_bh",
        "spin_unlock_bh",
        "spin_lock_nested",
        "spin_trylock",
        "spin_trylock_bh",
        "spin_trylock_irq",
        "spin_trylock_irqsave",
    ];
    let rewritten = check_applies_and_changes_only_sites(generated, &apis, "file_lock");

    // Independent oracle: grep for spinlock calls on any `file_lock` field.
    let grep = grep_tree(
        r"\bspin_(un|try)?lock(_irq|_irqsave|_irqrestore|_bh|_nested)?\(&[A-Za-z0-9_>().-]*(->|\.)file_lock\b",
    );
    let genwqe: Vec<_> = grep
        .iter()
        .filter(|(p, _)| p.starts_with("drivers/misc/genwqe/"))
        .cloned()
        .collect();
    let files_struct: BTreeSet<_> = grep
        .iter()
        .filter(|(p, _)| !p.starts_with("drivers/misc/genwqe/"))
        .cloned()
        .collect();
    assert_eq!(
        rewritten, files_struct,
        "every files_struct.file_lock site, and only those"
    );
    // genwqe's files never name files_struct: not parsed, or typed as another structure.
    let unparsed = &report.files_not_naming_structure;
    assert_eq!(
        genwqe.iter().filter(|(p, _)| !unparsed.contains(p)).count(),
        report.other_structures.len(),
        "genwqe_dev.file_lock is another lock, left alone"
    );
    assert!(
        genwqe
            .iter()
            .all(|(p, _)| unparsed.contains(p)
                || report.other_structures.iter().any(|s| s.path == *p))
    );
    assert!(report.unresolved.is_empty());
    assert!(rewritten.len() >= 40, "{} sites", rewritten.len());
}

#[test]
fn down_write_on_mmap_lock_rewrites_every_write_site_and_nothing_else() {
    let generated = mmap_lock();
    let report = &generated.report;
    assert_eq!(
        (report.structure.as_str(), report.family.key),
        ("mm_struct", "rwsem_write")
    );
    let apis = [
        "down_write",
        "down_write_killable",
        "down_write_nested",
        "down_write_nest_lock",
        "down_write_trylock",
        "up_write",
    ];
    let rewritten = check_applies_and_changes_only_sites(generated, &apis, "mmap_lock");
    // The lock argument is the first one: `down_write_nest_lock(&a->rwsem, &mm->mmap_lock)` locks `rwsem`.
    let grep: BTreeSet<_> = grep_tree(
        r"\b(down_write(_killable|_nested|_nest_lock|_trylock)?|up_write)\(&[A-Za-z0-9_>().-]*->mmap_lock\b",
    )
    .into_iter()
    .collect();
    assert_eq!(rewritten, grep);
    assert_eq!(
        rewritten.len(),
        5,
        "6.1 takes mmap_lock for writing only in include/linux/mmap_lock.h (trylock included)"
    );
}

#[test]
fn chains_run_from_the_api_to_the_slowpath_through_macros() {
    let names = |g: &Generated, api: &str| {
        g.report
            .chains
            .iter()
            .find(|c| c.api == api)
            .map(|c| c.names().join(" -> "))
            .unwrap_or_default()
    };
    assert_eq!(
        names(file_lock(), "spin_lock"),
        "spin_lock -> raw_spin_lock -> _raw_spin_lock -> __raw_spin_lock -> do_raw_spin_lock -> arch_spin_lock -> queued_spin_lock -> queued_spin_lock_slowpath"
    );
    assert_eq!(
        names(file_lock(), "spin_unlock"),
        "spin_unlock -> raw_spin_unlock -> _raw_spin_unlock -> __raw_spin_unlock -> do_raw_spin_unlock -> arch_spin_unlock -> queued_spin_unlock"
    );
    assert_eq!(
        names(mmap_lock(), "down_write"),
        "down_write -> __down_write -> __down_write_common -> rwsem_down_write_slowpath"
    );
    assert_eq!(
        names(mmap_lock(), "up_write"),
        "up_write -> __up_write -> rwsem_wake"
    );
}

#[test]
fn the_header_defines_a_policy_aware_copy_of_every_chain_element() {
    for generated in [file_lock(), mmap_lock()] {
        let header_path = generated.report.header_path();
        let header: String = generated
            .patch
            .split("\n--- ")
            .find(|part| part.contains(&format!("+++ b/{header_path}")))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix('+'))
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n");
        let mut parser = msh_kpatch::cparse::parser();
        let defined = msh_kpatch::cparse::defined_names(&mut parser, &header);
        for chain in &generated.report.chains {
            let head = format!("bpf_policy_{}", chain.api);
            assert!(defined.contains(&head), "{header_path} lacks {head}");
        }
        assert!(header.contains(&format!(
            "extern struct bpf_lock_policy {};",
            generated.report.policy_var
        )));
        // Every copy, wrapper and prototype takes the policy.
        let heads = header.lines().filter(|l| {
            (l.starts_with("static") || l.starts_with("extern") || l.contains("define bpf_policy_"))
                && l.contains("bpf_policy_")
        });
        for head in heads {
            assert!(
                head.contains("struct bpf_lock_policy *policy)") || head.contains(", policy)"),
                "{head}"
            );
        }
    }
}

#[test]
fn patch_applies_to_the_real_tree_in_place_dry_run() {
    for generated in [file_lock(), mmap_lock()] {
        let out = run_in(
            &kernel_tree(),
            "patch",
            &["-p1", "--dry-run", "--force"],
            Some(&generated.dir.path().join("out.patch")),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn committed_examples_are_what_the_tool_generates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel-patches");
    let bless = std::env::var_os("MSH_BLESS").is_some();
    let mut expected = vec![
        (
            "files_struct-file_lock.patch".to_owned(),
            file_lock().patch.clone(),
        ),
        (
            "mm_struct-mmap_lock.patch".to_owned(),
            mmap_lock().patch.clone(),
        ),
    ];
    for (name, selection, livepatch) in [
        (
            "sighand_struct-siglock.patch",
            lock("spin_lock", "sighand_struct.siglock"),
            false,
        ),
        (
            "xarray-xa_lock.patch",
            lock("spin_lock", "xarray.xa_lock"),
            false,
        ),
        (
            "files_struct-file_lock.livepatch.patch",
            lock("spin_lock", "files_struct.file_lock"),
            true,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.patch");
        let mut options = options(selection, &out);
        options.livepatch = livepatch;
        msh_kpatch::run(&options).unwrap_or_else(|e| panic!("{name}: {e}"));
        expected.push((name.to_owned(), std::fs::read_to_string(&out).unwrap()));
    }
    for generated in [file_lock(), mmap_lock()] {
        let family = generated.report.family;
        let apis: Vec<&str> = family
            .acquire
            .iter()
            .chain(family.release)
            .copied()
            .collect();
        let cocci = msh_kpatch::cocci::semantic_patch(family, &apis, "bpf_policy_");
        expected.push((
            format!("cocci/{}", msh_kpatch::cocci::file_name(family)),
            cocci,
        ));
    }
    for (name, text) in expected {
        let path = examples.join(&name);
        if bless {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "kernel-patches/{name} is stale: MSH_BLESS=1 cargo test --release -p msh-kpatch --test real_tree"
        );
    }
}

/// `d_lock` is `#define d_lock d_lockref.lock` (include/linux/dcache.h): the
/// field no structure declares by that name. It resolves to `dentry`, and
/// every `spin_*(&...->d_lock)` call is a site.
#[test]
fn a_field_that_is_a_macro_for_a_nested_member_resolves_to_its_structure() {
    let generated = generate(lock("spin_lock", "d_lock"));
    let report = &generated.report;
    assert_eq!(report.structure, "dentry");
    let grep = grep_tree(
        r"\bspin_(un|try)?lock(_irq|_irqsave|_irqrestore|_bh|_nested)?\(&[A-Za-z0-9_>().-]*(->|\.)d_lock\b",
    );
    assert_eq!(report.sites.len(), grep.len());
    assert!(report.sites.len() > 300, "{} sites", report.sites.len());
}
