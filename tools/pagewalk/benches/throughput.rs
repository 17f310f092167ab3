//! Simulated accesses per second of one simulation (one core): radix native on the
//! default machine, over each synthetic workload with an 8 GiB footprint.
//! `cargo bench -p msh-pagewalk` (`PAGEWALK_BENCH_ACCESSES=N` to change the length).
//!
//! Two figures per workload, medians of 3 interleaved runs: per wall-clock second
//! (what the run took, on a machine shared with other jobs), and per CPU second of
//! the process (getrusage; the set-up, measured by a run of 0 accesses just before,
//! subtracted), which time-slicing by other jobs does not inflate.
use msh_pagewalk::config::MachineConfig;
use msh_pagewalk::source::{Synthetic, Workload};
use msh_pagewalk::{run, Design, Env, Pages, Study};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; nothing else is touched.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() {
    let accesses: u64 = std::env::var("PAGEWALK_BENCH_ACCESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let study = Study {
        designs: vec![Design::Radix],
        envs: vec![Env::Native],
        pages: vec![Pages::Base],
        tlb: true,
        pwc: true,
        machine: MachineConfig::default(),
        seed: 1,
        walk_fraction: None,
    };
    let footprint = 8 << 30;
    let workloads = [
        Workload::Gups,
        Workload::Btree,
        Workload::Graph,
        Workload::Stream,
    ];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
    for _ in 0..3 {
        for (i, &w) in workloads.iter().enumerate() {
            let setup = {
                let mut source = Synthetic::new(w, footprint, 0, 1).expect("a valid workload");
                let before = cpu_seconds();
                run(&study, &mut source, &|_| {}).expect("a run");
                cpu_seconds() - before
            };
            let mut source = Synthetic::new(w, footprint, accesses, 1).expect("a valid workload");
            let before = cpu_seconds();
            let report = run(&study, &mut source, &|_| {}).expect("a run");
            let spent = cpu_seconds() - before - setup;
            wall[i].push(report.accesses_per_s);
            cpu[i].push(accesses as f64 / spent.max(1e-9));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((w, wall), cpu) in workloads.iter().zip(wall).zip(cpu) {
        println!(
            "radix native 4k {:>7}: {:6.1} M accesses/s wall, {:6.1} M per CPU second (one simulation; median of 3, {} M accesses over 8 GiB)",
            format!("{w:?}").to_lowercase(),
            median(wall) / 1e6,
            median(cpu) / 1e6,
            accesses / 1_000_000
        );
    }
}
