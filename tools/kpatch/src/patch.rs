//! The patch: policy-aware copies of the lock chains, the call-site
//! rewrites, the includes, as one unified diff.
//!
//! Where each copy goes follows C visibility. A chain element defined in a
//! header (static inline, or a macro) is copied into the new header. One
//! defined in a `.c` file is copied to the end of that file, where the static
//! helpers it calls are visible, with a prototype in the header when it is
//! not static. The last element is not copied: a wrapper calls the policy
//! hook and then the stock function, so the slowpath keeps its one
//! implementation (a policy that changes waiting order, ShflLock-style, hooks
//! in there).

use crate::chain::{Chain, DefKind, Definition, LockIndex, NextCall};
use crate::family::LockFamily;
use crate::livepatch::Layout;
use crate::sites::Site;
use crate::Error;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;

/// Words of a definition head that are not part of its return type.
const NON_TYPE_WORDS: &[&str] = &[
    "static",
    "inline",
    "__always_inline",
    "noinline",
    "extern",
    "__lockfunc",
    "__sched",
    "__visible",
    "asmlinkage",
    "notrace",
    "__weak",
    "__cold",
    "__init",
    "__nocfi",
];

/// Everything the patch is generated from.
pub struct Plan<'a> {
    /// The family whose sites and chains are rewritten.
    pub family: &'static LockFamily,
    /// The structure that declares the field.
    pub structure: &'a str,
    /// The locked field.
    pub field: &'a str,
    /// The field's lock and unlock sites to rewrite.
    pub sites: &'a [Site],
    /// The chains of the APIs the sites call.
    pub chains: &'a [Chain],
    /// The lock implementation the chains' definitions are copied from.
    pub index: &'a LockIndex,
    /// Prefix of every generated name (`bpf_policy_`).
    pub prefix: &'a str,
    /// The policy variable the rewritten sites pass down.
    pub policy_var: &'a str,
    /// The tree's version, for the patch's header comment.
    pub kernel_version: &'a str,
    /// Change only `.c` files (kpatch-build refuses header changes): what
    /// the header would hold goes into each touched `.c` file instead, and
    /// header helpers holding sites are copied into the `.c` files calling
    /// them (see [`crate::livepatch`]).
    pub livepatch: Option<&'a Layout>,
}

/// One file the patch creates or changes.
pub struct PatchedFile {
    /// Path relative to the tree's root.
    pub path: String,
    /// None for a new file.
    pub old: Option<String>,
    /// The patched text.
    pub new: String,
    /// Original text of the definitions copied into this file.
    pub copied: Vec<String>,
    /// Names the patch defines or declares in this file.
    pub defines: Vec<String>,
    /// The changes to the original file, one per construct.
    pub changes: Vec<Change>,
}

/// The patch: the new and changed files and their unified diff.
pub struct GeneratedPatch {
    /// The header the patch creates (see [`header_path`]).
    pub header_path: String,
    /// Every file the patch creates or changes.
    pub files: Vec<PatchedFile>,
    /// The unified diff for `patch -p1` or `git apply`.
    pub diff: String,
    /// Names the patch introduces, to check against the tree.
    pub new_names: Vec<String>,
    /// The prefix of the generated names.
    pub prefix: String,
}

struct Edit {
    range: Range<usize>,
    replacement: String,
}

fn apply_edits(src: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    let mut out = String::with_capacity(src.len() + 256);
    let mut at = 0;
    for edit in edits {
        assert!(
            edit.range.start >= at,
            "overlapping edits at byte {}",
            edit.range.start
        );
        out.push_str(&src[at..edit.range.start]);
        out.push_str(&edit.replacement);
        at = edit.range.end;
    }
    out.push_str(&src[at..]);
    out
}

fn insert(at: usize, text: impl Into<String>) -> Edit {
    Edit {
        range: at..at,
        replacement: text.into(),
    }
}

/// The return type of a definition: its head minus storage classes and attributes.
fn return_type(src: &str, def: &Definition) -> String {
    src[def.start..def.name_range.start]
        .split_whitespace()
        .filter(|w| !NON_TYPE_WORDS.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" *", "*")
        .replace('*', " *")
        .replace("* ", "*")
}

