//! The tracer end to end, under the real qemu-x86_64: exact counts on a fixture with a
//! known number of loads and stores, threads kept apart, every option, and the errors.
use msh_tracer::{trace, Access, Sampling, StopReason, TraceOptions, TraceSummary};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tracer-fixtures-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Compiles `tests/fixtures/NAME.c` into OUT once per test binary; `None` when the
/// compiler refuses the flags (e.g. no AVX-512 support in this cc).
fn build(name: &str, out: &str, flags: &[&str]) -> Option<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, Option<PathBuf>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(out) {
        return path.clone();
    }
    let output = build_dir().join(out);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
    let ok = Command::new("cc")
        .args(["-O2", "-g", "-pthread", "-fno-tree-vectorize"])
        .args(flags)
        .arg("-o")
        .arg(&output)
        .arg(source)
        .status()
        .is_ok_and(|s| s.success());
    let result = ok.then_some(output);
    built.insert(out.to_owned(), result.clone());
    result
}

fn stores_program() -> PathBuf {
    build("stores", "stores", &[]).expect("cc builds the fixture")
}

fn argv(program: &Path, args: &[&str]) -> Vec<OsString> {
    std::iter::once(program.as_os_str().to_owned())
        .chain(args.iter().map(OsString::from))
        .collect()
}

/// A fresh file for the fixture to write its array bounds to.
fn bounds_file(tag: &str) -> PathBuf {
    build_dir().join(format!("bounds-{tag}-{:?}", std::thread::current().id()))
}

fn read_bounds(path: &Path) -> Vec<Range<u64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let (a, b) = line.split_once(' ').unwrap();
            u64::from_str_radix(a, 16).unwrap()..u64::from_str_radix(b, 16).unwrap()
        })
        .collect()
}

/// Every delivered access, with its thread.
fn collect(cmd: &[OsString], opts: &TraceOptions) -> (Vec<(u32, Access)>, TraceSummary) {
    let mut all = Vec::new();
    let summary = trace(cmd, opts, |batch| {
        all.extend(batch.accesses.iter().map(|a| (batch.thread, *a)));
        ControlFlow::Continue(())
    })
    .unwrap();
    (all, summary)
}

/// (stores, loads) inside `range`.
fn count_in(accesses: &[(u32, Access)], range: &Range<u64>) -> (u64, u64) {
    let inside = accesses.iter().filter(|(_, a)| range.contains(&a.addr));
    inside.fold(
        (0, 0),
        |(s, l), (_, a)| if a.is_write { (s + 1, l) } else { (s, l + 1) },
    )
}

const STORES: u64 = 200_000;
const LOADS: u64 = 100_000;

