//! `msh checkpoint verify DIR --pid PID`: every page of the image (the last full
//! checkpoint in DIR and the incremental ones after it) compared with the memory of
//! the process, stopped. Meaningful right after a checkpoint, while the process waits.
//! The threads' rseq areas are not compared: the kernel rewrites them (the current
//! CPU) each time a thread returns to user space, and a restore registers them anew.

use super::control::Control;
use super::image::{self, Index};
use super::stop::{self, Stopped};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Arguments of `msh checkpoint verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The process the images were taken of.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub pid: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `verify` compared.
#[derive(Serialize, Debug)]
pub struct VerifyReport {
    /// Checkpoints the image is made of (the last full one and those after it).
    pub checkpoints: usize,
    /// Regions compared.
    pub regions: usize,
    /// Pages compared.
    pub pages: u64,
    /// How long the process was stopped, ms.
    pub stopped_ms: f64,
}

/// Compares the image in `dir` with process `pid`; an error says what differs.
pub fn verify(dir: &Path, pid: u32) -> Result<VerifyReport> {
    let chain = image::list(dir)?;
    let Some((_, last)) = chain.last() else {
        bail!("{} holds no checkpoint", dir.display());
    };
    if last.pid != pid {
        bail!(
            "{} holds images of process {}, not of process {pid}",
            dir.display(),
            last.pid
        );
    }
    let hello = Control::connect(pid)?.hello()?;
    let session = format!("{:016x}", hello.session);
    if last.session != session {
        bail!(
            "{} holds images of an earlier process {pid} (session {}), not of this one ({session})",
            dir.display(),
            last.session
        );
    }
    let base = chain
        .iter()
        .rposition(|(_, index)| index.full)
        .with_context(|| format!("{} holds no full checkpoint", dir.display()))?;
    let used = &chain[base..];
    let page = last.page_size as usize;
    // Where each page's latest copy is: (checkpoint, offset in its pages.bin).
    let mut data: Vec<Vec<u8>> = Vec::with_capacity(used.len());
    let mut latest: HashMap<u64, (usize, usize)> = HashMap::new();
    for (k, (path, index)) in used.iter().enumerate() {
        check_same(index, last, path)?;
        data.push(image::read_pages(path, index)?);
        for run in &index.runs {
            for p in 0..run.pages {
                latest.insert(
                    run.start + p * page as u64,
                    (k, run.offset as usize + (p as usize) * page),
                );
            }
        }
    }
    let stopped = Stopped::all_but(pid, None)?;
    let rseq = stopped.rseq_areas();
    let mut pages = 0u64;
    let mut differing = 0u64;
    let mut first: Option<(u64, u64)> = None;
    let mut buffer = vec![0u8; 16 << 20];
    for region in &last.regions {
        let mut at = region.start;
        while at < region.end {
            let len = ((region.end - at) as usize).min(buffer.len());
            stop::read_range(pid, at as usize, &mut buffer[..len])?;
            for (i, live) in buffer[..len].chunks(page).enumerate() {
                let address = at + (i * page) as u64;
                let &(k, offset) = latest.get(&address).with_context(|| {
                    format!(
                        "page {address:#x} of region {:#x}-{:#x} is in no checkpoint of {}: the image is incomplete",
                        region.start,
                        region.end,
                        dir.display()
                    )
                })?;
                pages += 1;
                if !same_page(&data[k][offset..offset + page], live, address, &rseq) {
                    differing += 1;
                    first.get_or_insert((address, used[k].1.seq));
                }
            }
            at += len as u64;
        }
    }
    let stopped_ms = stopped.resume().as_secs_f64() * 1e3;
    if let Some((address, seq)) = first {
        bail!(
            "{differing} of {pages} pages differ from the image in {} (first at {address:#x}, saved by checkpoint {seq:06})",
            dir.display()
        );
    }
    Ok(VerifyReport {
        checkpoints: used.len(),
        regions: last.regions.len(),
        pages,
        stopped_ms,
    })
}

/// Whether `saved` and `live` (the page at `address`) are equal outside `ignored`.
fn same_page(saved: &[u8], live: &[u8], address: u64, ignored: &[(usize, usize)]) -> bool {
    if saved == live {
        return true;
    }
    let end = address as usize + live.len();
    let mut masked = live.to_vec();
    for &(at, len) in ignored {
        if at + len <= address as usize || at >= end {
            continue;
        }
        let from = at.max(address as usize) - address as usize;
        let to = (at + len).min(end) - address as usize;
        masked[from..to].copy_from_slice(&saved[from..to]);
    }
    saved == masked.as_slice()
}

fn check_same(index: &Index, last: &Index, path: &Path) -> Result<()> {
    if index.session != last.session || index.page_size != last.page_size {
        bail!(
            "{} belongs to another process than the last checkpoint",
            path.display()
        );
    }
    Ok(())
}
