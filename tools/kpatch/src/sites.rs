//! Lock and unlock sites of one field, and the structures that declare it.
//!
//! A site is a call `API(&BASE->FIELD, ...)` (or `&BASE.FIELD`) where API is
//! an acquire or release primitive of the lock family and the field is the
//! *first* argument (the lock; `down_write_nest_lock(&a->rwsem,
//! &mm->mmap_lock)` locks `rwsem`, not `mmap_lock`). Sites inside `#define`
//! bodies count too: their bodies are parsed separately.
//!
//! Field names repeat across structures (`file_lock` is a spinlock in
//! `files_struct` and in genwqe's `genwqe_dev`), so each site's BASE is typed
//! where the file says how: a parameter, a local, a global, or `current`.

use crate::cparse::{self, address_of_field, call_args, callee_name, text, walk};
use crate::family::LockFamily;
use std::ops::Range;
use tree_sitter::{Node, Parser};

/// One call of a family API on the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// File of the call, relative to the tree's root.
    pub path: String,
    /// 1-based line of the call.
    pub line: usize,
    /// The API called.
    pub api: String,
    /// Whether the API releases the lock.
    pub is_release: bool,
    /// Byte range of the callee identifier in the file.
    pub callee: Range<usize>,
    /// Byte offset of the call's closing parenthesis.
    pub close_paren: usize,
    /// The structure BASE points to, when the file says.
    pub base_struct: Option<String>,
    /// Name of the function (or macro) the site is in.
    pub context: String,
    /// The call's text, for reports.
    pub call_text: String,
}

/// A structure field declared with one of the family's lock types.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldDecl {
    /// The declaring structure.
    pub structure: String,
    /// File of the declaration, relative to the tree's root.
    pub path: String,
    /// 1-based line of the declaration.
    pub line: usize,
}

/// `#define FIELD a.b.c`: the field is a name for a nested member
/// (`#define d_lock d_lockref.lock` in include/linux/dcache.h).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldAlias {
    /// The member path the name expands to: `["d_lockref", "lock"]`.
    pub members: Vec<String>,
    /// File of the `#define`, relative to the tree's root.
    pub path: String,
    /// 1-based line of the `#define`.
    pub line: usize,
}

/// A structure member of any type: `struct lockref d_lockref;` in `dentry`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberDecl {
    /// The structure the member belongs to.
    pub structure: String,
    /// The struct, union or typedef name of the member's type.
    pub member_type: String,
}

/// Everything one file contributes for a field.
#[derive(Debug, Default)]
pub struct FileFindings {
    /// Lock and unlock sites of the field.
    pub sites: Vec<Site>,
    /// Declarations of the field with a family lock type.
    pub decls: Vec<FieldDecl>,
    /// `#define`s that make the field a name for a nested member.
    pub aliases: Vec<FieldAlias>,
}

/// Finds the sites and declarations of `field` for `family` in one file.
pub fn scan_file(
    parser: &mut Parser,
    path: &str,
    src: &str,
    family: &LockFamily,
    field: &str,
) -> FileFindings {
    let tree = cparse::parse(parser, src);
    let mut findings = FileFindings::default();
    let root = tree.root_node();
    let macros = cparse::function_like_macros(src);
    let in_macro = |offset: usize| macros.iter().any(|m| m.range.contains(&offset));
    walk(root, |node| match node.kind() {
        "call_expression" if !in_macro(node.start_byte()) => {
            if let Some(site) = site_at(node, src, 0, family, field, path, src) {
                findings.sites.push(site);
            }
        }
        "struct_specifier" => findings
            .decls
            .extend(field_decls(node, src, family, field, path)),
        _ => {}
    });
    for m in macros
        .iter()
        .filter(|m| src[m.value.clone()].contains(field))
    {
        let parsed = cparse::parse_macro_body(parser, &src[m.value.clone()]);
        let offset = m.value.start as isize - parsed.prefix_len as isize;
        walk(parsed.tree.root_node(), |inner| {
            if inner.kind() == "call_expression" {
                if let Some(mut site) =
                    site_at(inner, &parsed.src, offset, family, field, path, src)
                {
                    site.context = format!("#define {}", m.name);
                    findings.sites.push(site);
                }
            }
        });
    }
    findings.sites.sort_by_key(|s| s.callee.start);
    findings.aliases = field_aliases(src, field, path);
    findings
}

