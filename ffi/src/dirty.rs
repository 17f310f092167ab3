//! C ABI for dirty-page tracking: `msh_dirty_*`.
//!
//! ```c
//! msh_dirty_range heap = { (uintptr_t)base, len };
//! msh_dirty_tracker *t;
//! if (msh_dirty_create(&heap, 1, MSH_DIRTY_AUTO, &t) != MSH_OK) { puts(msh_dirty_last_error()); ... }
//! ... the program writes ...
//! uintptr_t pages[512]; size_t n; uintptr_t cursor = 0;
//! do {
//!     msh_dirty_collect(t, MSH_DIRTY_REARM, pages, 512, &n, &cursor);
//!     for (size_t i = 0; i < n; i++) save_page(pages[i]);
//! } while (cursor != 0);
//! msh_dirty_destroy(t);
//! ```

use crate::error::{guard, guard_value, non_null};
use crate::msh_status::{self, *};
use core::ffi::c_char;
use msh_core::dirty::{Backend, Choice, Error, Limit, Run, Tracker};
use std::cell::RefCell;
use std::io::Write;
use std::panic::AssertUnwindSafe;

/// A dirty-tracking mechanism (`MSH_DIRTY_AUTO` picks the best available one).
/// Functions take it as a `uint32_t` so that any value C passes is checked.
#[repr(C)]
#[allow(dead_code)] // AUTO is constructed by C callers only
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msh_dirty_backend {
    /// The first available of the others, in this order.
    MSH_DIRTY_AUTO = 0,
    /// userfaultfd async write-protect + PAGEMAP_SCAN (Linux 6.7+).
    MSH_DIRTY_UFFD_ASYNC = 1,
    /// /proc/self/clear_refs + pagemap bit 55 (needs CONFIG_MEM_SOFT_DIRTY).
    MSH_DIRTY_SOFT_DIRTY = 2,
    /// userfaultfd write-protect with a handler thread.
    MSH_DIRTY_UFFD_SYNC = 3,
    /// PROT_READ + a SIGSEGV handler that chains to the previous one.
    MSH_DIRTY_MPROTECT = 4,
}

impl msh_dirty_backend {
    /// Decodes a value from C (which may hold anything): `Ok(None)` for AUTO.
    fn decode(value: u32) -> Result<Option<Backend>, msh_status> {
        match value {
            0 => Ok(None),
            1 => Ok(Some(Backend::UffdAsync)),
            2 => Ok(Some(Backend::SoftDirty)),
            3 => Ok(Some(Backend::UffdSync)),
            4 => Ok(Some(Backend::Mprotect)),
            _ => Err(invalid("unknown msh_dirty_backend value")),
        }
    }

    fn from_backend(backend: Backend) -> Self {
        match backend {
            Backend::UffdAsync => Self::MSH_DIRTY_UFFD_ASYNC,
            Backend::SoftDirty => Self::MSH_DIRTY_SOFT_DIRTY,
            Backend::UffdSync => Self::MSH_DIRTY_UFFD_SYNC,
            Backend::Mprotect => Self::MSH_DIRTY_MPROTECT,
        }
    }
}

/// A byte range `[start, start + len)`; page-aligned where the tracker needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct msh_dirty_range {
    pub start: usize,
    pub len: usize,
}

/// Flag for `msh_dirty_collect*`: re-arm exactly the pages reported.
pub const MSH_DIRTY_REARM: u32 = 1;

/// An opaque dirty-page tracker.
pub struct msh_dirty_tracker {
    tracker: Tracker,
}

thread_local! {
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn remember(message: std::fmt::Arguments<'_>) {
    LAST_ERROR.with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        let _ = last.write_fmt(message);
        last.retain(|&b| b != 0);
        last.push(0);
    });
}

