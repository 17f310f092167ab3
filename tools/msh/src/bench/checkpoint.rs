//! `msh bench checkpoint`: full against incremental checkpoints of a process that
//! knows nothing of msh (`c-examples/ckpt_target.c` under `msh run --track-dirty`),
//! which rewrites a fraction of its heap's pages per epoch. Each round takes a full
//! checkpoint into a fresh directory, then one incremental checkpoint per epoch; the
//! last round's image is verified against the process. Debian's `criu dump` and
//! `criu pre-dump` are run on the same process and their outcome reported.

use crate::checkpoint::{self, Summary};
use crate::examples;
use anyhow::{bail, Context, Result};
use clap::Args;
use msh_profile::stats::median;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// A fraction in (0, 1] — clap's value parser.
pub(crate) fn dirty_fraction(text: &str) -> Result<f64, String> {
    super::server::bounded_f64(text, 0.0, 1.0, false)
}

/// Arguments of `msh bench checkpoint`.
#[derive(Args, Debug)]
pub struct CheckpointBenchArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The process's heap, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    mib: u64,
    /// Fraction of the heap's pages rewritten per epoch, in (0, 1].
    #[arg(long, default_value_t = 0.01, value_parser = dirty_fraction)]
    fraction: f64,
    /// Incremental checkpoints (epochs) per round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    epochs: u64,
    /// Rounds (a full checkpoint and its epochs); figures are medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// Where checkpoints are written (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Skip criu.
    #[arg(long)]
    no_criu: bool,
}

/// Medians over a kind of checkpoint.
#[derive(Serialize, Debug, Default)]
pub struct Figures {
    /// Checkpoints measured.
    pub count: usize,
    /// Whole checkpoint (connect to rename), ms.
    pub total_ms: f64,
    /// Process stopped, ms.
    pub stopped_ms: f64,
    /// The longest stop of all, ms.
    pub stopped_ms_max: f64,
    /// Of the stop: the control thread's collect, ms.
    pub collect_ms: f64,
    /// Of the stop: copying the pages out, ms.
    pub copy_ms: f64,
    /// Pages saved.
    pub pages: f64,
}

/// What criu did on the same process.
#[derive(Serialize, Debug)]
pub struct CriuOutcome {
    /// The command.
    pub command: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Wall time, s.
    pub seconds: f64,
    /// Its first error line, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The report.
#[derive(Serialize, Debug)]
pub struct Report {
    /// Heap size, MiB.
    pub size_mib: u64,
    /// Fraction of pages rewritten per epoch.
    pub dirty_fraction: f64,
    /// Full checkpoints.
    pub full: Figures,
    /// Incremental checkpoints.
    pub incremental: Figures,
    /// Median incremental total_ms over the same round's full total_ms.
    pub incremental_vs_full_time: f64,
    /// The last round's image compared equal to the process.
    pub verified: bool,
    /// `criu dump --leave-running` on the same process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criu_dump: Option<CriuOutcome>,
    /// `criu pre-dump` (incremental, needs soft-dirty) on the same process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criu_pre_dump: Option<CriuOutcome>,
    /// The 1-minute load average at the end (the machine is shared).
    pub load_avg_1m: Option<f64>,
}

/// The target process, killed when dropped.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Target {
    fn start(mib: u64) -> Result<Target> {
        let msh = std::env::current_exe().context("cannot find the msh executable")?;
        let program = examples::build_dir().join("ckpt_target");
        let mut child = Command::new(msh)
            .args(["run", "--track-dirty", "--"])
            .arg(&program)
            .args(["--mib", &mib.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut target = Target {
            child,
            stdin,
            stdout,
            pid: 0,
        };
        let line = target.line()?;
        target.pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("ckpt_target said {line:?}"))?;
        wait_idle(target.pid)?;
        Ok(target)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("ckpt_target exited");
        }
        Ok(line)
    }

