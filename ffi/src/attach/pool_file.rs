//! The scavenger pool file: one scavenger per line, `PATH ARGS…`, with shell-style
//! quoting; `#` starts a comment. `PATH` is a shared object exposing
//! `msh_scavenger_main` or the MSH prototype's `entry` (see `loader`).

/// One scavenger line. `argv[0]` is the path, as in a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub argv: Vec<String>,
}

impl PoolLine {
    pub fn path(&self) -> &str {
        &self.argv[0]
    }
}

/// A line that could not be read, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub cause: String,
}

/// Parses the whole file; each line is a scavenger or an error of its own, so one bad
/// line does not lose the others.
pub fn parse(text: &str) -> Vec<Result<PoolLine, LineError>> {
    text.lines()
        .enumerate()
        .filter_map(|(index, raw)| {
            let line = index + 1;
            let content = strip_comment(raw).trim();
            if content.is_empty() {
                return None;
            }
            match shlex::split(content) {
                Some(argv) if argv.is_empty() => None,
                Some(argv) => Some(Ok(PoolLine { line, argv })),
                None => Some(Err(LineError {
                    line,
                    cause: "unbalanced quotes".into(),
                })),
            }
        })
        .collect()
}

/// Drops a `#` comment that is not inside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..at],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_quotes_and_errors() {
        let text = "# the pool\n\n/lib/a.so 1 2   # trailing comment\n  /lib/b.so 'two words' \"#not a comment\"\n/lib/c.so \"open\n";
        let parsed = parse(text);
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed[0],
            Ok(PoolLine {
                line: 3,
                argv: vec!["/lib/a.so".into(), "1".into(), "2".into()]
            })
        );
        assert_eq!(
            parsed[1],
            Ok(PoolLine {
                line: 4,
                argv: vec![
                    "/lib/b.so".into(),
                    "two words".into(),
                    "#not a comment".into()
                ]
            })
        );
        assert_eq!(
            parsed[2],
            Err(LineError {
                line: 5,
                cause: "unbalanced quotes".into()
            })
        );
    }

    #[test]
    fn an_empty_or_comment_only_file_has_no_lines() {
        assert!(parse("").is_empty());
        assert!(parse("# nothing\n   \n#\n").is_empty());
    }

    /// Arbitrary bytes never panic, and every line number is in range.
    #[test]
    fn fuzz_arbitrary_input() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"ab/.# '\"\\\n\t\x00\xff";
        for _ in 0..20_000 {
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let lines = text.lines().count();
            for entry in parse(&text) {
                let line = match entry {
                    Ok(l) => {
                        assert!(!l.argv.is_empty());
                        l.line
                    }
                    Err(e) => e.line,
                };
                assert!(line >= 1 && line <= lines);
            }
        }
    }
}
