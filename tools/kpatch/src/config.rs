//! Which `#if` branches are live: the lock API has several implementations
//! (UP, PREEMPT_RT, lock debugging, lock statistics, inlined or not) and the
//! call chain must follow the one a real build uses.
//!
//! The chain is resolved for one configuration, [`BuildConfig::x86_64_smp`],
//! the lock options of x86_64_defconfig and Debian's amd64 config: x86-64,
//! SMP, preemption, queued spinlocks and rwlocks, optimistic spinning, no
//! PREEMPT_RT, no lock debugging or statistics, out-of-line lock functions
//! (`CONFIG_UNINLINE_SPIN_UNLOCK` too), and no paravirt spinlocks (Debian
//! enables them; the chain then ends at the native slowpath instead of the
//! paravirt one, which the wrapper still reaches through the stock call).

use std::collections::HashMap;
use std::ops::Range;

/// The byte ranges of a file in dead `#if` branches.
pub struct Liveness {
    dead: Vec<Range<usize>>,
}

impl Liveness {
    /// Whether `offset` is outside every dead `#if` branch.
    pub fn is_live_at(&self, offset: usize) -> bool {
        let i = self.dead.partition_point(|r| r.end <= offset);
        self.dead.get(i).is_none_or(|r| !r.contains(&offset))
    }
}

/// The kernel configuration `#if` conditions are evaluated against.
pub struct BuildConfig {
    /// Macro name -> value for every macro this configuration defines.
    defined: HashMap<&'static str, i64>,
    /// Path fragments of files a build of this configuration does not use.
    unused_files: &'static [&'static str],
}

impl BuildConfig {
    /// An x86_64 SMP build with preemption, the configuration patches target.
    pub fn x86_64_smp() -> Self {
        let defined = [
            "__KERNEL__",
            "CONFIG_X86",
            "CONFIG_X86_64",
            "CONFIG_64BIT",
            "CONFIG_SMP",
            "CONFIG_MMU",
            "CONFIG_PREEMPT_COUNT",
            "CONFIG_PREEMPTION",
            "CONFIG_UNINLINE_SPIN_UNLOCK",
            "CONFIG_QUEUED_SPINLOCKS",
            "CONFIG_ARCH_USE_QUEUED_SPINLOCKS",
            "CONFIG_QUEUED_RWLOCKS",
            "CONFIG_ARCH_USE_QUEUED_RWLOCKS",
            "CONFIG_RWSEM_SPIN_ON_OWNER",
            "CONFIG_MUTEX_SPIN_ON_OWNER",
        ]
        .into_iter()
        .map(|name| (name, 1))
        .chain([("BITS_PER_LONG", 64)])
        .collect();
        BuildConfig {
            defined,
            unused_files: &[
                "_up.h",
                "_rt.h",
                "_rt.c",
                "spinlock_debug.c",
                "mutex-debug",
                "rtmutex",
                "paravirt",
            ],
        }
    }

    /// Whether a build of this configuration compiles `path` at all.
    pub fn uses_file(&self, path: &str) -> bool {
        !self
            .unused_files
            .iter()
            .any(|fragment| path.contains(fragment))
    }

    /// Which bytes of `src` a build of this configuration compiles, from its
    /// `#if` structure. Line-based like the preprocessor itself: tree-sitter
    /// can swallow directives into `ERROR` nodes after attribute macros
    /// such as `__releases(lock);`.
    pub fn liveness(&self, src: &str) -> Liveness {
        struct Branch {
            parent_live: bool,
            taken: bool,
            live: bool,
        }
        let mut stack: Vec<Branch> = Vec::new();
        let mut dead = Vec::new();
        let live_now = |stack: &[Branch]| stack.last().is_none_or(|b| b.live);
        for line in crate::cparse::logical_lines(src) {
            let text = line.text.trim_start();
            let was_live = live_now(&stack);
            if let Some(directive) = text.strip_prefix('#') {
                let directive = directive.trim_start();
                let word_end = directive
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .unwrap_or(directive.len());
                let (word, rest) = directive.split_at(word_end);
                let rest = rest.trim();
                let first_word = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("");
                match word {
                    "if" | "ifdef" | "ifndef" => {
                        let condition = match word {
                            "if" => self.eval(rest) != 0,
                            "ifdef" => self.defined.contains_key(first_word),
                            _ => !self.defined.contains_key(first_word),
                        };
                        stack.push(Branch {
                            parent_live: was_live,
                            taken: condition,
                            live: was_live && condition,
                        });
                    }
                    "elif" => {
                        if let Some(top) = stack.last_mut() {
                            let condition = !top.taken && self.eval(rest) != 0;
                            top.taken |= condition;
                            top.live = top.parent_live && condition;
                        }
                    }
                    "else" => {
                        if let Some(top) = stack.last_mut() {
                            top.live = top.parent_live && !top.taken;
                            top.taken = true;
                        }
                    }
                    "endif" => {
                        stack.pop();
                    }
                    // `#define`, `#include`, ...: as live as the code around them.
                    _ if !was_live => dead.push(line.range.clone()),
                    _ => {}
                }
                continue;
            }
            if !was_live {
                dead.push(line.range.clone());
            }
        }
        Liveness { dead }
    }