/// `int ` or `struct x *`: ready to be followed by a name.
fn spaced_type(ty: String) -> String {
    if ty.ends_with('*') {
        ty
    } else {
        ty + " "
    }
}

fn with_policy_param(params_text: &str, kind: DefKind) -> String {
    let inner = &params_text[..params_text.len() - 1];
    match kind {
        DefKind::Function => format!("{inner}, struct bpf_lock_policy *policy)"),
        DefKind::Macro => format!("{inner}, policy)"),
    }
}

/// Which policy hook a chain's last element calls.
fn event_of(plan: &Plan, chain: &Chain) -> &'static str {
    if plan.family.release.contains(&chain.api.as_str()) {
        "release"
    } else if chain.api.contains("trylock") {
        "trylock"
    } else {
        "contended"
    }
}

/// A copy of a chain element that passes `policy` on to the next element.
fn copy_of(plan: &Plan, def: &Definition, next: &NextCall) -> String {
    let src = plan.index.source(def);
    let p = plan.prefix;
    let mut edits = vec![
        Edit {
            range: def.name_range.clone(),
            replacement: format!("{p}{}", def.name),
        },
        insert(
            def.params_close,
            if def.kind == DefKind::Function {
                ", struct bpf_lock_policy *policy"
            } else {
                ", policy"
            },
        ),
    ];
    match next {
        NextCall::Direct {
            callee,
            close_paren,
        } => {
            edits.push(Edit {
                range: callee.clone(),
                replacement: format!("{p}{}", &src[callee.clone()]),
            });
            edits.push(insert(*close_paren, ", policy"));
        }
        NextCall::Expanded {
            call,
            lock_arg,
            target,
        } => {
            edits.push(Edit {
                range: call.clone(),
                replacement: format!("{p}{target}({lock_arg}, policy)"),
            });
        }
    }
    let shifted = edits
        .into_iter()
        .map(|e| Edit {
            range: e.range.start - def.start..e.range.end - def.start,
            replacement: e.replacement,
        })
        .collect();
    let mut text = apply_edits(&src[def.start..def.end], shifted);
    text.insert_str(0, &format!("/* From {}. */\n", def.path));
    if let Some(export) = def.export.filter(|_| !def.in_header()) {
        write!(text, "\n{export}({p}{});", def.name).unwrap();
    }
    text
}

/// The last element: hook, then the stock implementation.
fn terminal_wrapper(plan: &Plan, def: &Definition, event: &str) -> String {
    let src = plan.index.source(def);
    let p = plan.prefix;
    let lock = def.params.first().map_or("NULL", String::as_str);
    let args = def.params.join(", ");
    match def.kind {
        DefKind::Function => {
            let ret = return_type(src, def);
            let ret_kw = if ret == "void" { "" } else { "return " };
            let ret = spaced_type(ret);
            let params = with_policy_param(&src[def.params_range.clone()], def.kind);
            let storage = if def.in_header() || !def.is_static { "static __always_inline" } else { "static inline" };
            format!(
                "/* The policy hook, then the stock {name}() ({path}). */\n\
                 {storage} {ret}{p}{name}{params}\n{{\n\tbpf_lock_policy_{event}(policy, {lock});\n\t{ret_kw}{name}({args});\n}}",
                name = def.name,
                path = def.path,
            )
        }
        DefKind::Macro => format!(
            "/* The policy hook, then the stock {name}() ({path}). */\n#define {p}{name}({params}, policy) \\\n\t({{ bpf_lock_policy_{event}(policy, {lock}); {name}({args}); }})",
            name = def.name,
            path = def.path,
            params = def.params.join(", "),
        ),
    }
}

fn prototype(plan: &Plan, def: &Definition) -> String {
    let src = plan.index.source(def);
    format!(
        "extern {}{}{}{};",
        spaced_type(return_type(src, def)),
        plan.prefix,
        def.name,
        with_policy_param(&src[def.params_range.clone()], def.kind)
    )
}

