//! Dirty-page tracking for garbage collectors and checkpointers.
//!
//! A [`Tracker`] watches one or more page-aligned ranges of private memory and answers
//! "which pages were written since the last time I asked", exactly, in the manner of
//! Windows' `GetWriteWatch`: [`Tracker::collect`] reports the written pages in address
//! order and, with `rearm`, re-arms exactly the pages it reported, atomically with
//! respect to concurrent writers.
//!
//! Four mechanisms, tried in this order by [`Tracker::new`] with [`Choice::Auto`]:
//!
//! | backend | how | cost per first write (here) |
//! |---|---|---|
//! | [`Backend::UffdAsync`] | userfaultfd `WP_ASYNC`; `PAGEMAP_SCAN` collects and re-arms | ≈ 0.9 µs, resolved in the kernel |
//! | [`Backend::SoftDirty`] | `/proc/self/clear_refs` + pagemap bit 55 | needs `CONFIG_MEM_SOFT_DIRTY` |
//! | [`Backend::UffdSync`] | userfaultfd write-protect, a handler thread | ≈ 5–70 µs (a thread wake-up) |
//! | [`Backend::Mprotect`] | `PROT_READ` + a `SIGSEGV` handler that chains | ≈ 6 µs, one VMA per dirty run |
//!
//! Support is probed at run time ([`Backend::probe`]), with the reason when a backend is
//! unavailable. See each backend's module for what it can and cannot see.
//!
//! ```no_run
//! use msh_core::dirty::{Choice, Tracker};
//! # fn save(_page: usize) {}
//! # let (heap, len) = (0x7f00_0000_0000usize, 1usize << 30);
//! let mut tracker = Tracker::new(&[(heap, len)], Choice::Auto)?;
//! // ... the program writes ...
//! for page in tracker.collect_pages(true)? {
//!     save(page); // written since the tracker was created; re-armed
//! }
//! # Ok::<(), msh_core::dirty::Error>(())
//! ```

// `x % n != 0` rather than `is_multiple_of`: the workspace's MSRV is 1.85.
#![allow(clippy::manual_is_multiple_of)]

mod bitmap;
pub mod control;
pub mod features;
mod maps;
mod mprotect;
mod soft_dirty;
mod sys;
mod uffd_async;
mod uffd_sync;

use crate::os::{errno, page_size};
use alloc::vec::Vec;
use core::fmt;

pub use maps::{current_mappings, Mapping};

/// A dirty-tracking mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// userfaultfd async write-protect read with PAGEMAP_SCAN (Linux 6.7+).
    UffdAsync,
    /// `/proc/self/clear_refs` and pagemap's soft-dirty bit (needs `CONFIG_MEM_SOFT_DIRTY`).
    SoftDirty,
    /// userfaultfd write-protect with a handler thread that records each fault.
    UffdSync,
    /// Read-only pages and a SIGSEGV handler that chains to the previous one.
    Mprotect,
}

impl Backend {
    /// Every backend, in order of preference.
    pub const ALL: [Backend; 4] = [
        Backend::UffdAsync,
        Backend::SoftDirty,
        Backend::UffdSync,
        Backend::Mprotect,
    ];

    /// The name the C API, the settings and the command line use (`uffd-async`, …).
    pub fn name(self) -> &'static str {
        match self {
            Backend::UffdAsync => "uffd-async",
            Backend::SoftDirty => "soft-dirty",
            Backend::UffdSync => "uffd-sync",
            Backend::Mprotect => "mprotect",
        }
    }

    /// The backend [`Backend::name`] calls `name`, if any.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether this kernel supports the backend, checked by a self-test on a scratch
    /// mapping (a backend that fails silently, like soft-dirty without
    /// `CONFIG_MEM_SOFT_DIRTY`, is caught here). The result is computed once.
    pub fn probe(self) -> Result<(), Unavailable> {
        static CACHE: [spin::Once<Result<(), Unavailable>>; 4] = [
            spin::Once::new(),
            spin::Once::new(),
            spin::Once::new(),
            spin::Once::new(),
        ];
        let index = Backend::ALL.iter().position(|&b| b == self).unwrap_or(0);
        *CACHE[index].call_once(|| match self {
            Backend::UffdAsync => uffd_async::probe(),
            Backend::SoftDirty => soft_dirty::probe(),
            Backend::UffdSync => uffd_sync::probe(),
            Backend::Mprotect => mprotect::probe(),
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a backend cannot run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// What failed, in a few words.
    pub reason: &'static str,
    /// The errno of the failing call, or 0.
    pub errno: i32,
}

impl Unavailable {
    /// A self-test step failed with `err`.
    pub(crate) fn from_error(reason: &'static str, err: Error) -> Self {
        let errno = if let Error::Os { errno, .. } = err {
            errno
        } else {
            0
        };
        Unavailable { reason, errno }
    }

    /// A backend's self-test wrote the second page of a scratch mapping at `base`:
    /// exactly that page must come back.
    pub(crate) fn expect_second_page(
        runs: &[Run],
        base: usize,
        page: usize,
        reason: &'static str,
    ) -> Result<(), Self> {
        if runs
            == [Run {
                start: base + page,
                pages: 1,
            }]
        {
            Ok(())
        } else {
            Err(Unavailable { reason, errno: 0 })
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)?;
        if self.errno != 0 {
            write!(f, " (errno {})", self.errno)?;
        }
        Ok(())
    }
}

/// Which backend [`Tracker::new`] should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The first backend in [`Backend::ALL`] that is available and can track the ranges.
    Auto,
    /// Exactly this one, or an error.
    Only(Backend),
}

/// What is wrong with a range's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingProblem {
    /// Part of the range is not mapped at all.
    Unmapped,
    /// The mapping is not writable, so no write can be tracked.
    NotWritable,
    /// Shared memory: other processes' writes would never fault here.
    Shared,
    /// Private file-backed memory: only the `mprotect` backend tracks it.
    FileBacked,
}

