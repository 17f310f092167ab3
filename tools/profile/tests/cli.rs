//! The `msh profile` command line: bad input gets a clear one-line error and never
//! leaves an output file; `--pid` attaches; `show` prints a table.
mod common;

use clap::Parser;
use common::{argv, build, scratch};
use msh_profile::cli::{run, ProfileArgs};
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Msh {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Profile(ProfileArgs),
}

/// Runs `msh profile ARGS…` in-process; returns the one-line error, if any.
fn msh_profile(args: &[&str]) -> Result<(), String> {
    // A parser error's first line is the message; clap adds a `--help` hint below.
    let cli = Msh::try_parse_from(["msh", "profile"].iter().chain(args))
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_owned())?;
    let Sub::Profile(args) = cli.command;
    run(args).map_err(|e| format!("{e:#}"))
}

fn output(name: &str) -> PathBuf {
    let path = scratch().join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn expect_error(args: &[&str], needle: &str, out: &Path) {
    let err = msh_profile(args).expect_err("must fail");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.trim_end().contains('\n'), "one line: {err}");
    assert!(!out.exists(), "no output written on error");
}

#[test]
fn a_missing_command_is_named() {
    let out = output("missing.json");
    let o = out.to_str().unwrap();
    expect_error(
        &["-o", o, "--", "no-such-command-xyz"],
        "command not found: no-such-command-xyz",
        &out,
    );
    expect_error(
        &["--backend", "sim", "-o", o, "--", "./no/such/file"],
        "command not found: ./no/such/file",
        &out,
    );
    let plain_file = scratch().join("plain-file");
    std::fs::write(&plain_file, "not a program").unwrap();
    expect_error(
        &["-o", o, "--", plain_file.to_str().unwrap()],
        "not an executable",
        &out,
    );
    expect_error(&["-o", o], "nothing to profile", &out);
}

#[test]
fn a_program_that_exits_at_once_is_refused() {
    let out = output("true.json");
    let o = out.to_str().unwrap();
    expect_error(
        &["--backend", "sample", "-o", o, "--", "true"],
        "too short to profile",
        &out,
    );
    expect_error(
        &[
            "--backend",
            "sim",
            "--cache",
            common::SIM_CACHE,
            "-o",
            o,
            "--",
            "true",
        ],
        "exited almost at once",
        &out,
    );
}

