//! `cargo bench -p msh-profile --bench overhead`: the `sample` backend's cost, as the
//! wall time of a profiled run divided by an unprofiled run of the same program,
//! alternated in the same process, at the default rate. Median of 5 pairs per program.
mod common;

use common::build;
use msh_profile::stats::median;
use msh_profile::{profile, Backend, Options, What};
use std::process::Command;
use std::time::Instant;

fn main() {
    let dir = std::env::temp_dir().join(format!("msh-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ptrchase = build(&dir, "ptrchase");
    let multiloop = build(&dir, "multiloop");
    let workloads: [(&str, Vec<String>); 2] = [
        (
            "ptrchase 64 MiB, 5 M steps",
            [ptrchase.to_str().unwrap(), "64", "5000000"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "multiloop",
            [
                multiloop.to_str().unwrap(),
                "256",
                "20000000",
                "64",
                "2",
                "50000000",
                "10000000",
            ]
            .map(String::from)
            .to_vec(),
        ),
    ];
    let mut options = Options {
        backend: Backend::Sample,
        ..Options::default()
    };
    // MSH_BENCH_HZ=4000,10000 compares rates.
    let rates: Vec<u64> = std::env::var("MSH_BENCH_HZ")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![options.frequency_hz]);
    for hz in rates {
        options.frequency_hz = hz;
        run_workloads(&workloads, &options);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_workloads(workloads: &[(&str, Vec<String>)], options: &Options) {
    println!(
        "sample backend overhead at {} Hz (profiled / unprofiled wall time)",
        options.frequency_hz
    );
    for (name, argv) in workloads {
        let mut ratios = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            let plain = started.elapsed().as_secs_f64();
            let started = Instant::now();
            profile(&What::Command(argv.clone()), options).unwrap();
            let profiled = started.elapsed().as_secs_f64();
            ratios.push(profiled / plain);
        }
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "  {name}: median {:.3} (runs: {})",
            median(&mut ratios),
            shown.join(" ")
        );
    }
}
