//! Attach settings, from the environment. The MSH prototype's variables are honoured
//! so its users can move over; msh's own are documented in the README.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MSH_SCAV_POOL_PATH` | the pool file; attaching is on when it is set | off |
//! | `MAX_SCAV_PER_THREAD` | scavenger slots per primary thread | 1 |
//! | `SKIP_FIRST_THREAD` | `1`: the main thread is not a primary | 0 |
//! | `MSH_BUDGET_NS` | budget per switch, ns (with `MSH_MAX_SLOWDOWN`: where the search starts) | 150 |
//! | `MSH_MAX_SLOWDOWN` | find the budget online: the longest that costs the primary at most this fraction of its time (0 to 1; 0 = fixed `MSH_BUDGET_NS`) | 0 |
//! | `MSH_STACK_SIZE` | scavenger stack size, bytes | 65536 |
//! | `MSH_STATS` | `1`: print `msh-stats: {json}` on stderr at exit | 0 |
//! | `MSH_STRICT` | `1`: a pool error exits with status 2 instead of running without msh | 0 |
//! | `MSH_AT_EXIT` | `finish` (run unfinished scavengers, for at most `MSH_EXIT_WAIT_MS`) or `abandon` | finish |
//! | `MSH_EXIT_WAIT_MS` | how long `finish` waits at exit before abandoning, ms (0 to 86400000) | 2000 |
//! | `MSH_WATCHDOG_MS` | preempt a scavenger that runs this long (CPU time) without yielding, ms (0 = off, to 60000) | 10 |
//! | `MSH_HARVEST_IDLE` | `1`: a primary waiting in `epoll_wait`/`epoll_pwait`/`poll`/`ppoll`/`select` runs its scavengers until its descriptors are ready | 0 |
//! | `MSH_FOLLOW_EXEC` | `1`: programs the process execs attach too; otherwise libmsh removes its variables from the environment at load | 0 |
//!
//! Every number is checked against its range; a bad value is one line naming the
//! variable, and the program runs without msh. An unknown `MSH_AT_EXIT` is one line
//! and the default.

use msh_core::sched::{self, Config};
use std::ffi::OsString;

/// Whether libmsh reads the environment variable `name`: every `MSH_*` one and the
/// MSH prototype's three. They are removed from the environment of programs libmsh
/// does not follow across exec.
pub fn is_ours(name: &str) -> bool {
    name.starts_with("MSH_") || ["MAX_SCAV_PER_THREAD", "SKIP_FIRST_THREAD"].contains(&name)
}

/// Default bounded wait at exit for unfinished scavengers.
pub const DEFAULT_EXIT_WAIT_MS: u64 = 2000;
/// Longest wait at exit accepted: a day.
pub const MAX_EXIT_WAIT_MS: u64 = 86_400_000;

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The pool file.
    pub pool_path: OsString,
    /// The runtime's configuration.
    pub config: Config,
    /// The main thread is not a primary.
    pub skip_first_thread: bool,
    /// Print the `msh-stats` line at exit.
    pub stats: bool,
    /// A pool error exits with status 2.
    pub strict: bool,
    /// At exit, wait at most this long for unfinished scavengers (with `finish`).
    pub exit_wait_ms: u64,
    /// Programs this one execs attach too.
    pub follow_exec: bool,
    /// Primaries run their scavengers while they wait for descriptors.
    pub harvest_idle: bool,
    /// Values ignored in favour of the default, one line each.
    pub warnings: Vec<String>,
}

