//! `msh bench dirty`: every dirty-tracking backend on one large populated mapping.
//!
//! Per backend and dirty fraction, medians over `--reps` epochs of:
//! - `arm_ms`: starting to track the whole populated mapping (`Tracker::new`: checks,
//!   registration, arming every page);
//! - `first_write_ns`: one write to each of `fraction × pages` distinct random pages,
//!   per write, against `baseline_write_ns`, the same writes to untracked memory;
//! - `collect_ms`: collecting the written pages with re-arm;
//! - `exact`: the collected set equals the written set, on every epoch.

use anyhow::{bail, Context, Result};
use clap::Args;
use msh_core::dirty::{Backend, Choice, Tracker};
use msh_core::os::page_size;
use msh_profile::stats::median;
use serde::Serialize;
use std::io::Write;
use std::time::Instant;

/// Arguments of `msh bench dirty`.
#[derive(Args, Debug)]
pub struct DirtyArgs {
    /// Print JSON: {"results": [...]}.
    #[arg(long)]
    json: bool,
    /// Size of the tracked mapping, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_048_576))]
    size_mib: usize,
    /// Dirty fractions to measure (comma-separated, each in (0, 1]).
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.10],
          value_parser = super::checkpoint::dirty_fraction)]
    fractions: Vec<f64>,
    /// Epochs per (backend, fraction); medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    reps: usize,
    /// Backends to run (comma-separated names); default: all.
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Back the mapping with transparent huge pages (default: base pages).
    #[arg(long)]
    thp: bool,
}

#[derive(Serialize, Debug)]
struct Row {
    backend: &'static str,
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    size_mib: usize,
    dirty_fraction: f64,
    arm_ms: Option<f64>,
    first_write_ns: Option<f64>,
    baseline_write_ns: Option<f64>,
    /// `first_write_ns` over uffd-async's at the same fraction, same run.
    first_write_vs_uffd_async: Option<f64>,
    collect_ms: Option<f64>,
    exact: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    results: Vec<Row>,
}

/// A private anonymous mapping, every page populated.
struct Heap {
    addr: usize,
    len: usize,
}

impl Heap {
    fn new(len: usize, thp: bool) -> Result<Heap> {
        // SAFETY: a fresh anonymous mapping.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "cannot map {} MiB: {}",
                len >> 20,
                std::io::Error::last_os_error()
            );
        }
        let advice = if thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(addr, len, advice) };
        let heap = Heap {
            addr: addr as usize,
            len,
        };
        for offset in (0..len).step_by(page_size()) {
            heap.write(offset, 1);
        }
        Ok(heap)
    }

    fn write(&self, offset: usize, value: u8) {
        // SAFETY: offset < len, inside our mapping.
        unsafe { std::ptr::write_volatile((self.addr + offset) as *mut u8, value) }
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.addr as *mut _, self.len) };
    }
}

/// `count` distinct page indices below `pages`, in random order (xorshift; fixed seed
/// per epoch so runs are comparable).
fn random_pages(pages: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..pages).collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = i + (x as usize) % (pages - i);
        all.swap(i, j);
    }
    all.truncate(count);
    all
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Writes `pages` of `heap` once each; ns per write.
fn timed_writes(heap: &Heap, pages: &[usize], value: u8) -> f64 {
    let page = page_size();
    let start = Instant::now();
    for &p in pages {
        heap.write(p * page + 64, value);
    }
    start.elapsed().as_nanos() as f64 / pages.len() as f64
}