/// Maps a core error to a status, remembering its one-line message for
/// `msh_dirty_last_error`.
fn fail(error: Error) -> msh_status {
    remember(format_args!("{error}"));
    match error {
        Error::Invalid(_) => MSH_ERR_INVALID,
        Error::Mapping { .. } | Error::RangeChanged { .. } => MSH_ERR_UNMAPPED,
        Error::Overlap { .. } => MSH_ERR_OVERLAP,
        Error::Unavailable { .. } => MSH_ERR_UNSUPPORTED,
        Error::Busy | Error::ForkedChild => MSH_ERR_BUSY,
        Error::Os { errno, .. } => {
            if errno == libc::ENOMEM {
                MSH_ERR_NO_MEMORY
            } else {
                MSH_ERR_OS
            }
        }
    }
}

fn invalid(what: &str) -> msh_status {
    remember(format_args!("invalid argument: {what}"));
    MSH_ERR_INVALID
}

/// The one-line message of the last `msh_dirty_*` failure on this thread (an empty
/// string if none). Valid until the next `msh_dirty_*` call on the thread.
#[no_mangle]
pub extern "C" fn msh_dirty_last_error() -> *const c_char {
    guard_value(c"internal error".as_ptr(), || {
        LAST_ERROR.with(|last| {
            let mut last = last.borrow_mut();
            if last.is_empty() {
                last.push(0);
            }
            last.as_ptr().cast()
        })
    })
}

/// Starts tracking `count` ranges with `backend` (an `msh_dirty_backend`); `*out`
/// receives the tracker. Every page is armed: the first collection reports exactly the
/// pages written from now on, including pages never touched before.
/// Fails with MSH_ERR_INVALID (unaligned or empty ranges), MSH_ERR_UNMAPPED (not
/// private writable memory, or file-backed for a backend that cannot track it),
/// MSH_ERR_OVERLAP, MSH_ERR_UNSUPPORTED (backend unavailable); see
/// `msh_dirty_last_error` for the reason.
///
/// # Safety
/// `ranges` points to `count` ranges; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn msh_dirty_create(
    ranges: *const msh_dirty_range,
    count: usize,
    backend: u32,
    out: *mut *mut msh_dirty_tracker,
) -> msh_status {
    guard(AssertUnwindSafe(|| {
        non_null(ranges)?;
        non_null(out)?;
        if count == 0 {
            return Err(invalid("no ranges"));
        }
        // SAFETY: the caller passes `count` readable ranges.
        let ranges = unsafe { std::slice::from_raw_parts(ranges, count) };
        let spans: Vec<(usize, usize)> = ranges.iter().map(|r| (r.start, r.len)).collect();
        let choice = msh_dirty_backend::decode(backend)?.map_or(Choice::Auto, Choice::Only);
        let tracker = Tracker::new(&spans, choice).map_err(fail)?;
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = Box::into_raw(Box::new(msh_dirty_tracker { tracker })) };
        Ok(())
    }))
}

/// Stops tracking and frees the tracker (NULL is a no-op). The memory stays as it is,
/// writable. In a child after fork, frees the child's copy without touching the parent.
///
/// # Safety
/// `tracker` comes from `msh_dirty_create` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn msh_dirty_destroy(tracker: *mut msh_dirty_tracker) {
    if tracker.is_null() {
        return;
    }
    guard_value(
        (),
        AssertUnwindSafe(|| {
            // SAFETY: created by Box::into_raw in msh_dirty_create, owned by the caller.
            drop(unsafe { Box::from_raw(tracker) });
        }),
    )
}

/// Forgets every write so far and arms every page again.
///
/// # Safety
/// `tracker` comes from `msh_dirty_create`; no other call uses it concurrently.
#[no_mangle]
pub unsafe extern "C" fn msh_dirty_reset(tracker: *mut msh_dirty_tracker) -> msh_status {
    guard(AssertUnwindSafe(|| {
        non_null(tracker)?;
        // SAFETY: a live tracker, used by this call only.
        unsafe { &mut (*tracker).tracker }.reset().map_err(fail)
    }))
}