/// Why a dirty-tracking call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A malformed argument (the text says which).
    Invalid(&'static str),
    /// The range at `start` is not private writable memory the backend can track.
    Mapping {
        /// Where the range starts.
        start: usize,
        /// What is wrong with its mapping.
        problem: MappingProblem,
    },
    /// The range at `start` overlaps one another tracker watches.
    Overlap {
        /// Where the new range starts.
        start: usize,
    },
    /// The backend cannot run on this kernel.
    Unavailable {
        /// The backend asked for.
        backend: Backend,
        /// Why it cannot run.
        why: Unavailable,
    },
    /// Only one soft-dirty tracker may exist per process (clear_refs is process-wide).
    Busy,
    /// A system call failed.
    Os {
        /// The call, as in its man page.
        op: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// The range at `start` was unmapped or replaced by another mapping while tracked:
    /// the tracker cannot say what was written. Destroy it.
    RangeChanged {
        /// Where the range starts.
        start: usize,
    },
    /// The tracker was inherited across `fork`: it tracks the parent, not this process.
    ForkedChild,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(what) => write!(f, "invalid argument: {what}"),
            Error::Mapping { start, problem } => {
                let what = match problem {
                    MappingProblem::Unmapped => "is not (entirely) mapped",
                    MappingProblem::NotWritable => "is not writable",
                    MappingProblem::Shared => {
                        "is a shared mapping, which dirty tracking cannot follow"
                    }
                    MappingProblem::FileBacked => {
                        "is file-backed; only the mprotect backend tracks it"
                    }
                };
                write!(f, "range at {start:#x} {what}")
            }
            Error::Overlap { start } => write!(
                f,
                "range at {start:#x} overlaps a range another tracker watches"
            ),
            Error::Unavailable { backend, why } => {
                write!(f, "backend {backend} is unavailable: {why}")
            }
            Error::Busy => {
                f.write_str("a soft-dirty tracker already exists (clear_refs is process-wide)")
            }
            Error::Os { op, errno } => write!(f, "{op} failed (errno {errno})"),
            Error::RangeChanged { start } => {
                write!(
                    f,
                    "range at {start:#x} was unmapped or remapped while tracked"
                )
            }
            Error::ForkedChild => {
                f.write_str("tracker inherited across fork: it belongs to the parent")
            }
        }
    }
}

impl core::error::Error for Error {}

/// A run of written pages: `[start, start + pages * page_size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First byte of the first written page.
    pub start: usize,
    /// Written pages from `start` on.
    pub pages: usize,
}

/// How much one [`Tracker::collect`] call may report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// At most this many pages.
    pub pages: usize,
    /// At most this many runs.
    pub runs: usize,
}

impl Limit {
    /// No limit: report everything written.
    pub const NONE: Limit = Limit {
        pages: usize::MAX,
        runs: usize::MAX,
    };
}

// Ranges claimed by live trackers, so that two trackers never fight over one page.
static CLAIMED: spin::Mutex<Vec<(usize, usize)>> = spin::Mutex::new(Vec::new());

fn claim(ranges: &[(usize, usize)]) -> Result<(), Error> {
    let mut claimed = CLAIMED.lock();
    for &(start, end) in ranges {
        if claimed.iter().any(|&(s, e)| start < e && s < end) {
            return Err(Error::Overlap { start });
        }
    }
    claimed.extend_from_slice(ranges);
    Ok(())
}

