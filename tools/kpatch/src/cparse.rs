//! Thin helpers over tree-sitter-c: parsing, traversal, and the few node
//! shapes the rest of the crate asks about (definitions, calls, field sites).
//!
//! Kernel C is full of attribute macros (`__sched`, `__lockfunc`,
//! `____cacheline_aligned_in_smp`) that a parser without the preprocessor
//! cannot know. tree-sitter recovers locally: it wraps the unknown token in an
//! `ERROR` node and still returns the surrounding `function_definition`, its
//! declarator and its body. The helpers below therefore never trust the text
//! *before* a declarator (see [`definition_head_start`]).

use std::ops::Range;
use tree_sitter::{Node, Parser, Tree};

/// A parser for C. Cheap to create; one per thread.
pub fn parser() -> Parser {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_c::LANGUAGE.into())
        .expect("tree-sitter-c grammar matches the tree-sitter runtime");
    parser
}

/// Parses `src`; tree-sitter only fails without a language or on cancellation,
/// neither of which this crate uses.
pub fn parse(parser: &mut Parser, src: &str) -> Tree {
    parser
        .parse(src, None)
        .expect("parse without timeout or cancellation")
}

/// The source text of `node`.
pub fn text<'s>(node: Node, src: &'s str) -> &'s str {
    &src[node.byte_range()]
}

/// Calls `visit` on every node of the subtree rooted at `root`, in source order.
pub fn walk<'t>(root: Node<'t>, mut visit: impl FnMut(Node<'t>)) {
    let mut cursor = root.walk();
    loop {
        visit(cursor.node());
        if cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.node() == root {
                return;
            }
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return;
            }
        }
    }
}

/// How many `ERROR` and `MISSING` nodes the tree has: the measure of "still
/// parses" for a patched file.
pub fn error_count(tree: &Tree) -> usize {
    let mut count = 0;
    walk(tree.root_node(), |node| {
        if node.is_error() || node.is_missing() {
            count += 1;
        }
    });
    count
}

/// Names a file defines or declares as functions, or as function-like macros.
pub fn defined_names(parser: &mut Parser, src: &str) -> std::collections::HashSet<String> {
    defined_names_in(&parse(parser, src), src)
}

/// [`defined_names`] of a file already parsed into `tree`.
pub fn defined_names_in(tree: &Tree, src: &str) -> std::collections::HashSet<String> {
    let mut names: std::collections::HashSet<String> = function_like_macros(src)
        .into_iter()
        .map(|m| m.name)
        .collect();
    walk(tree.root_node(), |node| match node.kind() {
        "function_definition" => names.extend(function_name(node, src).map(str::to_owned)),
        "declaration" => {
            let mut cursor = node.walk();
            for declarator in node.children_by_field_name("declarator", &mut cursor) {
                if declarator.kind() == "function_declarator" {
                    names.extend(declarator_name(declarator, src).map(str::to_owned));
                }
            }
        }
        _ => {}
    });
    names
}

/// 1-based lines of the `ERROR` and `MISSING` nodes of a tree.
pub fn error_lines(tree: &Tree) -> Vec<usize> {
    let mut lines = Vec::new();
    walk(tree.root_node(), |node| {
        if node.is_error() || node.is_missing() {
            lines.push(node.start_position().row + 1);
        }
    });
    lines
}

/// The identifier a (possibly pointer-wrapped) declarator declares.
pub fn declarator_name<'s>(mut node: Node, src: &'s str) -> Option<&'s str> {
    loop {
        match node.kind() {
            "identifier" | "field_identifier" | "type_identifier" => return Some(text(node, src)),
            _ => node = node.child_by_field_name("declarator")?,
        }
    }
}

/// The `function_declarator` inside a definition's declarator (which may be
/// wrapped in pointer declarators for functions returning pointers).
pub fn function_declarator(definition: Node) -> Option<Node> {
    let mut node = definition.child_by_field_name("declarator")?;
    while node.kind() != "function_declarator" {
        node = node.child_by_field_name("declarator")?;
    }
    Some(node)
}

/// The name a `function_definition` defines.
pub fn function_name<'s>(definition: Node, src: &'s str) -> Option<&'s str> {
    let declarator = function_declarator(definition)?;
    declarator_name(declarator.child_by_field_name("declarator")?, src)
}

