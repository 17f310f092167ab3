//! The kernel features the dirty-tracking backends are built from, probed one by one.
//! `msh doctor` reports them; the backends' own self-tests ([`super::Backend::probe`])
//! decide what a tracker uses. Each probe touches only a scratch mapping of its own.

use super::sys::{self, Fd, PageRegion, PmScanArg, Scratch};
use super::Unavailable;
use crate::os;

/// Can this process open a userfaultfd? `user_mode_only` asks for
/// `UFFD_USER_MODE_ONLY`, what unprivileged users get when
/// `vm.unprivileged_userfaultfd` is 0.
pub fn userfaultfd(user_mode_only: bool) -> Result<(), Unavailable> {
    let flags = libc::O_CLOEXEC
        | if user_mode_only {
            sys::UFFD_USER_MODE_ONLY
        } else {
            0
        };
    // SAFETY: userfaultfd takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    match sys::check("userfaultfd", fd) {
        Ok(fd) => {
            drop(Fd(fd as i32));
            Ok(())
        }
        Err(e) => Err(Unavailable::from_error(
            if user_mode_only {
                "userfaultfd(UFFD_USER_MODE_ONLY) refused"
            } else {
                "userfaultfd(2) refused (needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)"
            },
            e,
        )),
    }
}

/// Does the kernel grant `UFFD_FEATURE_WP_ASYNC` (write-protect faults resolved in
/// the kernel, Linux 6.7+)?
pub fn wp_async() -> Result<(), Unavailable> {
    let uffd = sys::open_userfaultfd(false)
        .map_err(|e| Unavailable::from_error("userfaultfd(2) is not available", e))?;
    sys::uffd_api(&uffd, sys::UFFD_FEATURE_WP_ASYNC).map_err(|e| {
        Unavailable::from_error("the kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+)", e)
    })
}

/// Does `/proc/self/pagemap` answer the `PAGEMAP_SCAN` ioctl (Linux 6.7+)?
pub fn pagemap_scan() -> Result<(), Unavailable> {
    let page = os::page_size();
    let scratch =
        Scratch::new(page).map_err(|e| Unavailable::from_error("cannot map a scratch page", e))?;
    sys::poke(scratch.ptr(0), 1);
    let pagemap = Fd::open(b"/proc/self/pagemap\0", libc::O_RDONLY)
        .map_err(|e| Unavailable::from_error("cannot open /proc/self/pagemap", e))?;
    let mut region = PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    };
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start: scratch.addr as u64,
        end: (scratch.addr + page) as u64,
        walk_end: 0,
        vec: &mut region as *mut PageRegion as u64,
        vec_len: 1,
        max_pages: 0,
        category_inverted: 0,
        category_mask: 0,
        category_anyof_mask: sys::PAGE_IS_PRESENT,
        return_mask: sys::PAGE_IS_PRESENT,
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose output vector is `region`, one entry.
    unsafe { sys::ioctl("PAGEMAP_SCAN", pagemap.0, sys::PAGEMAP_SCAN, &mut arg) }.map_err(|e| {
        Unavailable::from_error("/proc/self/pagemap has no PAGEMAP_SCAN (Linux 6.7+)", e)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probes agree with the uffd-async backend's own self-test, which needs all
    /// three: wherever it works, they must say so.
    #[test]
    fn probes_agree_with_the_uffd_async_self_test() {
        if super::super::Backend::UffdAsync.probe().is_ok() {
            assert_eq!(wp_async(), Ok(()));
            assert_eq!(pagemap_scan(), Ok(()));
            assert!(userfaultfd(false).is_ok() || userfaultfd(true).is_ok());
        }
    }
}