/// Object-like macros that make `field` a name for a nested member.
pub fn field_aliases(src: &str, field: &str, path: &str) -> Vec<FieldAlias> {
    let is_member = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut aliases = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("define") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        if words.next() != Some(field) {
            continue;
        }
        let (Some(value), None) = (words.next(), words.next()) else {
            continue;
        };
        let members: Vec<String> = value.split('.').map(str::to_owned).collect();
        if members.len() >= 2 && members.iter().all(|m| is_member(m)) {
            aliases.push(FieldAlias {
                members,
                path: path.to_owned(),
                line: i + 1,
            });
        }
    }
    aliases
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `word` occurs in `bytes` as a whole identifier.
pub fn has_word(bytes: &[u8], word: &str) -> bool {
    memchr::memmem::find_iter(bytes, word.as_bytes()).any(|at| {
        let end = at + word.len();
        (at == 0 || !is_ident(bytes[at - 1])) && bytes.get(end).is_none_or(|b| !is_ident(*b))
    })
}

/// Whether `text` holds `field` as a whole word right after `->` or `.`.
fn has_member(text: &[u8], field: &str) -> bool {
    memchr::memmem::find_iter(text, field.as_bytes()).any(|at| {
        let end = at + field.len();
        let whole =
            (at == 0 || !is_ident(text[at - 1])) && text.get(end).is_none_or(|b| !is_ident(*b));
        let before = text[..at].trim_ascii_end();
        whole && (before.ends_with(b"->") || before.ends_with(b"."))
    })
}

/// Whether a file can hold a site of `field`: a call of one of `apis`
/// whose first argument names `field` as a member (`spin_lock(&z->lock)`,
/// `spin_lock(&(xa)->xa_lock)`). Textual and cheap: parsing is the slow part
/// of a scan, and a common name such as `lock` is a member in thousands of
/// files that never pass it to the family's API.
pub fn may_have_site(bytes: &[u8], field: &str, apis: &aho_corasick::AhoCorasick) -> bool {
    if memchr::memmem::find(bytes, field.as_bytes()).is_none() {
        return false;
    }
    apis.find_iter(bytes).any(|m| {
        if (m.start() > 0 && is_ident(bytes[m.start() - 1]))
            || bytes.get(m.end()).is_some_and(|b| is_ident(*b))
        {
            return false;
        }
        let rest = bytes[m.end()..].trim_ascii_start();
        if rest.first() != Some(&b'(') {
            return false;
        }
        // The first argument: up to a `,` or the `)` at depth one.
        let mut depth = 0usize;
        let end = rest
            .iter()
            .position(|&b| {
                match b {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        return depth == 0;
                    }
                    b',' if depth == 1 => return true,
                    b';' | b'{' | b'}' => return true,
                    _ => {}
                }
                false
            })
            .unwrap_or(rest.len());
        has_member(&rest[..end], field)
    })
}

/// Whether a file can declare `field` with one of `types` (the field as a
/// word in a statement that names the type: `spinlock_t lock;`,
/// `spinlock_t a, lock ____cacheline_aligned;`) or make it a name for a
/// nested member (`#define d_lock d_lockref.lock`).
pub fn may_declare(bytes: &[u8], field: &str, types: &[&str]) -> bool {
    if !has_word(bytes, field) {
        return false;
    }
    let declares = types.iter().any(|ty| {
        memchr::memmem::find_iter(bytes, ty.as_bytes()).any(|at| {
            let rest = &bytes[at + ty.len()..];
            let end = memchr::memchr3(b';', b'{', b'(', rest).unwrap_or(rest.len());
            has_word(&rest[..end], field)
        })
    });
    declares
        || memchr::memmem::find(bytes, b"define").is_some()
            && !field_aliases(&String::from_utf8_lossy(bytes), field, "").is_empty()
}

/// Whether a file can hold a site, a declaration or an alias of `field`:
/// [`may_have_site`] or [`may_declare`].
pub fn may_mention(
    bytes: &[u8],
    field: &str,
    apis: &aho_corasick::AhoCorasick,
    types: &[&str],
) -> bool {
    may_have_site(bytes, field, apis) || may_declare(bytes, field, types)
}

