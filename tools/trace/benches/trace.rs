//! `cargo bench -p msh-trace`: what tracing costs, as ratios against untraced runs
//! in the same rounds (interleaved, medians), and how long a 1 M-sample plot takes.
//!
//! 1. The interposer alone on an allocation-heavy program (tests/fixtures/
//!    allocheavy.c: millions of small malloc/free pairs).
//! 2. `msh trace` with the default source at its default rate, on the same program
//!    and on a memory-bound one (tests/fixtures/hotcold.c).
//! 3. `plot` (PNG) of a run with 1 M accesses.
use msh_profile::stats::median;
use msh_trace::record::{find_interposer, record, RecordOptions};
use msh_trace::source::{SourceOptions, DEFAULT_EVERY, DEFAULT_FREQUENCY_HZ};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: usize = 7;

fn fixture(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    assert!(Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap()
        .success());
    out
}

fn timed(mut command: Command) -> f64 {
    let t = Instant::now();
    let status = command.stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    t.elapsed().as_secs_f64()
}

fn overhead(program: &Path, args: &[&str], dir: &Path) {
    let interposer = find_interposer().expect("build msh-trace-interposer first");
    let (mut alone, mut traced, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut plain = Command::new(program);
        plain.args(args);
        let b = timed(plain);
        let mut pre = Command::new(program);
        pre.args(args)
            .env("LD_PRELOAD", &interposer)
            .env("MSH_TRACE_FILE", "/dev/null");
        let a = timed(pre);
        let db = dir.join(format!("bench-{round}.sqlite"));
        let t = Instant::now();
        let mut command = vec![OsString::from(program)];
        command.extend(args.iter().map(OsString::from));
        let summary = record(&RecordOptions {
            db: db.clone(),
            name: None,
            source: None,
            source_options: SourceOptions {
                frequency_hz: DEFAULT_FREQUENCY_HZ,
                every: DEFAULT_EVERY,
            },
            command,
        })
        .unwrap();
        let whole = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&db);
        base.push(b);
        alone.push(a / b);
        traced.push(summary.wall_ns as f64 / 1e9 / b);
        if round == 0 {
            println!(
                "  ({} source, {} allocations, {} accesses; msh trace end to end {:.2} s)",
                summary.access_source.name(),
                summary.allocations,
                summary.accesses,
                whole
            );
        }
    }
    println!("  untraced wall: median {:.3} s", median(&mut base));
    println!(
        "  interposer alone ÷ untraced: median {:.3}",
        median(&mut alone)
    );
    println!(
        "  traced (default source and rate) ÷ untraced: median {:.3}",
        median(&mut traced)
    );
}

fn plot_million(dir: &Path) {
    use msh_trace::alloc::Allocation;
    use msh_trace::db::{self, AccessRow, RunRow};
    let path = dir.join("million.sqlite");
    let mut conn = db::open(&path, true).unwrap();
    let allocations: Vec<Allocation> = (0..16u64)
        .map(|i| Allocation {
            id: i + 1,
            kind: "malloc",
            address: 0x7f00_0000_0000 + i * (64 << 20),
            size: 32 << 20,
            start_ns: i * 10_000_000,
            end_ns: Some(1_000_000_000),
            thread: 1,
            stack: vec![],
        })
        .collect();
    let sites: Vec<(String, String)> = (0..16)
        .map(|i| (format!("site{i}"), String::new()))
        .collect();
    let mut x = 88172645463325252u64;
    let accesses: Vec<AccessRow> = (0..1_000_000u64)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = (x % 16) as usize;
            AccessRow {
                time_ns: 200_000_000 + i * 700,
                address: allocations[a].address + (x >> 20) % (32 << 20),
                is_write: Some(x & 3 == 0),
                ip: Some(0x401000),
                thread: Some(1),
                allocation_id: Some(a as u64 + 1),
            }
        })
        .collect();
    let run = RunRow {
        name: "million".into(),
        wall_ns: 1_000_000_000,
        samples_recorded: 1_000_000,
        ..Default::default()
    };
    db::insert_run(&mut conn, &run, &allocations, &sites, &accesses).unwrap();
    drop(conn);
    let mut times = Vec::new();
    for _ in 0..3 {
        let out = dir.join("million.png");
        let t = Instant::now();
        msh_trace::plot::run(&msh_trace::plot::PlotArgs {
            db: path.clone(),
            run: None,
            time: None,
            address: None,
            output: out,
            width: 1200,
            height: 800,
        })
        .unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    println!(
        "  msh trace plot, 1,000,000 accesses, 1200×800 PNG: median {:.3} s",
        median(&mut times)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let heavy = fixture("allocheavy", dir.path());
    let hotcold = fixture("hotcold", dir.path());
    println!("allocheavy 4000000 (8 M malloc/free events, ~12 ns of work per event):");
    overhead(&heavy, &["4000000"], dir.path());
    println!("hotcold 40000000 (memory-bound random reads):");
    overhead(&hotcold, &["40000000"], dir.path());
    println!("plot:");
    plot_million(dir.path());
}
