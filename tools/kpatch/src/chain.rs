//! The call chain from a public lock API down to its slowpath, read from the
//! tree's own lock implementation (`include/linux/spinlock*.h`,
//! `kernel/locking/*.c`, ...), following function-like macros:
//!
//! ```text
//! spin_lock -> raw_spin_lock (macro) -> _raw_spin_lock -> __raw_spin_lock
//!   -> [LOCK_CONTENDED expands to] do_raw_spin_lock -> arch_spin_lock (macro)
//!   -> queued_spin_lock -> queued_spin_lock_slowpath
//! ```
//!
//! One step: among the calls in a definition's body that pass the lock
//! parameter (not its lockdep `dep_map`) to another lock definition, take the
//! one whose name says `slowpath`, else the last one. A macro that receives
//! function names (`LOCK_CONTENDED(lock, try, fn)`) is expanded: the step goes
//! to the function it ends up calling. The chain ends at a function that
//! handles contention (`*slowpath*`, `*wake*`) or calls no further lock code.

use crate::config::BuildConfig;
use crate::cparse::{self, call_args, callee_name, text, walk};
use crate::tree::KernelTree;
use crate::Error;
use std::collections::HashMap;
use std::ops::Range;
use tree_sitter::Node;

/// Where the lock implementation lives.
const LOCK_DIRS: &[&str] = &[
    "include/linux/",
    "include/asm-generic/",
    "arch/x86/include/asm/",
    "kernel/locking/",
];
const LOCK_FILE_WORDS: &[&str] = &["spinlock", "rwlock", "rwsem", "mutex", "lockdep"];

/// Whether a definition is a C function or a function-like macro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefKind {
    /// A `static inline` or out-of-line C function.
    Function,
    /// A function-like `#define`.
    Macro,
}

/// One live definition of a lock-implementation function or macro.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The function or macro name.
    pub name: String,
    /// File of the definition, relative to the tree's root.
    pub path: String,
    /// Function or macro.
    pub kind: DefKind,
    /// Parameter names, in order.
    pub params: Vec<String>,
    /// Start of the definition (`static inline ...` or `#define`).
    pub start: usize,
    /// End of the definition (after the body or the macro value).
    pub end: usize,
    /// Byte range of the name.
    pub name_range: Range<usize>,
    /// Offset of the `)` that closes the parameter list.
    pub params_close: usize,
    /// The parameter list with its parentheses.
    pub params_range: Range<usize>,
    /// Function body (with braces) or macro value.
    pub body: Range<usize>,
    /// Declared `static`: a copy in a `.c` file may stay plain `static inline`.
    pub is_static: bool,
    /// `EXPORT_SYMBOL` or `EXPORT_SYMBOL_GPL` when the file exports it.
    pub export: Option<&'static str>,
}

impl Definition {
    /// Whether the definition is in a header, where copies must be `static __always_inline`.
    pub fn in_header(&self) -> bool {
        self.path.ends_with(".h")
    }
}

/// How a chain element reaches the next one.
#[derive(Debug, Clone)]
pub enum NextCall {
    /// `next(args)`: rename the callee, append the policy argument.
    Direct {
        /// Byte range of the callee's name.
        callee: Range<usize>,
        /// Offset of the `)` that closes the call, where the policy argument goes.
        close_paren: usize,
    },
    /// `MACRO(lock, try, next)` expanded: replace the whole call by `next(lock_arg)`.
    Expanded {
        /// Byte range of the whole macro call.
        call: Range<usize>,
        /// The lock argument passed on to `target`.
        lock_arg: String,
        /// The `next` the expanded call goes to.
        target: String,
    },
}

/// One element of a chain and how it calls the next.
#[derive(Debug, Clone)]
pub struct Step {
    /// The function or macro at this step.
    pub def: Definition,
    /// None for the last element.
    pub next: Option<NextCall>,
}

/// A resolved chain, API first.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The lock API the chain starts from.
    pub api: String,
    /// The definitions from the API down to the slowpath.
    pub steps: Vec<Step>,
}

impl Chain {
    /// The names along the chain, API first.
    pub fn names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.def.name.as_str()).collect()
    }
}

/// Live definitions of the lock implementation, by name.
pub struct LockIndex {
    /// Text of every indexed file, by path, for slicing definitions.
    pub sources: HashMap<String, String>,
    defs: HashMap<String, Vec<Definition>>,
}

impl LockIndex {
    /// Indexes the live x86_64 SMP definitions in the tree's lock headers and `kernel/locking/`.
    pub fn build(tree: &KernelTree, threads: usize) -> Result<Self, Error> {
        let config = BuildConfig::x86_64_smp();
        let paths: Vec<String> = tree
            .files
            .iter()
            .filter(|p| LOCK_DIRS.iter().any(|d| p.starts_with(d)))
            .filter(|p| {
                let file = p.rsplit('/').next().unwrap_or(p);
                p.starts_with("kernel/locking/") || LOCK_FILE_WORDS.iter().any(|w| file.contains(w))
            })
            .filter(|p| config.uses_file(p))
            .cloned()
            .collect();
        let per_file = tree.scan(&paths, &[], threads, |parser, file| {
            let defs = definitions_in(parser, &file.path, &file.text, &config);
            Some((file.path, file.text, defs))
        })?;
        let mut index = LockIndex {
            sources: HashMap::new(),
            defs: HashMap::new(),
        };
        for (path, text, defs) in per_file {
            for def in defs {
                index.defs.entry(def.name.clone()).or_default().push(def);
            }
            index.sources.insert(path, text);
        }
        Ok(index)
    }

