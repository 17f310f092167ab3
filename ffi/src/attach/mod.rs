//! Attaching to unmodified programs: `LD_PRELOAD=libmsh.so` with `MSH_SCAV_POOL_PATH`
//! set (what `msh run` does). At load, libmsh reads the pool, loads each scavenger,
//! makes the main thread a primary (unless `SKIP_FIRST_THREAD=1`) and wraps
//! `pthread_create` so every new thread is one too.
//!
//! It fails open: a missing pool, a bad line, a scavenger without an entry point or
//! whose init fails gets one line on stderr naming the file, the line and the cause,
//! and the program runs as it would without msh (or, with `MSH_STRICT=1`, exits with
//! status 2). A scavenger that faults in its own code, calls `exit` or `abort`, or
//! does not yield within the watchdog interval is stopped with one line naming its
//! pool line; the program runs on. At exit, unfinished scavengers run for at most
//! `MSH_EXIT_WAIT_MS` (Ctrl-C cuts that short) and are then abandoned with one line
//! naming them, unless `MSH_AT_EXIT=abandon`; with `MSH_STATS=1` one
//! `msh-stats: {json}` line follows.
//!
//! A pool line may also name an ordinary dynamically linked PIE program, which runs
//! unmodified as a scavenger (`hosted`), or is refused with one line naming why.
//!
//! Programs the process execs do not attach (libmsh removes its variables and its
//! `LD_PRELOAD` entry from the environment at load) unless `MSH_FOLLOW_EXEC=1`.

mod exits;
mod guarded;
mod hosted;
mod idle;
mod interpose;
mod loader;
pub mod pool_file;
mod report;
pub mod settings;

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, Ordering};
use msh_core::sched;
use settings::Settings;
use std::collections::HashSet;
use std::sync::OnceLock;

static ATTACHED: AtomicBool = AtomicBool::new(false);
static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Whether libmsh attached to this process at load.
pub fn attached() -> bool {
    ATTACHED.load(Ordering::Relaxed)
}

/// Whether primaries run their scavengers while they wait for descriptors
/// (`MSH_HARVEST_IDLE=1`).
fn harvest_idle() -> bool {
    SETTINGS.get().is_some_and(|s| s.harvest_idle)
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

extern "C" fn on_load() {
    // No panic may escape into the dynamic loader.
    let _ = std::panic::catch_unwind(attach);
}

fn warn(message: &str) {
    eprintln!("msh: {message}");
}

/// Ends the process in strict mode; otherwise says the program runs without msh.
fn fail_open(settings: &Settings, message: &str) {
    warn(message);
    if settings.strict {
        eprintln!("msh: strict mode (MSH_STRICT=1): exiting");
        std::process::exit(2);
    }
}

/// Removes libmsh's variables and its `LD_PRELOAD` entry from the environment, so
/// that programs this one execs run without msh.
fn forget_environment() {
    let ours: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| settings::is_ours(name))
        .collect();
    for name in ours {
        std::env::remove_var(name);
    }
    let Some(preload) = std::env::var_os("LD_PRELOAD") else {
        return;
    };
    let me = own_path();
    let kept: Vec<&str> = preload
        .to_str()
        .unwrap_or("")
        .split([' ', ':'])
        .filter(|entry| !entry.is_empty())
        .filter(|entry| {
            let canonical = std::fs::canonicalize(entry).ok();
            me.as_ref().is_none_or(|me| canonical.as_ref() != Some(me))
        })
        .collect();
    if kept.is_empty() {
        std::env::remove_var("LD_PRELOAD");
    } else {
        std::env::set_var("LD_PRELOAD", kept.join(" "));
    }
}

