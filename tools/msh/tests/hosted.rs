//! Ordinary programs, unmodified, as pool scavengers (`hosted`): Debian's gzip and
//! bzip2 and a small C program write byte-identical files to their plain runs
//! while the primary's output and exit status stay its own; executables that cannot
//! be hosted are refused with one line each and the primary runs on.
use msh_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MSH: &str = env!("CARGO_BIN_EXE_msh");

/// The primary, the C program (PIE, static, non-PIE), one with its own TLS and one
/// that forks.
fn build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("hosted");
        ensure_libmsh();
        build_fixtures(
            &dir,
            &[],
            &["primary", "hosted_prog", "hosted_tls", "hosted_fork"],
        );
        let src = repo_root().join("tests/c/hosted_prog.c");
        cc(
            std::slice::from_ref(&src),
            &dir.join("hosted_prog_static"),
            &["-static"],
        );
        cc(
            &[src],
            &dir.join("hosted_prog_nopie"),
            &["-no-pie", "-fno-pie"],
        );
        dir
    })
}

fn path(name: &str) -> String {
    build().join(name).display().to_string()
}

/// 4 Mi entries, 1.5 M hops: a few hundred ms; exits 5.
const PRIMARY: [&str; 2] = ["4194304", "1500000"];

/// Runs the primary under msh with `lines` as its pool, waiting at exit for the
/// scavengers to finish; checks its output and status are those of a run alone.
/// Returns msh's stderr.
fn primary_is_unharmed(name: &str, lines: &[String]) -> String {
    let pool = write_pool(&scratch("hosted"), name, lines);
    let alone = run(&build().join("primary"), &PRIMARY);
    assert_eq!(alone.status.code(), Some(5));
    let out: Output = Command::new(MSH)
        .arg("run")
        .arg("--pool")
        .arg(&pool)
        .args(["--exit-wait", "600000", "--"])
        .arg(build().join("primary"))
        .args(PRIMARY)
        .output()
        .expect("msh run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(5), "{name}: {err}");
    assert_eq!(out.stdout, alone.stdout, "{name}: {err}");
    err
}

/// A directory `NAME` holding `data.txt`: 4 MiB of word-like text, the same bytes
/// and modification time every time (gzip records the time in its header).
fn input(name: &str) -> PathBuf {
    let dir = scratch("hosted").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words: Vec<String> = (0..4000)
        .map(|_| {
            let len = 2 + next() % 8;
            (0..len)
                .map(|_| (b'a' + (next() % 26) as u8) as char)
                .collect()
        })
        .collect();
    let mut text = String::new();
    while text.len() < 4 << 20 {
        for _ in 0..3 + next() % 12 {
            text.push_str(&words[(next() % words.len() as u64) as usize]);
            text.push(' ');
        }
        text.push('\n');
    }
    let file = dir.join("data.txt");
    std::fs::write(&file, text).unwrap();
    let stamp = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    dir
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn debian_gzip_and_bzip2_unmodified_write_the_files_plain_runs_write() {
    let tools = ["/usr/bin/gzip", "/usr/bin/bzip2"];
    if let Some(missing) = tools.iter().find(|t| !Path::new(t).exists()) {
        panic!("{missing} is not installed (apt-get install gzip bzip2)");
    }
    let plain = input("plain");
    for tool in tools {
        let out = Command::new(tool)
            .args(["-k", "-9"])
            .arg(plain.join("data.txt"))
            .output()
            .unwrap();
        assert_success(&out);
    }
    let hosted = input("hosted");
    let data = hosted.join("data.txt").display().to_string();
    let err = primary_is_unharmed(
        "gzip-bzip2",
        &[
            format!("/usr/bin/gzip -k -9 {data}"),
            format!("/usr/bin/bzip2 -k -9 {data}"),
        ],
    );
    assert!(err.is_empty(), "{err}");
    for suffix in ["gz", "bz2"] {
        let file = format!("data.txt.{suffix}");
        let expected = read(&plain.join(&file));
        assert!(expected.len() > 100_000, "{file}: {} bytes", expected.len());
        assert!(read(&hosted.join(&file)) == expected, "{file} differs");
    }
}

#[test]
fn a_program_keeps_its_globals_getopt_exit_handlers_and_status() {
    let dir = scratch("hosted").join("prog");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = |name: &str| dir.join(name).display().to_string();
    let prog = path("hosted_prog");
    // Plain runs: the expected files.
    for (file, extra) in [("plain-1.txt", ""), ("plain-2.txt", " -x -s 3")] {
        let args: Vec<String> = format!("-o {} -n 3000{extra}", out(file))
            .split(' ')
            .map(String::from)
            .collect();
        let status = Command::new(&prog).args(&args).status().unwrap();
        assert_eq!(status.code(), Some(if extra.is_empty() { 0 } else { 3 }));
    }
    // Two lines of the same program: each its own globals and getopt state.
    let err = primary_is_unharmed(
        "prog",
        &[
            format!("{prog} -o {} -n 3000", out("hosted-1.txt")),
            format!("{prog} -o {} -n 3000 -x -s 3", out("hosted-2.txt")),
        ],
    );
    assert_eq!(
        err.trim_end(),
        "msh: scavenger prog.pool line 2 (hosted_prog): called exit(3); scavenger stopped"
    );
    for n in ["1", "2"] {
        let hosted = read(&dir.join(format!("hosted-{n}.txt")));
        assert!(
            hosted == read(&dir.join(format!("plain-{n}.txt"))),
            "file {n} differs"
        );
        // The exit handler ran, and saw the program's own optind.
        let text = String::from_utf8_lossy(&hosted).into_owned();
        let optind = if n == "1" { 5 } else { 8 };
        assert!(
            text.ends_with(&format!("atexit ran, optind {optind}\n")),
            "{text}"
        );
    }
}

#[test]
fn executables_that_cannot_be_hosted_are_refused_in_one_line_each() {
    let lines = [
        format!("{} -o /dev/null", path("hosted_prog_static")),
        format!("{} -o /dev/null", path("hosted_prog_nopie")),
        path("hosted_tls"),
        path("hosted_fork"),
        path("no_such_program"),
    ];
    let err = primary_is_unharmed("refused", &lines);
    let pool = scratch("hosted").join("refused.pool").display().to_string();
    let expected = [
        format!("msh: pool {pool} line 1: {}: cannot run it as a scavenger: it is statically linked (no PT_INTERP); only dynamically linked PIE executables can be hosted; line skipped", path("hosted_prog_static")),
        format!("msh: pool {pool} line 2: {}: cannot run it as a scavenger: it is not position-independent (ET_EXEC); rebuild it with -fPIE -pie; line skipped", path("hosted_prog_nopie")),
        format!("msh: pool {pool} line 3: {}: cannot run it as a scavenger: it has thread-local storage of its own (PT_TLS); line skipped", path("hosted_tls")),
        format!("msh: pool {pool} line 4: {}: cannot run it as a scavenger: it imports fork (fork/exec), which cannot share the primary's process; line skipped", path("hosted_fork")),
        format!("msh: pool {pool} line 5: {}: no such file; line skipped", path("no_such_program")),
        format!("msh: pool {pool}: no scavengers to run; running without msh"),
    ];
    assert_eq!(err.lines().collect::<Vec<_>>(), expected, "{err}");
}

#[test]
fn a_program_that_faults_never_yields_or_aborts_is_stopped_and_named() {
    let prog = path("hosted_prog");
    let err = primary_is_unharmed(
        "stopped",
        &[
            format!("{prog} -o /dev/null -n 10 -f"),
            format!("{prog} -o /dev/null -n 10 -l"),
            format!("{prog} -o /dev/null -n 10 -E -s 4"),
            format!("{prog} -o /dev/null -n 10 -A"),
        ],
    );
    assert!(
        err.contains("msh: scavenger stopped.pool line 1 (hosted_prog): SIGSEGV at 0x"),
        "{err}"
    );
    assert!(
        err.contains("msh: scavenger stopped.pool line 2 (hosted_prog): did not yield for 10 ms of CPU time (preempted by the watchdog); scavenger stopped"),
        "{err}"
    );
    // _exit and abort are libmsh's (interposed), whatever version the program names.
    for expected in [
        "msh: scavenger stopped.pool line 3 (hosted_prog): called _exit(4); scavenger stopped",
        "msh: scavenger stopped.pool line 4 (hosted_prog): called abort(); scavenger stopped",
    ] {
        assert!(err.contains(expected), "{err}");
    }
    assert_eq!(err.lines().count(), 4, "{err}");
}