    /// The definition a call to `name` reaches: a visible function-like
    /// macro shadows a function of the same name; headers come first.
    pub fn lookup(&self, name: &str) -> Option<&Definition> {
        let defs = self.defs.get(name)?;
        defs.iter()
            .filter(|d| d.kind == DefKind::Macro && d.in_header())
            .chain(defs.iter().filter(|d| d.kind == DefKind::Function))
            .next()
    }

    /// The text of the file `def` is in.
    pub fn source(&self, def: &Definition) -> &str {
        &self.sources[&def.path]
    }

    /// The chain from `api` down to its slowpath.
    pub fn resolve(&self, api: &str) -> Result<Chain, Error> {
        let mut def = self
            .lookup(api)
            .ok_or_else(|| {
                Error::Chain(format!("no live definition of `{api}` in the lock headers"))
            })?
            .clone();
        let mut steps: Vec<Step> = Vec::new();
        loop {
            if steps.iter().any(|s| s.def.name == def.name) || steps.len() > 16 {
                return Err(Error::Chain(format!(
                    "`{api}` chain loops at `{}`",
                    def.name
                )));
            }
            let next = if steps.is_empty() || !ends_chain(&def.name) {
                self.next_step(&def)
            } else {
                None
            };
            match next {
                Some((call, next_def)) => {
                    steps.push(Step {
                        def,
                        next: Some(call),
                    });
                    def = next_def;
                }
                None => {
                    steps.push(Step { def, next: None });
                    return Ok(Chain {
                        api: api.to_owned(),
                        steps,
                    });
                }
            }
        }
    }

    fn next_step(&self, def: &Definition) -> Option<(NextCall, Definition)> {
        let lock_param = def.params.first()?.clone();
        let file_src = self.source(def);
        let mut parser = cparse::parser();
        // Parse the body on its own (a macro value is raw text to tree-sitter).
        let parsed = cparse::parse_macro_body(&mut parser, &file_src[def.body.clone()]);
        let offset = def.body.start as isize - parsed.prefix_len as isize;
        let src = parsed.src.as_str();
        let shift = |pos: usize| (pos as isize + offset) as usize;

        let mut candidates: Vec<(Range<usize>, NextCall, Definition)> = Vec::new();
        walk(parsed.tree.root_node(), |call| {
            if call.kind() != "call_expression" || call.start_byte() < parsed.prefix_len {
                return;
            }
            let Some(callee) = callee_name(call, src) else {
                return;
            };
            let args = call_args(call);
            let passes_lock = args
                .iter()
                .any(|a| cparse::mentions_identifier(*a, src, &lock_param));
            let lockdep_only = args
                .iter()
                .any(|a| cparse::mentions_field(*a, src, "dep_map"));
            if !passes_lock || lockdep_only || callee == def.name {
                return;
            }
            let Some(callee_def) = self.lookup(callee) else {
                return;
            };
            let range = call.start_byte()..call.end_byte();
            if let Some((next_name, lock_arg)) = self.expansion(callee_def, &args, src) {
                if let Some(next_def) = self.lookup(&next_name) {
                    let next = NextCall::Expanded {
                        call: shift(range.start)..shift(range.end),
                        lock_arg,
                        target: next_name.clone(),
                    };
                    candidates.push((range, next, next_def.clone()));
                }
                return;
            }
            let Some(function) = call.child_by_field_name("function") else {
                return;
            };
            let next = NextCall::Direct {
                callee: shift(function.start_byte())..shift(function.end_byte()),
                close_paren: shift(call.end_byte() - 1),
            };
            candidates.push((range, next, callee_def.clone()));
        });
        // Outermost calls only: `raw_spin_lock_irqsave(spinlock_check(lock), f)` steps to the outer one.
        let outer: Vec<_> = candidates
            .iter()
            .filter(|(r, ..)| {
                !candidates
                    .iter()
                    .any(|(o, ..)| o != r && o.start <= r.start && r.end <= o.end)
            })
            .collect();
        let chosen = outer
            .iter()
            .find(|(_, _, d)| d.name.contains("slowpath"))
            .or(outer.last())?;
        Some((chosen.1.clone(), chosen.2.clone()))
    }

