//! `msh checkpoint`: incremental checkpoints of a process that knows nothing of msh.
//!
//! The process runs under `msh run --track-dirty` (libmsh preloaded, its control thread
//! tracking the writable private mappings). A checkpoint stops every other thread
//! (ptrace), has the control thread collect the pages written since the previous
//! checkpoint (all of them the first time), stops the control thread too, copies the
//! pages (`process_vm_readv`), resumes the process, and only then computes checksums
//! and writes the checkpoint (see [`image`]). `msh checkpoint verify` compares an image
//! with the process.

mod control;
pub mod image;
mod stop;
pub mod verify;

use anyhow::Context;
use anyhow::{bail, Result};
use control::Control;
use image::{Index, RegionEntry};
use msh_core::dirty::control::{normalize_runs, CollectKind};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use stop::Stopped;

/// Arguments of `msh checkpoint`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    command: Option<CheckpointCommand>,
    /// The process to checkpoint (started with `msh run --track-dirty -- CMD`).
    #[arg(long, required = true, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pid: Option<u32>,
    /// The checkpoint directory (created if missing; each checkpoint is a subdirectory).
    #[arg(short = 'o', long = "output", value_name = "DIR", required = true)]
    output: Option<PathBuf>,
    /// Save only the pages written since the previous checkpoint in DIR.
    #[arg(long)]
    incremental: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum CheckpointCommand {
    /// Compare the image in DIR with the process (stopped while it is read).
    Verify(verify::VerifyArgs),
}

/// What one checkpoint did.
#[derive(Serialize, Debug, Clone)]
pub struct Summary {
    /// The checkpoint's directory.
    pub path: PathBuf,
    /// Its position in DIR.
    pub seq: u64,
    /// Every page (true) or the pages written since the previous checkpoint.
    pub full: bool,
    /// Pages saved.
    pub pages: u64,
    /// Regions in the image.
    pub regions: usize,
    /// Bytes of tracked regions in the image.
    pub tracked_bytes: u64,
    /// How long the process was stopped, ms.
    pub stopped_ms: f64,
    /// Of which: the control thread's collect, ms.
    pub collect_ms: f64,
    /// Of which: copying the pages out, ms.
    pub copy_ms: f64,
    /// The whole checkpoint, connection to rename, ms.
    pub total_ms: f64,
}

/// Fault injection for the tests, between collect and copy:
/// `MSH_CHECKPOINT_FAULT=kill-after-collect` kills the process (as if it died
/// mid-checkpoint); `fail-after-collect` fails the checkpoint (as a full disk would).
fn injected_fault(pid: u32) -> Result<()> {
    match std::env::var("MSH_CHECKPOINT_FAULT").as_deref() {
        Ok("kill-after-collect") => {
            // SAFETY: sending a signal.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(())
        }
        Ok("fail-after-collect") => bail!("injected fault: the checkpoint fails after its collect"),
        _ => Ok(()),
    }
}

/// Reads the first `bytes` bytes of the control thread's copy buffer.
fn read_copy(file: &std::fs::File, bytes: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut raw = vec![0u8; bytes];
    file.read_exact_at(&mut raw, 0)?;
    Ok(raw)
}

/// Runs of pages: `(start, pages)`.
type Runs = Vec<(usize, usize)>;

/// The pages the control thread copied (`sent` in copy order, later copies of a page
/// superseding earlier ones) as sorted, disjoint runs and their bytes.
fn assemble(sent: &[(usize, usize)], raw: &[u8], page: usize) -> Result<(Runs, Vec<u8>)> {
    let total: usize = sent.iter().map(|r| r.1 * page).sum();
    if total != raw.len() {
        bail!(
            "the control thread copied {} bytes for {total} bytes of runs",
            raw.len()
        );
    }
    let mut latest = std::collections::HashMap::new();
    let mut offset = 0;
    for &(start, pages) in sent {
        for p in 0..pages {
            latest.insert(start + p * page, offset + p * page);
        }
        offset += pages * page;
    }
    let mut runs = sent.to_vec();
    normalize_runs(&mut runs, page);
    let mut data = Vec::with_capacity(latest.len() * page);
    for &(start, pages) in &runs {
        for p in 0..pages {
            let at = latest[&(start + p * page)];
            data.extend_from_slice(&raw[at..at + page]);
        }
    }
    Ok((runs, data))
}

