//! `cargo bench -p msh-profile --bench cache_model`: speed of the sim backend's cache
//! model alone (accesses per second through the host's L1/L2/LLC), on a synthetic mix
//! of accesses, and of a whole `sim` run on the pointer-chase fixture (valgrind +
//! trace parsing + model), both measured in this run. Medians of 5.
use msh_profile::sim::cache::{Hierarchy, HierarchyConfig};
use msh_profile::sim::trace::simulate;
use std::time::Instant;

const ACCESSES: usize = 20_000_000;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A lackey-format trace of one load per instruction (plus a stack store): a
/// fraction `random` of the loads go anywhere in a 64 MiB array, the rest stay in a
/// 16 KiB working set (stack, locals, small tables), as most of a real trace does.
fn synthetic_trace(accesses: usize, random: f64) -> Vec<u8> {
    let mut trace = Vec::with_capacity(accesses * 20);
    let mut state = 0x2545f4914f6cdd1du64;
    let threshold = (random * u32::MAX as f64) as u64;
    for i in 0..accesses / 2 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let address = if (state >> 32) < threshold {
            (0x1000_0000 + state % (64 << 20)) & !7
        } else {
            (0x7fff_0000 + state % (16 << 10)) & !7
        };
        trace.extend(
            format!(
                "I  {:08x},4\n L {address:08x},8\n S 1ffefff8a8,8\n",
                0x401000 + (i % 4) * 4
            )
            .as_bytes(),
        );
    }
    trace
}

fn measure(config: &HierarchyConfig, random: f64) {
    let trace = synthetic_trace(ACCESSES, random);
    let mut model_rates = Vec::new();
    let mut parse_and_model_rates = Vec::new();
    for _ in 0..5 {
        let mut hierarchy = Hierarchy::new(config);
        let started = Instant::now();
        let stats = simulate(&trace[..], &mut hierarchy).unwrap();
        let total = started.elapsed().as_secs_f64();
        model_rates.push(stats.accesses as f64 / stats.model_time.as_secs_f64() / 1e6);
        parse_and_model_rates.push(stats.accesses as f64 / total / 1e6);
    }
    println!(
        "  {:>3.0}% random loads: model alone {:.1} M accesses/s; with trace parsing {:.1} M accesses/s",
        random * 100.0,
        median(model_rates),
        median(parse_and_model_rates)
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
    whole_run(&host);
}

/// A whole `sim` run: valgrind + pipe + parsing + model, on the pointer chase.
fn whole_run(config: &HierarchyConfig) {
    let dir = std::env::temp_dir().join(format!("msh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("ptrchase");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ptrchase.c");
    let built = std::process::Command::new("cc")
        .args(["-O2", "-g", "-pthread", "-o"])
        .arg(&program)
        .arg(&source)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        println!("whole run: skipped (cc failed)");
        return;
    }
    let options = msh_profile::Options {
        backend: msh_profile::Backend::Sim,
        cache: Some(config.clone()),
        ..Default::default()
    };
    let what = msh_profile::What::Command(vec![
        program.to_string_lossy().into_owned(),
        "16".into(),
        "1000000".into(),
    ]);
    match msh_profile::profile(&what, &options) {
        Ok((_, report)) => report
            .notes
            .iter()
            .for_each(|n| println!("whole run (ptrchase 16 MiB, 1 M steps): {n}")),
        Err(err) => println!("whole run failed: {err:#}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
