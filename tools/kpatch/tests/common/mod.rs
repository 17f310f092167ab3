//! Shared by the tests that need Debian's linux-source-6.1, extracted by
//! `kernel-patches/fetch-kernel.sh` (which `.ci/run` calls).

#![allow(dead_code)]

use msh_kpatch::{Options, Report, Selection};
use regex::Regex;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The extracted kernel tree; panics with the fix when it is missing.
pub fn kernel_tree() -> PathBuf {
    let tree = match std::env::var_os("MSH_KERNEL_TREE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/linux-source-6.1"),
    };
    assert!(
        tree.join("Makefile").is_file() && tree.join("kernel/locking").is_dir(),
        "kernel tree {} is missing: run kernel-patches/fetch-kernel.sh (needs the linux-source-6.1 package) \
         or set MSH_KERNEL_TREE",
        tree.display()
    );
    tree
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn options(selection: Selection, output: &Path) -> Options {
    Options {
        kernel: kernel_tree(),
        selection,
        policy_var: None,
        output: output.to_owned(),
        emit_cocci: None,
        check_spatch: false,
        threads: msh_kpatch::tree::default_threads(),
        livepatch: false,
    }
}

pub fn lock(api: &str, field: &str) -> Selection {
    Selection::Lock {
        api: api.into(),
        field: field.into(),
    }
}

/// A generated patch and the run's report.
pub struct Generated {
    pub report: Report,
    pub patch: String,
    pub dir: tempfile::TempDir,
}

pub fn generate(selection: Selection) -> Generated {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.patch");
    let report = msh_kpatch::run(&options(selection, &out))
        .unwrap_or_else(|e| panic!("msh kpatch failed: {e}"));
    let patch = std::fs::read_to_string(&out).unwrap();
    Generated { report, patch, dir }
}

/// Files a unified diff touches: (path, is_new).
pub fn patched_paths(patch: &str) -> Vec<(String, bool)> {
    let mut paths = Vec::new();
    let mut old_is_null = false;
    for line in patch.lines() {
        if let Some(old) = line.strip_prefix("--- ") {
            old_is_null = old == "/dev/null";
        } else if let Some(new) = line.strip_prefix("+++ b/") {
            paths.push((new.to_owned(), old_is_null));
        }
    }
    paths
}

