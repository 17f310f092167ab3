//! The `--livepatch` layout of sites that sit in header helpers.
//!
//! kpatch-build rejects header changes, yet some sites of a field are in
//! header helpers: `mmap_write_lock()` in <linux/mmap_lock.h>, the
//! `xa_lock_irq()` macro in <linux/xarray.h>, `unlock_task_sighand()` in
//! <linux/sched/signal.h>. Each such helper, and every header helper or
//! macro that reaches one through calls (`xas_lock_irq()` -> `xa_lock_irq()`,
//! `xa_store_bh()` -> `xa_lock_bh()`), gets a policy-aware copy named
//! `bpf_policy_HELPER` in each `.c` file that calls it, after the file's
//! leading includes (where the header's own definitions are visible), and
//! that file's calls are renamed to the copy. No header changes.
//!
//! **Covered** means: every call of such a helper written in a `.c` file of
//! the tree goes to a copy whose site is rewritten, so every path from `.c`
//! code to the site is policy-aware. What is not covered is listed in
//! [`Layout::uncovered`] and in the patch: helpers in other architectures'
//! headers (not built for x86_64; their generic callers keep the stock
//! helper), a helper named in a `.c` file without being called (its address
//! taken), a name defined by several headers (which one a file sees depends
//! on its includes), and a site outside any function or macro.

use crate::sites::Site;
use crate::tree::KernelTree;
use crate::{cparse, Error};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

/// A header helper (static inline function or function-like macro) that holds
/// a site of the field or calls such a helper.
#[derive(Debug, Clone)]
pub struct Helper {
    /// The helper's name; its copies are named with the patch's prefix.
    pub name: String,
    /// The header that defines it.
    pub path: String,
    /// Whether it is a function-like macro.
    pub is_macro: bool,
    /// The definition's byte range in the header.
    pub range: Range<usize>,
    /// Byte range of the name in the header.
    name_range: Range<usize>,
    /// Sites of the field in the definition.
    pub sites: Vec<Site>,
    /// Calls of other helpers in the definition: (name's byte range, name).
    calls: Vec<(Range<usize>, String)>,
}

/// One helper call in a `.c` file, renamed to the file's copy.
#[derive(Debug, Clone)]
pub struct CallerEdit {
    /// Byte range of the helper's name at the call.
    pub range: Range<usize>,
    /// The helper called.
    pub helper: String,
}

/// Where the copies of header helpers go and which calls are renamed.
#[derive(Debug, Default)]
pub struct Layout {
    /// Every helper copied, callees before their callers.
    pub helpers: Vec<Helper>,
    /// Per `.c` file, the helper calls renamed to that file's copies.
    pub callers: BTreeMap<String, Vec<CallerEdit>>,
    /// What the layout leaves with the stock helper, one line each.
    pub uncovered: Vec<String>,
    /// The headers' text, for the copies.
    sources: HashMap<String, String>,
}

impl Layout {
    /// The helpers `path` needs copies of (those it calls and what they
    /// call), in definition order: callees first.
    pub fn helpers_for(&self, path: &str) -> Vec<&Helper> {
        let by_name: HashMap<&str, &Helper> =
            self.helpers.iter().map(|h| (h.name.as_str(), h)).collect();
        let mut needed = BTreeSet::new();
        let mut stack: Vec<&str> = self
            .callers
            .get(path)
            .map(|edits| edits.iter().map(|e| e.helper.as_str()).collect())
            .unwrap_or_default();
        while let Some(name) = stack.pop() {
            if needed.insert(name) {
                if let Some(h) = by_name.get(name) {
                    stack.extend(h.calls.iter().map(|(_, n)| n.as_str()));
                }
            }
        }
        self.helpers
            .iter()
            .filter(|h| needed.contains(h.name.as_str()))
            .collect()
    }

    /// The copy of `helper`: renamed with `prefix`, its sites calling
    /// `prefix`API with `&policy_var` appended, its helper calls renamed.
    pub fn copy_of(&self, helper: &Helper, prefix: &str, policy_var: &str) -> String {
        let src = &self.sources[&helper.path];
        let mut edits: Vec<(Range<usize>, String)> = vec![(
            helper.name_range.clone(),
            format!("{prefix}{}", helper.name),
        )];
        for site in &helper.sites {
            edits.push((site.callee.clone(), format!("{prefix}{}", site.api)));
            edits.push((
                site.close_paren..site.close_paren,
                format!(", &{policy_var}"),
            ));
        }
        for (range, name) in &helper.calls {
            edits.push((range.clone(), format!("{prefix}{name}")));
        }
        edits.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out = format!("/* From {}. */\n", helper.path);
        let mut at = helper.range.start;
        for (range, text) in edits {
            out.push_str(&src[at..range.start]);
            out.push_str(&text);
            at = range.end;
        }
        out.push_str(&src[at..helper.range.end]);
        out
    }