fn measure(
    heap: &Heap,
    backend: Backend,
    fraction: f64,
    reps: usize,
    size_mib: usize,
) -> Result<Row> {
    let page = page_size();
    let total = heap.len / page;
    let count = ((total as f64 * fraction).round() as usize).clamp(1, total);
    let (mut arm, mut write, mut baseline, mut collect) = (vec![], vec![], vec![], vec![]);
    let mut exact = true;
    for rep in 0..reps {
        let pages = random_pages(
            total,
            count,
            (rep as u64 + 1) * 7919 + (fraction * 1e4) as u64,
        );
        // Baseline: the same writes to the same (populated, untracked) memory.
        baseline.push(timed_writes(heap, &pages, 2));
        let start = Instant::now();
        let mut tracker = Tracker::new(&[(heap.addr, heap.len)], Choice::Only(backend))
            .with_context(|| format!("{backend}: starting to track"))?;
        arm.push(ms(start));
        write.push(timed_writes(heap, &pages, 3 + rep as u8));
        let start = Instant::now();
        let mut got = tracker
            .collect_pages(true)
            .with_context(|| format!("{backend}: collecting"))?;
        collect.push(ms(start));
        let mut expected: Vec<usize> = pages.iter().map(|&p| heap.addr + p * page).collect();
        expected.sort_unstable();
        got.sort_unstable();
        exact &= got == expected;
    }
    Ok(Row {
        backend: backend.name(),
        available: true,
        reason: None,
        size_mib,
        dirty_fraction: fraction,
        arm_ms: Some(median(&mut arm)),
        first_write_ns: Some(median(&mut write)),
        baseline_write_ns: Some(median(&mut baseline)),
        first_write_vs_uffd_async: None,
        collect_ms: Some(median(&mut collect)),
        exact: Some(exact),
    })
}

/// Runs `msh bench dirty` and prints a table, or JSON.
pub fn run(args: &DirtyArgs) -> Result<()> {
    let backends: Vec<Backend> = if args.backends.is_empty() {
        Backend::ALL.to_vec()
    } else {
        args.backends
            .iter()
            .map(|name| {
                Backend::from_name(name).with_context(|| {
                    format!(
                        "unknown backend {name:?} (uffd-async, soft-dirty, uffd-sync, mprotect)"
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let heap = Heap::new(args.size_mib << 20, args.thp)?;
    let mut results = Vec::new();
    for backend in backends {
        for &fraction in &args.fractions {
            let row = match backend.probe() {
                Err(why) => Row {
                    backend: backend.name(),
                    available: false,
                    reason: Some(why.to_string()),
                    size_mib: args.size_mib,
                    dirty_fraction: fraction,
                    arm_ms: None,
                    first_write_ns: None,
                    baseline_write_ns: None,
                    first_write_vs_uffd_async: None,
                    collect_ms: None,
                    exact: None,
                },
                Ok(()) => measure(&heap, backend, fraction, args.reps, args.size_mib)?,
            };
            results.push(row);
        }
    }
    // Ratios against uffd-async measured in this same run.
    for i in 0..results.len() {
        let reference = results
            .iter()
            .find(|r| {
                r.backend == Backend::UffdAsync.name()
                    && r.dirty_fraction == results[i].dirty_fraction
            })
            .and_then(|r| r.first_write_ns);
        if let (Some(reference), Some(own)) = (reference, results[i].first_write_ns) {
            results[i].first_write_vs_uffd_async = Some(own / reference);
        }
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &Report { results })
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        results.iter().try_for_each(|row| print_row(&mut out, row))
    };
    match written {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}

fn print_row(out: &mut impl Write, row: &Row) -> std::io::Result<()> {
    match (row.available, row.first_write_ns) {
        (true, Some(write)) => writeln!(
            out,
            "{:<10} {:>5} MiB {:>5.1}%  arm {:>8.2} ms  first write {:>8.0} ns (untracked {:>4.0} ns, {} uffd-async)  collect {:>8.2} ms  exact {}",
            row.backend,
            row.size_mib,
            row.dirty_fraction * 100.0,
            row.arm_ms.unwrap_or(f64::NAN),
            write,
            row.baseline_write_ns.unwrap_or(f64::NAN),
            row.first_write_vs_uffd_async.map_or("-".to_string(), |r| format!("{r:.1}x")),
            row.collect_ms.unwrap_or(f64::NAN),
            row.exact.unwrap_or(false)
        ),
        _ => writeln!(
            out,
            "{:<10} {:>5} MiB {:>5.1}%  unavailable: {}",
            row.backend,
            row.size_mib,
            row.dirty_fraction * 100.0,
            row.reason.as_deref().unwrap_or("?")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pages_are_distinct_and_in_range() {
        let pages = random_pages(1000, 100, 3);
        let mut sorted = pages.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
        assert!(pages.iter().all(|&p| p < 1000));
    }
}