/// Parameter names of a `function_definition`, in order.
pub fn function_params(definition: Node, src: &str) -> Vec<String> {
    let Some(params) =
        function_declarator(definition).and_then(|d| d.child_by_field_name("parameters"))
    else {
        return Vec::new();
    };
    let mut cursor = params.walk();
    params
        .named_children(&mut cursor)
        .filter(|p| p.kind() == "parameter_declaration")
        .filter_map(|p| p.child_by_field_name("declarator"))
        .filter_map(|d| declarator_name(d, src).map(str::to_owned))
        .collect()
}

/// The callee name of a `call_expression` whose function is a plain identifier.
pub fn callee_name<'s>(call: Node, src: &'s str) -> Option<&'s str> {
    let function = call.child_by_field_name("function")?;
    (function.kind() == "identifier").then(|| text(function, src))
}

/// The argument expressions of a `call_expression`.
pub fn call_args(call: Node) -> Vec<Node> {
    let Some(args) = call.child_by_field_name("arguments") else {
        return Vec::new();
    };
    let mut cursor = args.walk();
    args.named_children(&mut cursor)
        .filter(|n| n.kind() != "comment")
        .collect()
}

/// Strips parentheses around an expression.
pub fn unparen(mut node: Node) -> Node {
    while node.kind() == "parenthesized_expression" {
        match node.named_child(0) {
            Some(inner) => node = inner,
            None => break,
        }
    }
    node
}

/// If `arg` is `&BASE->FIELD` or `&BASE.FIELD` (parentheses allowed), returns
/// the `field_expression` node.
pub fn address_of_field(arg: Node) -> Option<Node> {
    let arg = unparen(arg);
    if arg.kind() != "pointer_expression" || arg.child(0)?.kind() != "&" {
        return None;
    }
    let target = unparen(arg.child_by_field_name("argument")?);
    (target.kind() == "field_expression").then_some(target)
}

/// Whether any identifier in `node`'s subtree is `name`.
pub fn mentions_identifier(node: Node, src: &str, name: &str) -> bool {
    let mut found = false;
    walk(node, |n| {
        if !found && n.kind() == "identifier" && text(n, src) == name {
            found = true;
        }
    });
    found
}

/// Whether any field in `node`'s subtree is named `field`.
pub fn mentions_field(node: Node, src: &str, field: &str) -> bool {
    let mut found = false;
    walk(node, |n| {
        if !found && n.kind() == "field_identifier" && text(n, src) == field {
            found = true;
        }
    });
    found
}

/// Where the head of the definition whose name starts at `name_start` begins:
/// scan back to the previous `;`, `}`, `{`, end of comment or preprocessor
/// line, then forward over whitespace. Textual on purpose: tree-sitter may
/// have split `static noinline struct x __sched *` into an ERROR node or a
/// bogus declaration.
pub fn definition_head_start(src: &str, name_start: usize) -> usize {
    let bytes = src.as_bytes();
    let mut start = name_start;
    while start > 0 {
        let c = bytes[start - 1];
        if matches!(c, b';' | b'}' | b'{') || (c == b'/' && start >= 2 && bytes[start - 2] == b'*')
        {
            break;
        }
        if c == b'\n' {
            // A preprocessor line (or the tail of a continued one) or a line
            // comment on the previous line ends the head.
            let line_start = src[..start - 1].rfind('\n').map_or(0, |i| i + 1);
            let line = &src[line_start..start - 1];
            let continues_previous =
                line_start >= 2 && src[..line_start - 1].trim_end_matches('\r').ends_with('\\');
            let trimmed = line.trim_start();
            if trimmed.starts_with('#')
                || trimmed.starts_with("//")
                || line.ends_with('\\')
                || continues_previous
            {
                break;
            }
        }
        start -= 1;
    }
    while start < name_start && bytes[start].is_ascii_whitespace() {
        start += 1;
    }
    start
}

/// A macro body parsed on its own: tree-sitter leaves `#define` values as raw
/// text, so the body is wrapped in a function and parsed again.
pub struct MacroBody {
    /// The wrapped body's syntax tree.
    pub tree: Tree,
    /// The wrapped source the tree was parsed from.
    pub src: String,
    /// Bytes of `src` before the body text.
    pub prefix_len: usize,
}