    /// If `macro_def` calls one of its parameters as a function and the call
    /// site passes a lock-implementation function there, the function that
    /// expansion calls and the argument it gets.
    fn expansion(
        &self,
        macro_def: &Definition,
        args: &[Node],
        call_src: &str,
    ) -> Option<(String, String)> {
        if macro_def.kind != DefKind::Macro {
            return None;
        }
        let macro_src = self.source(macro_def);
        let mut parser = cparse::parser();
        let parsed = cparse::parse_macro_body(&mut parser, &macro_src[macro_def.body.clone()]);
        let mut found = None;
        walk(parsed.tree.root_node(), |inner| {
            if found.is_some() || inner.kind() != "call_expression" {
                return;
            }
            let Some(callee) = callee_name(inner, &parsed.src) else {
                return;
            };
            let Some(fn_index) = macro_def.params.iter().position(|p| p == callee) else {
                return;
            };
            let inner_args = call_args(inner);
            let Some(arg_param) = inner_args.first().map(|a| text(*a, &parsed.src)) else {
                return;
            };
            let Some(lock_index) = macro_def.params.iter().position(|p| p == arg_param) else {
                return;
            };
            let (Some(fn_arg), Some(lock_arg)) = (args.get(fn_index), args.get(lock_index)) else {
                return;
            };
            if fn_arg.kind() == "identifier" {
                found = Some((
                    text(*fn_arg, call_src).to_owned(),
                    text(*lock_arg, call_src).to_owned(),
                ));
            }
        });
        found
    }
}

/// Names of functions that handle contention: the chain stops there.
fn ends_chain(name: &str) -> bool {
    name.contains("slowpath") || name.contains("wake")
}

/// Live definitions in one lock file.
fn definitions_in(
    parser: &mut tree_sitter::Parser,
    path: &str,
    src: &str,
    config: &BuildConfig,
) -> Vec<Definition> {
    let liveness = config.liveness(src);
    let macros = cparse::function_like_macros(src);
    let tree = cparse::parse(parser, src);
    let mut defs = Vec::new();
    walk(tree.root_node(), |node| {
        if node.kind() != "function_definition" {
            return;
        }
        if let Some(def) = function_definition(node, path, src) {
            let in_macro = macros
                .iter()
                .any(|m| m.range.contains(&def.name_range.start));
            if liveness.is_live_at(def.name_range.start) && !in_macro {
                defs.push(def);
            }
        }
    });
    defs.extend(
        macros
            .into_iter()
            .filter(|m| liveness.is_live_at(m.range.start))
            .map(|m| Definition {
                name: m.name,
                path: path.to_owned(),
                kind: DefKind::Macro,
                params: m.params,
                start: m.range.start,
                end: m.range.end,
                name_range: m.name_range,
                params_close: m.params_range.end - 1,
                params_range: m.params_range,
                body: m.value,
                is_static: false,
                export: None,
            }),
    );
    defs
}

fn function_definition(node: Node, path: &str, src: &str) -> Option<Definition> {
    let declarator = cparse::function_declarator(node)?;
    let name_node = declarator.child_by_field_name("declarator")?;
    if name_node.kind() != "identifier" {
        return None;
    }
    let name = text(name_node, src).to_owned();
    let params = declarator.child_by_field_name("parameters")?;
    let body = node.child_by_field_name("body")?;
    let start = cparse::definition_head_start(src, name_node.start_byte());
    let head = &src[start..name_node.start_byte()];
    Some(Definition {
        export: export_of(src, &name),
        params: cparse::function_params(node, src),
        is_static: head.split_whitespace().any(|w| w == "static"),
        kind: DefKind::Function,
        start,
        end: body.end_byte(),
        name_range: name_node.byte_range(),
        params_close: params.end_byte() - 1,
        params_range: params.byte_range(),
        body: body.byte_range(),
        path: path.to_owned(),
        name,
    })
}

fn export_of(src: &str, name: &str) -> Option<&'static str> {
    ["EXPORT_SYMBOL", "EXPORT_SYMBOL_GPL"]
        .into_iter()
        .find(|macro_name| src.contains(&format!("{macro_name}({name});")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_and_function_definitions_are_indexed_by_liveness() {
        let src = "#ifdef CONFIG_INLINE_SPIN_LOCK\n#define _raw_spin_lock(lock) __raw_spin_lock(lock)\n#endif\n\
#ifndef CONFIG_INLINE_SPIN_LOCK\nnoinline void __lockfunc _raw_spin_lock(raw_spinlock_t *lock)\n{\n\t__raw_spin_lock(lock);\n}\nEXPORT_SYMBOL(_raw_spin_lock);\n#endif\n";
        let mut p = cparse::parser();
        let defs = definitions_in(
            &mut p,
            "kernel/locking/spinlock.c",
            src,
            &BuildConfig::x86_64_smp(),
        );
        assert_eq!(defs.len(), 1);
        let def = &defs[0];
        assert_eq!(
            (def.name.as_str(), def.kind, def.export),
            ("_raw_spin_lock", DefKind::Function, Some("EXPORT_SYMBOL"))
        );
        assert!(src[def.start..].starts_with("noinline void __lockfunc"));
        assert_eq!(&src[def.params_close..def.params_close + 1], ")");
        assert_eq!(def.params, ["lock"]);
    }
}
