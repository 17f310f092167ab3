//! Kernel interfaces the 6.1-era system headers (and the `libc` crate) lack, and thin
//! wrappers that turn `-1`/errno into [`Error::Os`].
//!
//! Values are from Linux's `include/uapi/linux/userfaultfd.h` and `fs.h` (6.7+).

use super::Error;
use crate::os::errno;
use core::ffi::c_void;

// ---- userfaultfd -------------------------------------------------------------------

pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: handle faults from user mode only (works unprivileged).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

pub const UFFDIO_API: u64 = 0xC018_AA3F;
pub const UFFDIO_REGISTER: u64 = 0xC020_AA00;
pub const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
pub const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
pub const UFFDIO_WAKE: u64 = 0x8010_AA02;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct uffd_msg`: an event byte, padding, then 24 bytes whose meaning depends on
/// the event (pagefault: flags, address; remove: start, end; remap: from, to, len).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved: [u8; 7],
    pub arg: [u64; 3],
}

// ---- PAGEMAP_SCAN ------------------------------------------------------------------

pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((core::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

const _: () = {
    assert!(core::mem::size_of::<PmScanArg>() == 96);
    assert!(PAGEMAP_SCAN == 0xC060_6610);
    assert!(core::mem::size_of::<UffdMsg>() == 32);
    assert!(core::mem::size_of::<UffdioApi>() == 24);
    assert!(core::mem::size_of::<UffdioRegister>() == 32);
    assert!(core::mem::size_of::<UffdioWriteprotect>() == 24);
};

/// pagemap entry bit 55: the page is soft-dirty.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;

// ---- helpers -----------------------------------------------------------------------

/// `Ok(ret)` when `ret >= 0`, else `Error::Os(op, errno)`.
pub fn check(op: &'static str, ret: i64) -> Result<i64, Error> {
    if ret < 0 {
        Err(Error::Os { op, errno: errno() })
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, request, arg)`.
///
/// # Safety
/// `arg` must point to the structure `request` expects, valid for reads and writes.
pub unsafe fn ioctl<T>(op: &'static str, fd: i32, request: u64, arg: *mut T) -> Result<i64, Error> {
    // SAFETY: forwarded to the caller.
    let ret = unsafe { libc::ioctl(fd, request as _, arg) };
    check(op, ret as i64)
}

/// An owned file descriptor, closed on drop.
pub struct Fd(pub i32);

impl Fd {
    /// Opens `path` (NUL-terminated).
    pub fn open(path: &'static [u8], flags: i32) -> Result<Fd, Error> {
        debug_assert!(path.ends_with(b"\0"));
        // SAFETY: `path` is NUL-terminated static data.
        let fd = unsafe { libc::open(path.as_ptr().cast(), flags | libc::O_CLOEXEC) };
        check("open", fd as i64).map(|_| Fd(fd))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// A private anonymous mapping, unmapped on drop: used by the backends' self-tests.
pub struct Scratch {
    pub addr: usize,
    pub len: usize,
}

impl Scratch {
    pub fn new(len: usize) -> Result<Scratch, Error> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::Os {
                op: "mmap",
                errno: errno(),
            });
        }
        Ok(Scratch {
            addr: addr as usize,
            len,
        })
    }

    pub fn ptr(&self, offset: usize) -> *mut u8 {
        (self.addr + offset) as *mut u8
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: we own the mapping.
        unsafe { libc::munmap(self.addr as *mut c_void, self.len) };
    }
}

/// Opens a userfaultfd, falling back to user-mode-only handling when the plain call is
/// refused (unprivileged users with `vm.unprivileged_userfaultfd = 0`).
pub fn open_userfaultfd(nonblocking: bool) -> Result<Fd, Error> {
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    // SAFETY: userfaultfd takes only flags.
    let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 && errno() == libc::EPERM {
        // SAFETY: as above.
        fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
    }
    check("userfaultfd", fd).map(|fd| Fd(fd as i32))
}

/// `UFFDIO_API` handshake asking for `features`; fails unless the kernel grants all.
pub fn uffd_api(fd: &Fd, features: u64) -> Result<(), Error> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `api` is a valid uffdio_api.
    unsafe { ioctl("UFFDIO_API", fd.0, UFFDIO_API, &mut api)? };
    if api.features & features != features {
        return Err(Error::Os {
            op: "UFFDIO_API (features)",
            errno: libc::EINVAL,
        });
    }
    Ok(())
}

/// Registers `[start, start+len)` with `fd` for write-protect tracking.
pub fn uffd_register_wp(fd: &Fd, start: usize, len: usize) -> Result<(), Error> {
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `reg` is a valid uffdio_register.
    unsafe { ioctl("UFFDIO_REGISTER", fd.0, UFFDIO_REGISTER, &mut reg) }.map(|_| ())
}

pub fn uffd_unregister(fd: &Fd, start: usize, len: usize) {
    let mut range = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: `range` is a valid uffdio_range. Failure (range gone) is harmless here.
    let _ = unsafe { ioctl("UFFDIO_UNREGISTER", fd.0, UFFDIO_UNREGISTER, &mut range) };
}

/// Sets (`protect`) or clears write protection on `[start, start+len)`. Clearing it
/// does not wake the blocked writers: see [`uffd_wake`].
pub fn uffd_writeprotect(fd: i32, start: usize, len: usize, protect: bool) -> Result<(), Error> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            UFFDIO_WRITEPROTECT_MODE_DONTWAKE
        },
    };
    // SAFETY: `wp` is a valid uffdio_writeprotect.
    unsafe { ioctl("UFFDIO_WRITEPROTECT", fd, UFFDIO_WRITEPROTECT, &mut wp) }.map(|_| ())
}

/// Wakes the threads blocked on a fault in `[start, start+len)`.
pub fn uffd_wake(fd: i32, start: usize, len: usize) -> Result<(), Error> {
    let mut range = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: `range` is a valid uffdio_range.
    unsafe { ioctl("UFFDIO_WAKE", fd, UFFDIO_WAKE, &mut range) }.map(|_| ())
}

/// Writes one byte at `ptr` through a volatile store (the self-tests' "mutator").
pub fn poke(ptr: *mut u8, value: u8) {
    // SAFETY: callers pass addresses inside a mapping they own.
    unsafe { core::ptr::write_volatile(ptr, value) }
}
