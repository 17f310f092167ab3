//! Every subcommand against bad input, as a hostile but ordinary user would try it.
//! Each case: the command line, the exit code it must end with, a piece of the
//! one-line message, and the rule that no file in the scratch directory changes except
//! the ones the case says it may write. Every case is bounded in time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MSH: &str = env!("CARGO_BIN_EXE_msh");

/// A fresh scratch directory with a few inputs: an executable, a text file, a
/// profile that names `/dev/zero`, a FIFO, a symlink to `/dev/null`.
fn scratch(name: &str) -> PathBuf {
    let dir = msh_tests::scratch(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("/bin/true", dir.join("prog")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an ELF file\n").unwrap();
    std::fs::write(
        dir.join("zero.json"),
        r#"{"version":1,"backend":"sample","objects":[{"path":"/dev/zero","build_id":"00","sites":[{"offset":"0x10","symbol":"f+0x0","insn":"mov","samples":1,"share":1.0,"miss_ratio":null}]}]}"#,
    )
    .unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/dev/null", dir.join("null")).unwrap();
    dir
}

/// Name → contents (or a marker for non-regular files) of every entry in `dir`.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let contents = if meta.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                format!("<{:?}>", meta.file_type()).into_bytes()
            };
            (name, contents)
        })
        .collect()
}

struct Case {
    /// Arguments after `msh`; `{}` is replaced by the scratch directory.
    args: &'static [&'static str],
    code: i32,
    message: &'static str,
    /// Files the case may create or change (relative to the scratch directory).
    may_write: &'static [&'static str],
}

fn run_case(dir: &Path, case: &Case) -> Result<(), String> {
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| a.replace("{}", dir.to_str().unwrap()))
        .collect();
    let before = snapshot(dir);
    let mut child = Command::new(MSH)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start msh: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("msh {args:?}: still running after 60 s (a hang)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut problems = Vec::new();
    if status.code() != Some(case.code) {
        problems.push(format!("exit {:?}, want {}", status.code(), case.code));
    }
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        problems.push("panicked".to_string());
    }
    let message = case.message.replace("{}", dir.to_str().unwrap());
    if !stderr.contains(&message) {
        problems.push(format!("message lacks {message:?}"));
    }
    let after = snapshot(dir);
    for (name, contents) in &after {
        let allowed = case.may_write.contains(&name.as_str());
        if before.get(name) != Some(contents) && !allowed {
            problems.push(format!("{name} was created or changed"));
        }
    }
    for name in before.keys() {
        if !after.contains_key(name) {
            problems.push(format!("{name} was removed"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "msh {}: {}\n  stderr: {}",
            args.join(" "),
            problems.join("; "),
            stderr.trim_end()
        ))
    }
}