    /// Evaluates a `#if` expression; an expression it cannot read counts as
    /// true, so a branch is never dropped by mistake.
    pub fn eval(&self, expr: &str) -> i64 {
        let tokens = tokenize(expr);
        let mut parser = CondParser {
            tokens: &tokens,
            pos: 0,
            config: self,
        };
        match parser.or() {
            Some(v) if parser.pos == tokens.len() => v,
            _ => 1,
        }
    }
}

fn tokenize(expr: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == '\\' {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["&&", "||", "==", "!=", "<=", ">="].contains(&two.as_str()) {
                tokens.push(two);
                i += 2;
            } else {
                tokens.push(c.to_string());
                i += 1;
            }
        }
    }
    tokens
}

/// Recursive descent over `|| && == != < > <= >= ! ( ) defined IS_ENABLED`.
struct CondParser<'a> {
    tokens: &'a [String],
    pos: usize,
    config: &'a BuildConfig,
}

impl CondParser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }
    fn eat(&mut self, token: &str) -> bool {
        let hit = self.peek() == Some(token);
        self.pos += hit as usize;
        hit
    }
    fn or(&mut self) -> Option<i64> {
        let mut value = self.and()?;
        while self.eat("||") {
            let rhs = self.and()?;
            value = (value != 0 || rhs != 0) as i64;
        }
        Some(value)
    }
    fn and(&mut self) -> Option<i64> {
        let mut value = self.compare()?;
        while self.eat("&&") {
            let rhs = self.compare()?;
            value = (value != 0 && rhs != 0) as i64;
        }
        Some(value)
    }
    fn compare(&mut self) -> Option<i64> {
        let lhs = self.unary()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat(op) {
                let rhs = self.unary()?;
                return Some(match op {
                    "==" => lhs == rhs,
                    "!=" => lhs != rhs,
                    "<=" => lhs <= rhs,
                    ">=" => lhs >= rhs,
                    "<" => lhs < rhs,
                    _ => lhs > rhs,
                } as i64);
            }
        }
        Some(lhs)
    }
    fn unary(&mut self) -> Option<i64> {
        if self.eat("!") {
            return Some((self.unary()? == 0) as i64);
        }
        if self.eat("(") {
            let value = self.or()?;
            return self.eat(")").then_some(value);
        }
        let token = self.peek()?.to_owned();
        self.pos += 1;
        if matches!(
            token.as_str(),
            "defined" | "IS_ENABLED" | "IS_BUILTIN" | "IS_REACHABLE"
        ) {
            let parenthesized = self.eat("(");
            let name = self.peek()?.to_owned();
            self.pos += 1;
            if parenthesized && !self.eat(")") {
                return None;
            }
            return Some(self.config.defined.contains_key(name.as_str()) as i64);
        }
        if let Ok(number) = token.trim_end_matches(['U', 'L', 'u', 'l']).parse::<i64>() {
            return Some(number);
        }
        if token.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            // An undefined identifier is 0 in `#if`, as in the C preprocessor.
            return Some(
                self.config
                    .defined
                    .get(token.as_str())
                    .copied()
                    .unwrap_or(0),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_kernel_conditions() {
        let config = BuildConfig::x86_64_smp();
        assert_eq!(
            config.eval("defined(CONFIG_SMP) || defined(CONFIG_DEBUG_SPINLOCK)"),
            1
        );
        assert_eq!(config.eval("!defined(CONFIG_PREEMPT_RT)"), 1);
        assert_eq!(
            config.eval("defined(CONFIG_DEBUG_LOCK_ALLOC) && !defined(X)"),
            0
        );
        assert_eq!(
            config.eval("IS_ENABLED(CONFIG_SMP) && BITS_PER_LONG == 64"),
            1
        );
        assert_eq!(config.eval("CONFIG_PREEMPT_RT"), 0);
        assert_eq!(
            config.eval("garbage ) ("),
            1,
            "unreadable conditions count as live"
        );
    }

    #[test]
    fn picks_the_live_branch() {
        let src = "#ifdef CONFIG_INLINE_SPIN_LOCK\nvoid a(void) {}\n#else\nvoid b(void) {}\n#endif\n\
                   #ifndef GUARD_H\n#if defined(CONFIG_PREEMPT_RT)\n#define m(x) x\nvoid c(void) {}\n#elif defined(CONFIG_SMP) \\\n && 1\nvoid d(void) {}\n#else\nvoid e(void) {}\n#endif\n#endif\nvoid f(void) {}\n";
        let liveness = BuildConfig::x86_64_smp().liveness(src);
        let live: Vec<char> = ['a', 'b', 'c', 'd', 'e', 'f']
            .into_iter()
            .filter(|name| liveness.is_live_at(src.find(&format!("void {name}")).unwrap()))
            .collect();
        assert_eq!(live, ['b', 'd', 'f']);
        assert!(!liveness.is_live_at(src.find("#define m").unwrap()));
    }
}
