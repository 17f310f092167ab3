//! `cargo bench -p msh-profile --bench cache_model`: speed of the sim backend's cache
//! model alone (accesses per second through the host's L1/L2/LLC), on a synthetic mix
//! of accesses fed as the tracer's batches. Medians of 5. The whole-run figures (tracer
//! and model together, against the tracer alone and valgrind lackey) are the
//! `sim_speed` bench.
use msh_profile::sim::cache::{Hierarchy, HierarchyConfig};
use msh_profile::sim::model::Simulator;
use msh_profile::stats::median;
use msh_tracer::Access;
use std::time::Instant;

const ACCESSES: usize = 20_000_000;

/// One load per instruction plus a stack store: a fraction `random` of the loads go
/// anywhere in a 64 MiB array, the rest stay in a 16 KiB working set (stack, locals,
/// small tables), as most of a real trace does.
fn synthetic_trace(accesses: usize, random: f64) -> Vec<Access> {
    let mut trace = Vec::with_capacity(accesses);
    let mut state = 0x2545f4914f6cdd1du64;
    let threshold = (random * u32::MAX as f64) as u64;
    for i in 0..accesses / 2 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let addr = if (state >> 32) < threshold {
            (0x1000_0000 + state % (64 << 20)) & !7
        } else {
            (0x7fff_0000 + state % (16 << 10)) & !7
        };
        let ip = 0x401000 + (i as u64 % 4) * 4;
        trace.push(Access {
            ip,
            addr,
            size: 8,
            is_write: false,
        });
        trace.push(Access {
            ip: ip + 2,
            addr: 0x1ffefff8a8,
            size: 8,
            is_write: true,
        });
    }
    trace
}

fn measure(config: &HierarchyConfig, random: f64) {
    let trace = synthetic_trace(ACCESSES, random);
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let mut simulator = Simulator::new(Hierarchy::new(config));
            let started = Instant::now();
            for batch in trace.chunks(4096) {
                simulator.batch(0, batch);
            }
            simulator.accesses as f64 / started.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    println!(
        "  {:>3.0}% random loads: {:.1} M accesses/s",
        random * 100.0,
        median(&mut rates)
    );
}

fn main() {
    let host = HierarchyConfig::host()
        .unwrap_or_else(|_| HierarchyConfig::parse("L1=48K:12,L2=2M:16,L3=32M:16").unwrap());
    let small = HierarchyConfig::parse("L1=48K:12,L2=2M:16,L3=8M:16").unwrap();
    println!("cache model speed, median of 5 runs of {ACCESSES} accesses each");
    for config in [&host, &small] {
        println!("{}:", config.describe());
        for random in [0.05, 0.25, 0.75] {
            measure(config, random);
        }
    }
}
