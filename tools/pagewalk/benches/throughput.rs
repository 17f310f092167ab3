//! Simulated accesses per second of one simulation (one core): radix native, the
//! default machine, over each synthetic workload. `cargo bench -p msh-pagewalk`.
//! Figures are medians of 3 runs, interleaved across workloads; note the machine's load.
use msh_pagewalk::config::MachineConfig;
use msh_pagewalk::source::{Synthetic, Workload};
use msh_pagewalk::{run, Design, Env, Pages, Study};

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
    let workloads = [
        Workload::Gups,
        Workload::Btree,
        Workload::Graph,
        Workload::Stream,
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
    for _ in 0..3 {
        for (i, &w) in workloads.iter().enumerate() {
            let mut source = Synthetic::new(w, 8 << 30, accesses, 1).expect("a valid workload");
            let report = run(&study, &mut source, &|_| {}).expect("a run");
            rates[i].push(report.accesses_per_s);
        }
    }
    for (w, mut r) in workloads.iter().zip(rates) {
        r.sort_by(f64::total_cmp);
        println!(
            "radix native 4k {:>7}: {:6.1} M simulated accesses/s (one core; median of 3, {} M accesses over 8 GiB)",
            format!("{w:?}").to_lowercase(),
            r[1] / 1e6,
            accesses / 1_000_000
        );
    }
}