/// Shared body of the two collect calls: validates, runs, writes `count` and `cursor`.
///
/// # Safety
/// As for `msh_dirty_collect`.
#[allow(clippy::too_many_arguments)] // the C signature's six, plus how to limit and store
unsafe fn collect_into<T>(
    tracker: *mut msh_dirty_tracker,
    flags: u32,
    out: *mut T,
    capacity: usize,
    count: *mut usize,
    cursor: *mut usize,
    limit: Limit,
    mut store: impl FnMut(&mut [T], &mut usize, Run, usize),
) -> msh_status {
    guard(AssertUnwindSafe(|| {
        non_null(tracker)?;
        non_null(out)?;
        non_null(count)?;
        non_null(cursor)?;
        if flags & !MSH_DIRTY_REARM != 0 {
            return Err(invalid("unknown flags"));
        }
        if capacity == 0 {
            return Err(invalid("capacity must be at least 1"));
        }
        // SAFETY: per the contract: a live tracker, `capacity` writable elements,
        // writable `count` and `cursor`.
        let (tracker, out, from) = unsafe {
            (
                &mut (*tracker).tracker,
                std::slice::from_raw_parts_mut(out, capacity),
                *cursor,
            )
        };
        let page = msh_core::os::page_size();
        let mut filled = 0usize;
        let next = tracker
            .collect(from, limit, flags & MSH_DIRTY_REARM != 0, &mut |run| {
                store(out, &mut filled, run, page)
            })
            .map_err(fail)?;
        // SAFETY: writable per the contract.
        unsafe {
            *count = filled;
            *cursor = next.unwrap_or(0);
        }
        Ok(())
    }))
}

/// Reports written pages as page addresses, in address order, starting at `*cursor`
/// (0 = the first tracked page): at most `capacity` of them into `pages`, their number
/// in `*count`. With `MSH_DIRTY_REARM` in `flags`, exactly the reported pages are armed
/// again, atomically with respect to concurrent writers (a racing write is reported now
/// or next time, never lost). `*cursor` becomes where to continue, or 0 when the scan
/// reached the end: call again while it is not 0.
/// MSH_ERR_UNMAPPED: a range was unmapped or remapped under the tracker.
/// MSH_ERR_BUSY: the tracker was inherited across fork (it tracks the parent).
///
/// # Safety
/// `tracker` comes from `msh_dirty_create` and is not used concurrently; `pages` has
/// room for `capacity` addresses; `count` and `cursor` are writable.
#[no_mangle]
pub unsafe extern "C" fn msh_dirty_collect(
    tracker: *mut msh_dirty_tracker,
    flags: u32,
    pages: *mut usize,
    capacity: usize,
    count: *mut usize,
    cursor: *mut usize,
) -> msh_status {
    let limit = Limit {
        pages: capacity,
        runs: usize::MAX,
    };
    // SAFETY: forwarded contract.
    unsafe {
        collect_into(
            tracker,
            flags,
            pages,
            capacity,
            count,
            cursor,
            limit,
            |out, filled, run, page| {
                for i in 0..run.pages {
                    out[*filled] = run.start + i * page;
                    *filled += 1;
                }
            },
        )
    }
}

/// Like `msh_dirty_collect`, reporting runs of written pages as byte ranges: at most
/// `capacity` ranges into `ranges`.
///
/// # Safety
/// As for `msh_dirty_collect`, with `ranges` having room for `capacity` ranges.
#[no_mangle]
pub unsafe extern "C" fn msh_dirty_collect_ranges(
    tracker: *mut msh_dirty_tracker,
    flags: u32,
    ranges: *mut msh_dirty_range,
    capacity: usize,
    count: *mut usize,
    cursor: *mut usize,
) -> msh_status {
    let limit = Limit {
        pages: usize::MAX,
        runs: capacity,
    };
    // SAFETY: forwarded contract.
    unsafe {
        collect_into(
            tracker,
            flags,
            ranges,
            capacity,
            count,
            cursor,
            limit,
            |out, filled, run, page| {
                out[*filled] = msh_dirty_range {
                    start: run.start,
                    len: run.pages * page,
                };
                *filled += 1;
            },
        )
    }
}

