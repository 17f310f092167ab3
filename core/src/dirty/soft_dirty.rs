//! The `soft-dirty` backend: `echo 4 > /proc/self/clear_refs` clears every page's
//! soft-dirty bit (and write-protects the PTEs); the first write sets it again, and
//! `/proc/self/pagemap` shows it as bit 55. Needs `CONFIG_MEM_SOFT_DIRTY`.
//!
//! Where the kernel lacks it, clear_refs "4" still succeeds and bit 55 is simply never
//! set: the backend would report nothing, silently. [`probe`] therefore requires a
//! freshly written page to show bit 55, and reports the backend unavailable otherwise
//! (as on this project's reference VM).
//!
//! Limits: clear_refs is process-wide, so one soft-dirty tracker per process; reading
//! pagemap and clearing are two steps, so a write landing between them is lost unless
//! writers are stopped while collecting with re-arm (as CRIU freezes the task).

use super::bitmap::PageBitmap;
use super::sys::{self, Fd};
use super::{Error, Limit, Run, Unavailable};
use crate::os;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering::SeqCst};

static EXISTS: AtomicBool = AtomicBool::new(false);
/// pagemap entries read per `pread`.
const ENTRIES_PER_READ: usize = 4096;

pub struct SoftDirty {
    pagemap: Fd,
    ranges: Vec<(usize, usize)>,
    /// Pages seen dirty in pagemap but not yet reported (a pass cut short by the limit).
    pending: Vec<PageBitmap>,
    page: usize,
    owns_flag: bool,
}

fn clear_refs() -> Result<(), Error> {
    let fd = Fd::open(b"/proc/self/clear_refs\0", libc::O_WRONLY)?;
    // SAFETY: writing one byte from a static buffer.
    let n = unsafe { libc::write(fd.0, b"4".as_ptr().cast(), 1) };
    sys::check("write /proc/self/clear_refs", n as i64).map(|_| ())
}

/// Reads the pagemap entries of pages `[first, first + count)` of the address space.
fn read_entries(pagemap: &Fd, first_page: usize, out: &mut [u64]) -> Result<(), Error> {
    let bytes = core::mem::size_of_val(out);
    // SAFETY: reading into `out`, which is `bytes` long.
    let n = unsafe {
        libc::pread(
            pagemap.0,
            out.as_mut_ptr().cast(),
            bytes,
            (first_page * 8) as libc::off_t,
        )
    };
    if sys::check("pread /proc/self/pagemap", n as i64)? as usize != bytes {
        return Err(Error::Os {
            op: "pread /proc/self/pagemap (short read)",
            errno: libc::EIO,
        });
    }
    Ok(())
}

impl SoftDirty {
    pub fn new(spans: &[(usize, usize)], page: usize) -> Result<SoftDirty, Error> {
        if EXISTS.swap(true, SeqCst) {
            return Err(Error::Busy);
        }
        let mut tracker = SoftDirty {
            pagemap: Fd(-1),
            ranges: spans.to_vec(),
            pending: spans
                .iter()
                .map(|&(s, e)| PageBitmap::new((e - s) / page))
                .collect(),
            page,
            owns_flag: true,
        };
        tracker.pagemap = Fd::open(b"/proc/self/pagemap\0", libc::O_RDONLY)?;
        tracker.arm_all()?;
        Ok(tracker)
    }

    pub fn arm_all(&mut self) -> Result<(), Error> {
        for bitmap in &self.pending {
            bitmap.clear();
        }
        clear_refs()
    }

    /// Moves the soft-dirty bits of every tracked page into `pending`.
    fn fold_pagemap(&self) -> Result<(), Error> {
        let mut entries = vec![0u64; ENTRIES_PER_READ];
        for (bitmap, &(start, end)) in self.pending.iter().zip(&self.ranges) {
            let pages = (end - start) / self.page;
            let mut done = 0;
            while done < pages {
                let chunk = (pages - done).min(ENTRIES_PER_READ);
                read_entries(
                    &self.pagemap,
                    start / self.page + done,
                    &mut entries[..chunk],
                )?;
                for (i, entry) in entries[..chunk].iter().enumerate() {
                    if entry & sys::PM_SOFT_DIRTY != 0 {
                        bitmap.set(done + i);
                    }
                }
                done += chunk;
            }
        }
        Ok(())
    }

    pub fn collect(
        &mut self,
        index: usize,
        from: usize,
        limit: Limit,
        rearm: bool,
        emit: &mut dyn FnMut(Run),
    ) -> Result<Option<usize>, Error> {
        let (start, _) = self.ranges[index];
        let pass_begins = index == 0 && from == start;
        if !rearm || pass_begins {
            self.fold_pagemap()?;
            if rearm {
                clear_refs()?;
            }
        }
        let page = self.page;
        let next =
            self.pending[index].collect((from - start) / page, limit, true, &mut |first, count| {
                emit(Run {
                    start: start + first * page,
                    pages: count,
                })
            });
        if !rearm {
            // Not re-arming: what we reported is still dirty in pagemap, nothing to keep.
            self.pending[index].clear();
        }
        Ok(next.map(|p| start + p * page))
    }

    pub fn teardown(&mut self, _in_owner: bool) {
        if core::mem::replace(&mut self.owns_flag, false) {
            EXISTS.store(false, SeqCst);
        }
    }
}

impl Drop for SoftDirty {
    fn drop(&mut self) {
        self.teardown(true);
    }
}

/// Self-test: a page written after clear_refs must show pagemap bit 55.
pub fn probe() -> Result<(), Unavailable> {
    let fail = Unavailable::from_error;
    let page = os::page_size();
    let pagemap = Fd::open(b"/proc/self/pagemap\0", libc::O_RDONLY)
        .map_err(|e| fail("cannot open /proc/self/pagemap", e))?;
    let scratch = sys::Scratch::new(page).map_err(|e| fail("cannot map a scratch page", e))?;
    clear_refs().map_err(|e| fail("cannot write /proc/self/clear_refs", e))?;
    sys::poke(scratch.ptr(0), 1);
    let mut entry = [0u64; 1];
    read_entries(&pagemap, scratch.addr / page, &mut entry)
        .map_err(|e| fail("cannot read /proc/self/pagemap", e))?;
    if entry[0] & sys::PM_SOFT_DIRTY == 0 {
        return Err(Unavailable {
            reason: "self-test: a written page does not show pagemap bit 55 (kernel built without CONFIG_MEM_SOFT_DIRTY)",
            errno: 0,
        });
    }
    Ok(())
}