fn release(ranges: &[(usize, usize)]) {
    CLAIMED.lock().retain(|r| !ranges.contains(r));
}

enum Mechanism {
    UffdAsync(uffd_async::UffdAsync),
    SoftDirty(soft_dirty::SoftDirty),
    UffdSync(uffd_sync::UffdSync),
    Mprotect(mprotect::Mprotect),
}

/// Watches page-aligned ranges and reports the pages written since they were last armed.
pub struct Tracker {
    /// Sorted, disjoint, page-aligned `[start, end)` ranges.
    ranges: Vec<(usize, usize)>,
    mechanism: Mechanism,
    backend: Backend,
    owner_pid: i32,
    page: usize,
}

impl Tracker {
    /// Starts tracking `ranges` (`(start, len)` in bytes, page-aligned): every page is
    /// armed, so the first [`collect`](Self::collect) reports exactly the pages written
    /// from now on, including pages never touched before.
    pub fn new(ranges: &[(usize, usize)], choice: Choice) -> Result<Tracker, Error> {
        let page = page_size();
        let mut spans = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            if len == 0 {
                return Err(Error::Invalid("empty range"));
            }
            if start % page != 0 || len % page != 0 {
                return Err(Error::Invalid(
                    "range start and length must be page-aligned",
                ));
            }
            let end = start
                .checked_add(len)
                .ok_or(Error::Invalid("range wraps around the address space"))?;
            spans.push((start, end));
        }
        if spans.is_empty() {
            return Err(Error::Invalid("no ranges"));
        }
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
            return Err(Error::Overlap { start: w[1].0 });
        }
        let backing = maps::classify_ranges(&spans)?;
        claim(&spans)?;
        let result = Self::with_backend(&spans, choice, backing, page);
        if result.is_err() {
            release(&spans);
        }
        result
    }

    fn with_backend(
        spans: &[(usize, usize)],
        choice: Choice,
        backing: maps::Backing,
        page: usize,
    ) -> Result<Tracker, Error> {
        let candidates: &[Backend] = match choice {
            Choice::Auto => &Backend::ALL,
            Choice::Only(ref b) => core::slice::from_ref(b),
        };
        let mut first_error = None;
        for &backend in candidates {
            let attempt = (|| {
                backend
                    .probe()
                    .map_err(|why| Error::Unavailable { backend, why })?;
                if backing == maps::Backing::PrivateFile && backend != Backend::Mprotect {
                    return Err(Error::Mapping {
                        start: spans[0].0,
                        problem: MappingProblem::FileBacked,
                    });
                }
                Ok(match backend {
                    Backend::UffdAsync => Mechanism::UffdAsync(uffd_async::UffdAsync::new(spans)?),
                    Backend::SoftDirty => {
                        Mechanism::SoftDirty(soft_dirty::SoftDirty::new(spans, page)?)
                    }
                    Backend::UffdSync => {
                        Mechanism::UffdSync(uffd_sync::UffdSync::new(spans, page)?)
                    }
                    Backend::Mprotect => Mechanism::Mprotect(mprotect::Mprotect::new(spans, page)?),
                })
            })();
            match attempt {
                Ok(mechanism) => {
                    return Ok(Tracker {
                        ranges: spans.to_vec(),
                        mechanism,
                        backend,
                        // SAFETY: getpid has no preconditions.
                        owner_pid: unsafe { libc::getpid() },
                        page,
                    });
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(Error::Invalid("no backend")))
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The tracked ranges as `[start, end)`, sorted.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }

    /// The number of pages tracked.
    pub fn pages(&self) -> usize {
        self.ranges.iter().map(|&(s, e)| (e - s) / self.page).sum()
    }

    fn check_owner(&self) -> Result<(), Error> {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } != self.owner_pid {
            return Err(Error::ForkedChild);
        }
        Ok(())
    }

    /// Fails with [`Error::RangeChanged`] when part of a range is no longer mapped.
    fn check_mapped(&self, start: usize, end: usize) -> Result<(), Error> {
        // msync(MS_ASYNC) on anonymous memory only walks the VMAs: a cheap hole detector.
        // SAFETY: msync does not access the memory; the range is page-aligned.
        if unsafe { libc::msync(start as *mut _, end - start, libc::MS_ASYNC) } != 0 {
            return Err(match errno() {
                libc::ENOMEM => Error::RangeChanged { start },
                errno => Error::Os { op: "msync", errno },
            });
        }
        Ok(())
    }

    /// Forgets every write so far and arms every page again.
    pub fn reset(&mut self) -> Result<(), Error> {
        self.check_owner()?;
        for &(start, end) in &self.ranges {
            self.check_mapped(start, end)?;
        }
        match &mut self.mechanism {
            Mechanism::UffdAsync(m) => m.arm_all(),
            Mechanism::SoftDirty(m) => m.arm_all(),
            Mechanism::UffdSync(m) => m.arm_all(),
            Mechanism::Mprotect(m) => m.arm_all(),
        }
    }

    /// Reports written pages in address order, starting at `cursor` (0 = the first
    /// tracked page), within `limit`, to `emit` as runs. With `rearm`, exactly the
    /// reported pages are armed again, atomically with respect to concurrent writers: a
    /// write that races with the collection is reported now or at the next collection,
    /// never lost.
    ///
    /// Returns `Some(cursor)` to continue from when `limit` cut the report short and
    /// more pages may follow, `None` when the scan reached the end.
    pub fn collect(
        &mut self,
        cursor: usize,
        limit: Limit,
        rearm: bool,
        emit: &mut dyn FnMut(Run),
    ) -> Result<Option<usize>, Error> {
        self.check_owner()?;
        if limit.pages == 0 || limit.runs == 0 {
            return Err(Error::Invalid(
                "the limit must allow at least one page and one run",
            ));
        }
        if cursor % self.page != 0 {
            return Err(Error::Invalid("cursor must be page-aligned"));
        }
        let page = self.page;
        let (mut pages, mut runs) = (0usize, 0usize);
        // Runs that continue across internal chunks or adjacent ranges are merged.
        let mut pending: Option<Run> = None;
        // By index, not over a copy: collecting allocates nothing (a checkpointer's
        // control thread collects its own heap and must not write it meanwhile).
        for index in 0..self.ranges.len() {
            let (start, end) = self.ranges[index];
            if end <= cursor {
                continue;
            }
            if pages == limit.pages || runs == limit.runs {
                flush(&mut pending, emit);
                return Ok(Some(start.max(cursor)));
            }
            let from = start.max(cursor);
            self.check_mapped(start, end)?;
            let room = Limit {
                pages: limit.pages - pages,
                runs: limit.runs - runs,
            };
            let mut sink = |run: Run| {
                pages += run.pages;
                runs += 1;
                match &mut pending {
                    Some(p) if p.start + p.pages * page == run.start => p.pages += run.pages,
                    _ => {
                        flush(&mut pending, emit);
                        pending = Some(run);
                    }
                }
            };
            let stopped = match &mut self.mechanism {
                Mechanism::UffdAsync(m) => m.collect(from, end, room, rearm, &mut sink),
                Mechanism::SoftDirty(m) => m.collect(index, from, room, rearm, &mut sink),
                Mechanism::UffdSync(m) => m.collect(index, from, room, rearm, &mut sink),
                Mechanism::Mprotect(m) => m.collect(index, from, room, rearm, &mut sink),
            }?;
            if let Some(next) = stopped {
                flush(&mut pending, emit);
                return Ok(Some(next));
            }
        }
        flush(&mut pending, emit);
        Ok(None)
    }

    /// The memory this tracker itself writes while collecting, `(address, bytes)`
    /// (uffd-async: the kernel's output vector), if any. A caller that collects memory
    /// holding the tracker and copies it afterwards copies these pages too.
    pub fn scratch(&self) -> Option<(usize, usize)> {
        match &self.mechanism {
            Mechanism::UffdAsync(m) => Some(m.scratch()),
            _ => None,
        }
    }

    /// Every written page, as runs; re-arms them when `rearm`.
    pub fn collect_runs(&mut self, rearm: bool) -> Result<Vec<Run>, Error> {
        let mut runs = Vec::new();
        self.collect(0, Limit::NONE, rearm, &mut |run| runs.push(run))?;
        Ok(runs)
    }

    /// Every written page, as page addresses; re-arms them when `rearm`.
    pub fn collect_pages(&mut self, rearm: bool) -> Result<Vec<usize>, Error> {
        let page = self.page;
        let mut pages = Vec::new();
        self.collect(0, Limit::NONE, rearm, &mut |run| {
            pages.extend((0..run.pages).map(|i| run.start + i * page))
        })?;
        Ok(pages)
    }
}

fn flush(pending: &mut Option<Run>, emit: &mut dyn FnMut(Run)) {
    if let Some(run) = pending.take() {
        emit(run);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // SAFETY: getpid has no preconditions.
        let in_owner = unsafe { libc::getpid() } == self.owner_pid;
        match &mut self.mechanism {
            Mechanism::UffdAsync(m) => m.teardown(in_owner),
            Mechanism::SoftDirty(m) => m.teardown(in_owner),
            Mechanism::UffdSync(m) => m.teardown(in_owner),
            Mechanism::Mprotect(m) => m.teardown(in_owner),
        }
        release(&self.ranges);
    }
}

#[cfg(test)]
mod tests;