    fn write(&mut self, fraction: f64, seed: u64) -> Result<()> {
        writeln!(self.stdin, "write {fraction} {seed}")?;
        self.stdin.flush()?;
        let line = self.line()?;
        if !line.starts_with("done ") {
            bail!("ckpt_target said {line:?}");
        }
        wait_idle(self.pid)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every thread of `pid` is blocked and its main thread is in read(2) (as
/// `ckpt_target` is between commands), so that a checkpoint taken then is of memory
/// that stays as it is until the next command.
pub fn wait_idle(pid: u32) -> Result<()> {
    let blocked = || -> bool {
        let main = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        main.starts_with("0 ")
            && tasks.filter_map(|t| t.ok()).all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the parenthesized command name.
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('R')
            })
    };
    for _ in 0..500 {
        if blocked() {
            std::thread::sleep(std::time::Duration::from_millis(10));
            if blocked() {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!("process {pid} did not go idle in 10 s")
}

fn figures(samples: &[Summary]) -> Figures {
    if samples.is_empty() {
        return Figures::default();
    }
    let med = |f: &dyn Fn(&Summary) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
    Figures {
        count: samples.len(),
        total_ms: med(&|s| s.total_ms),
        stopped_ms: med(&|s| s.stopped_ms),
        stopped_ms_max: samples.iter().map(|s| s.stopped_ms).fold(0.0, f64::max),
        collect_ms: med(&|s| s.collect_ms),
        copy_ms: med(&|s| s.copy_ms),
        pages: med(&|s| s.pages as f64),
    }
}

fn criu(args: &[&str], pid: u32, dir: &Path) -> CriuOutcome {
    let _ = std::fs::create_dir_all(dir);
    let start = Instant::now();
    let output = Command::new("criu")
        .args(args)
        .args(["-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["--shell-job", "-o", "criu.log"])
        .output();
    let seconds = start.elapsed().as_secs_f64();
    let command = format!("criu {} -t {pid} -D DIR --shell-job", args.join(" "));
    match output {
        Err(e) => CriuOutcome {
            command,
            ok: false,
            seconds,
            error: Some(format!("cannot run criu: {e}")),
        },
        Ok(out) => {
            let log = std::fs::read_to_string(dir.join("criu.log")).unwrap_or_default();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let error = (!out.status.success()).then(|| {
                stderr
                    .lines()
                    .chain(log.lines())
                    .find(|l| l.contains("Error") && !l.contains("exited, status"))
                    .unwrap_or("failed without an error line")
                    .trim()
                    .to_string()
            });
            CriuOutcome {
                command,
                ok: out.status.success(),
                seconds,
                error,
            }
        }
    }
}

fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs the benchmark.
pub fn measure(args: &CheckpointBenchArgs) -> Result<Report> {
    examples::build_targets(&["all"])?;
    let base = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("msh-bench-checkpoint-{}", std::process::id()));
    let result = (|| {
        let mut target = Target::start(args.mib)?;
        let bar = super::harvest::progress_bar(args.rounds * (args.epochs + 1), "checkpointing");
        let (mut full, mut incremental, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut verified = false;
        let mut seed = 1;
        for round in 0..args.rounds {
            let dir = base.join(format!("round-{round}"));
            let first = checkpoint::take(target.pid, &dir, false)?;
            bar.inc(1);
            let mut own = Vec::new();
            for _ in 0..args.epochs {
                target.write(args.fraction, seed)?;
                seed += 1;
                own.push(checkpoint::take(target.pid, &dir, true)?);
                bar.inc(1);
            }
            let median = figures(&own).total_ms;
            ratios.push(median / first.total_ms);
            if round + 1 == args.rounds {
                checkpoint::verify::verify(&dir, target.pid)?;
                verified = true;
            }
            full.push(first);
            incremental.extend(own);
            // Keep the disk use to one round.
            let _ = std::fs::remove_dir_all(&dir);
        }
        bar.finish_and_clear();
        let (criu_dump, criu_pre_dump) = if args.no_criu {
            (None, None)
        } else {
            (
                Some(criu(
                    &["dump", "--leave-running"],
                    target.pid,
                    &base.join("criu-dump"),
                )),
                Some(criu(&["pre-dump"], target.pid, &base.join("criu-pre-dump"))),
            )
        };
        Ok(Report {
            size_mib: args.mib,
            dirty_fraction: args.fraction,
            full: figures(&full),
            incremental: figures(&incremental),
            incremental_vs_full_time: median(&mut ratios),
            verified,
            criu_dump,
            criu_pre_dump,
            load_avg_1m: load_average(),
        })
    })();
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// `msh bench checkpoint`.
pub fn run(args: &CheckpointBenchArgs) -> Result<()> {
    let report = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} MiB, {:.1}% of pages rewritten per epoch, load {:.1}",
        report.size_mib,
        report.dirty_fraction * 100.0,
        report.load_avg_1m.unwrap_or(f64::NAN)
    );
    for (name, f) in [("full", &report.full), ("incremental", &report.incremental)] {
        println!(
            "{name:<12} {:>4} checkpoints  total {:>9.2} ms  stopped {:>8.2} ms (max {:.2}; collect {:.2}, copy {:.2})  pages {:>8.0}",
            f.count, f.total_ms, f.stopped_ms, f.stopped_ms_max, f.collect_ms, f.copy_ms, f.pages
        );
    }
    println!(
        "incremental / full time: {:.4}; last image verified: {}",
        report.incremental_vs_full_time, report.verified
    );
    for outcome in [&report.criu_dump, &report.criu_pre_dump]
        .into_iter()
        .flatten()
    {
        match &outcome.error {
            None => println!("{}: ok in {:.2} s", outcome.command, outcome.seconds),
            Some(e) => println!(
                "{}: failed in {:.2} s: {e}",
                outcome.command, outcome.seconds
            ),
        }
    }
    Ok(())
}