/// Takes one checkpoint of `pid` into `dir`.
pub fn take(pid: u32, dir: &Path, incremental: bool) -> Result<Summary> {
    let begin = Instant::now();
    let mut control = Control::connect(pid)?;
    let hello = control.hello()?;
    let session = format!("{:016x}", hello.session);
    let chain = image::list(dir)?;
    if let Some((_, last)) = chain.last() {
        if last.session != session || last.pid != pid {
            bail!(
                "{} holds images of another process (pid {}, session {}), not of process {pid}",
                dir.display(),
                last.pid,
                last.session
            );
        }
    }
    let kind = match (incremental, chain.last()) {
        (false, _) => CollectKind::Full,
        (true, None) => bail!(
            "{} holds no checkpoint to continue from: take a full one first (without --incremental)",
            dir.display()
        ),
        (true, Some((_, last))) if last.epoch == hello.epoch => CollectKind::Incremental,
        // The collect after DIR's last checkpoint was never written: report it again.
        (true, Some((_, last))) if last.epoch + 1 == hello.epoch => CollectKind::Retry,
        (true, Some((_, last))) => bail!(
            "process {pid} was checkpointed elsewhere since the last checkpoint in {} (epoch {} now {}): take a full one",
            dir.display(),
            last.epoch,
            hello.epoch
        ),
    };
    let page = msh_core::os::page_size();
    let mut stopped = Stopped::all_but(pid, Some(hello.control_tid))?;
    let collect_start = Instant::now();
    let collected = control
        .collect(kind)
        .map_err(|e| anyhow::anyhow!("process {pid}: {e:#}"))?;
    let collect_ms = collect_start.elapsed().as_secs_f64() * 1e3;
    injected_fault(pid)?;
    let (sent_runs, data, stopped_ms, copy_ms);
    match collected.copied {
        Some(copied) => {
            // The control thread copied the pages while the process was stopped: hold
            // its copy buffer open, let the process go, then read.
            let path = format!("/proc/{pid}/fd/{}", copied.fd);
            let buffer = std::fs::File::open(&path)
                .map_err(|_| anyhow::anyhow!("process {pid} exited during the checkpoint"))?;
            stopped_ms = stopped.resume().as_secs_f64() * 1e3;
            let copy_start = Instant::now();
            let raw = read_copy(&buffer, copied.bytes as usize)
                .with_context(|| format!("cannot read {path}"))?;
            (sent_runs, data) = assemble(&collected.runs, &raw, page)?;
            copy_ms = copy_start.elapsed().as_secs_f64() * 1e3;
        }
        None => {
            // The control thread touches only its stack now; stop it too for a
            // consistent copy.
            stopped.stop(hello.control_tid as i32)?;
            let copy_start = Instant::now();
            let mut runs = collected.runs.clone();
            normalize_runs(&mut runs, page);
            data = stop::read_runs(pid, &runs, page)?;
            copy_ms = copy_start.elapsed().as_secs_f64() * 1e3;
            stopped_ms = stopped.resume().as_secs_f64() * 1e3;
            sent_runs = runs;
        }
    }
    drop(control);

    let runs = image::checksums(&sent_runs, page, &data);
    let regions: Vec<RegionEntry> = collected
        .regions
        .iter()
        .map(|r| RegionEntry {
            start: r.start as u64,
            end: r.end as u64,
            tracked: r.tracked,
        })
        .collect();
    let index = Index {
        format: image::FORMAT.into(),
        pid,
        session,
        seq: chain.len() as u64,
        epoch: collected.epoch,
        full: kind == CollectKind::Full,
        backend: hello.backend.clone(),
        page_size: page as u64,
        created_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        stopped_ms,
        regions,
        runs,
    };
    let path = image::write(dir, &index, &data)?;
    Ok(Summary {
        path,
        seq: index.seq,
        full: index.full,
        pages: index.pages(),
        regions: index.regions.len(),
        tracked_bytes: index
            .regions
            .iter()
            .filter(|r| r.tracked)
            .map(|r| r.end - r.start)
            .sum(),
        stopped_ms,
        collect_ms,
        copy_ms,
        total_ms: begin.elapsed().as_secs_f64() * 1e3,
    })
}

/// `msh checkpoint`.
pub fn run(args: &CheckpointArgs) -> Result<()> {
    if let Some(CheckpointCommand::Verify(v)) = &args.command {
        let report = verify::verify(&v.dir, v.pid)?;
        if v.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{}: identical to process {} ({} pages in {} regions, {} checkpoints; stopped {:.1} ms)",
                v.dir.display(),
                v.pid,
                report.pages,
                report.regions,
                report.checkpoints,
                report.stopped_ms
            );
        }
        return Ok(());
    }
    let (Some(pid), Some(dir)) = (args.pid, args.output.as_deref()) else {
        bail!("--pid and -o DIR are required");
    };
    // Before the process is stopped: a DIR that cannot hold checkpoints fails now.
    msh_files::check_output_dir(dir, "-o")?;
    let summary = take(pid, dir, args.incremental)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{}: {} checkpoint, {} pages ({:.1} MiB) in {} regions; process stopped {:.2} ms (collect {:.2}, copy {:.2}); {:.1} ms in all",
            summary.path.display(),
            if summary.full { "full" } else { "incremental" },
            summary.pages,
            (summary.pages * msh_core::os::page_size() as u64) as f64 / (1 << 20) as f64,
            summary.regions,
            summary.stopped_ms,
            summary.collect_ms,
            summary.copy_ms,
            summary.total_ms
        );
    }
    Ok(())
}
