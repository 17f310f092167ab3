//! `msh checkpoint` on a process that knows nothing of msh (`c-examples/ckpt_target.c`
//! under `msh run --track-dirty`): images verified identical, incremental checkpoints
//! small, and every bad input a one-line error with no checkpoint written.

use msh_tests::json_report;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

const MSH: &str = env!("CARGO_BIN_EXE_msh");

/// The examples (ckpt_target among them), built once against this profile's libmsh.
fn examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| msh_tests::make_examples("checkpoint", &["dirty"]))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msh-ckpt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// ckpt_target, with or without tracking; killed when dropped.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Target {
    fn start(tracked: bool, mib: u32, no_userfaultfd: bool) -> Target {
        let program = examples().join("ckpt_target");
        let mut command = if tracked {
            let mut c = Command::new(MSH);
            c.args(["run", "--track-dirty", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(["--mib", &mib.to_string(), "--threads", "2"])
            .env("MSH_LIB", msh_tests::libmsh_so())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if no_userfaultfd {
            msh_tests::deny_userfaultfd(&mut command);
        }
        let mut child = command.spawn().expect("start ckpt_target");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut target = Target {
            child,
            stdin,
            stdout,
            pid: 0,
        };
        let line = target.line();
        target.pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("ckpt_target said {line:?}"));
        target.wait_idle();
        target
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// Sends a command and returns the answer once every thread is blocked again (the
    /// main thread in read(2) of the next command): a checkpoint taken then is of a
    /// process whose memory does not change until the next command, so verify can
    /// compare it later.
    fn command(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").unwrap();
        self.stdin.flush().unwrap();
        let answer = self.line();
        if !answer.is_empty() {
            self.wait_idle();
        }
        answer
    }

    fn wait_idle(&self) {
        msh_cli::bench::checkpoint::wait_idle(self.pid).unwrap();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn msh(args: &[&str], dir: &Path) -> Output {
    Command::new(MSH)
        .args(args)
        .arg(dir)
        .output()
        .expect("run msh")
}

fn checkpoint(pid: u32, dir: &Path, incremental: bool) -> Output {
    let pid = pid.to_string();
    let mut args = vec!["checkpoint", "--json", "--pid", &pid];
    if incremental {
        args.push("--incremental");
    }
    args.push("-o");
    msh(&args, dir)
}

fn summary(out: &Output) -> serde_json::Value {
    json_report(out)
}

fn verify(pid: u32, dir: &Path) -> Output {
    let pid = pid.to_string();
    Command::new(MSH)
        .args(["checkpoint", "verify"])
        .arg(dir)
        .args(["--pid", &pid])
        .output()
        .expect("run msh checkpoint verify")
}

/// A one-line `msh: …` error containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(message.starts_with("msh: "), "{message}");
    assert!(message.contains(needle), "{message}");
}

fn checkpoints_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn incremental_checkpoints_of_an_unmodified_process_verify_identical() {
    let mut target = Target::start(true, 64, false);
    let dir = temp_dir("chain");
    let full = summary(&checkpoint(target.pid, &dir, false));
    assert_eq!(full["full"], true);
    let heap_pages = 64 * 256;
    assert!(full["pages"].as_u64().unwrap() >= heap_pages, "{full}");
    let verified = verify(target.pid, &dir);
    assert!(verified.status.success(), "{verified:?}");
    for epoch in 1..=3 {
        assert_eq!(target.command(&format!("write 0.01 {epoch}")), "done 164\n");
        let inc = summary(&checkpoint(target.pid, &dir, true));
        assert_eq!(inc["full"], false);
        let pages = inc["pages"].as_u64().unwrap();
        // The 164 rewritten pages, plus a few of the program's and msh's own.
        assert!((164..=164 + 200).contains(&pages), "{inc}");
        let verified = verify(target.pid, &dir);
        assert!(verified.status.success(), "epoch {epoch}: {verified:?}");
    }
    assert_eq!(
        checkpoints_in(&dir),
        ["000000", "000001", "000002", "000003"]
    );
    // The program's own view is untouched.
    assert!(target.command("sum").starts_with("sum "));
    // Changed memory is caught: after a write without a checkpoint, verify fails.
    assert_eq!(target.command("write 0.01 99"), "done 164\n");
    let stale = verify(target.pid, &dir);
    assert_one_line_error(&stale, "differ from the image");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mappings_made_and_unmapped_between_checkpoints_are_followed() {
    let mut target = Target::start(true, 8, false);
    let dir = temp_dir("mappings");
    summary(&checkpoint(target.pid, &dir, false));
    assert_eq!(target.command("map 4"), "mapped 1\n");
    assert_eq!(target.command("map 2"), "mapped 2\n");
    let grown = summary(&checkpoint(target.pid, &dir, true));
    // Both new regions whole: 6 MiB of pages never seen before.
    assert!(grown["pages"].as_u64().unwrap() >= 6 * 256, "{grown}");
    let verified = verify(target.pid, &dir);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(target.command("unmap"), "unmapped 1\n");
    assert_eq!(target.command("write 0.1 3"), "done 205\n");
    summary(&checkpoint(target.pid, &dir, true));
    // verify reads every region of the last image from the process: a region kept
    // after its unmapping would fail to read.
    let verified = verify(target.pid, &dir);
    assert!(verified.status.success(), "{verified:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_that_was_not_written_is_carried_into_the_next() {
    let mut target = Target::start(true, 16, false);
    let dir = temp_dir("retry");
    summary(&checkpoint(target.pid, &dir, false));
    assert_eq!(target.command("write 0.05 1"), "done 205\n");
    // The next checkpoint fails after its collect (as when the disk is full).
    let pid = target.pid.to_string();
    let failed = Command::new(MSH)
        .args(["checkpoint", "--incremental", "--pid", &pid, "-o"])
        .arg(&dir)
        .env("MSH_CHECKPOINT_FAULT", "fail-after-collect")
        .output()
        .unwrap();
    assert_one_line_error(&failed, "injected fault");
    assert_eq!(checkpoints_in(&dir), ["000000"]);
    assert_eq!(target.command("write 0.05 2"), "done 205\n");
    let retried = summary(&checkpoint(target.pid, &dir, true));
    // Both epochs' pages: what the failed checkpoint collected is not lost.
    assert!(retried["pages"].as_u64().unwrap() >= 205 + 150, "{retried}");
    let verified = verify(target.pid, &dir);
    assert!(verified.status.success(), "{verified:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_process_started_without_tracking_is_refused() {
    let target = Target::start(false, 4, false);
    let dir = temp_dir("untracked");
    let out = checkpoint(target.pid, &dir, false);
    assert_one_line_error(&out, "not started with dirty tracking");
    assert!(!dir.exists());
    // No such process at all.
    let out = checkpoint(u32::MAX >> 1, &dir, false);
    assert_one_line_error(&out, "no process");
    assert!(!dir.exists());
}

#[test]
fn a_directory_of_another_process_is_refused() {
    let a = Target::start(true, 4, false);
    let b = Target::start(true, 4, false);
    let dir = temp_dir("other");
    summary(&checkpoint(a.pid, &dir, false));
    for incremental in [false, true] {
        let out = checkpoint(b.pid, &dir, incremental);
        assert_one_line_error(&out, "holds images of another process");
    }
    assert_one_line_error(&verify(b.pid, &dir), "holds images of process");
    assert_eq!(checkpoints_in(&dir), ["000000"]);
    // An incremental checkpoint needs a full one first.
    let empty = temp_dir("empty");
    assert_one_line_error(&checkpoint(b.pid, &empty, true), "take a full one first");
    assert!(!empty.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_process_that_exits_mid_checkpoint_leaves_no_checkpoint() {
    let target = Target::start(true, 16, false);
    let dir = temp_dir("exits");
    let pid = target.pid.to_string();
    let out = Command::new(MSH)
        .args(["checkpoint", "--pid", &pid, "-o"])
        .arg(&dir)
        .env("MSH_CHECKPOINT_FAULT", "kill-after-collect")
        .output()
        .unwrap();
    assert_one_line_error(&out, "exited during the checkpoint");
    assert!(
        checkpoints_in(&dir).is_empty(),
        "{:?}",
        checkpoints_in(&dir)
    );
}

#[test]
fn a_kernel_without_userfaultfd_is_a_clear_error() {
    let mut target = Target::start(true, 4, true);
    let dir = temp_dir("nouffd");
    let out = checkpoint(target.pid, &dir, false);
    assert_one_line_error(&out, "userfaultfd");
    assert!(!dir.exists());
    // The program itself runs on, told once why checkpoints will fail.
    assert_eq!(target.command("write 0.5 1"), "done 512\n");
    assert_eq!(target.command("quit"), "");
    let _ = target.child.wait();
    let mut stderr = String::new();
    use std::io::Read;
    target
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--track-dirty") && stderr.contains("userfaultfd"),
        "{stderr}"
    );
}