/// Copies the files the patch changes out of the tree into a fresh
/// directory outside any git repository, ready for `patch`/`git apply`.
pub fn copy_touched(patch: &str, dest: &Path) {
    let tree = kernel_tree();
    for (path, is_new) in patched_paths(patch) {
        if is_new {
            continue;
        }
        let to = dest.join(&path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(tree.join(&path), &to).unwrap();
    }
}

pub fn run_in(
    dir: &Path,
    program: &str,
    args: &[&str],
    stdin_file: Option<&Path>,
) -> std::process::Output {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    if let Some(file) = stdin_file {
        command.stdin(std::fs::File::open(file).unwrap());
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// (path, 1-based line) of every `-` line of the diff, with its text.
pub fn removed_lines(patch: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut path = String::new();
    let mut old_line = 0;
    for line in patch.lines() {
        if let Some(p) = line.strip_prefix("+++ b/") {
            path = p.to_owned();
        } else if line.starts_with("--- ") {
        } else if let Some(h) = line.strip_prefix("@@ -") {
            old_line = h.split([',', ' ']).next().unwrap().parse().unwrap();
        } else if let Some(text) = line.strip_prefix('-') {
            out.push((path.clone(), old_line, text.to_owned()));
            old_line += 1;
        } else if line.starts_with(' ') || line.is_empty() {
            old_line += 1;
        }
    }
    out
}

/// Every line of the tree's kernel C files (the directories msh indexes)
/// matching `pattern`: (path, 1-based line).
pub fn grep_tree(pattern: &str) -> Vec<(String, usize)> {
    let tree = kernel_tree();
    let output = Command::new("grep")
        .args(["-rnE", "--include=*.c", "--include=*.h", pattern, "."])
        .current_dir(&tree)
        .output()
        .expect("grep runs");
    let mut hits: Vec<(String, usize)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let path = parts.next()?.trim_start_matches("./").to_owned();
            Some((path, parts.next()?.parse().ok()?))
        })
        .filter(|(path, _)| {
            !["tools/", "Documentation/", "scripts/", "usr/"]
                .iter()
                .any(|d| path.starts_with(d))
        })
        .collect();
    hits.sort();
    hits
}

/// `line` with the call to one of `apis` on `&...field` rewritten as the
/// patch should: prefix the API, append the policy argument.
pub fn rewrite_line(line: &str, apis: &[&str], field: &str, policy: &str) -> Option<String> {
    let call = Regex::new(&format!(r"\b({})\(&", apis.join("|"))).unwrap();
    let m = call.find(line)?;
    let open = m.end() - 2;
    let mut depth = 0;
    let close = line[open..].char_indices().find_map(|(i, c)| {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        (depth == 0).then_some(open + i)
    })?;
    let first_arg = line[open + 1..close].split(',').next().unwrap();
    if !Regex::new(&format!(r"(->|\.)\s*{field}\s*$"))
        .unwrap()
        .is_match(first_arg.trim())
    {
        return None;
    }
    Some(format!(
        "{}bpf_policy_{}, &{policy}{}",
        &line[..m.start()],
        &line[m.start()..close],
        &line[close..]
    ))
}

/// Applies the patch to copies of the touched files with `patch -p1` and
/// `git apply`, and checks every changed line of every existing file is a
/// site rewrite, the include, or the appended copies.
pub fn check_applies_and_changes_only_sites(
    generated: &Generated,
    apis: &[&str],
    field: &str,
) -> BTreeSet<(String, usize)> {
    let patch_file = generated.dir.path().join("out.patch");
    let policy = &generated.report.policy_var;

    let with_patch = tempfile::tempdir().unwrap();
    copy_touched(&generated.patch, with_patch.path());
    let out = run_in(
        with_patch.path(),
        "patch",
        &["-p1", "--dry-run"],
        Some(&patch_file),
    );
    assert!(
        out.status.success(),
        "patch --dry-run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run_in(
        with_patch.path(),
        "patch",
        &["-p1", "--quiet"],
        Some(&patch_file),
    );
    assert!(
        out.status.success(),
        "patch: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let with_git = tempfile::tempdir().unwrap();
    copy_touched(&generated.patch, with_git.path());
    let out = run_in(
        with_git.path(),
        "git",
        &["apply", "--check", patch_file.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "git apply --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_in(
        with_git.path(),
        "git",
        &["apply", patch_file.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "git apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tree = kernel_tree();
    let mut parser = msh_kpatch::cparse::parser();
    let mut rewritten = BTreeSet::new();
    for (path, is_new) in patched_paths(&generated.patch) {
        let new = std::fs::read_to_string(with_patch.path().join(&path)).unwrap();
        assert_eq!(
            new,
            std::fs::read_to_string(with_git.path().join(&path)).unwrap(),
            "patch and git apply agree"
        );
        if is_new {
            continue;
        }
        let old = std::fs::read_to_string(tree.join(&path)).unwrap();
        // Drop the include and the appended copies; what is left must line up.
        let include = format!(
            "#include <{}>",
            generated
                .report
                .header_path()
                .trim_start_matches("include/")
        );
        let mut new_lines: Vec<&str> = new.lines().collect();
        let include_at = new_lines
            .iter()
            .position(|l| *l == include)
            .unwrap_or_else(|| panic!("{path}: no include"));
        new_lines.remove(include_at);
        new_lines.truncate(old.lines().count());
        let old_lines: Vec<&str> = old.lines().collect();
        assert_eq!(
            old_lines.len(),
            new_lines.len(),
            "{path}: the patch adds or removes lines besides the include and the tail"
        );
        for (i, (o, n)) in old_lines.iter().zip(&new_lines).enumerate() {
            if o == n {
                continue;
            }
            let expected = rewrite_line(o, apis, field, policy);
            assert_eq!(
                expected.as_deref(),
                Some(*n),
                "{path}:{}: unexpected change",
                i + 1
            );
            rewritten.insert((path.clone(), i + 1));
        }
        let tail = &new
            .lines()
            .skip(old_lines.len() + 1)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            tail.is_empty()
                || tail
                    .trim_start()
                    .starts_with("/*\n * Generated by msh kpatch"),
            "{path}: tail {tail:.200}"
        );

        // Still parses: no new tree-sitter errors in the site rewrites.
        let errors = |text: &str, parser: &mut tree_sitter::Parser| {
            msh_kpatch::cparse::error_count(&msh_kpatch::cparse::parse(parser, text))
        };
        let old_errors = errors(&old, &mut parser);
        let rewritten_part = new_lines.join("\n") + "\n";
        assert!(
            errors(&rewritten_part, &mut parser) <= old_errors,
            "{path}: the rewrite adds parse errors"
        );
        if old_errors == 0 && tail.is_empty() {
            assert_eq!(
                errors(&new, &mut parser),
                0,
                "{path} parsed cleanly before the patch"
            );
        }
    }
    rewritten
}