#[test]
fn counts_exactly_the_loads_and_stores_of_the_fixture() {
    let program = stores_program();
    let bounds = bounds_file("exact");
    let cmd = argv(
        &program,
        &[
            bounds.to_str().unwrap(),
            &STORES.to_string(),
            &LOADS.to_string(),
        ],
    );
    let (accesses, summary) = collect(&cmd, &TraceOptions::default());
    assert!(
        summary.exit.success() || summary.exit.code() == Some(1),
        "{:?}",
        summary.exit
    );
    let array = &read_bounds(&bounds)[0];
    assert_eq!(count_in(&accesses, array), (STORES, LOADS));
    let in_array: Vec<&Access> = accesses
        .iter()
        .map(|(_, a)| a)
        .filter(|a| array.contains(&a.addr))
        .collect();
    assert!(in_array.iter().all(|a| a.size == 8), "8-byte longs");
    // One store and one load instruction touch the array.
    let ips: HashSet<(u64, bool)> = in_array.iter().map(|a| (a.ip, a.is_write)).collect();
    assert_eq!(ips.len(), 2, "{ips:x?}");
    assert_eq!(summary.accesses_delivered, accesses.len() as u64);
    assert_eq!(summary.accesses_seen, summary.accesses_delivered);
    assert_eq!(summary.threads, 1);
    assert!(summary.traced && summary.stopped.is_none());
    // The fixture's code resolves to the fixture through the memory map.
    let store_ip = in_array.iter().find(|a| a.is_write).unwrap().ip;
    let (path, _) = msh_tracer::Vma::resolve(&summary.vmas, store_ip).expect("ip in a file");
    assert_eq!(Path::new(path), program.canonicalize().unwrap());
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn keeps_threads_apart() {
    let program = stores_program();
    let bounds = bounds_file("threads");
    let cmd = argv(&program, &[bounds.to_str().unwrap(), "50000", "30000", "2"]);
    let (accesses, summary) = collect(&cmd, &TraceOptions::default());
    let arrays = read_bounds(&bounds);
    assert_eq!(summary.threads, 3, "main and two workers");
    let mut owners = Vec::new();
    for array in &arrays {
        assert_eq!(count_in(&accesses, array), (50_000, 30_000));
        let threads: HashSet<u32> = accesses
            .iter()
            .filter(|(_, a)| array.contains(&a.addr))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            threads.len(),
            1,
            "one thread touches each array: {threads:?}"
        );
        owners.push(*threads.iter().next().unwrap());
    }
    assert_ne!(owners[0], owners[1]);
    assert!(!owners.contains(&0), "the workers, not the main thread");
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn sampling_records_the_share_asked_for() {
    let program = stores_program();
    let bounds = bounds_file("sampling");
    let cmd = argv(
        &program,
        &[
            bounds.to_str().unwrap(),
            &STORES.to_string(),
            &LOADS.to_string(),
        ],
    );
    for (sampling, share) in [
        (Sampling::EveryNth(10), 0.1),
        (Sampling::Bursts { on: 100, off: 300 }, 0.25),
    ] {
        let opts = TraceOptions {
            sampling,
            ..TraceOptions::default()
        };
        let (accesses, summary) = collect(&cmd, &opts);
        let seen = summary.accesses_seen as f64;
        let delivered = summary.accesses_delivered as f64;
        assert_eq!(summary.accesses_delivered, accesses.len() as u64);
        // Exact per thread up to the last, partial period.
        assert!(
            (delivered - seen * share).abs() <= 400.0,
            "{sampling:?}: {delivered} of {seen}"
        );
        // The array loops are regular, so the array gets its share too.
        let (stores, loads) = count_in(&accesses, &read_bounds(&bounds)[0]);
        let expected = (STORES + LOADS) as f64 * share;
        assert!(
            ((stores + loads) as f64 - expected).abs() <= expected * 0.02,
            "{sampling:?}: {stores}+{loads}, expected {expected}"
        );
    }
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn the_address_filter_keeps_only_its_range() {
    let program = stores_program();
    let bounds = bounds_file("filter");
    let cmd = argv(
        &program,
        &[
            bounds.to_str().unwrap(),
            &STORES.to_string(),
            &LOADS.to_string(),
        ],
    );
    // The array is malloc'd at the same address every run under qemu (no ASLR there):
    // find it with one run, filter in the next.
    let (_, _) = collect(&cmd, &TraceOptions::default());
    let array = read_bounds(&bounds)[0].clone();
    let opts = TraceOptions {
        addr_filter: Some(array.clone()),
        ..TraceOptions::default()
    };
    let (accesses, summary) = collect(&cmd, &opts);
    assert_eq!(read_bounds(&bounds)[0], array, "same placement");
    assert!(accesses.iter().all(|(_, a)| array.contains(&a.addr)));
    assert_eq!(accesses.len() as u64, STORES + LOADS);
    assert!(summary.accesses_seen > summary.accesses_delivered);
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn fast_forward_skips_the_start() {
    let program = stores_program();
    let bounds = bounds_file("ff");
    let cmd = argv(
        &program,
        &[
            bounds.to_str().unwrap(),
            &STORES.to_string(),
            &LOADS.to_string(),
        ],
    );
    let (_, full) = collect(&cmd, &TraceOptions::default());
    // Past half the run: the store loop (the first ~2/3 of the instructions) is cut.
    let opts = TraceOptions {
        fast_forward_insns: full.instructions / 2,
        ..TraceOptions::default()
    };
    let (accesses, summary) = collect(&cmd, &opts);
    let (stores, loads) = count_in(&accesses, &read_bounds(&bounds)[0]);
    assert!(summary.traced);
    assert!(
        stores < STORES && stores + loads > 0,
        "{stores} stores, {loads} loads"
    );
    assert_eq!(loads, LOADS, "the load loop comes after the mark");
    assert!(summary.accesses_seen < full.accesses_seen);
    // Past the end: nothing is traced, and the summary says so.
    let opts = TraceOptions {
        fast_forward_insns: u64::MAX,
        ..TraceOptions::default()
    };
    let (accesses, summary) = collect(&cmd, &opts);
    assert!(accesses.is_empty() && !summary.traced);
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn the_time_limit_and_the_callback_stop_a_long_run() {
    let program = stores_program();
    let bounds = bounds_file("limit");
    // Ten billion stores: hours under qemu.
    let cmd = argv(&program, &[bounds.to_str().unwrap(), "10000000000", "0"]);
    let opts = TraceOptions {
        time_limit: Some(Duration::from_millis(1500)),
        ..TraceOptions::default()
    };
    let (accesses, summary) = collect(&cmd, &opts);
    assert_eq!(summary.stopped, Some(StopReason::TimeLimit));
    assert!(!accesses.is_empty());
    assert!(summary.wall < Duration::from_secs(15), "{:?}", summary.wall);
    let mut calls = 0;
    let summary = trace(&cmd, &TraceOptions::default(), |_| {
        calls += 1;
        ControlFlow::Break(())
    })
    .unwrap();
    assert_eq!((calls, summary.batches), (1, 1));
    assert_eq!(summary.stopped, Some(StopReason::Callback));
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn a_static_executable_is_traced_too() {
    let Some(program) = build("stores", "stores-static", &["-static"]) else {
        eprintln!("skipped: cc cannot link statically here (no libc.a)");
        return;
    };
    let bounds = bounds_file("static");
    let cmd = argv(&program, &[bounds.to_str().unwrap(), "1000", "500"]);
    let (accesses, summary) = collect(&cmd, &TraceOptions::default());
    assert_eq!(count_in(&accesses, &read_bounds(&bounds)[0]), (1000, 500));
    assert!(summary
        .vmas
        .iter()
        .any(|v| v.path.as_deref() == program.to_str()));
    let _ = std::fs::remove_file(bounds);
}

#[test]
fn forks_and_execs_are_reported() {
    let program = build("forker", "forker", &[]).unwrap();
    let (_, summary) = collect(&argv(&program, &[]), &TraceOptions::default());
    assert_eq!((summary.forks, summary.exec.clone()), (1, None));
    let (_, summary) = collect(&argv(&program, &["exec"]), &TraceOptions::default());
    assert_eq!(summary.forks, 1);
    assert_eq!(summary.exec, Some(("/bin/true".to_string(), true)));
}

#[test]
fn avx512_code_is_a_one_line_error_naming_qemu() {
    let Some(program) = build("avx512", "avx512", &["-mavx512f"]) else {
        eprintln!("skipped: this cc cannot compile AVX-512");
        return;
    };
    let err = trace(&argv(&program, &[]), &TraceOptions::default(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("AVX-512") && message.contains("--backend sample"),
        "{message}"
    );
    assert!(!message.contains('\n'));
}

#[test]
fn a_plugin_that_fails_to_load_is_named() {
    let opts = TraceOptions {
        // A shared object that is not a QEMU plugin (no qemu_plugin_version).
        plugin: Some(std::fs::canonicalize("/lib/x86_64-linux-gnu/libm.so.6").unwrap()),
        ..TraceOptions::default()
    };
    let err = trace(&argv(Path::new("/bin/true"), &[]), &opts, |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("failed to load") && err.contains("libm"),
        "{err}"
    );
    let opts = TraceOptions {
        plugin: Some(PathBuf::from("/nonexistent/plugin.so")),
        ..TraceOptions::default()
    };
    let err = trace(&argv(Path::new("/bin/true"), &[]), &opts, |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/plugin.so"), "{err}");
}