/// This library's file, canonical.
fn own_path() -> Option<std::path::PathBuf> {
    let mut info = core::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr on an address in this library, with a valid out-pointer.
    let found = unsafe { libc::dladdr(on_load as *const c_void, info.as_mut_ptr()) };
    // SAFETY: filled by dladdr when it returns non-zero.
    let info = unsafe { info.assume_init() };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path.
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    use std::os::unix::ffi::OsStrExt;
    std::fs::canonicalize(std::ffi::OsStr::from_bytes(path.to_bytes())).ok()
}

fn attach() {
    if std::env::var_os("MSH_FOLLOW_EXEC").as_deref() != Some("1".as_ref()) {
        // What we need is read below, before anything execs.
        let settings = settings::from_env(|name| std::env::var_os(name));
        forget_environment();
        return attach_with(settings);
    }
    attach_with(settings::from_env(|name| std::env::var_os(name)));
}

fn attach_with(settings: Result<Option<Settings>, String>) {
    let settings = match settings {
        Ok(Some(settings)) => settings,
        Ok(None) => return,
        Err(cause) => {
            warn(&format!("{cause}; running without msh"));
            if std::env::var("MSH_STRICT").as_deref() == Ok("1") {
                std::process::exit(2);
            }
            return;
        }
    };
    for warning in &settings.warnings {
        warn(warning);
    }
    let pool = settings.pool_path.to_string_lossy().into_owned();
    let pool_file = pool.rsplit('/').next().unwrap_or(&pool).to_string();
    let text = match read_pool(std::path::Path::new(&settings.pool_path)) {
        Ok(text) => text,
        Err(cause) => return fail_open(&settings, &format!("{cause}; running without msh")),
    };
    if let Err(err) = sched::init(settings.config) {
        return fail_open(
            &settings,
            &format!("cannot start the runtime: {err}; running without msh"),
        );
    }
    let mut seen = HashSet::new();
    let mut spawned = 0;
    for entry in pool_file::parse(&text) {
        let line = match entry {
            Ok(line) => line,
            Err(err) => {
                fail_open(
                    &settings,
                    &format!("pool {pool} line {}: {}; line skipped", err.line, err.cause),
                );
                continue;
            }
        };
        let loaded: &'static loader::Loaded = match loader::load(&line.argv, &mut seen) {
            Ok(loaded) => Box::leak(Box::new(loaded)),
            Err(cause) => {
                fail_open(
                    &settings,
                    &format!("pool {pool} line {}: {cause}; line skipped", line.line),
                );
                continue;
            }
        };
        let name = format!(
            "{pool_file} line {} ({})",
            line.line,
            loaded.name.to_string_lossy()
        );
        let arg = loaded as *const loader::Loaded as *mut c_void;
        let spawned_line = match loaded.code_range {
            Some(range) => {
                sched::spawn_with_code_range(run_loaded, arg, Some(name.as_bytes()), range)
            }
            None => sched::spawn_with_code(run_loaded, arg, Some(name.as_bytes()), loaded.code),
        };
        match spawned_line {
            Ok(()) => spawned += 1,
            Err(err) => fail_open(
                &settings,
                &format!("pool {pool} line {}: {err}; line skipped", line.line),
            ),
        }
    }
    if spawned == 0 {
        fail_open(
            &settings,
            &format!("pool {pool}: no scavengers to run; running without msh"),
        );
        let _ = sched::shutdown();
        return;
    }
    let _ = SETTINGS.set(settings.clone());
    ATTACHED.store(true, Ordering::Release);
    if !settings.skip_first_thread {
        become_primary();
    }
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(at_exit) };
}

unsafe extern "C" fn run_loaded(loaded: *mut c_void) {
    // SAFETY: `loaded` was leaked at attach time and is never freed.
    let loaded = unsafe { &*(loaded as *const loader::Loaded) };
    loaded.run();
}

/// Makes the calling thread a primary (it unregisters itself when it exits).
fn become_primary() {
    let _ = std::panic::catch_unwind(|| {
        let _ = crate::runtime::msh_thread_register();
    });
}