/// The header of `family`'s policy-aware copies, relative to the tree's root.
pub fn header_path(family: &LockFamily) -> String {
    format!("include/linux/bpf_policy_{}.h", family.key)
}

fn header_text(plan: &Plan, prototypes: &[String], copies: &[String]) -> String {
    let guard = format!("_LINUX_BPF_POLICY_{}_H", plan.family.key.to_uppercase());
    let chains: String = plan
        .chains
        .iter()
        .map(|c| format!(" *   {}\n", c.names().join(" -> ")))
        .collect();
    let mut out = String::new();
    writeln!(out, "/* SPDX-License-Identifier: GPL-2.0 */").unwrap();
    writeln!(out, "/*").unwrap();
    writeln!(
        out,
        " * Generated by `msh kpatch` from Linux {}: policy-aware copies of the",
        plan.kernel_version
    )
    .unwrap();
    writeln!(
        out,
        " * {} call chains used on {}.{}. Every copy takes a",
        plan.family.key, plan.structure, plan.field
    )
    .unwrap();
    writeln!(
        out,
        " * struct bpf_lock_policy * and passes it down to the slowpath:"
    )
    .unwrap();
    writeln!(out, " *").unwrap();
    out.push_str(&chains);
    writeln!(out, " *").unwrap();
    out.push_str(" * Chains resolved for x86_64_defconfig's lock options: SMP, no PREEMPT_RT,\n");
    out.push_str(" * no lock debugging or statistics, out-of-line lock functions.\n");
    writeln!(out, " */").unwrap();
    writeln!(
        out,
        "#ifndef {guard}\n#define {guard}\n\n#include <{}>\n",
        plan.family.api_header
    )
    .unwrap();
    out.push_str(POLICY_DEFINITION);
    writeln!(
        out,
        "\n/* The policy of {}.{}; a BPF struct_ops program installs its hooks. */",
        plan.structure, plan.field
    )
    .unwrap();
    writeln!(out, "extern struct bpf_lock_policy {};\n", plan.policy_var).unwrap();
    if !prototypes.is_empty() {
        out.push_str("/* Copies defined out of line, next to the code they copy. */\n");
        for proto in prototypes {
            writeln!(out, "{proto}").unwrap();
        }
        out.push('\n');
    }
    for copy in copies {
        writeln!(out, "{copy}\n").unwrap();
    }
    writeln!(out, "#endif /* {guard} */").unwrap();
    out
}

/// The policy type and its hooks; shared by every generated header.
const POLICY_DEFINITION: &str = "#ifndef BPF_LOCK_POLICY_DEFINED
#define BPF_LOCK_POLICY_DEFINED
/*
 * Hooks a policy (a BPF struct_ops program, in the manner of SynCord and
 * ShflLock) may set; NULL keeps the stock behaviour.
 */
struct bpf_lock_policy {
\tvoid (*contended)(void *lock);\t/* entering the slowpath */
\tvoid (*release)(void *lock);\t/* releasing the lock */
\tvoid (*trylock)(void *lock);\t/* a trylock attempt (it never waits) */
};

static __always_inline void bpf_lock_policy_contended(struct bpf_lock_policy *policy, void *lock)
{
\tvoid (*hook)(void *lock) = READ_ONCE(policy->contended);

\tif (hook)
\t\thook(lock);
}

static __always_inline void bpf_lock_policy_release(struct bpf_lock_policy *policy, void *lock)
{
\tvoid (*hook)(void *lock) = READ_ONCE(policy->release);

\tif (hook)
\t\thook(lock);
}

static __always_inline void bpf_lock_policy_trylock(struct bpf_lock_policy *policy, void *lock)
{
\tvoid (*hook)(void *lock) = READ_ONCE(policy->trylock);

\tif (hook)
\t\thook(lock);
}
#endif /* BPF_LOCK_POLICY_DEFINED */
";

