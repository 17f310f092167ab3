//! From the functions a profile shows calling a lock primitive to the
//! structure field they lock.
//!
//! For each hot caller, its definitions in the tree are searched for lock
//! calls on a field (`spin_lock(&files->file_lock)`); when it locks through
//! an inline wrapper (`mmap_write_lock_killable(mm)` ->
//! `down_write_killable(&mm->mmap_lock)`), the wrappers it calls, functions
//! or macros with `lock` in their name, are searched one level down. A call
//! matching the profiled API exactly (`down_write_killable`) wins over other
//! calls of the same family. A caller's samples are shared among the fields
//! it may have been waiting for.

use crate::cparse::{self, address_of_field, call_args, callee_name, text, walk};
use crate::family::{LockFamily, FAMILIES};
use crate::perf_script::PerfProfile;
use crate::sites::base_struct;
use crate::tree::KernelTree;
use crate::Error;
use aho_corasick::AhoCorasick;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tree_sitter::Node;

/// A lock call on a field, found in a function body.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FieldLock {
    api: String,
    field: String,
    structure: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Body {
    locks: Vec<FieldLock>,
    wrappers: BTreeSet<String>,
}

/// A field the profile points at.
#[derive(Debug, Clone)]
pub struct FieldCandidate {
    /// The lock family the field's sites use.
    pub family: &'static LockFamily,
    /// The structure, when the lock site says.
    pub structure: Option<String>,
    /// The locked field's name.
    pub field: String,
    /// Samples of the callers that lock this field.
    pub samples: f64,
    /// Functions whose lock calls name this field.
    pub callers: Vec<String>,
}

/// (family key, structure, field) -> (samples, callers).
type Votes = BTreeMap<(&'static str, Option<String>, String), (f64, Vec<String>)>;

/// Which fields a perf profile points at, and why some callers gave none.
#[derive(Debug, Default)]
pub struct Inference {
    /// Most samples first.
    pub candidates: Vec<FieldCandidate>,
    /// Why some callers gave no field.
    pub notes: Vec<String>,
}

fn is_family_api(name: &str) -> bool {
    FAMILIES.iter().any(|f| f.is_site_api(name))
}

/// Lock calls on fields, and calls to possible lock wrappers, under `body`.
fn scan_body(body: Node, src: &str, into: &mut Body) {
    walk(body, |call| {
        if call.kind() != "call_expression" {
            return;
        }
        let Some(callee) = callee_name(call, src) else {
            return;
        };
        if is_family_api(callee) {
            let Some(field_expr) = call_args(call).first().and_then(|a| address_of_field(*a))
            else {
                return;
            };
            let Some(field) = field_expr.child_by_field_name("field") else {
                return;
            };
            into.locks.push(FieldLock {
                api: callee.to_owned(),
                field: text(field, src).to_owned(),
                structure: base_struct(field_expr, src),
            });
        } else if callee.contains("lock") {
            into.wrappers.insert(callee.to_owned());
        }
    });
}

/// Whether the name at `start..end` looks like the name of a definition or
/// declaration: `(` follows, and the line before it holds only a type and
/// specifiers, or `#define`.
fn looks_like_definition(src: &str, start: usize, end: usize) -> bool {
    let bytes = src.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if bytes.get(end) != Some(&b'(') || (start > 0 && is_ident(bytes[start - 1])) {
        return false;
    }
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = &src[line_start..start];
    !before.contains(['=', '(', ';', ',', '&', '!', '.', '-', '?', ':', '"', '}'])
        && !before.contains("return")
}

/// Bodies of the functions and function-like macros named in `names`.
fn find_bodies(
    tree: &KernelTree,
    names: &BTreeSet<String>,
    threads: usize,
) -> Result<HashMap<String, Body>, Error> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let matcher = AhoCorasick::new(names).expect("names are plain strings");
    let per_file = tree.scan_any(&tree.files, &matcher, threads, |parser, file| {
        let src = file.text.as_str();
        // Parsing is the slow part: only files where a name looks defined.
        if !matcher
            .find_iter(src)
            .any(|m| looks_like_definition(src, m.start(), m.end()))
        {
            return None;
        }
        let parsed = cparse::parse(parser, src);
        let mut found: Vec<(String, Body)> = Vec::new();
        walk(parsed.root_node(), |node| match node.kind() {
            "function_definition" => {
                if let Some(name) = cparse::function_name(node, src).filter(|n| names.contains(*n))
                {
                    let mut body = Body::default();
                    if let Some(b) = node.child_by_field_name("body") {
                        scan_body(b, src, &mut body);
                    }
                    found.push((name.to_owned(), body));
                }
            }
            "preproc_function_def" => {
                let Some(name) = node.child_by_field_name("name").map(|n| text(n, src)) else {
                    return;
                };
                let Some(value) = node.child_by_field_name("value") else {
                    return;
                };
                if names.contains(name) {
                    let mut macro_parser = cparse::parser();
                    let macro_body = cparse::parse_macro_body(&mut macro_parser, text(value, src));
                    let mut body = Body::default();
                    scan_body(macro_body.tree.root_node(), &macro_body.src, &mut body);
                    found.push((name.to_owned(), body));
                }
            }
            _ => {}
        });
        (!found.is_empty()).then_some(found)
    })?;
    let mut bodies: HashMap<String, Body> = HashMap::new();
    for (name, body) in per_file.into_iter().flatten() {
        let entry = bodies.entry(name).or_default();
        entry.locks.extend(body.locks);
        entry.wrappers.extend(body.wrappers);
    }
    Ok(bodies)
}

