//! Attach settings, from the environment. The MSH prototype's variables are honoured
//! so its users can move over; msh's own are documented in the README.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MSH_SCAV_POOL_PATH` | the pool file; attaching is on when it is set | off |
//! | `MAX_SCAV_PER_THREAD` | scavenger slots per primary thread | 1 |
//! | `SKIP_FIRST_THREAD` | `1`: the main thread is not a primary | 0 |
//! | `MSH_BUDGET_NS` | budget per switch, ns | 150 |
//! | `MSH_STACK_SIZE` | scavenger stack size, bytes | 65536 |
//! | `MSH_STATS` | `1`: print `msh-stats: {json}` on stderr at exit | 0 |
//! | `MSH_STRICT` | `1`: a pool error exits with status 2 instead of running without msh | 0 |
//! | `MSH_AT_EXIT` | `finish` (run unfinished scavengers to the end) or `abandon` | finish |

use msh_core::sched::Config;
use std::ffi::OsString;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub pool_path: OsString,
    pub config: Config,
    pub skip_first_thread: bool,
    pub stats: bool,
    pub strict: bool,
}

/// Reads the settings; `Ok(None)` when attaching is off, `Err` names a bad variable.
pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Result<Option<Settings>, String> {
    let Some(pool_path) = get("MSH_SCAV_POOL_PATH") else {
        return Ok(None);
    };
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match get(name) {
            None => Ok(default),
            Some(value) => value
                .to_str()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("{name}={} is not a number", value.to_string_lossy())),
        }
    };
    let flag = |name: &str| -> Result<bool, String> {
        match get(name).as_deref().and_then(|v| v.to_str()) {
            None | Some("" | "0") => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(format!("{name}={other}: expected 0 or 1")),
        }
    };
    let abandon = match get("MSH_AT_EXIT").as_deref().and_then(|v| v.to_str()) {
        None | Some("finish") => false,
        Some("abandon") => true,
        Some(other) => return Err(format!("MSH_AT_EXIT={other}: expected finish or abandon")),
    };
    let slots = number("MAX_SCAV_PER_THREAD", 1)?;
    if slots == 0 || slots > 1024 {
        return Err(format!("MAX_SCAV_PER_THREAD={slots}: expected 1 to 1024"));
    }
    let defaults = Config::default();
    Ok(Some(Settings {
        pool_path,
        config: Config {
            stack_size: number("MSH_STACK_SIZE", defaults.stack_size as u64)? as usize,
            slots_per_thread: slots as usize,
            budget_ns: number("MSH_BUDGET_NS", defaults.budget_ns)?,
            abandon_at_exit: abandon,
        },
        skip_first_thread: flag("SKIP_FIRST_THREAD")?,
        stats: flag("MSH_STATS")?,
        strict: flag("MSH_STRICT")?,
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
}
