//! Attaching to unmodified programs: `LD_PRELOAD=libmsh.so` with `MSH_SCAV_POOL_PATH`
//! set (what `msh run` does). At load, libmsh reads the pool, loads each scavenger,
//! makes the main thread a primary (unless `SKIP_FIRST_THREAD=1`) and wraps
//! `pthread_create` so every new thread is one too.
//!
//! It fails open: a missing pool, a bad line, a scavenger without an entry point or
//! whose init fails gets one line on stderr naming the file, the line and the cause,
//! and the program runs as it would without msh (or, with `MSH_STRICT=1`, exits with
//! status 2). At exit, unfinished scavengers run to completion unless
//! `MSH_AT_EXIT=abandon`; with `MSH_STATS=1` one `msh-stats: {json}` line follows.

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

fn attach() {
    let settings = match settings::from_env(|name| std::env::var_os(name)) {
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
    let pool = settings.pool_path.to_string_lossy().into_owned();
    let text = match std::fs::read_to_string(&settings.pool_path) {
        Ok(text) => text,
        Err(err) => {
            return fail_open(
                &settings,
                &format!("pool {pool}: {err}; running without msh"),
            )
        }
    };
    if let Err(err) = sched::init(settings.config) {
        return fail_open(
            &settings,
            &format!("cannot start the runtime: {err:?}; running without msh"),
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
        let name = loaded.name.to_bytes();
        let arg = loaded as *const loader::Loaded as *mut c_void;
        match sched::spawn(run_loaded, arg, Some(name)) {
            Ok(()) => spawned += 1,
            Err(err) => fail_open(
                &settings,
                &format!("pool {pool} line {}: {err:?}; line skipped", line.line),
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
            // Run what is left — the pool and this thread's ring — to completion.
            let temporary = !sched::is_registered() && sched::register().is_ok();
            let _ = sched::run_pending();
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