/// The fields the profile's lock callers lock, most samples first.
pub fn fields_from_profile(
    tree: &KernelTree,
    profile: &PerfProfile,
    family: Option<&'static LockFamily>,
    threads: usize,
) -> Result<Inference, Error> {
    let callers: Vec<_> = profile
        .callers
        .iter()
        .filter(|c| family.is_none_or(|f| c.entries().iter().any(|(e, _)| *e == f)))
        .collect();
    let caller_names: BTreeSet<String> = callers.iter().map(|c| c.function.clone()).collect();
    let bodies = find_bodies(tree, &caller_names, threads)?;
    let wrapper_names: BTreeSet<String> = bodies
        .values()
        .flat_map(|b| b.wrappers.iter().cloned())
        .collect();
    let wrappers = find_bodies(tree, &wrapper_names, threads)?;

    let mut inference = Inference::default();
    let mut votes = Votes::new();
    for caller in callers {
        let Some(body) = bodies.get(&caller.function) else {
            inference.notes.push(format!(
                "{} ({} samples): not defined in this tree",
                caller.function, caller.samples
            ));
            continue;
        };
        let mut locks: Vec<&FieldLock> = body.locks.iter().collect();
        for wrapper in &body.wrappers {
            locks.extend(
                wrappers
                    .get(wrapper)
                    .into_iter()
                    .flat_map(|w| w.locks.iter()),
            );
        }
        // The lock calls the frame can stand for: same family and direction
        // (a `_raw_spin_unlock_irq` frame is an unlock site); exact API first.
        let entries: Vec<_> = caller
            .entries()
            .into_iter()
            .filter(|(f, _)| family.is_none_or(|want| want == *f))
            .collect();
        let matching = |l: &FieldLock, exact: bool| {
            entries.iter().find(|(f, api)| {
                f.is_site_api(&l.api)
                    && f.is_release(api) == f.is_release(&l.api)
                    && (!exact || l.api == *api)
            })
        };
        let exact = locks.iter().any(|l| matching(l, true).is_some());
        let fields: BTreeSet<(&'static str, Option<String>, String)> = locks
            .iter()
            .filter_map(|l| {
                matching(l, exact).map(|(f, _)| (f.key, l.structure.clone(), l.field.clone()))
            })
            .collect();
        if fields.is_empty() {
            let apis: BTreeSet<&str> = entries.iter().map(|(_, api)| *api).collect();
            inference.notes.push(format!(
                "{} ({} samples in {}): no {} on a structure field there in this tree (a global lock, or code that differs from the profiled kernel)",
                caller.function,
                caller.samples,
                caller.symbol,
                apis.into_iter().collect::<Vec<_>>().join("/")
            ));
            continue;
        }
        let share = caller.samples as f64 / fields.len() as f64;
        for key in fields {
            let vote = votes.entry(key).or_default();
            vote.0 += share;
            if !vote.1.contains(&caller.function) {
                vote.1.push(caller.function.clone());
            }
        }
    }
    // `mapping->host->i_lock`: the site does not say the structure; when one
    // structure is known for that field and family, the votes are its.
    let keys: Vec<_> = votes.keys().cloned().collect();
    for (key, structure, field) in keys.iter().filter(|(_, s, _)| s.is_none()) {
        let mut typed = keys
            .iter()
            .filter(|(k, s, f)| k == key && f == field && s.is_some());
        if let (Some(target), None) = (typed.next(), typed.next()) {
            let (samples, callers) = votes
                .remove(&(*key, structure.clone(), field.clone()))
                .expect("listed above");
            let vote = votes.get_mut(target).expect("listed above");
            vote.0 += samples;
            for caller in callers {
                if !vote.1.contains(&caller) {
                    vote.1.push(caller);
                }
            }
        }
    }
    inference.candidates = votes
        .into_iter()
        .map(
            |((key, structure, field), (samples, callers))| FieldCandidate {
                family: FAMILIES
                    .iter()
                    .find(|f| f.key == key)
                    .expect("family keys are unique"),
                structure,
                field,
                samples,
                callers,
            },
        )
        .collect();
    inference.candidates.sort_by(|a, b| {
        b.samples
            .total_cmp(&a.samples)
            .then_with(|| a.field.cmp(&b.field))
    });
    Ok(inference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_lines_are_told_from_calls() {
        let looks = |src: &str, name: &str| {
            let start = src.find(name).unwrap();
            looks_like_definition(src, start, start + name.len())
        };
        assert!(looks(
            "static inline void mmap_write_lock(struct mm_struct *mm)",
            "mmap_write_lock"
        ));
        assert!(looks(
            "int __sched\ndown_write_killable(struct rw_semaphore *sem)",
            "down_write_killable"
        ));
        assert!(looks("#define raw_spin_lock(lock) x", "raw_spin_lock"));
        assert!(!looks(
            "\tif (mmap_write_lock_killable(mm))",
            "mmap_write_lock_killable"
        ));
        assert!(!looks(
            "\tret = down_write_killable(&mm->mmap_lock);",
            "down_write_killable"
        ));
        assert!(!looks("int x = my_spin_lock(a);", "spin_lock"));
    }

    #[test]
    fn body_scan_finds_field_locks_and_wrappers() {
        let src = "unsigned long vm_mmap_pgoff(struct file *file)\n{\n\tstruct mm_struct *mm = current->mm;\n\
\tif (mmap_write_lock_killable(mm))\n\t\treturn -EINTR;\n\tspin_lock(&cdev_lock);\n\tdown_read(&mm->mmap_lock);\n\treturn 0;\n}\n";
        let mut p = cparse::parser();
        let tree = cparse::parse(&mut p, src);
        let mut body = Body::default();
        scan_body(tree.root_node(), src, &mut body);
        assert_eq!(
            body.locks,
            [FieldLock {
                api: "down_read".into(),
                field: "mmap_lock".into(),
                structure: Some("mm_struct".into())
            }]
        );
        assert_eq!(
            body.wrappers.iter().collect::<Vec<_>>(),
            ["mmap_write_lock_killable"]
        );
    }
}
