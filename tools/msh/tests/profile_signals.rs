//! SIGTERM and SIGHUP to `msh profile` while it runs a command: the command is
//! stopped (never left running orphaned) and the profile of what was collected is
//! written, as for Ctrl-C. Both backends that start the command: `sample` (the
//! command itself) and `sim` (qemu-x86_64 running it with the tracer plugin).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MSH: &str = env!("CARGO_BIN_EXE_msh");

/// Polls `done` every 20 ms for at most `limit`.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn stop_profile_with(backend: &str, signal: libc::c_int, name: &str) {
    let dir = msh_tests::scratch(&format!("profile-{backend}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let profile = dir.join("p.json");
    // A shell spinning forever; it writes its PID (the profiled process's: under sim,
    // qemu-x86_64's own, as qemu-user runs the guest in its process) first.
    let script = format!("echo $$ > {}; while :; do :; done", pid_file.display());
    let mut msh = Command::new(MSH)
        .args(["profile", "--backend", backend, "-o"])
        .arg(&profile)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    };
    assert!(
        wait_for(Duration::from_secs(30), || read_pid().is_some()),
        "the profiled command never started"
    );
    let child = read_pid().unwrap();
    if backend == "sim" {
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("qemu-x86_64"),
            "the sim backend runs the command under qemu-x86_64"
        );
    }
    // Let it collect some samples (sim: run well past its million-instruction minimum).
    let collect_ms = if backend == "sim" { 1500 } else { 700 };
    std::thread::sleep(Duration::from_millis(collect_ms));
    // SAFETY: signalling the msh process this test started.
    assert_eq!(unsafe { libc::kill(msh.id() as i32, signal) }, 0);
    let exited = wait_for(Duration::from_secs(30), || {
        msh.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = msh.kill();
        // SAFETY: killing the spinning shell this test caused to be started.
        unsafe { libc::kill(child, libc::SIGKILL) };
        panic!("msh profile --backend {backend} still running 30 s after {name}");
    }
    let status = msh.wait().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    msh.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !alive(child),
        "the profiled command {child} ({backend}) outlived msh after {name}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The sim backend counts every access: 1.5 s of a spinning shell is always enough.
    assert!(
        status.success() || backend != "sim",
        "sim writes the profile after {name}: {stderr}"
    );
    if status.success() {
        assert!(
            stderr.contains(&format!("stopped by {name}")),
            "says why it stopped: {stderr}"
        );
        let loaded = msh_profile::Profile::load(&profile);
        assert!(loaded.is_ok(), "{}: {loaded:?}", profile.display());
    } else {
        // Too few samples to write a profile is a clear one-line error, and no file.
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("msh: ")).collect();
        assert_eq!(lines.len(), 1, "one error line: {stderr}");
        assert!(!Path::new(&profile).exists(), "no profile on error");
    }
}

#[test]
fn sigterm_stops_the_command_and_writes_the_profile() {
    stop_profile_with("sample", libc::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_stops_the_command_and_writes_the_profile() {
    stop_profile_with("sample", libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigterm_stops_qemu_and_writes_the_sim_profile() {
    stop_profile_with("sim", libc::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_stops_qemu_and_writes_the_sim_profile() {
    stop_profile_with("sim", libc::SIGHUP, "SIGHUP");
}
