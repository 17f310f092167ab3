//! The `msh-stats: {json}` line printed at exit with `MSH_STATS=1`: figures per
//! primary thread (recorded as each exits) and in total.

use msh_core::sched;
use serde_json::{json, Value};
use std::sync::Mutex;

static THREADS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn tid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as i64 }
}

fn as_json(stats: sched::Stats) -> Value {
    json!({
        "switches": stats.switches,
        "scavenger_yields": stats.scav_yields,
        "scavenger_ns": stats.scav_ns,
        "scavengers_started": stats.started,
        "scavengers_completed": stats.completed,
        "scavengers_stopped": stats.stopped,
        "scavengers_preempted": stats.preempted,
        "budget_ns": stats.budget_ns,
    })
}

/// Records the calling thread's figures (it is about to stop being a primary).
pub fn record_thread() {
    if let Some(stats) = sched::thread_stats() {
        let mut entry = as_json(stats);
        entry["tid"] = json!(tid());
        THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }
}

/// Prints the line on stderr (a thread still registered is counted as it is now).
pub fn print() {
    record_thread();
    let threads = std::mem::take(&mut *THREADS.lock().unwrap_or_else(|e| e.into_inner()));
    let total = sched::global_stats();
    let mut total_json = as_json(total);
    total_json["threads"] = json!(threads.len());
    let line = json!({ "threads": threads, "total": total_json });
    eprintln!("msh-stats: {line}");
}