/// Where the new `#include` goes: after the last `#include` of the file's
/// leading block (everything before its first line of C code), at the
/// shallowest `#if` depth there (an include guard is one level). Later
/// includes are no candidates: kernel/cgroup/cgroup.c includes
/// <linux/cgroup_subsys.h> inside array initializers (an X-macro), where a
/// header of declarations breaks the file. 0 if the leading block has none.
fn include_point(src: &str) -> usize {
    let blanked = crate::cparse::blank_comments(src);
    let mut depth = 0usize;
    let mut best: Option<(usize, usize)> = None; // (depth, offset after the line)
    for line in crate::cparse::logical_lines(&blanked) {
        let text = line.text.trim();
        if text.is_empty() {
            continue;
        }
        let Some(directive) = text.strip_prefix('#').map(str::trim_start) else {
            break; // the first line of C code ends the leading block
        };
        if directive.starts_with("if") {
            depth += 1;
        } else if directive.starts_with("endif") {
            depth = depth.saturating_sub(1);
        } else if directive.starts_with("include") && best.is_none_or(|(d, _)| depth <= d) {
            best = Some((depth, line.range.end));
        }
    }
    best.map_or(0, |(_, offset)| offset)
}

/// One construct the generator changed in a file (a site rewrite, the
/// include, the appended copies), kept so that a parse check that fails can
/// name the construct it got wrong.
#[derive(Debug, Clone)]
pub struct Change {
    /// What the change is, e.g. "the rewrite of spin_lock(&p->siglock)".
    pub what: String,
    /// (byte range in the original file, replacement).
    pub edits: Vec<(Range<usize>, String)>,
}

