//! `cargo bench -p msh-profile --bench sim_replay`: the sim backend's consumer alone on
//! real traces. Each fixture is traced once into memory, then its batches are replayed
//! through the cache model (`Simulator::batch`) several times; the rate is accesses
//! per second of this thread's CPU time (so other processes' load counts less), median
//! of `MSH_BENCH_RUNS` (default 5). A digest of the results (misses, executions) is
//! printed so two builds can be checked to agree.
mod common;

use common::build;
use msh_profile::sim::cache::{Hierarchy, HierarchyConfig};
use msh_profile::sim::model::Simulator;
use msh_profile::stats::median;
use msh_tracer::Access;
use std::ffi::OsString;
use std::ops::ControlFlow;

fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

fn record(argv: &[String]) -> Vec<(u32, Vec<Access>)> {
    let command: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let mut batches = Vec::new();
    msh_tracer::trace(&command, &msh_tracer::TraceOptions::default(), |batch| {
        batches.push((batch.thread, batch.accesses.to_vec()));
        ControlFlow::Continue(())
    })
    .expect("the tracer runs");
    batches
}

fn main() {
    let dir = std::env::temp_dir().join(format!("msh-sim-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ptrchase = build(&dir, "ptrchase");
    let multiloop = build(&dir, "multiloop");
    let workloads: [(&str, Vec<String>); 2] = [
        ("multiloop", common::multiloop_command(&multiloop)),
        (
            "ptrchase 16 MiB, 3 M steps, 2 workers",
            [ptrchase.to_str().unwrap(), "16", "3000000", "2"]
                .map(String::from)
                .to_vec(),
        ),
    ];
    let runs: usize = std::env::var("MSH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let config = HierarchyConfig::host()
        .unwrap_or_else(|_| HierarchyConfig::parse("L1=32K:8,L2=1M:8,L3=32M:16").unwrap());
    println!(
        "cache model on recorded traces ({}), medians of {runs}",
        config.describe()
    );
    for (name, argv) in &workloads {
        let batches = record(argv);
        let mut rates = Vec::new();
        let mut digest = (0, 0, 0);
        for _ in 0..runs {
            let mut simulator = Simulator::new(Hierarchy::new(&config));
            let started = thread_cpu_seconds();
            for (thread, accesses) in &batches {
                simulator.batch(*thread, accesses);
            }
            let seconds = thread_cpu_seconds() - started;
            rates.push(simulator.accesses as f64 / seconds / 1e6);
            let executions: u64 = simulator.loads().map(|(_, l)| l.executions).sum();
            digest = (
                simulator.accesses,
                simulator.llc_load_misses,
                executions ^ simulator.loads().count() as u64,
            );
        }
        println!(
            "  {name}: {:.1} M accesses/s of CPU time (digest {digest:?})",
            median(&mut rates)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
