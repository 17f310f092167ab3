//! The Coccinelle side: the emitted semantic patch is generic over the
//! field (`-D lock_field=...`), and `--check-spatch` agrees with msh on the
//! real tree. Needs `spatch` (Debian package coccinelle, installed by .ci/run).

mod common;

use common::*;
use std::process::Command;

#[test]
fn check_spatch_agrees_with_the_patch_on_file_lock() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.patch");
    let mut options = options(lock("spin_lock", "files_struct.file_lock"), &out);
    options.check_spatch = true;
    options.emit_cocci = Some(dir.path().join("cocci"));
    let report = msh_kpatch::run(&options).unwrap_or_else(|e| panic!("{e}"));
    let check = report.spatch.as_ref().unwrap();
    assert_eq!(check.agreed, report.sites.len());
    assert!(
        check.files
            > report
                .sites
                .iter()
                .map(|s| &s.path)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
    );
    assert!(dir.path().join("cocci/bpf_policy_spinlock.cocci").is_file());
}

#[test]
fn one_semantic_patch_serves_any_field_through_virtual_identifiers() {
    let family = msh_kpatch::family::LockFamily::by_acquire_api("spin_lock").unwrap();
    let cocci = msh_kpatch::cocci::semantic_patch(
        family,
        &["spin_lock", "spin_unlock_irqrestore"],
        "bpf_policy_",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rule.cocci"), cocci).unwrap();
    let source =
        "void f(struct a *a, struct b b, unsigned long flags)\n{\n\tspin_lock(&a->queue_lock);\n\
\tspin_lock(&a->other_lock);\n\tspin_unlock_irqrestore(&b.queue_lock, flags);\n}\n";
    std::fs::write(dir.path().join("x.c"), source).unwrap();
    for (field, policy) in [("queue_lock", "q_policy"), ("other_lock", "o_policy")] {
        let output = Command::new("spatch")
            .args([
                "--sp-file",
                "rule.cocci",
                "-D",
                &format!("lock_field={field}"),
                "-D",
                &format!("policy_var={policy}"),
            ])
            .args(["--very-quiet", "x.c"])
            .current_dir(dir.path())
            .output()
            .expect("spatch (Debian package coccinelle) runs");
        let diff = String::from_utf8_lossy(&output.stdout);
        let added: Vec<&str> = diff.lines().filter(|l| l.starts_with("+\t")).collect();
        match field {
            "queue_lock" => assert_eq!(
                added,
                [
                    "+\tbpf_policy_spin_lock(&a->queue_lock, &q_policy);",
                    "+\tbpf_policy_spin_unlock_irqrestore(&b.queue_lock, flags, &q_policy);"
                ],
                "{diff}"
            ),
            _ => assert_eq!(
                added,
                ["+\tbpf_policy_spin_lock(&a->other_lock, &o_policy);"],
                "{diff}"
            ),
        }
    }
}
