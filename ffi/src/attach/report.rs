//! The `msh-stats: {json}` line printed at exit with `MSH_STATS=1`: figures per
//! primary thread (recorded as each exits) and in total, and per scavenger name the
//! yield gaps measured on sample runs of code rewritten with `msh rewrite --scavenger`
//! (`gap_ns_p50`, `gap_ns_p99`, `gap_ns_max`; absent when none was measured).

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

/// Yield gaps per scavenger name, from every scavenger that has any.
fn gaps_json() -> Vec<Value> {
    let mut by_name: Vec<(Vec<u8>, sched::gaps::GapHist)> = Vec::new();
    sched::gaps::for_each(
        |name, hist| match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, h)) => h.merge(hist),
            None => by_name.push((name.to_vec(), hist.clone())),
        },
    );
    by_name
        .into_iter()
        .map(|(name, h)| {
            json!({
                "name": String::from_utf8_lossy(&name),
                "gap_samples": h.samples,
                "gap_ns_p50": h.quantile_ns(500),
                "gap_ns_p99": h.quantile_ns(990),
                "gap_ns_max": h.max_ns,
            })
        })
        .collect()
}

/// Prints the line on stderr (a thread still registered is counted as it is now).
pub fn print() {
    record_thread();
    let threads = std::mem::take(&mut *THREADS.lock().unwrap_or_else(|e| e.into_inner()));
    let total = sched::global_stats();
    let mut total_json = as_json(total);
    total_json["threads"] = json!(threads.len());
    let mut line = json!({ "threads": threads, "total": total_json });
    let gaps = gaps_json();
    if !gaps.is_empty() {
        line["scavengers"] = json!(gaps);
    }
    eprintln!("msh-stats: {line}");
}