    /// The original text of `helper`'s definition.
    pub fn original(&self, helper: &Helper) -> &str {
        &self.sources[&helper.path][helper.range.clone()]
    }
}

/// Whether a header is built for x86_64: not under another architecture.
fn built_for_x86(path: &str) -> bool {
    !path.starts_with("arch/") || path.starts_with("arch/x86/")
}

/// A helper definition found in a header: (name, is_macro, range, name range).
type Definition = (String, bool, Range<usize>, Range<usize>);

/// The function definitions and function-like macros of a header that
/// contain `offset`-independent calls: every definition, for lookups.
fn definitions(parser: &mut tree_sitter::Parser, src: &str) -> Vec<Definition> {
    let mut defs: Vec<Definition> = cparse::function_like_macros(src)
        .into_iter()
        .map(|m| (m.name, true, m.range, m.name_range))
        .collect();
    let tree = cparse::parse(parser, src);
    cparse::walk(tree.root_node(), |node| {
        if node.kind() != "function_definition" {
            return;
        }
        let Some(name) = cparse::function_declarator(node)
            .and_then(|d| d.child_by_field_name("declarator"))
            .filter(|d| d.kind() == "identifier")
        else {
            return;
        };
        let start = cparse::definition_head_start(src, name.start_byte());
        defs.push((
            cparse::text(name, src).to_owned(),
            false,
            start..node.end_byte(),
            name.byte_range(),
        ));
    });
    defs
}

/// Calls (name's range, name) and bare uses (offset, name) of helper names.
type Uses = (Vec<(Range<usize>, String)>, Vec<(usize, String)>);

/// Calls in `src[range]` (comments and strings skipped) of a name in
/// `names`: the name followed by `(`, not a member (`->name`, `.name`).
/// Also returns names used without a call (their address taken).
fn calls_in(src: &str, range: Range<usize>, names: &BTreeSet<String>) -> Uses {
    let blanked = cparse::blank_comments(&src[range.clone()]);
    let bytes = blanked.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let (mut calls, mut bare) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !is_ident(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let word = &blanked[start..i];
        if b.is_ascii_digit() || !names.contains(word) {
            continue;
        }
        let before = blanked[..start].trim_end();
        if before.ends_with("->") || before.ends_with('.') {
            continue;
        }
        let after = blanked[i..].trim_start();
        if after.starts_with('(') {
            calls.push((range.start + start..range.start + i, word.to_owned()));
        } else if !before.ends_with("define") && !before.ends_with("undef") {
            bare.push((range.start + start, word.to_owned()));
        }
    }
    (calls, bare)
}

/// Whether the call whose name ends at `name_end` is a definition (its
/// parameter list is followed by `{`) or a `#define` of the name.
fn is_definition(src: &str, name_start: usize, name_end: usize) -> bool {
    if src[..name_start].trim_end().ends_with("define") {
        return true;
    }
    let mut depth = 0usize;
    for (i, c) in src[name_end..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    let rest = src[name_end + i + 1..].trim_start();
                    return rest.starts_with('{');
                }
            }
            ';' | '{' | '}' if depth == 0 => return false,
            _ => {}
        }
    }
    false
}

/// Whether a header has an inline function or a function-like macro.
fn may_define_helpers(bytes: &[u8]) -> bool {
    if memchr::memmem::find(bytes, b"inline").is_some() {
        return true;
    }
    memchr::memmem::find_iter(bytes, b"define").any(|at| {
        let rest = bytes[at + 6..].trim_ascii_start();
        let name = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(rest.len());
        name > 0 && rest.get(name) == Some(&b'(')
    })
}

/// A matcher for helper names. A DFA: the default automaton's rare-byte
/// prefilter keeps stopping on names sharing common bytes (`xa_`, `_lock`),
/// and these matchers run over every header or every `.c` file.
fn name_matcher(names: &BTreeSet<String>) -> aho_corasick::AhoCorasick {
    aho_corasick::AhoCorasick::builder()
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .prefilter(false)
        .build(names)
        .expect("names are plain strings")
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset].matches('\n').count() + 1
}

