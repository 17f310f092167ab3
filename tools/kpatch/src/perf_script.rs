//! `perf script` output with call chains (`perf record -g`) -> the kernel
//! functions that call a lock primitive, weighted by samples.
//!
//! A sample is a header line followed by indented frames, leaf first:
//!
//! ```text
//! hammer  7251   436.1: 250000 cpu-clock:
//!     ffffffff8110a2b5 native_queued_spin_lock_slowpath+0x1e5 ([kernel.kallsyms])
//!     ffffffff81c3b9f9 _raw_spin_lock+0x29 ([kernel.kallsyms])
//!     ffffffff8136bc1e alloc_fd+0x3e ([kernel.kallsyms])
//! ```
//!
//! The first frame (from the leaf) that enters a lock API (`_raw_spin_lock`,
//! `down_write_killable`, ...) names the primitive; the frame above it is the
//! function holding the lock site.

use crate::family::LockFamily;
use crate::Error;
use std::collections::BTreeMap;

/// One function seen calling a lock primitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCaller {
    /// Source-level function name (compiler suffixes like `.isra.0` removed).
    pub function: String,
    /// The lock primitive's frame, e.g. `_raw_spin_lock_irqsave`.
    pub symbol: String,
    /// Samples whose chain goes through this caller and primitive.
    pub samples: u64,
    /// Of those, samples taken inside the lock implementation (waiting).
    pub samples_in_lock: u64,
}

/// What a `perf script` text says about lock callers.
#[derive(Debug, Default)]
pub struct PerfProfile {
    /// All samples in the input.
    pub samples: u64,
    /// Samples that carry a call chain.
    pub samples_with_chains: u64,
    /// Callers of lock primitives, most samples first.
    pub callers: Vec<LockCaller>,
}

/// Parses perf script text. `source` names the input in errors.
pub fn parse(text: &str, source: &str) -> Result<PerfProfile, Error> {
    let mut profile = PerfProfile::default();
    let mut counts: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut frames: Vec<String> = Vec::new();
    let mut in_sample = false;
    let mut flush = |frames: &mut Vec<String>, profile: &mut PerfProfile| {
        if !frames.is_empty() {
            profile.samples_with_chains += 1;
            if let Some((caller, symbol, in_lock)) = lock_caller(frames) {
                let entry = counts.entry((caller, symbol)).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += in_lock as u64;
            }
        }
        frames.clear();
    };
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut frames, &mut profile);
            in_sample = false;
        } else if line.starts_with([' ', '\t']) {
            if !in_sample {
                return Err(Error::PerfScript(format!(
                    "{source}:{}: call-chain frame outside a sample (expected `perf script` output)",
                    number + 1
                )));
            }
            frames.push(frame_symbol(line.trim()).ok_or_else(|| {
                Error::PerfScript(format!(
                    "{source}:{}: unreadable frame `{}`",
                    number + 1,
                    line.trim()
                ))
            })?);
        } else {
            // A sample header: `comm pid [cpu] time: period event:`.
            flush(&mut frames, &mut profile);
            if !line.contains(':') {
                return Err(Error::PerfScript(format!(
                    "{source}:{}: not a perf script sample header: `{}`",
                    number + 1,
                    line.chars().take(60).collect::<String>()
                )));
            }
            profile.samples += 1;
            in_sample = true;
        }
    }
    flush(&mut frames, &mut profile);
    if profile.samples == 0 {
        return Err(Error::PerfScript(format!(
            "{source}: no samples (is this `perf script` output?)"
        )));
    }
    if profile.samples_with_chains == 0 {
        return Err(Error::PerfScript(format!(
            "{source}: samples have no call chains (record with `perf record -g`)"
        )));
    }
    profile.callers = counts
        .into_iter()
        .map(
            |((function, symbol), (samples, samples_in_lock))| LockCaller {
                function,
                symbol,
                samples,
                samples_in_lock,
            },
        )
        .collect();
    profile.callers.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| a.function.cmp(&b.function))
    });
    if profile.callers.is_empty() {
        return Err(Error::NoLockFrames(
            source.to_owned(),
            profile.samples_with_chains,
        ));
    }
    Ok(profile)
}

/// The function name of a frame line `ADDR SYMBOL+OFF (DSO)`.
fn frame_symbol(frame: &str) -> Option<String> {
    let (address, rest) = frame.split_once(char::is_whitespace)?;
    if !address.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let rest = rest.trim_start();
    // The DSO is the last parenthesised group; symbols may contain spaces (C++).
    let symbol = match rest.rfind(" (") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    let symbol = symbol.rsplit_once("+0x").map_or(symbol, |(s, _)| s);
    Some(source_name(symbol).to_owned())
}

/// `alloc_fd.isra.0` -> `alloc_fd`: GCC clones keep the source name before the first dot.
fn source_name(symbol: &str) -> &str {
    symbol.split('.').next().unwrap_or(symbol)
}

/// The caller of the first lock API frame from the leaf, that frame's
/// symbol, and whether every frame below it is lock-internal.
fn lock_caller(frames: &[String]) -> Option<(String, String, bool)> {
    let index = frames
        .iter()
        .position(|s| !LockFamily::by_perf_symbol(s).is_empty())?;
    let caller = frames.get(index + 1)?;
    if caller == "[unknown]" {
        return None;
    }
    let in_lock = frames[..index]
        .iter()
        .all(|s| LockFamily::is_internal_symbol(s));
    Some((caller.clone(), frames[index].clone(), in_lock))
}