/// Reads the settings; `Ok(None)` when attaching is off, `Err` names a bad variable.
pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Result<Option<Settings>, String> {
    let Some(pool_path) = get("MSH_SCAV_POOL_PATH") else {
        return Ok(None);
    };
    let number = |name: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
        let value = match get(name) {
            None => return Ok(default),
            Some(value) => value,
        };
        let shown = value.to_string_lossy();
        let parsed: u64 = value
            .to_str()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("{name}={shown} is not a number"))?;
        if !(min..=max).contains(&parsed) {
            return Err(format!("{name}={shown}: expected {min} to {max}"));
        }
        Ok(parsed)
    };
    let flag = |name: &str| -> Result<bool, String> {
        match get(name).as_deref().and_then(|v| v.to_str()) {
            None | Some("" | "0") => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(format!("{name}={other}: expected 0 or 1")),
        }
    };
    // A fraction, kept in thousandths (the runtime's unit).
    let fraction_permille = |name: &str, default: u32| -> Result<u32, String> {
        let Some(value) = get(name) else {
            return Ok(default);
        };
        let shown = value.to_string_lossy();
        let parsed: f64 = value
            .to_str()
            .and_then(|v| v.trim().parse().ok())
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("{name}={shown} is not a number"))?;
        if !(0.0..=1.0).contains(&parsed) {
            return Err(format!("{name}={shown}: expected 0 to 1"));
        }
        Ok((parsed * 1000.0).round() as u32)
    };
    let mut warnings = Vec::new();
    let abandon = match get("MSH_AT_EXIT") {
        None => false,
        Some(value) => match value.to_str() {
            Some("finish") => false,
            Some("abandon") => true,
            _ => {
                warnings.push(format!(
                    "MSH_AT_EXIT={}: expected finish or abandon; using finish",
                    value.to_string_lossy()
                ));
                false
            }
        },
    };
    let defaults = Config::default();
    let slots = number("MAX_SCAV_PER_THREAD", 1, 1, sched::MAX_SLOTS as u64)?;
    let stack_size = number(
        "MSH_STACK_SIZE",
        defaults.stack_size as u64,
        msh_core::stack::MIN_STACK_SIZE as u64,
        sched::MAX_STACK_SIZE as u64,
    )?;
    Ok(Some(Settings {
        pool_path,
        config: Config {
            stack_size: stack_size as usize,
            slots_per_thread: slots as usize,
            budget_ns: number("MSH_BUDGET_NS", defaults.budget_ns, 0, sched::MAX_BUDGET_NS)?,
            max_slowdown_permille: fraction_permille(
                "MSH_MAX_SLOWDOWN",
                defaults.max_slowdown_permille,
            )?,
            abandon_at_exit: abandon,
            watchdog_ms: number(
                "MSH_WATCHDOG_MS",
                defaults.watchdog_ms,
                0,
                sched::MAX_WATCHDOG_MS,
            )?,
        },
        skip_first_thread: flag("SKIP_FIRST_THREAD")?,
        stats: flag("MSH_STATS")?,
        strict: flag("MSH_STRICT")?,
        exit_wait_ms: number(
            "MSH_EXIT_WAIT_MS",
            DEFAULT_EXIT_WAIT_MS,
            0,
            MAX_EXIT_WAIT_MS,
        )?,
        follow_exec: flag("MSH_FOLLOW_EXEC")?,
        harvest_idle: flag("MSH_HARVEST_IDLE")?,
        warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn off_without_a_pool() {
        assert_eq!(from_env(env(&[("MSH_STATS", "1")])), Ok(None));
    }

    #[test]
    fn msh_prototype_variables_and_our_own() {
        let s = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "/tmp/pool"),
            ("MAX_SCAV_PER_THREAD", "3"),
            ("SKIP_FIRST_THREAD", "1"),
            ("MSH_BUDGET_NS", "120"),
            ("MSH_STATS", "1"),
            ("MSH_AT_EXIT", "abandon"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.config.slots_per_thread, 3);
        assert_eq!(s.config.budget_ns, 120);
        assert!(s.skip_first_thread && s.stats && !s.strict && s.config.abandon_at_exit);
    }

    #[test]
    fn the_budget_is_fixed_unless_a_slowdown_is_allowed() {
        let fixed = from_env(env(&[("MSH_SCAV_POOL_PATH", "p"), ("MSH_BUDGET_NS", "90")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (fixed.config.budget_ns, fixed.config.max_slowdown_permille),
            (90, 0)
        );
        let both = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MSH_BUDGET_NS", "90"),
            ("MSH_MAX_SLOWDOWN", "0.05"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(both.config.max_slowdown_permille, 50);
        for bad in ["1.5", "-0.1", "NaN", "inf", "much"] {
            let err = from_env(env(&[
                ("MSH_SCAV_POOL_PATH", "p"),
                ("MSH_MAX_SLOWDOWN", bad),
            ]))
            .unwrap_err();
            assert!(err.starts_with(&format!("MSH_MAX_SLOWDOWN={bad}")), "{err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let err = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MSH_BUDGET_NS", "fast"),
        ]))
        .unwrap_err();
        assert_eq!(err, "MSH_BUDGET_NS=fast is not a number");
        let err = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MAX_SCAV_PER_THREAD", "0"),
        ]))
        .unwrap_err();
        assert!(err.starts_with("MAX_SCAV_PER_THREAD=0"));
        let err = from_env(env(&[("MSH_SCAV_POOL_PATH", "p"), ("MSH_STRICT", "yes")])).unwrap_err();
        assert!(err.contains("expected 0 or 1"));
    }

    #[test]
    fn numbers_out_of_range_are_named_and_an_unknown_at_exit_falls_back() {
        let err = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MSH_STACK_SIZE", "99999999999999"),
        ]))
        .unwrap_err();
        assert_eq!(
            err,
            "MSH_STACK_SIZE=99999999999999: expected 16384 to 1073741824"
        );
        let err = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MSH_BUDGET_NS", "18446744073709551615"),
        ]))
        .unwrap_err();
        assert!(err.starts_with("MSH_BUDGET_NS=18446744073709551615: expected 0 to"));
        let err = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MSH_EXIT_WAIT_MS", "-1"),
        ]))
        .unwrap_err();
        assert_eq!(err, "MSH_EXIT_WAIT_MS=-1 is not a number");
        let s = from_env(env(&[
            ("MSH_SCAV_POOL_PATH", "p"),
            ("MSH_AT_EXIT", "bogus"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!s.config.abandon_at_exit);
        assert_eq!(
            s.warnings,
            ["MSH_AT_EXIT=bogus: expected finish or abandon; using finish"]
        );
        assert_eq!(s.exit_wait_ms, DEFAULT_EXIT_WAIT_MS);
        assert!(!s.follow_exec);
    }
}
