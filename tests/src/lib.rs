//! Helpers for the end-to-end tests in `tests/tests/`: where the checkout, the built
//! libraries and the binaries are, and how to compile C against them.
#![warn(missing_docs)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// `target/<profile>` of the running test binary (it lives in `target/<profile>/deps`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A scratch directory for this test's build products.
pub fn scratch(name: &str) -> PathBuf {
    let dir = profile_dir().join("e2e").join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Builds `libmsh.a` and `libmsh.so` for this test's profile, once per process, and
/// returns their directory. Cargo builds only the rlib of a dependency, so a
/// dev-dependency on msh-ffi does not produce the C libraries on a clean checkout.
pub fn ensure_libmsh() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "msh-ffi"])
            .current_dir(repo_root());
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("cannot run cargo");
        assert!(status.success(), "cargo build -p msh-ffi failed");
    });
    dir
}

/// `libmsh.a`, built for this profile if need be.
pub fn libmsh_a() -> PathBuf {
    let lib = ensure_libmsh().join("libmsh.a");
    assert!(
        lib.exists(),
        "{} is missing: build msh-ffi first",
        lib.display()
    );
    lib
}

/// `libmsh.so`, built for this profile if need be.
pub fn libmsh_so() -> PathBuf {
    let lib = ensure_libmsh().join("libmsh.so");
    assert!(
        lib.exists(),
        "{} is missing: build msh-ffi first",
        lib.display()
    );
    lib
}

/// Compiles C `sources` into `out` with msh.h on the include path, then `extra` args
/// (libraries go there). Panics with the compiler's output on failure.
pub fn cc(sources: &[PathBuf], out: &Path, extra: &[&str]) {
    let output = Command::new("cc")
        .args(["-O2", "-g", "-Wall", "-Werror", "-pthread"])
        .arg("-I")
        .arg(repo_root().join("include"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .expect("cannot run cc");
    assert!(
        output.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Links a program against the static libmsh.
pub fn cc_with_libmsh(sources: &[PathBuf], out: &Path, extra: &[&str]) {
    let lib = libmsh_a();
    let mut args = vec![lib.to_str().unwrap(), "-ldl", "-lm", "-lgcc_s"];
    args.extend_from_slice(extra);
    cc(sources, out, &args);
}

/// Builds test fixtures from `tests/c/NAME.c` into `dir`: each of `libraries` as
/// `NAME.so` (a scavenger or other shared object), each of `programs` as `NAME`.
pub fn build_fixtures(dir: &Path, libraries: &[&str], programs: &[&str]) {
    for name in libraries {
        let src = repo_root().join(format!("tests/c/{name}.c"));
        cc(
            &[src],
            &dir.join(format!("{name}.so")),
            &["-shared", "-fPIC"],
        );
    }
    for name in programs {
        let src = repo_root().join(format!("tests/c/{name}.c"));
        cc(&[src], &dir.join(name), &[]);
    }
}

/// Writes a pool file `NAME.pool` of `lines` into `dir` and returns its path.
pub fn write_pool(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(format!("{name}.pool"));
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the pool file");
    path
}

/// Asserts that a command exited 0, showing its stderr when it did not.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The JSON document a successful command printed on stdout (`--json` reports).
pub fn json_report(output: &Output) -> serde_json::Value {
    assert_success(output);
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON document")
}

/// The word after `key` in a program's `key value key value …` report (the C
/// examples print their results so); panics showing `text` when `key` is absent.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == key {
            return words.next().unwrap_or("");
        }
    }
    panic!("no {key} in output:\n{text}")
}

/// Runs `program` and returns its output.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .expect("cannot run test program")
}

/// Builds C example `targets` (make targets or files) into `scratch(name)` against
/// this profile's libmsh, without a nested cargo; returns that directory.
pub fn make_examples(name: &str, targets: &[&str]) -> PathBuf {
    ensure_libmsh();
    let build = scratch(name);
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root().join("c-examples"))
        .arg(format!("BUILD={}", build.display()))
        .arg(format!("LIBDIR={}", profile_dir().display()))
        .arg("SKIP_CARGO=1")
        .args(targets)
        .output()
        .expect("cannot run make");
    assert!(
        out.status.success(),
        "make {targets:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    build
}

/// Makes `command` run under a seccomp filter under which userfaultfd(2) fails with
/// ENOSYS, as on a kernel without it.
pub fn deny_userfaultfd(command: &mut Command) {
    let filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_userfaultfd as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    // SAFETY: only prctl (async-signal-safe) between fork and exec; `filter` is moved in.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