/// The backend `tracker` uses, in `*out`.
///
/// # Safety
/// `tracker` comes from `msh_dirty_create`; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn msh_dirty_get_backend(
    tracker: *const msh_dirty_tracker,
    out: *mut msh_dirty_backend,
) -> msh_status {
    guard(AssertUnwindSafe(|| {
        non_null(tracker)?;
        non_null(out)?;
        // SAFETY: per the contract.
        unsafe { *out = msh_dirty_backend::from_backend((*tracker).tracker.backend()) };
        Ok(())
    }))
}

/// The name of `backend` (an `msh_dirty_backend`): "auto", "uffd-async", "soft-dirty",
/// "uffd-sync", "mprotect", or "unknown"; a static string.
#[no_mangle]
pub extern "C" fn msh_dirty_backend_name(backend: u32) -> *const c_char {
    match msh_dirty_backend::decode(backend) {
        Ok(None) => c"auto".as_ptr(),
        Ok(Some(Backend::UffdAsync)) => c"uffd-async".as_ptr(),
        Ok(Some(Backend::SoftDirty)) => c"soft-dirty".as_ptr(),
        Ok(Some(Backend::UffdSync)) => c"uffd-sync".as_ptr(),
        Ok(Some(Backend::Mprotect)) => c"mprotect".as_ptr(),
        Err(_) => c"unknown".as_ptr(),
    }
}