/// The function header a macro body is wrapped in before parsing.
pub const MACRO_PREFIX: &str = "void __kpatch_macro_body(void)\n{\n";

/// Parses a macro value as the body of a function; offsets in it are shifted by `prefix_len`.
pub fn parse_macro_body(parser: &mut Parser, body: &str) -> MacroBody {
    let src = format!("{MACRO_PREFIX}{body}\n;}}\n");
    let tree = parse(parser, &src);
    MacroBody {
        tree,
        src,
        prefix_len: MACRO_PREFIX.len(),
    }
}

/// Replaces comments by spaces (keeping byte offsets), for textual scans.
pub fn blank_comments(src: &str) -> String {
    let mut out = src.as_bytes().to_vec();
    let mut i = 0;
    while i + 1 < out.len() {
        if out[i] == b'/' && out[i + 1] == b'*' {
            let end = src[i + 2..].find("*/").map_or(out.len(), |e| i + 2 + e + 2);
            for b in &mut out[i..end] {
                if *b != b'\n' {
                    *b = b' ';
                }
            }
            i = end;
        } else if out[i] == b'/' && out[i + 1] == b'/' {
            while i < out.len() && out[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// A line with its backslash continuations joined.
pub struct LogicalLine<'s> {
    /// The line's text, continuations joined.
    pub text: std::borrow::Cow<'s, str>,
    /// Byte range in the file, continuations and final newline included.
    pub range: Range<usize>,
}

/// Splits `src` into logical lines, as the preprocessor sees them.
pub fn logical_lines(src: &str) -> Vec<LogicalLine<'_>> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < src.len() {
        let mut end = start;
        loop {
            let line_end = src[end..].find('\n').map_or(src.len(), |i| end + i);
            let continued = src[end..line_end].trim_end_matches('\r').ends_with('\\');
            end = (line_end + 1).min(src.len());
            if !continued || end >= src.len() {
                break;
            }
        }
        let raw = &src[start..end];
        let text = if raw.contains("\\\n") {
            raw.replace("\\\n", " ").into()
        } else {
            raw.into()
        };
        lines.push(LogicalLine {
            text,
            range: start..end,
        });
        start = end;
    }
    lines
}

/// A function-like macro, found textually (the preprocessor is line-based;
/// tree-sitter sometimes folds a `#define` into an ERROR node).
#[derive(Debug, Clone)]
pub struct MacroDef {
    /// The macro name.
    pub name: String,
    /// Byte range of the name.
    pub name_range: Range<usize>,
    /// Parameter names, in order.
    pub params: Vec<String>,
    /// The parameter list with its parentheses.
    pub params_range: Range<usize>,
    /// The replacement text (continuations included).
    pub value: Range<usize>,
    /// From `#` to the end of the value.
    pub range: Range<usize>,
}

/// Every function-like `#define` in `src`, in file order.
pub fn function_like_macros(src: &str) -> Vec<MacroDef> {
    let mut macros = Vec::new();
    for line in logical_lines(src) {
        let raw = &src[line.range.clone()];
        let Some(hash) = raw
            .find(|c: char| !c.is_whitespace())
            .filter(|&i| raw[i..].starts_with('#'))
        else {
            continue;
        };
        let after_hash = hash + 1;
        let rest = &raw[after_hash..];
        let define_at = after_hash + (rest.len() - rest.trim_start().len());
        if !raw[define_at..].starts_with("define") {
            continue;
        }
        let after_define = define_at + "define".len();
        let name_start =
            after_define + (raw[after_define..].len() - raw[after_define..].trim_start().len());
        let name_len = raw[name_start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(0);
        let params_start = name_start + name_len;
        if name_len == 0 || !raw[params_start..].starts_with('(') {
            continue; // object-like macro
        }
        let Some(close) = raw[params_start..].find(')').map(|i| params_start + i) else {
            continue;
        };
        let params = raw[params_start + 1..close]
            .split(',')
            .map(|p| p.trim().trim_end_matches('\\').trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let value_end = raw.trim_end().len();
        let base = line.range.start;
        macros.push(MacroDef {
            name: raw[name_start..params_start].to_owned(),
            name_range: base + name_start..base + params_start,
            params,
            params_range: base + params_start..base + close + 1,
            value: base + (close + 1).min(value_end)..base + value_end,
            range: base + hash..base + value_end,
        });
    }
    macros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_function_behind_attribute_macros() {
        let src = "static noinline struct rw_semaphore __sched *\nrwsem_down_write_slowpath(struct rw_semaphore *sem, int state)\n{ return sem; }\n";
        let mut p = parser();
        let tree = parse(&mut p, src);
        let mut names = Vec::new();
        walk(tree.root_node(), |n| {
            if n.kind() == "function_definition" {
                names.push(function_name(n, src).unwrap().to_owned());
                let name_start = src.find("rwsem_down").unwrap();
                assert_eq!(definition_head_start(src, name_start), 0);
                assert_eq!(function_params(n, src), ["sem", "state"]);
            }
        });
        assert_eq!(names, ["rwsem_down_write_slowpath"]);
    }

    #[test]
    fn finds_address_of_field_through_parentheses() {
        let src = "void f(void) { spin_lock(&(files)->file_lock); spin_lock(&lock); }";
        let mut p = parser();
        let tree = parse(&mut p, src);
        let mut fields = Vec::new();
        walk(tree.root_node(), |n| {
            if n.kind() == "call_expression" {
                if let Some(f) = address_of_field(call_args(n)[0]) {
                    fields.push(text(f.child_by_field_name("field").unwrap(), src).to_owned());
                }
            }
        });
        assert_eq!(fields, ["file_lock"]);
    }

    #[test]
    fn macro_bodies_with_continuations_parse() {
        let body = "do {\t\t\\\n\t\ttypecheck(unsigned long, flags);\t\\\n\t\tflags = _raw_spin_lock_irqsave(lock);\t\\\n\t} while (0)";
        let mut p = parser();
        let parsed = parse_macro_body(&mut p, body);
        let mut callees = Vec::new();
        walk(parsed.tree.root_node(), |n| {
            if n.kind() == "call_expression" {
                callees.extend(callee_name(n, &parsed.src).map(str::to_owned));
            }
        });
        assert!(
            callees.contains(&"_raw_spin_lock_irqsave".to_owned()),
            "{callees:?}"
        );
    }

    #[test]
    fn head_start_stops_at_preprocessor_lines_and_comments() {
        let src =
            "#endif\n/* doc */\nint __sched down_write_killable(struct rw_semaphore *sem)\n{}";
        let start = definition_head_start(src, src.find("down_write_killable").unwrap());
        assert_eq!(&src[start..start + 3], "int");
        let src = "#define m(x) \\\n\tdo { } while (0)\n\nstatic __always_inline void f(void) {}";
        let start = definition_head_start(src, src.find("f(").unwrap());
        assert_eq!(&src[start..start + 6], "static");
        let src = "#ifndef CONFIG_X\nnoinline void __lockfunc f(void) {}";
        let start = definition_head_start(src, src.find("f(").unwrap());
        assert_eq!(&src[start..start + 8], "noinline");
    }

    #[test]
    fn blanking_comments_keeps_offsets() {
        let src = "a /* b; */ c // d;\ne";
        let blank = blank_comments(src);
        assert_eq!(blank.len(), src.len());
        assert!(!blank.contains(';'));
        assert_eq!(&blank[18..], "\ne");
    }

    #[test]
    fn finds_function_like_macros_textually() {
        let src = "#define A 1\n# define raw_spin_lock_irqsave(lock, flags)\t\\\n\tdo { flags = f(lock); } while (0)\nint x;\n#define g(x) h(x)";
        let macros = function_like_macros(src);
        let names: Vec<_> = macros
            .iter()
            .map(|m| (m.name.as_str(), m.params.clone()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "raw_spin_lock_irqsave",
                    vec!["lock".to_owned(), "flags".to_owned()]
                ),
                ("g", vec!["x".to_owned()])
            ]
        );
        assert!(src[macros[0].value.clone()]
            .trim_start()
            .starts_with("\\\n\tdo {"));
        assert!(src[macros[0].value.clone()].ends_with("while (0)"));
        assert_eq!(&src[macros[1].range.clone()], "#define g(x) h(x)");
        assert_eq!(&src[macros[0].params_range.clone()], "(lock, flags)");
    }
}