/// Declarations of `field` with one of `family`'s lock types, in one file.
pub fn lock_decls(
    parser: &mut Parser,
    path: &str,
    src: &str,
    family: &LockFamily,
    field: &str,
) -> Vec<FieldDecl> {
    let tree = cparse::parse(parser, src);
    let mut decls = Vec::new();
    walk(tree.root_node(), |node| {
        if node.kind() == "struct_specifier" {
            decls.extend(field_decls(node, src, family, field, path));
        }
    });
    decls
}

/// Members named `member` of any type, in the named structures of a file.
pub fn member_decls(parser: &mut Parser, src: &str, member: &str) -> Vec<MemberDecl> {
    let tree = cparse::parse(parser, src);
    let mut found = Vec::new();
    walk(tree.root_node(), |node| {
        if node.kind() != "struct_specifier" && node.kind() != "union_specifier" {
            return;
        }
        let Some(name) = node.child_by_field_name("name") else {
            return;
        };
        for (words, _) in member_segments(node, src, member) {
            let mut w = words.split_whitespace();
            let member_type = match w.next() {
                Some("struct" | "union") => w.next(),
                first => first,
            };
            if let Some(member_type) = member_type {
                found.push(MemberDecl {
                    structure: text(name, src).to_owned(),
                    member_type: member_type.trim_end_matches('*').to_owned(),
                });
            }
        }
    });
    found
}

/// `node` in `node_src` is a site if it calls a family API on `field`;
/// `offset` maps `node_src` positions to `file_src` positions.
fn site_at(
    call: Node,
    node_src: &str,
    offset: isize,
    family: &LockFamily,
    field: &str,
    path: &str,
    file_src: &str,
) -> Option<Site> {
    let api = callee_name(call, node_src)?;
    if !family.is_site_api(api) {
        return None;
    }
    let lock_arg = *call_args(call).first()?;
    let field_expr = address_of_field(lock_arg)?;
    if text(field_expr.child_by_field_name("field")?, node_src) != field {
        return None;
    }
    let shift = |pos: usize| (pos as isize + offset) as usize;
    let callee = call.child_by_field_name("function")?;
    let callee_range = shift(callee.start_byte())..shift(callee.end_byte());
    let close_paren = shift(call.end_byte() - 1);
    debug_assert_eq!(&file_src[callee_range.clone()], api);
    Some(Site {
        path: path.to_owned(),
        line: file_src[..callee_range.start].matches('\n').count() + 1,
        api: api.to_owned(),
        is_release: family.release.contains(&api),
        callee: callee_range,
        close_paren,
        base_struct: if offset == 0 {
            base_struct(field_expr, node_src)
        } else {
            None
        },
        context: enclosing_function(call, node_src).unwrap_or_default(),
        call_text: text(call, node_src)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    })
}

fn enclosing_function(node: Node, src: &str) -> Option<String> {
    let mut current = node.parent();
    while let Some(n) = current {
        if n.kind() == "function_definition" {
            return cparse::function_name(n, src).map(str::to_owned);
        }
        current = n.parent();
    }
    None
}

/// The structure the BASE of `BASE->field` / `BASE.field` has, if the file says.
pub fn base_struct(field_expr: Node, src: &str) -> Option<String> {
    let base = cparse::unparen(field_expr.child_by_field_name("argument")?);
    match base.kind() {
        "identifier" => {
            let name = text(base, src);
            if name == "current" {
                return Some("task_struct".to_owned());
            }
            declared_type(base, name, src)
        }
        "cast_expression" => type_name(
            base.child_by_field_name("type")?
                .child_by_field_name("type")?,
            src,
        ),
        _ => None,
    }
}

/// The struct (or typedef) name of a type node.
fn type_name(ty: Node, src: &str) -> Option<String> {
    match ty.kind() {
        "struct_specifier" | "union_specifier" => {
            Some(text(ty.child_by_field_name("name")?, src).to_owned())
        }
        "type_identifier" => Some(text(ty, src).to_owned()),
        _ => None,
    }
}

