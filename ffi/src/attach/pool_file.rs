//! The scavenger pool file: one scavenger per line, `PATH ARGS…`, with shell-style
//! quoting; `#` starts a comment. `PATH` is a shared object exposing
//! `msh_scavenger_main` or the MSH prototype's `entry` (see `loader`), or a
//! dynamically linked PIE executable run unmodified (see `hosted`).

/// One scavenger line. `argv[0]` is the path, as in a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// The shared object's path, then the arguments it is given.
    pub argv: Vec<String>,
}

impl PoolLine {
    /// The scavenger's shared object.
    pub fn path(&self) -> &str {
        &self.argv[0]
    }
}

/// A line that could not be read, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong with it, in one phrase.
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

/// Drops a `#` comment: a `#` that starts a word outside quotes, as in the shell. A
/// backslash escapes the next character outside single quotes (`"\"#"` is a word).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    let mut word_start = true;
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
            word_start = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (Some(_), '"') => quote = None,
            (Some(_), _) => {}
            (None, '#') if word_start => return &line[..at],
            (None, '"' | '\'') => quote = Some(c),
            _ => {}
        }
        word_start = quote.is_none() && !escaped && c.is_whitespace();
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
    fn escaped_quotes_and_mid_word_hashes_are_not_comments() {
        let parsed = parse("/lib/a.so \"\\\"\\\\#\" a#b \\#c # gone\n");
        assert_eq!(
            parsed,
            vec![Ok(PoolLine {
                line: 1,
                argv: vec![
                    "/lib/a.so".into(),
                    "\"\\#".into(),
                    "a#b".into(),
                    "#c".into()
                ]
            })]
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

    /// Checks what every parse must give: ascending line numbers within the text,
    /// and a non-empty argv for each scavenger.
    fn check_lines(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let lines = text.lines().count();
        let mut last = 0;
        for entry in parse(text) {
            let line = match entry {
                Ok(l) => {
                    proptest::prop_assert!(!l.argv.is_empty());
                    l.line
                }
                Err(e) => {
                    proptest::prop_assert!(!e.cause.is_empty() && !e.cause.contains('\n'));
                    e.line
                }
            };
            proptest::prop_assert!(line > last && line <= lines, "line {} of {}", line, lines);
            last = line;
        }
        Ok(())
    }

    proptest::proptest! {
        /// Lines written with shell quoting read back as the same argv, whatever the
        /// words hold (spaces, quotes, `#`, backslashes).
        #[test]
        fn quoted_lines_round_trip(
            pool in proptest::collection::vec(
                proptest::collection::vec("[^\n\r\x00]{1,12}", 1..5), 0..6),
        ) {
            let text: String = pool
                .iter()
                .map(|argv| shlex::try_join(argv.iter().map(String::as_str)).unwrap() + "\n")
                .collect();
            let parsed: Vec<Vec<String>> = parse(&text)
                .into_iter()
                .map(|entry| entry.map(|l| l.argv).map_err(|e| e.cause))
                .collect::<Result<_, _>>()
                .map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert_eq!(parsed, pool);
        }

        /// A valid pool with bytes replaced or inserted never panics the parser.
        #[test]
        fn mutated_pools_never_panic(
            edits in proptest::collection::vec((0usize..200, proptest::bool::ANY, proptest::num::u8::ANY), 0..12),
        ) {
            let mut bytes = b"# pool\n/lib/a.so 1 2  # comment\n'/lib/b c.so' \"x y\" z\n\n/lib/d.so\n".to_vec();
            for (at, insert, byte) in edits {
                let at = at % bytes.len();
                if insert {
                    bytes.insert(at, byte);
                } else {
                    bytes[at] = byte;
                }
            }
            check_lines(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn arbitrary_text_never_panics(text in "(\\PC|\n|\t|'|\"|#|\\\\){0,200}") {
            check_lines(&text)?;
        }
    }
}