const CASES: &[Case] = &[
    // Numbers out of range are refused by the parser (clap exits 2).
    Case {
        args: &["bench", "switch", "--runs", "0"],
        code: 2,
        message: "--runs",
        may_write: &[],
    },
    Case {
        args: &["bench", "attach", "--runs", "18446744073709551615"],
        code: 2,
        message: "--runs",
        may_write: &[],
    },
    Case {
        args: &["bench", "harvest", "--budget-ns", "18446744073709551615"],
        code: 2,
        message: "--budget-ns",
        may_write: &[],
    },
    Case {
        args: &["demo", "--runs", "0"],
        code: 2,
        message: "--runs",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--min-share",
            "2",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "2 is not between 0 and 1",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--min-share",
            "NaN",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "--min-share",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--min-miss-ratio=-0.5",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "--min-miss-ratio",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--duration",
            "1e30",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "--duration",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--duration",
            "0",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "not a positive number of seconds",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--duration",
            "inf",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "--duration",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--confirm-seconds",
            "NaN",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "--confirm-seconds",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "--frequency",
            "0",
            "-o",
            "{}/p.json",
            "--",
            "{}/prog",
        ],
        code: 2,
        message: "--frequency",
        may_write: &[],
    },
    Case {
        args: &["profile", "--pid", "0", "-o", "{}/p.json"],
        code: 2,
        message: "--pid",
        may_write: &[],
    },
    Case {
        args: &["profile", "show", "{}/zero.json", "--top", "0"],
        code: 2,
        message: "--top",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "{}/out",
            "--profile",
            "{}/zero.json",
            "--min-share",
            "2",
        ],
        code: 2,
        message: "2 is not between 0 and 1",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "{}/out",
            "--profile",
            "{}/zero.json",
            "--min-share",
            "NaN",
        ],
        code: 2,
        message: "--min-share",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "{}/out",
            "--profile",
            "{}/zero.json",
            "--top",
            "0",
        ],
        code: 2,
        message: "--top",
        may_write: &[],
    },
    Case {
        args: &["bench", "switch", "--round-trips", "0"],
        code: 2,
        message: "--round-trips",
        may_write: &[],
    },
    Case {
        args: &[
            "kpatch",
            "--kernel",
            "{}",
            "--lock",
            "spin_lock",
            "--field",
            "f",
            "-o",
            "{}/l.patch",
            "--threads",
            "100000",
        ],
        code: 2,
        message: "--threads",
        may_write: &[],
    },
    Case {
        args: &[
            "kpatch",
            "--kernel",
            "{}",
            "--lock",
            "spin_lock",
            "--field",
            "f",
            "-o",
            "{}/l.patch",
            "--threads",
            "0",
        ],
        code: 2,
        message: "--threads",
        may_write: &[],
    },
    Case {
        args: &["checkpoint", "--pid", "0", "-o", "{}/ck"],
        code: 2,
        message: "--pid",
        may_write: &[],
    },
    Case {
        args: &["bench", "checkpoint", "--fraction", "NaN"],
        code: 2,
        message: "--fraction",
        may_write: &[],
    },
    Case {
        args: &["bench", "dirty", "--fractions", "0.5,2"],
        code: 2,
        message: "--fractions",
        may_write: &[],
    },
    Case {
        args: &["bench", "dirty", "--reps", "0"],
        code: 2,
        message: "--reps",
        may_write: &[],
    },
    Case {
        args: &["pagewalk", "run", "--synthetic", "gups", "--accesses", "0"],
        code: 2,
        message: "--accesses",
        may_write: &[],
    },
    Case {
        args: &[
            "pagewalk",
            "run",
            "--synthetic",
            "gups",
            "--walk-fraction",
            "NaN",
        ],
        code: 2,
        message: "--walk-fraction",
        may_write: &[],
    },
    // Outputs never replace inputs, and nothing is written when a command fails.
    Case {
        args: &["rewrite", "{}/prog", "-o", "{}/prog", "--all-loads"],
        code: 1,
        message: "-o {}/prog is the same file as the input",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "{}/out",
            "--all-loads",
            "--report",
            "{}/prog",
        ],
        code: 1,
        message: "--report {}/prog is the same file as the input",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "{}/out",
            "--all-loads",
            "--report",
            "{}/out",
        ],
        code: 1,
        message: "--report {}/out is the same path as -o",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "{}/out",
            "--all-loads",
            "--report",
            "{}/no/r.json",
        ],
        code: 1,
        message: "--report {}/no/r.json: no directory {}/no",
        may_write: &[],
    },
    Case {
        args: &["rewrite", "{}/prog", "-o", "{}/out", "--profile", "{}/fifo"],
        code: 1,
        message: "profile {}/fifo is not a regular file",
        may_write: &[],
    },
    Case {
        args: &[
            "profile",
            "-o",
            "{}/prog",
            "--backend",
            "sample",
            "--",
            "{}/prog",
        ],
        code: 1,
        message: "-o {}/prog is the same file as the input",
        may_write: &[],
    },
    Case {
        args: &["profile", "-o", "{}/p.json", "--", "{}/no-such-program"],
        code: 1,
        message: "no-such-program",
        may_write: &[],
    },
    Case {
        args: &["profile", "show", "{}/fifo"],
        code: 1,
        message: "profile {}/fifo is not a regular file",
        may_write: &[],
    },
    Case {
        args: &[
            "kpatch",
            "--kernel",
            "{}",
            "--perf-script",
            "{}/notes.txt",
            "-o",
            "{}/notes.txt",
        ],
        code: 1,
        message: "-o {}/notes.txt is the same file as the input {}/notes.txt",
        may_write: &[],
    },
    Case {
        args: &[
            "kpatch",
            "--kernel",
            "{}",
            "--lock",
            "spin_lock",
            "--field",
            "f",
            "-o",
            "{}/l.patch",
            "--emit-cocci",
            "{}/notes.txt",
        ],
        code: 1,
        message: "--emit-cocci {}/notes.txt is not a directory",
        may_write: &[],
    },
    Case {
        args: &[
            "kpatch",
            "--kernel",
            "{}",
            "--lock",
            "spin_lock",
            "--field",
            "f",
            "-o",
            "{}/l.patch",
            "--emit-cocci",
            "{}/no/cocci",
        ],
        code: 1,
        message: "--emit-cocci {}/no/cocci: no directory {}/no",
        may_write: &[],
    },
    Case {
        args: &[
            "kpatch",
            "--kernel",
            "{}",
            "--lock",
            "spin_lock",
            "--field",
            "f",
            "-o",
            "{}/l.patch",
            "--emit-cocci",
            "{}/cocci",
        ],
        code: 1,
        message: "not a kernel source tree",
        may_write: &[],
    },
    // A checkpoint DIR that cannot hold checkpoints is refused before the process is
    // touched; a checkpoint that fails leaves no DIR behind.
    Case {
        args: &["checkpoint", "--pid", "1", "-o", "{}/notes.txt"],
        code: 1,
        message: "-o {}/notes.txt is not a directory",
        may_write: &[],
    },
    Case {
        args: &["checkpoint", "--pid", "1", "-o", "/dev/null"],
        code: 1,
        message: "-o /dev/null is not a directory",
        may_write: &[],
    },
    Case {
        args: &["checkpoint", "--pid", "1", "-o", "{}/fifo"],
        code: 1,
        message: "-o {}/fifo is not a directory",
        may_write: &[],
    },
    Case {
        args: &["checkpoint", "--pid", "1", "-o", "{}/ck/nested"],
        code: 1,
        message: "not started with dirty tracking",
        may_write: &[],
    },
    Case {
        args: &["checkpoint", "verify", "--pid", "1", "{}/fifo"],
        code: 1,
        message: "{}/fifo",
        may_write: &[],
    },
    // A path that is not a regular file is written in place, never replaced: the
    // symlink to /dev/null is still that symlink afterwards.
    Case {
        args: &["rewrite", "{}/prog", "-o", "{}/null", "--all-loads"],
        code: 0,
        message: "-> {}/null",
        may_write: &[],
    },
    Case {
        args: &[
            "rewrite",
            "{}/prog",
            "-o",
            "/dev/null",
            "--all-loads",
            "--report",
            "{}/null",
        ],
        code: 0,
        message: "-> /dev/null",
        may_write: &[],
    },
    // Inputs that are not regular files are refused, never read without bound.
    Case {
        args: &["rewrite", "{}/notes.txt", "-o", "{}/out", "--all-loads"],
        code: 1,
        message: "not an ELF",
        may_write: &[],
    },
    // A pool that is not a regular file is refused by libmsh without blocking on the
    // FIFO or reading /dev/zero forever; the program runs without msh.
    Case {
        args: &["run", "--pool", "{}/fifo", "--", "{}/prog"],
        code: 0,
        message: "pool {}/fifo is not a regular file; running without msh",
        may_write: &[],
    },
    Case {
        args: &["run", "--pool", "/dev/zero", "--", "{}/prog"],
        code: 0,
        message: "pool /dev/zero is not a regular file; running without msh",
        may_write: &[],
    },
    // Shell conventions for a program that cannot be run.
    Case {
        args: &["run", "--pool", "{}/notes.txt", "--", "{}/no-such-program"],
        code: 127,
        message: "no-such-program",
        may_write: &[],
    },
    Case {
        args: &["run", "--pool", "{}/notes.txt", "--", "{}/notes.txt"],
        code: 126,
        message: "notes.txt",
        may_write: &[],
    },
];

#[test]
fn every_bad_input_gets_its_exit_code_and_one_line_and_changes_nothing() {
    let dir = scratch("bad-input");
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|case| run_case(&dir, case).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