/// Looks `name` up in the scopes around `at`: block declarations, the
/// function's parameters, then file-scope declarations.
fn declared_type(at: Node, name: &str, src: &str) -> Option<String> {
    let mut scope = at.parent();
    while let Some(node) = scope {
        let mut cursor = node.walk();
        let declarations: Vec<Node> = match node.kind() {
            "compound_statement" | "translation_unit" => node
                .named_children(&mut cursor)
                .filter(|c| c.kind() == "declaration")
                .collect(),
            "function_definition" => cparse::function_declarator(node)
                .and_then(|d| d.child_by_field_name("parameters"))
                .map(|p| {
                    let mut cursor = p.walk();
                    p.named_children(&mut cursor)
                        .filter(|c| c.kind() == "parameter_declaration")
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for declaration in declarations {
            let mut cursor = declaration.walk();
            let declares = declaration
                .children_by_field_name("declarator", &mut cursor)
                .any(|d| cparse::declarator_name(d, src) == Some(name));
            if declares {
                return type_name(declaration.child_by_field_name("type")?, src);
            }
        }
        scope = node.parent();
    }
    None
}

/// Declarations of `field` with a family lock type directly in a named
/// struct (or in its anonymous members). Textual inside the body: attribute
/// macros such as `____cacheline_aligned_in_smp` derail the field grammar.
fn field_decls(
    node: Node,
    src: &str,
    family: &LockFamily,
    field: &str,
    path: &str,
) -> Vec<FieldDecl> {
    let Some(name) = node.child_by_field_name("name") else {
        return Vec::new();
    };
    member_segments(node, src, field)
        .into_iter()
        .filter(|(words, _)| {
            family.field_types.iter().any(|ty| {
                words
                    .strip_prefix(ty)
                    .is_some_and(|rest| rest.starts_with(' '))
            })
        })
        .map(|(_, absolute)| FieldDecl {
            structure: text(name, src).to_owned(),
            path: path.to_owned(),
            line: src[..absolute].matches('\n').count() + 1,
        })
        .collect()
}

/// The member declarations (whitespace-squashed, with their byte offset)
/// that declare `field` directly in the struct `node` or in its anonymous
/// members; not in nested named structs, which own their members.
fn member_segments(node: Node, src: &str, field: &str) -> Vec<(String, usize)> {
    let Some(body) = node.child_by_field_name("body") else {
        return Vec::new();
    };
    let body_text = cparse::blank_comments(text(body, src));
    if !body_text.contains(field) {
        return Vec::new();
    }
    let mut nested: Vec<Range<usize>> = Vec::new();
    walk(body, |n| {
        if n != body
            && matches!(n.kind(), "struct_specifier" | "union_specifier")
            && n.child_by_field_name("name").is_some()
        {
            if let Some(b) = n.child_by_field_name("body") {
                nested.push(b.start_byte() - body.start_byte()..b.end_byte() - body.start_byte());
            }
        }
    });
    let mut segments = Vec::new();
    let mut start = 0;
    for (i, c) in body_text.char_indices() {
        if !matches!(c, ';' | '{' | '}') {
            continue;
        }
        let segment = &body_text[start..i];
        let segment_start = start;
        start = i + 1;
        if nested.iter().any(|r| r.contains(&segment_start)) {
            continue;
        }
        // Preprocessor lines inside the body (`#ifdef CONFIG_X`) are not declarations.
        let code: String = segment
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join(" ");
        let words = code.split_whitespace().collect::<Vec<_>>().join(" ");
        let declares = words
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .skip(1)
            .any(|w| w == field)
            && !words.contains('(');
        if declares {
            let absolute =
                body.start_byte() + segment_start + (segment.len() - segment.trim_start().len());
            segments.push((words, absolute));
        }
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin() -> &'static LockFamily {
        LockFamily::by_acquire_api("spin_lock").unwrap()
    }

    #[test]
    fn finds_lock_and_unlock_sites_with_their_structure() {
        let src = "struct files_struct init_files;\n\
int alloc_fd(struct files_struct *files, unsigned flags)\n{\n\tstruct genwqe_dev *cd = x;\n\
\tspin_lock(&files->file_lock);\n\tspin_lock_irqsave(&cd->file_lock, flags);\n\tspin_lock_init(&files->file_lock);\n\
\tspin_lock(&files->open_file_lock);\n\tspin_unlock(&init_files.file_lock);\n\tassert_spin_locked(&files->file_lock);\n}\n";
        let mut p = cparse::parser();
        let found = scan_file(&mut p, "fs/file.c", src, spin(), "file_lock");
        let summary: Vec<_> = found
            .sites
            .iter()
            .map(|s| {
                (
                    s.line,
                    s.api.as_str(),
                    s.base_struct.as_deref(),
                    s.is_release,
                    s.context.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (5, "spin_lock", Some("files_struct"), false, "alloc_fd"),
                (
                    6,
                    "spin_lock_irqsave",
                    Some("genwqe_dev"),
                    false,
                    "alloc_fd"
                ),
                (9, "spin_unlock", Some("files_struct"), true, "alloc_fd"),
            ]
        );
        let site = &found.sites[1];
        assert_eq!(&src[site.callee.clone()], "spin_lock_irqsave");
        assert_eq!(&src[site.close_paren..site.close_paren + 1], ")");
    }

    #[test]
    fn finds_sites_in_macro_bodies_and_the_lock_argument_only() {
        let src = "#define lock_files(f) \\\n\tspin_lock(&(f)->file_lock)\n\
void g(struct mm_struct *mm) { down_write_nest_lock(&a->rwsem, &mm->file_lock); }\n";
        let mut p = cparse::parser();
        let found = scan_file(&mut p, "x.h", src, spin(), "file_lock");
        assert_eq!(found.sites.len(), 1);
        let site = &found.sites[0];
        assert_eq!(
            (site.line, site.context.as_str()),
            (2, "#define lock_files")
        );
        assert_eq!(&src[site.callee.clone()], "spin_lock");
        assert_eq!(&src[site.close_paren - 9..=site.close_paren], "file_lock)");
    }

    #[test]
    fn finds_field_declarations_behind_attributes_and_in_anonymous_members() {
        let src = "struct files_struct {\n\tatomic_t count;\n\t/* lock; */\n\tspinlock_t file_lock ____cacheline_aligned_in_smp;\n};\n\
struct mm_struct {\n\tstruct {\n\t\tspinlock_t a, file_lock;\n\t};\n\tstruct inner { spinlock_t file_lock; } i;\n\tstruct mutex file_lock2;\n};\n";
        let mut p = cparse::parser();
        let found = scan_file(&mut p, "x.h", src, spin(), "file_lock");
        let structs: Vec<_> = found
            .decls
            .iter()
            .map(|d| (d.structure.as_str(), d.line))
            .collect();
        assert_eq!(
            structs,
            [("files_struct", 4), ("mm_struct", 8), ("inner", 10)]
        );
    }

    #[test]
    fn a_field_defined_as_a_nested_member_is_an_alias() {
        let src = "#define d_lock\td_lockref.lock\n#define d_iname x\n#define other(x) a.b\n\
struct dentry {\n\tunsigned int d_flags;\n\tstruct lockref d_lockref;\n};\n";
        let aliases = field_aliases(src, "d_lock", "dcache.h");
        assert_eq!(aliases.len(), 1);
        assert_eq!(aliases[0].members, ["d_lockref", "lock"]);
        assert_eq!(aliases[0].line, 1);
        let mut p = cparse::parser();
        assert_eq!(
            member_decls(&mut p, src, "d_lockref"),
            [MemberDecl {
                structure: "dentry".into(),
                member_type: "lockref".into()
            }]
        );
        let apis = aho_corasick::AhoCorasick::new(["spin_lock"]).unwrap();
        assert!(may_mention(
            src.as_bytes(),
            "d_lock",
            &apis,
            &["spinlock_t"]
        ));
    }

    #[test]
    fn the_prefilter_wants_a_member_access_with_an_api_or_a_lock_type() {
        let apis = aho_corasick::AhoCorasick::new(["spin_lock", "spin_unlock"]).unwrap();
        let may = |src: &str| may_mention(src.as_bytes(), "lock", &apis, &["spinlock_t"]);
        assert!(may("void f(struct a *a) { spin_lock(&a->lock); }"));
        assert!(may("void f(struct a *a) { spin_lock(&a-> lock); }"));
        assert!(may("struct a { spinlock_t lock; };"));
        assert!(
            !may("void f(void) { spin_lock(&block->clock); }"),
            "substrings only"
        );
        assert!(
            !may("void f(struct a *a) { mutex_lock(&a->lock); }"),
            "no API of the family"
        );
        assert!(!may("int lock;"));
    }
}