impl PatchedFile {
    /// The first change that, applied alone to the original file, adds
    /// parse errors (`errors` counts them; `allowed_extra` is what copied
    /// kernel code may bring): "LINE: WHAT turns `OLD` into `NEW`".
    pub fn culprit(
        &self,
        mut errors: impl FnMut(&str) -> usize,
        allowed_extra: usize,
    ) -> Option<String> {
        let old = self.old.as_deref()?;
        let base = errors(old);
        self.changes.iter().find_map(|change| {
            let edits = change
                .edits
                .iter()
                .map(|(range, text)| Edit {
                    range: range.clone(),
                    replacement: text.clone(),
                })
                .collect();
            let alone = apply_edits(old, edits);
            if errors(&alone) <= base + allowed_extra {
                return None;
            }
            let at = change.edits.iter().map(|(r, _)| r.start).min()?;
            let line_start = old[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = old[at..].find('\n').map_or(old.len(), |i| at + i);
            // The same line after the change: shift by what edits before it added.
            let shift: isize = change
                .edits
                .iter()
                .filter(|(r, _)| r.start < line_end)
                .map(|(r, t)| t.len() as isize - r.len() as isize)
                .sum();
            let new_end =
                ((line_end as isize + shift).max(line_start as isize) as usize).min(alone.len());
            let new_end = alone[new_end..]
                .find('\n')
                .map_or(alone.len(), |i| new_end + i);
            let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut new_text = squash(&alone[line_start..new_end]);
            if new_text.len() > 160 {
                new_text = format!("{}...", &new_text[..new_text.floor_char_boundary(160)]);
            }
            Some(format!(
                "{}:{}: {} turns `{}` into `{}`",
                self.path,
                old[..at].matches('\n').count() + 1,
                change.what,
                squash(&old[line_start..line_end]),
                new_text
            ))
        })
    }
}

/// Generates the patch for `plan`, reading the tree's files through `read`.
pub fn generate(
    plan: &Plan,
    read: impl Fn(&str) -> Result<String, Error>,
) -> Result<GeneratedPatch, Error> {
    let p = plan.prefix;
    let header = header_path(plan.family);
    let include_line = format!("#include <{}>\n", header.trim_start_matches("include/"));
    // Chain elements, callee first so each is defined before use; shared tails once.
    let mut seen = HashSet::new();
    let mut header_copies = Vec::new();
    let mut header_copied = Vec::new();
    let mut header_defines = Vec::new();
    let mut appendix_defines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut prototypes = Vec::new();
    let mut appendix: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut appendix_copied: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut new_names = vec!["bpf_lock_policy".to_owned(), plan.policy_var.to_owned()];
    for chain in plan.chains {
        let event = event_of(plan, chain);
        for (i, step) in chain.steps.iter().enumerate().rev() {
            if !seen.insert(step.def.name.clone()) {
                continue;
            }
            let new_name = format!("{p}{}", step.def.name);
            new_names.push(new_name.clone());
            let def = &step.def;
            let original = plan.index.source(def)[def.start..def.end].to_owned();
            match &step.next {
                None => {
                    let wrapper = terminal_wrapper(plan, def, event);
                    if def.in_header() || !def.is_static {
                        header_copies.push(wrapper);
                        header_defines.push(new_name);
                    } else {
                        appendix.entry(def.path.clone()).or_default().push(wrapper);
                        appendix_defines
                            .entry(def.path.clone())
                            .or_default()
                            .push(new_name);
                    }
                }
                Some(next) if def.in_header() => {
                    header_copies.push(copy_of(plan, def, next));
                    header_copied.push(original);
                    header_defines.push(new_name);
                }
                Some(next) => {
                    appendix
                        .entry(def.path.clone())
                        .or_default()
                        .push(copy_of(plan, def, next));
                    appendix_copied
                        .entry(def.path.clone())
                        .or_default()
                        .push(original);
                    if !def.is_static {
                        prototypes.push(prototype(plan, def));
                    }
                }
            }
            debug_assert!(i < chain.steps.len());
        }
    }

    // Changes to existing files: site rewrites, appended copies, includes.
    let mut changes: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    // Livepatch: header sites are rewritten in the copies of their helpers.
    let in_place = plan
        .sites
        .iter()
        .filter(|s| plan.livepatch.is_none() || s.path.ends_with(".c"));
    for site in in_place {
        changes.entry(site.path.clone()).or_default().push(Change {
            what: format!("the rewrite of `{}`", site.call_text),
            edits: vec![
                (site.callee.clone(), format!("{p}{}", site.api)),
                (
                    site.close_paren..site.close_paren,
                    format!(", &{}", plan.policy_var),
                ),
            ],
        });
    }
    let policy_host = appendix
        .keys()
        .next()
        .cloned()
        .or_else(|| {
            plan.sites
                .iter()
                .find(|s| s.path.ends_with(".c"))
                .map(|s| s.path.clone())
        })
        .ok_or_else(|| Error::Chain("no .c file to define the policy variable in".into()))?;
    appendix.entry(policy_host.clone()).or_default();
    let mut files = Vec::new();
    let header_file = header_text(plan, &prototypes, &header_copies);
    // Livepatch: the header's text, minus nothing, at the include point of
    // every touched .c file (its copies are static inline or macros, its
    // declarations extern: each file may hold them all).
    let inlined = format!(
        "/*\n * msh kpatch --livepatch layout: kpatch-build refuses header changes, so\n * this block is what <{}> would hold:\n * static inline copies of the header-level chain elements and the policy\n * type, here and in every other .c file this patch touches; copies of\n * elements defined in a .c file stay appended to that file (where its\n * static helpers are visible), declared extern here.\n */\n{header_file}",
        header.trim_start_matches("include/")
    );
    let layout_note = plan
        .livepatch
        .map(|l| layout_note(plan, l))
        .unwrap_or_default();
    if let Some(layout) = plan.livepatch {
        for (path, calls) in &layout.callers {
            changes
                .entry(path.clone())
                .or_default()
                .extend(calls.iter().map(|c| Change {
                    what: format!("the call of {}() renamed to its copy", c.helper),
                    edits: vec![(c.range.clone(), format!("{p}{}", c.helper))],
                }));
        }
    }
    let mut paths: Vec<String> = changes.keys().chain(appendix.keys()).cloned().collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let old = read(&path)?;
        let mut file_changes = changes.remove(&path).unwrap_or_default();
        let at = include_point(&old);
        let mut helper_copied = Vec::new();
        let mut helper_defines = Vec::new();
        file_changes.push(if let Some(layout) = plan.livepatch {
            let mut block = inlined.clone();
            if path == policy_host {
                block.push_str(&layout_note);
            } else if !layout.helpers.is_empty() {
                writeln!(
                    block,
                    "\n/* Header helpers copied for --livepatch: see the note in {policy_host}. */"
                )
                .unwrap();
            }
            for helper in layout.helpers_for(&path) {
                write!(block, "\n{}\n", layout.copy_of(helper, p, plan.policy_var)).unwrap();
                helper_copied.push(layout.original(helper).to_owned());
                helper_defines.push(format!("{p}{}", helper.name));
            }
            Change {
                what: "the inlined policy-aware copies".to_owned(),
                edits: vec![(at..at, block)],
            }
        } else {
            Change {
                what: format!("the include of <{}>", header.trim_start_matches("include/")),
                edits: vec![(at..at, include_line.clone())],
            }
        });
        if let Some(copies) = appendix.get(&path) {
            let mut tail = format!(
                "\n/*\n * Generated by msh kpatch: policy-aware copies for {}.{}\n * (see <{}>).\n */\n",
                plan.structure,
                plan.field,
                header.trim_start_matches("include/")
            );
            if path == policy_host {
                writeln!(
                    tail,
                    "struct bpf_lock_policy {};\nEXPORT_SYMBOL_GPL({});",
                    plan.policy_var, plan.policy_var
                )
                .unwrap();
            }
            for copy in copies {
                write!(tail, "\n{copy}\n").unwrap();
            }
            let at = old.len();
            let tail = if old.ends_with('\n') {
                tail
            } else {
                format!("\n{tail}")
            };
            file_changes.push(Change {
                what: "the appended policy-aware copies".to_owned(),
                edits: vec![(at..at, tail)],
            });
        }
        let file_edits = file_changes
            .iter()
            .flat_map(|c| &c.edits)
            .map(|(range, text)| Edit {
                range: range.clone(),
                replacement: text.clone(),
            })
            .collect();
        let new = apply_edits(&old, file_edits);
        let mut copied = appendix_copied.remove(&path).unwrap_or_default();
        let mut defines = appendix_defines.remove(&path).unwrap_or_default();
        if plan.livepatch.is_some() {
            // What tree-sitter cannot read in the block, it could not read in the header.
            copied.push(inlined.clone());
            copied.extend(helper_copied);
            defines.extend(header_defines.iter().cloned());
            defines.extend(helper_defines);
        }
        files.push(PatchedFile {
            path,
            old: Some(old),
            new,
            copied,
            defines,
            changes: file_changes,
        });
    }
    if plan.livepatch.is_none() {
        files.insert(
            0,
            PatchedFile {
                path: header.clone(),
                old: None,
                new: header_file,
                copied: header_copied,
                defines: header_defines,
                changes: Vec::new(),
            },
        );
    }
    for api in plan.sites.iter().map(|s| &s.api) {
        new_names.push(format!("{p}{api}"));
    }
    if let Some(layout) = plan.livepatch {
        new_names.extend(layout.helpers.iter().map(|h| format!("{p}{}", h.name)));
    }
    new_names.sort();
    new_names.dedup();

