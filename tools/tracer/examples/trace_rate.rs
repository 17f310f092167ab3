//! `cargo run --release -p msh-tracer --example trace_rate -- CMD ARGS…`: traces a
//! command with batches counted and dropped, and prints (on stderr) the tracer's own figures
//! (accesses per second, per thread, batches, and how often the program waited for a
//! free slot), to tell the tracer's cost from the consumer's.
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::time::Instant;

fn main() {
    let command: Vec<OsString> = std::env::args_os().skip(1).collect();
    if command.is_empty() {
        eprintln!("usage: trace_rate CMD [ARGS…]");
        std::process::exit(2);
    }
    let mut per_thread: Vec<u64> = Vec::new();
    let started = Instant::now();
    let summary = msh_tracer::trace(&command, &msh_tracer::TraceOptions::default(), |batch| {
        let thread = batch.thread as usize;
        if per_thread.len() <= thread {
            per_thread.resize(thread + 1, 0);
        }
        per_thread[thread] += batch.accesses.len() as u64;
        ControlFlow::Continue(())
    });
    let summary = match summary {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("trace_rate: {error:#}");
            std::process::exit(1);
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let total: u64 = per_thread.iter().sum();
    eprintln!(
        "{total} accesses in {wall:.3} s: {:.1} M accesses/s; {} batches, {} producer waits, {} threads, exit {}",
        total as f64 / wall / 1e6,
        summary.batches,
        summary.producer_waits,
        summary.threads,
        summary.exit
    );
    eprintln!("per thread: {per_thread:?}");
}