/// Called by the auto-unregister of a thread that exits, before it unregisters.
pub(crate) fn thread_exiting() {
    if attached() {
        report::record_thread();
    }
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(settings) = SETTINGS.get() else {
            return;
        };
        // glibc runs the main thread's thread_local destructors before atexit
        // handlers, so by now it has usually unregistered and handed its scavengers
        // back to the pool.
        if !settings.config.abandon_at_exit && (sched::is_registered() || sched::pending() > 0) {
            // Run what is left — the pool and this thread's ring — for a while.
            let temporary = !sched::is_registered() && sched::register().is_ok();
            finish_or_abandon(settings.exit_wait_ms);
            if temporary {
                if sched::thread_stats().is_some_and(|s| s.switches > 0) {
                    report::record_thread();
                }
                let _ = sched::unregister();
            }
        }
        if settings.stats {
            report::print();
        }
    });
}

/// Set by the SIGINT handler installed while waiting at exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// How long unfinished scavengers run at exit before msh says it is waiting for them:
/// most finish well within it, and then nothing is printed.
const QUIET_WAIT_MS: u64 = 200;

/// Runs unfinished scavengers for at most `wait_ms` (Ctrl-C ends the wait), then
/// names those left on one line: they are abandoned. A wait longer than
/// `QUIET_WAIT_MS` is announced, so a process never sits at exit without a word.
fn finish_or_abandon(wait_ms: u64) {
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_millis(wait_ms);
    let announce_at = start + std::time::Duration::from_millis(QUIET_WAIT_MS.min(wait_ms));
    let mut announced = false;
    INTERRUPTED.store(false, Ordering::Relaxed);
    // SAFETY: a handler that only stores to an atomic; the old one is restored below.
    let previous = unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        )
    };
    let finished = sched::run_pending_while(|| {
        let now = std::time::Instant::now();
        if !announced && now >= announce_at && now < deadline {
            announced = true;
            announce_wait(deadline - now);
        }
        !INTERRUPTED.load(Ordering::Relaxed) && now < deadline
    });
    // SAFETY: restoring the disposition we replaced.
    unsafe { libc::signal(libc::SIGINT, previous) };
    if finished != Ok(false) {
        return;
    }
    let mut names = Vec::new();
    sched::for_each_unfinished(|name| names.push(String::from_utf8_lossy(name).into_owned()));
    let why = if INTERRUPTED.load(Ordering::Relaxed) {
        "interrupted".to_string()
    } else {
        format!("still running after {wait_ms} ms (MSH_EXIT_WAIT_MS)")
    };
    warn(&format!(
        "at exit, {} scavenger{} {why}: {}; abandoned",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    ));
}

/// The one line printed when the wait at exit outlasts `QUIET_WAIT_MS`.
fn announce_wait(left: std::time::Duration) {
    let mut count = 0usize;
    sched::for_each_unfinished(|_| count += 1);
    warn(&format!(
        "at exit, waiting up to {} ms more for {count} unfinished scavenger{} (Ctrl-C abandons {})",
        left.as_millis(),
        if count == 1 { "" } else { "s" },
        if count == 1 { "it" } else { "them" },
    ));
}

/// The largest pool file read: far more lines than scavengers anyone runs.
const MAX_POOL_BYTES: u64 = 16 << 20;

/// Reads the pool: a regular file only (a FIFO or `/dev/zero` named as the pool must
/// not hang or fill the program's memory), checked on the descriptor that is read.
fn read_pool(path: &std::path::Path) -> Result<String, String> {
    let name = path.display();
    let bytes = msh_files::read_regular(path, "pool", MAX_POOL_BYTES).map_err(|err| {
        match err.root_cause().downcast_ref::<std::io::Error>() {
            Some(io) => format!("pool {name}: {io}"),
            None => format!("{err:#}"),
        }
    })?;
    String::from_utf8(bytes).map_err(|_| format!("pool {name}: not UTF-8 text"))
}