/// MSH_OK when `backend` (an `msh_dirty_backend`) works on this kernel, checked by a
/// self-test once per process; MSH_ERR_UNSUPPORTED otherwise, with the reason in
/// `msh_dirty_last_error`. For MSH_DIRTY_AUTO: MSH_OK when any backend works. Probing
/// mprotect installs its (chaining) SIGSEGV handler.
#[no_mangle]
pub extern "C" fn msh_dirty_probe(backend: u32) -> msh_status {
    guard(|| {
        let candidates: Vec<Backend> = match msh_dirty_backend::decode(backend)? {
            Some(b) => vec![b],
            None => Backend::ALL.to_vec(),
        };
        let mut last = None;
        for b in candidates {
            match b.probe() {
                Ok(()) => return Ok(()),
                Err(why) => last = Some(Error::Unavailable { backend: b, why }),
            }
        }
        Err(fail(last.expect("at least one candidate")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::ptr;

    fn last_error() -> String {
        // SAFETY: msh_dirty_last_error returns a NUL-terminated thread-local string.
        unsafe { CStr::from_ptr(msh_dirty_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn create_collect_destroy_through_the_c_abi() {
        let page = msh_core::os::page_size();
        let mut heap = vec![0u8; 64 * page + page];
        let base = (heap.as_mut_ptr() as usize + page - 1) & !(page - 1);
        let range = msh_dirty_range {
            start: base,
            len: 64 * page,
        };
        let mut tracker = ptr::null_mut();
        // SAFETY: valid pointers throughout; the heap outlives the tracker.
        unsafe {
            assert_eq!(
                msh_dirty_create(
                    &range,
                    1,
                    msh_dirty_backend::MSH_DIRTY_AUTO as u32,
                    &mut tracker
                ),
                MSH_OK
            );
            let mut backend = msh_dirty_backend::MSH_DIRTY_AUTO;
            assert_eq!(msh_dirty_get_backend(tracker, &mut backend), MSH_OK);
            assert_ne!(backend, msh_dirty_backend::MSH_DIRTY_AUTO);
            for i in [3usize, 4, 5, 40] {
                ptr::write_volatile((base + i * page) as *mut u8, 1);
            }
            let mut pages = [0usize; 2];
            let (mut count, mut cursor) = (0usize, 0usize);
            let mut seen = Vec::new();
            loop {
                assert_eq!(
                    msh_dirty_collect(
                        tracker,
                        MSH_DIRTY_REARM,
                        pages.as_mut_ptr(),
                        2,
                        &mut count,
                        &mut cursor
                    ),
                    MSH_OK
                );
                seen.extend_from_slice(&pages[..count]);
                if cursor == 0 {
                    break;
                }
            }
            assert_eq!(seen, [3, 4, 5, 40].map(|i| base + i * page));
            for i in [7usize, 8, 9] {
                ptr::write_volatile((base + i * page) as *mut u8, 1);
            }
            let mut runs = [msh_dirty_range { start: 0, len: 0 }; 4];
            cursor = 0;
            assert_eq!(
                msh_dirty_collect_ranges(tracker, 0, runs.as_mut_ptr(), 4, &mut count, &mut cursor),
                MSH_OK
            );
            assert_eq!((count, cursor), (1, 0));
            assert_eq!(
                runs[0],
                msh_dirty_range {
                    start: base + 7 * page,
                    len: 3 * page
                }
            );
            assert_eq!(msh_dirty_reset(tracker), MSH_OK);
            assert_eq!(
                msh_dirty_collect(tracker, 0, pages.as_mut_ptr(), 2, &mut count, &mut cursor),
                MSH_OK
            );
            assert_eq!(count, 0);
            // Bad input: a clear status and message.
            assert_eq!(
                msh_dirty_collect(tracker, 8, pages.as_mut_ptr(), 2, &mut count, &mut cursor),
                MSH_ERR_INVALID
            );
            assert!(last_error().contains("flags"));
            assert_eq!(
                msh_dirty_collect(tracker, 0, ptr::null_mut(), 2, &mut count, &mut cursor),
                MSH_ERR_NULL
            );
            let mut second = ptr::null_mut();
            assert_eq!(
                msh_dirty_create(
                    &range,
                    1,
                    msh_dirty_backend::MSH_DIRTY_AUTO as u32,
                    &mut second
                ),
                MSH_ERR_OVERLAP
            );
            assert!(last_error().contains("overlaps"), "{}", last_error());
            msh_dirty_destroy(tracker);
            let unaligned = msh_dirty_range {
                start: base + 1,
                len: page,
            };
            assert_eq!(
                msh_dirty_create(
                    &unaligned,
                    1,
                    msh_dirty_backend::MSH_DIRTY_AUTO as u32,
                    &mut second
                ),
                MSH_ERR_INVALID
            );
            assert!(last_error().contains("page-aligned"));
            msh_dirty_destroy(ptr::null_mut());
        }
    }

    #[test]
    fn probe_reports_reasons() {
        assert_eq!(
            msh_dirty_probe(msh_dirty_backend::MSH_DIRTY_MPROTECT as u32),
            MSH_OK
        );
        assert_eq!(
            msh_dirty_probe(msh_dirty_backend::MSH_DIRTY_AUTO as u32),
            MSH_OK
        );
        if msh_dirty_probe(msh_dirty_backend::MSH_DIRTY_SOFT_DIRTY as u32) != MSH_OK {
            assert!(
                last_error().contains("soft-dirty is unavailable"),
                "{}",
                last_error()
            );
        }
        // SAFETY: static strings.
        let name = unsafe {
            CStr::from_ptr(msh_dirty_backend_name(
                msh_dirty_backend::MSH_DIRTY_UFFD_ASYNC as u32,
            ))
        };
        assert_eq!(name.to_str().unwrap(), "uffd-async");
        assert_eq!(msh_dirty_probe(99), MSH_ERR_INVALID);
        // SAFETY: a static string.
        assert_eq!(
            unsafe { CStr::from_ptr(msh_dirty_backend_name(99)) }
                .to_str()
                .unwrap(),
            "unknown"
        );
    }
}
