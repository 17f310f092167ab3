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

use anyhow::{bail, Result};
use control::Control;
use image::{Index, RegionEntry};
use msh_core::dirty::control::CollectKind;
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
    #[arg(long, required = true)]
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
    let page = msh_core::dirty::page_size();
    let mut stopped = Stopped::all_but(pid, Some(hello.control_tid))?;
    let collect_start = Instant::now();
    let collected = control
        .collect(kind)
        .map_err(|e| anyhow::anyhow!("process {pid}: {e:#}"))?;
    let collect_ms = collect_start.elapsed().as_secs_f64() * 1e3;
    injected_fault(pid)?;
    // The control thread touches only its stack now; stop it too for a consistent copy.
    stopped.stop(hello.control_tid as i32)?;
    let copy_start = Instant::now();
    let data = stop::read_runs(pid, &collected.runs, page)?;
    let copy_ms = copy_start.elapsed().as_secs_f64() * 1e3;
    let stopped_ms = stopped.resume().as_secs_f64() * 1e3;
    drop(control);

    let runs = image::checksums(&collected.runs, page, &data);
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
    let summary = take(pid, dir, args.incremental)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{}: {} checkpoint, {} pages ({:.1} MiB) in {} regions; process stopped {:.2} ms (collect {:.2}, copy {:.2}); {:.1} ms in all",
            summary.path.display(),
            if summary.full { "full" } else { "incremental" },
            summary.pages,
            (summary.pages * msh_core::dirty::page_size() as u64) as f64 / (1 << 20) as f64,
            summary.regions,
            summary.stopped_ms,
            summary.collect_ms,
            summary.copy_ms,
            summary.total_ms
        );
    }
    Ok(())
}