/// Lays out the copies for the sites of `sites` that are in headers.
pub fn plan(tree: &KernelTree, sites: &[Site], threads: usize) -> Result<Layout, Error> {
    let mut layout = Layout::default();
    let mut parser = cparse::parser();
    // 1. The helpers that hold sites.
    let mut by_header: BTreeMap<&str, Vec<&Site>> = BTreeMap::new();
    for site in sites.iter().filter(|s| !s.path.ends_with(".c")) {
        by_header.entry(&site.path).or_default().push(site);
    }
    let mut helpers: BTreeMap<String, Helper> = BTreeMap::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    for (path, header_sites) in by_header {
        let src = tree.read(path)?;
        let defs = definitions(&mut parser, &src);
        for site in header_sites {
            let def = defs
                .iter()
                .filter(|(_, _, range, _)| range.contains(&site.callee.start))
                .min_by_key(|(_, _, range, _)| range.len());
            let Some((name, is_macro, range, name_range)) = def else {
                layout.uncovered.push(format!(
                    "{path}:{}: `{}` is outside any function or macro",
                    site.line, site.call_text
                ));
                continue;
            };
            if !built_for_x86(path) {
                layout.uncovered.push(format!(
                    "{path}:{}: `{}` in {name}(), a header of another architecture",
                    site.line, site.call_text
                ));
                refused.insert(name.clone());
                continue;
            }
            if defs.iter().filter(|(n, ..)| n == name).count() > 1 {
                refused.insert(name.clone());
            }
            let helper = helpers.entry(name.clone()).or_insert_with(|| Helper {
                name: name.clone(),
                path: path.to_owned(),
                is_macro: *is_macro,
                range: range.clone(),
                name_range: name_range.clone(),
                sites: Vec::new(),
                calls: Vec::new(),
            });
            if helper.path != path || helper.range != *range {
                refused.insert(name.clone());
            }
            helper.sites.push(site.clone());
        }
        layout.sources.insert(path.to_owned(), src);
    }

    // 2. Header helpers that call them, to a fixpoint.
    // Only headers with an inline function or a function-like macro can
    // define a helper: the first round finds them (a fifth of the bytes;
    // register-definition headers are most of the rest), later rounds read
    // only those.
    let mut headers: Vec<String> = tree
        .files
        .iter()
        .filter(|p| p.ends_with(".h"))
        .cloned()
        .collect();
    let mut frontier: BTreeSet<String> = helpers.keys().cloned().collect();
    let mut first_round = true;
    while !frontier.is_empty() {
        let matcher = name_matcher(&frontier);
        type Scanned = (String, Option<(String, Vec<Definition>)>);
        let scanned: Vec<Scanned> =
            tree.scan_filtered(&headers, may_define_helpers, threads, |parser, file| {
                // Most headers name a helper without calling it: no parse.
                if !matcher.is_match(&file.text)
                    || calls_in(&file.text, 0..file.text.len(), &frontier)
                        .0
                        .is_empty()
                {
                    return Some((file.path, None));
                }
                let all = definitions(parser, &file.text);
                let calling: BTreeSet<&str> = all
                    .iter()
                    .filter(|(name, _, range, _)| {
                        !frontier.contains(name)
                            && !calls_in(&file.text, range.clone(), &frontier).0.is_empty()
                    })
                    .map(|(name, ..)| name.as_str())
                    .collect();
                // Every definition of those names: one defined twice in a
                // header (`#ifdef CONFIG_X` and its `#else` stub) is refused.
                let defs: Vec<Definition> = all
                    .iter()
                    .filter(|(name, ..)| calling.contains(name.as_str()))
                    .cloned()
                    .collect();
                Some((file.path, (!defs.is_empty()).then_some((file.text, defs))))
            })?;
        if first_round {
            headers = scanned.iter().map(|(p, _)| p.clone()).collect();
            first_round = false;
        }
        let found = scanned
            .into_iter()
            .filter_map(|(path, found)| found.map(|(src, defs)| (path, src, defs)));
        let mut next = BTreeSet::new();
        for (path, src, defs) in found {
            for (name, is_macro, range, name_range) in defs {
                if !built_for_x86(&path) {
                    if !refused.contains(&name) {
                        layout.uncovered.push(format!(
                            "{path}:{}: {name}() calls a helper with a site, in a header of another architecture",
                            line_of(&src, name_range.start)
                        ));
                    }
                    continue;
                }
                match helpers.get(&name) {
                    Some(h) if h.path != path || h.range != range => {
                        refused.insert(name);
                    }
                    Some(_) => {}
                    None => {
                        next.insert(name.clone());
                        helpers.insert(
                            name.clone(),
                            Helper {
                                name,
                                path: path.clone(),
                                is_macro,
                                range,
                                name_range,
                                sites: Vec::new(),
                                calls: Vec::new(),
                            },
                        );
                    }
                }
            }
            layout.sources.entry(path).or_insert(src);
        }
        frontier = next;
    }
    for name in &refused {
        if let Some(h) = helpers.remove(name) {
            layout.uncovered.push(format!(
                "{name}() ({}) is defined in several places (which one a file sees depends on its includes and configuration): its {} sites and its callers keep the stock helper",
                h.path,
                h.sites.len()
            ));
        }
    }

    // 3. The helper calls inside the helpers, and the order: callees first.
    let names: BTreeSet<String> = helpers.keys().cloned().collect();
    for helper in helpers.values_mut() {
        let src = &layout.sources[&helper.path];
        helper.calls = calls_in(src, helper.range.clone(), &names)
            .0
            .into_iter()
            .filter(|(r, n)| *r != helper.name_range && *n != helper.name)
            .collect();
    }
    let mut ordered: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        helpers: &BTreeMap<String, Helper>,
        ordered: &mut Vec<String>,
        on_path: &mut BTreeSet<String>,
    ) {
        if ordered.iter().any(|n| n == name) || !on_path.insert(name.to_owned()) {
            return;
        }
        for (_, callee) in &helpers[name].calls {
            visit(callee, helpers, ordered, on_path);
        }
        ordered.push(name.to_owned());
    }
    let mut on_path = BTreeSet::new();
    for name in helpers.keys() {
        visit(name, &helpers, &mut ordered, &mut on_path);
    }
    layout.helpers = ordered
        .iter()
        .map(|n| helpers.remove(n).expect("ordered from the map"))
        .collect();

    // 4. The `.c` files that call them.
    if names.is_empty() {
        return Ok(layout);
    }
    let sources: Vec<String> = tree
        .files
        .iter()
        .filter(|p| p.ends_with(".c"))
        .cloned()
        .collect();
    // A function-like macro named without `(` is not expanded: no use of it.
    let functions: BTreeSet<&str> = layout
        .helpers
        .iter()
        .filter(|h| !h.is_macro)
        .map(|h| h.name.as_str())
        .collect();
    let matcher = name_matcher(&names);
    type Found = (String, Vec<CallerEdit>, Vec<String>);
    let found: Vec<Found> = tree.scan_any(&sources, &matcher, threads, |_, file| {
        let src = &file.text;
        let (calls, bare) = calls_in(src, 0..src.len(), &names);
        // A file that defines a same-named function or macro has its own.
        let own: BTreeSet<&str> = calls
            .iter()
            .filter(|(r, _)| is_definition(src, r.start, r.end))
            .map(|(_, n)| n.as_str())
            .collect();
        let edits: Vec<CallerEdit> = calls
            .iter()
            .filter(|(_, n)| !own.contains(n.as_str()))
            .map(|(range, helper)| CallerEdit {
                range: range.clone(),
                helper: helper.clone(),
            })
            .collect();
        let notes: Vec<String> = bare
            .iter()
            .filter(|(_, n)| !own.contains(n.as_str()) && functions.contains(n.as_str()))
            .map(|(at, n)| {
                format!(
                    "{}:{}: {n} named without a call (its address taken?): that use keeps the stock helper",
                    file.path,
                    line_of(src, *at)
                )
            })
            .collect();
        (!edits.is_empty() || !notes.is_empty()).then(|| (file.path.clone(), edits, notes))
    })?;
    for (path, edits, notes) in found {
        if !edits.is_empty() {
            layout.callers.insert(path, edits);
        }
        layout.uncovered.extend(notes);
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_calls_not_members_comments_or_strings() {
        let names: BTreeSet<String> = ["xa_lock".to_owned()].into();
        let src = "x = xa_lock(a); s->xa_lock(b); /* xa_lock(c) */ \"xa_lock(d)\"; f(xa_lock);";
        let (calls, bare) = calls_in(src, 0..src.len(), &names);
        assert_eq!(calls, vec![(4..11, "xa_lock".to_owned())]);
        assert_eq!(bare.len(), 1);
    }

    #[test]
    fn tells_definitions_from_calls() {
        let src = "static void f(int a)\n{\n}\nvoid g(void) { f(1); }\n#define h(x) f(x)\n";
        assert!(is_definition(src, 12, 13));
        let call = src.find("f(1)").unwrap();
        assert!(!is_definition(src, call, call + 1));
        let h = src.find("h(x)").unwrap();
        assert!(is_definition(src, h, h + 1));
    }
}