    let mut diff = String::new();
    for file in &files {
        let old = file.old.as_deref().unwrap_or("");
        let old_name = if file.old.is_some() {
            format!("a/{}", file.path)
        } else {
            "/dev/null".to_owned()
        };
        let text_diff = similar::TextDiff::from_lines(old, file.new.as_str());
        write!(
            diff,
            "{}",
            text_diff
                .unified_diff()
                .context_radius(3)
                .header(&old_name, &format!("b/{}", file.path))
        )
        .unwrap();
    }
    Ok(GeneratedPatch {
        header_path: header,
        files,
        diff,
        new_names,
        prefix: p.to_owned(),
    })
}

/// The `--livepatch` layout's account of header helpers, for the patch:
/// which were copied, into how many `.c` files, and what is not covered.
fn layout_note(plan: &Plan, layout: &Layout) -> String {
    if layout.helpers.is_empty() && layout.uncovered.is_empty() {
        return String::new();
    }
    let mut note =
        String::from("\n/*\n * msh kpatch --livepatch: header helpers holding sites of ");
    writeln!(note, "{}.{}, or calling", plan.structure, plan.field).unwrap();
    note.push_str(" * such helpers, are copied (renamed with the prefix, sites rewritten) into\n");
    note.push_str(" * each .c file that calls them, and those calls renamed; the headers stay\n");
    writeln!(
        note,
        " * untouched. {} helpers, called from {} .c files:",
        layout.helpers.len(),
        layout.callers.len()
    )
    .unwrap();
    for helper in &layout.helpers {
        let files = layout
            .callers
            .values()
            .filter(|calls| calls.iter().any(|c| c.helper == helper.name))
            .count();
        writeln!(
            note,
            " *   {}() ({}): {} sites, called from {files} .c files",
            helper.name,
            helper.path,
            helper.sites.len()
        )
        .unwrap();
    }
    if !layout.uncovered.is_empty() {
        note.push_str(" * Not covered (these keep the stock helper):\n");
        for line in &layout.uncovered {
            writeln!(note, " *   {}", line.replace("*/", "* /")).unwrap();
        }
    }
    note.push_str(" */\n");
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order() {
        let src = "spin_lock(&f->file_lock);";
        let out = apply_edits(
            src,
            vec![
                insert(23, ", &p"),
                Edit {
                    range: 0..9,
                    replacement: "bpf_policy_spin_lock".into(),
                },
            ],
        );
        assert_eq!(out, "bpf_policy_spin_lock(&f->file_lock, &p);");
    }

    #[test]
    fn include_goes_after_the_leading_includes_never_into_code() {
        let src = "/* c\n#include <no.h> */\n#include <a.h>\n#ifdef X\n#include <deep.h>\n#endif\n#include <b.h>\n\
static int *subsys[] = {\n#include <linux/cgroup_subsys.h>\n};\n";
        assert_eq!(
            &src[include_point(src)..],
            "static int *subsys[] = {\n#include <linux/cgroup_subsys.h>\n};\n"
        );
        assert_eq!(include_point("int x;\n#include <a.h>\n"), 0);
        let guarded = "#ifndef H\n#define H\n#include <a.h>\nint x;\n#endif\n";
        assert_eq!(&guarded[include_point(guarded)..], "int x;\n#endif\n");
    }

    #[test]
    fn a_change_that_breaks_parsing_is_named_with_its_line() {
        let old = "int a[] = {\n1,\n};\nvoid f(void) { g(); }\n";
        let at = old.find("1,").unwrap();
        let file = PatchedFile {
            path: "x.c".into(),
            old: Some(old.into()),
            new: String::new(),
            copied: Vec::new(),
            defines: Vec::new(),
            changes: vec![
                Change {
                    what: "a harmless rename".into(),
                    edits: vec![(
                        old.find("g(").unwrap()..old.find("g(").unwrap() + 1,
                        "h".into(),
                    )],
                },
                Change {
                    what: "the include".into(),
                    edits: vec![(at..at, "int b;\n".into())],
                },
            ],
        };
        let mut parser = crate::cparse::parser();
        let culprit = file
            .culprit(
                |t| crate::cparse::error_count(&crate::cparse::parse(&mut parser, t)),
                0,
            )
            .unwrap();
        assert_eq!(culprit, "x.c:2: the include turns `1,` into `int b; 1,`");
    }

    #[test]
    fn return_types_drop_attributes() {
        let src = "static noinline struct rw_semaphore __sched *\nf(int x)";
        let def = Definition {
            name: "f".into(),
            path: "k.c".into(),
            kind: DefKind::Function,
            params: vec!["x".into()],
            start: 0,
            end: src.len(),
            name_range: 46..47,
            params_close: src.len() - 1,
            params_range: 47..src.len(),
            body: 0..0,
            is_static: true,
            export: None,
        };
        assert_eq!(return_type(src, &def), "struct rw_semaphore *");
        assert_eq!(
            with_policy_param("(int x)", DefKind::Function),
            "(int x, struct bpf_lock_policy *policy)"
        );
    }
}