#[test]
fn a_file_that_is_not_a_profile_is_refused() {
    let path = scratch().join("not-a-profile.json");
    std::fs::write(&path, "{\"hello\": \"world\"}\n").unwrap();
    let err = msh_profile(&["show", path.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("is not a valid profile") && err.contains("no \"version\""),
        "{err}"
    );
    assert!(!err.contains('\n'));
    let binary = std::env::current_exe().unwrap();
    let err = msh_profile(&["show", binary.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("cannot read profile") || err.contains("not JSON"),
        "{err}"
    );
    let err = msh_profile(&["show", "/no/such/profile.json"]).unwrap_err();
    assert!(
        err.contains("cannot open profile /no/such/profile.json"),
        "{err}"
    );
}

#[test]
fn a_pid_that_cannot_be_traced_is_refused() {
    let out = output("pid.json");
    let o = out.to_str().unwrap();
    expect_error(
        &["--pid", "2147483646", "-o", o],
        "cannot trace PID 2147483646: no such process",
        &out,
    );
    if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
        expect_error(&["--pid", "2", "-o", o], "kernel thread", &out);
    }
    expect_error(
        &["--backend", "sim", "--pid", "1", "-o", o],
        "cannot attach to a running PID",
        &out,
    );
}

#[test]
fn bad_options_are_refused() {
    let out = output("opts.json");
    let o = out.to_str().unwrap();
    expect_error(
        &["--min-share", "2", "-o", o, "--", "true"],
        "2 is not between 0 and 1",
        &out,
    );
    expect_error(
        &["--duration=-1", "-o", o, "--", "true"],
        "-1 is not between 0 and",
        &out,
    );
    expect_error(
        &[
            "--backend",
            "sim",
            "--cache",
            "L1=banana",
            "-o",
            o,
            "--",
            "true",
        ],
        "bad --cache",
        &out,
    );
    expect_error(
        &["-o", "/no/such/dir/p.json", "--", "true"],
        "no directory /no/such/dir",
        &out,
    );
    let dir = scratch().to_str().unwrap().to_owned();
    expect_error(&["-o", &dir, "--", "true"], "is a directory", &out);
    expect_error(
        &[
            "--frequency",
            "0",
            "--backend",
            "sample",
            "-o",
            o,
            "--",
            "true",
        ],
        "--frequency",
        &out,
    );
}

#[test]
fn the_pmu_backend_says_when_there_is_no_pmu() {
    if msh_profile::pmu::detect().is_ok() {
        return; // a machine with a PMU: nothing to check here
    }
    let out = output("pmu.json");
    expect_error(
        &[
            "--backend",
            "pmu",
            "-o",
            out.to_str().unwrap(),
            "--",
            "true",
        ],
        "no hardware PMU",
        &out,
    );
}

#[test]
fn attaches_to_a_running_process_and_shows_the_profile() {
    let program = build("ptrchase", "ptrchase-attach", &[]);
    // Two chasing threads; the main thread only waits. Their samples reach us through
    // the main thread's per-CPU buffers (SET_OUTPUT), so finding the chase proves that.
    let command = argv(&program, &["64", "100000000", "2"]);
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Attach once the set-up is over, so the chase is all there is to sample.
    let mut line = String::new();
    let stderr = child.stderr.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line).unwrap();
    assert_eq!(line.trim(), "chasing");
    let out = output("attach.json");
    let pid = child.id().to_string();
    let result = msh_profile(&[
        "--backend",
        "sample",
        "--pid",
        &pid,
        "--duration",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
    let profile = msh_profile::Profile::load(&out).unwrap();
    let top = &profile.objects[0].sites[0];
    // Well over half the samples: sampled shares move with the machine's load (0.89
    // was seen under load where 0.96-0.98 is usual), the chase being on top does not.
    assert!(
        top.symbol.starts_with("chase+") && top.share >= 0.6,
        "{top:?}"
    );
    msh_profile(&["show", out.to_str().unwrap()]).unwrap();
    let table = msh_profile::show::render(&profile, 5);
    assert!(
        table.contains("chase+") && table.contains("ptrchase.c:"),
        "source lines shown:\n{table}"
    );
}

#[test]
fn duration_bounds_a_long_command() {
    // Also: `auto` (the default) is `pmu` with a PMU, else `sample` (here without its
    // confirming sim run, which would take its own time).
    // 3 G chase steps over 16 MiB (a set-up of ~0.1 s, so the chase fills the window
    // even on a busy machine) take a minute or more even from the caches; --duration
    // stops profiling (and the command) after 1.5 s and still writes a profile. The
    // bound leaves room for a busy machine and is still far below the full run.
    // Whether a 16 MiB chase costs a fifth of a DRAM access depends on the machine's
    // L3 and its load (on a 32 MiB-L3 EPYC it measured 10-60%): this test is about
    // --duration and auto, so no miss-ratio floor.
    let program = build("ptrchase", "ptrchase-duration", &[]);
    let out = output("duration.json");
    let started = std::time::Instant::now();
    msh_profile(&[
        "--duration",
        "1.5",
        "--confirm-seconds",
        "0",
        "--min-miss-ratio",
        "0",
        "-o",
        out.to_str().unwrap(),
        "--",
        program.to_str().unwrap(),
        "16",
        "3000000000",
    ])
    .unwrap();
    assert!(
        started.elapsed().as_secs_f64() < 20.0,
        "took {:?}",
        started.elapsed()
    );
    let profile = msh_profile::Profile::load(&out).unwrap();
    assert!(profile.objects[0].sites[0].symbol.starts_with("chase+"));
    assert_eq!(profile.backend, "auto");
    let expected = if msh_profile::pmu::detect().is_ok() {
        "pmu"
    } else {
        "sample"
    };
    assert_eq!(
        profile.objects[0].sites[0].decided_by.as_deref(),
        Some(expected)
    );
}

#[test]
fn a_binary_rebuilt_during_the_run_is_not_attributed() {
    // The profile would name instructions of the new file at the old file's addresses:
    // refuse instead (the kernel's, or our own early, record of the build-id differs).
    let original = build("ptrchase", "ptrchase-rebuilt", &[]);
    let program = scratch().join("ptrchase-rebuilt-copy");
    std::fs::copy(&original, &program).unwrap();
    let out = output("rebuilt.json");
    let (o, p) = (
        out.to_str().unwrap().to_owned(),
        program.to_str().unwrap().to_owned(),
    );
    // The different build is ready before the run starts, so the swap takes an instant.
    let replacement = scratch().join("ptrchase-rebuilt-new");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ptrchase.c");
    let status = std::process::Command::new("cc")
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&replacement)
        .arg(source)
        .status()
        .unwrap();
    assert!(status.success());
    // 200 M steps over 64 MiB: many seconds, so the swap lands mid-run however busy
    // the machine is.
    let profiler = std::thread::spawn(move || {
        msh_profile(&[
            "--backend",
            "sample",
            "--duration",
            "5",
            "-o",
            &o,
            "--",
            &p,
            "64",
            "200000000",
        ])
    });
    wait_until_running(&program);
    // Replace the file (a new inode, as a linker does) with the different build.
    std::fs::rename(&replacement, &program).unwrap();
    let err = profiler.join().unwrap().expect_err("must refuse");
    assert!(err.contains("rebuilt or replaced"), "{err}");
    assert!(!out.exists());
}

/// Waits (up to a minute) until some process is executing `program`.
fn wait_until_running(program: &std::path::Path) {
    let program = program.canonicalize().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let running = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == program)
        });
        if running {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never started", program.display());
}
