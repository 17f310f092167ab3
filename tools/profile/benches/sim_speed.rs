//! `cargo bench -p msh-profile --bench sim_speed`: the `sim` backend's whole-run speed
//! (qemu + tracer plugin + cache model + report), against the tracer alone (batches
//! counted and dropped) and valgrind's lackey (`--trace-mem=yes` into /dev/null, the
//! engine sim used before the tracer) on the same programs, and the program natively:
//! no tracer beats the program's own speed, and a pointer chase that misses DRAM on
//! every step runs at a few M accesses/s natively. Rates are the program's data
//! accesses (as the tracer counts them) over each run's wall time; medians of
//! `MSH_BENCH_RUNS` (default 3) runs, interleaved. `MSH_BENCH_LACKEY=0` skips lackey.
mod common;

use common::build;
use msh_profile::stats::median;
use msh_profile::{profile, Backend, Options, What};
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::process::{Command, Stdio};
use std::time::Instant;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Accesses delivered and wall seconds of a trace whose batches are only counted.
fn tracer_alone(argv: &[String]) -> (u64, f64) {
    let command: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let mut accesses = 0u64;
    let started = Instant::now();
    let summary = msh_tracer::trace(&command, &msh_tracer::TraceOptions::default(), |batch| {
        accesses += batch.accesses.len() as u64;
        ControlFlow::Continue(())
    })
    .expect("the tracer runs");
    assert!(summary.exit.success(), "{argv:?} failed under the tracer");
    (accesses, started.elapsed().as_secs_f64())
}

fn sim(argv: &[String]) -> f64 {
    let options = Options {
        backend: Backend::Sim,
        ..Options::default()
    };
    let started = Instant::now();
    profile(&What::Command(argv.to_vec()), &options).expect("the sim backend runs");
    started.elapsed().as_secs_f64()
}

fn native(argv: &[String]) -> f64 {
    let started = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the program runs");
    assert!(status.success(), "{argv:?} failed");
    started.elapsed().as_secs_f64()
}

fn lackey(argv: &[String]) -> f64 {
    let started = Instant::now();
    let status = Command::new("valgrind")
        .args(["--tool=lackey", "--trace-mem=yes", "--log-file=/dev/null"])
        .args(argv)
        .stdout(Stdio::null())
        .status()
        .expect("valgrind runs");
    assert!(status.success(), "{argv:?} failed under lackey");
    started.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("msh-sim-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ptrchase = build(&dir, "ptrchase");
    let multiloop = build(&dir, "multiloop");
    let workloads: [(&str, Vec<String>); 2] = [
        (
            "ptrchase 16 MiB, 10 M steps",
            [ptrchase.to_str().unwrap(), "16", "10000000"]
                .map(String::from)
                .to_vec(),
        ),
        ("multiloop", common::multiloop_command(&multiloop)),
    ];
    let runs: usize = std::env::var("MSH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let with_lackey = std::env::var("MSH_BENCH_LACKEY").map_or(true, |v| v != "0");
    println!(
        "sim backend speed, medians of {runs} (load average {})",
        load_average()
    );
    for (name, argv) in &workloads {
        let (mut tracer, mut whole, mut valgrind) = (Vec::new(), Vec::new(), Vec::new());
        let mut alone = Vec::new();
        let mut accesses = 0;
        for _ in 0..runs {
            alone.push(native(argv));
            let (count, seconds) = tracer_alone(argv);
            accesses = count;
            tracer.push(seconds);
            whole.push(sim(argv));
            if with_lackey {
                valgrind.push(lackey(argv));
            }
        }
        let rate = |seconds: f64| accesses as f64 / seconds / 1e6;
        let (tracer, whole) = (median(&mut tracer), median(&mut whole));
        println!("  {name}: {accesses} accesses");
        let alone = median(&mut alone);
        println!(
            "    natively {:.1} M accesses/s ({alone:.2} s)",
            rate(alone)
        );
        println!(
            "    tracer alone {:.1} M accesses/s ({tracer:.2} s)",
            rate(tracer)
        );
        println!(
            "    whole sim run {:.1} M accesses/s ({whole:.2} s)",
            rate(whole)
        );
        if with_lackey {
            let valgrind = median(&mut valgrind);
            println!(
                "    lackey {:.2} M accesses/s ({valgrind:.1} s): sim is {:.0}x faster",
                rate(valgrind),
                valgrind / whole
            );
        }
    }
    println!("load average after: {}", load_average());
    let _ = std::fs::remove_dir_all(&dir);
}