impl LockCaller {
    /// The (family, API) pairs the caller's lock frame may stand for.
    pub fn entries(&self) -> Vec<(&'static LockFamily, &'static str)> {
        LockFamily::by_perf_symbol(&self.symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "hammer  7251   436.1:     250000 cpu-clock: \n\
\tffffffff8110a2b5 native_queued_spin_lock_slowpath+0x1e5 ([kernel.kallsyms])\n\
\tffffffff81c3b9f9 _raw_spin_lock+0x29 ([kernel.kallsyms])\n\
\tffffffff8136bc1e alloc_fd.isra.0+0x3e ([kernel.kallsyms])\n\
\t    7f3b1c8f5e8b __libc_open64+0x5b (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
\n\
hammer  7251   436.2:     250000 cpu-clock: \n\
\tffffffff81c3b9f9 _raw_spin_lock+0x29 ([kernel.kallsyms])\n\
\tffffffff8136bc1e alloc_fd+0x3e ([kernel.kallsyms])\n\
\n\
hammer  7251   436.3:     250000 cpu-clock: \n\
\tffffffff81c3b9f9 memcpy+0x29 ([kernel.kallsyms])\n";

    #[test]
    fn finds_callers_of_lock_primitives() {
        let profile = parse(SAMPLE, "t").unwrap();
        assert_eq!(profile.samples, 3);
        assert_eq!(profile.callers.len(), 1);
        let caller = &profile.callers[0];
        assert_eq!(
            (
                caller.function.as_str(),
                caller.symbol.as_str(),
                caller.samples,
                caller.samples_in_lock
            ),
            ("alloc_fd", "_raw_spin_lock", 2, 2)
        );
    }

    #[test]
    fn an_irq_section_counts_at_its_unlock() {
        let text = "sig 1 1.0: 1 cpu-clock:\n\tffff _raw_spin_unlock_irq+0x1 ([kernel.kallsyms])\n\tffff get_signal+0x2 ([kernel.kallsyms])\n";
        let profile = parse(text, "t").unwrap();
        let caller = &profile.callers[0];
        assert_eq!(caller.function, "get_signal");
        let apis: Vec<_> = caller
            .entries()
            .iter()
            .map(|(f, api)| (f.key, *api))
            .collect();
        assert_eq!(
            apis,
            [
                ("spinlock", "spin_unlock_irq"),
                ("raw_spinlock", "raw_spin_unlock_irq")
            ]
        );
    }

    #[test]
    fn no_lock_frames_is_an_error() {
        let text = "a 1 1.0: 1 cpu-clock:\n\tffff memcpy+0x1 ([kernel.kallsyms])\n";
        let err = parse(text, "x.txt").unwrap_err();
        assert!(matches!(err, Error::NoLockFrames(..)), "{err}");
    }

    #[test]
    fn garbage_is_a_one_line_error() {
        for text in [
            "",
            "\tffff memcpy\n",
            "no colon here\n\tffff f+0x1 (k)\n",
            "a: b\n\tnot-hex f (k)\n",
            "a: b\n",
        ] {
            let err = parse(text, "x").unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "(\\PC|\n|\t){0,400}") {
            // A profile or a one-line error, never a panic.
            if let Err(err) = parse(&text, "fuzz") {
                proptest::prop_assert!(!err.to_string().contains('\n'), "{}", err);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Err(err) = parse(&String::from_utf8_lossy(&bytes), "fuzz") {
                proptest::prop_assert!(!err.to_string().contains('\n'), "{}", err);
            }
        }

        /// A real capture, cut and mutated (bytes replaced, lines dropped or
        /// repeated): a profile whose counts stay consistent, or a one-line error.
        #[test]
        fn mutated_captures_give_a_result_or_one_line(
            cut in 0usize..20_000,
            edits in proptest::collection::vec((0usize..20_000, 0u8..4, proptest::num::u8::ANY), 0..40),
        ) {
            let text = mutate(&CAPTURE[..cut.min(CAPTURE.len())], &edits);
            match parse(&text, "fuzz") {
                Ok(profile) => {
                    proptest::prop_assert!(profile.samples_with_chains <= profile.samples);
                    for caller in &profile.callers {
                        proptest::prop_assert!(caller.samples_in_lock <= caller.samples);
                        proptest::prop_assert!(caller.samples <= profile.samples);
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    proptest::prop_assert!(!message.is_empty() && !message.contains('\n'), "{}", message);
                }
            }
        }
    }

    /// The start of a real `perf script` capture (see tests/fixtures/README.md).
    const CAPTURE: &[u8] = include_bytes!("../tests/fixtures/perf-open-close.txt");

    /// Applies `(at, kind, byte)` edits: 0 replaces a byte, 1 inserts one, 2 deletes
    /// the line at `at`, 3 repeats it.
    fn mutate(text: &[u8], edits: &[(usize, u8, u8)]) -> String {
        let mut bytes = text.to_vec();
        for &(at, kind, byte) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = at % bytes.len();
            let start = bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let end = bytes[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| at + i + 1);
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 => {
                    bytes.drain(start..end);
                }
                _ => {
                    let line = bytes[start..end].to_vec();
                    bytes.splice(start..start, line);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
