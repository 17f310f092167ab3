//! One status enum for the whole C ABI, and the panic boundary every export goes through.

use core::ffi::c_char;
use std::panic::{catch_unwind, UnwindSafe};

/// Result of every fallible msh call. 0 is success; the others name the cause.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum msh_status {
    /// Success.
    MSH_OK = 0,
    /// A required pointer argument was NULL.
    MSH_ERR_NULL = 1,
    /// An argument is out of range or malformed.
    MSH_ERR_INVALID = 2,
    /// `msh_init` was called twice without `msh_shutdown`.
    MSH_ERR_ALREADY_INITIALIZED = 3,
    /// The call needs `msh_init` first.
    MSH_ERR_NOT_INITIALIZED = 4,
    /// The calling thread is already registered as a primary.
    MSH_ERR_ALREADY_REGISTERED = 5,
    /// The calling thread is not registered as a primary.
    MSH_ERR_NOT_REGISTERED = 6,
    /// Every scavenger slot of the thread is taken.
    MSH_ERR_NO_SLOT = 7,
    /// Memory (or a stack mapping) could not be allocated.
    MSH_ERR_NO_MEMORY = 8,
    /// The kernel or CPU lacks a feature this call needs.
    MSH_ERR_UNSUPPORTED = 9,
    /// A system call failed; see errno.
    MSH_ERR_OS = 10,
    /// An address range is not mapped, or not mapped the way the call needs.
    MSH_ERR_UNMAPPED = 11,
    /// An address range overlaps one already in use.
    MSH_ERR_OVERLAP = 12,
    /// The object is in use and cannot be changed now.
    MSH_ERR_BUSY = 13,
    /// msh hit an internal error (a caught panic); the call had no effect.
    MSH_ERR_INTERNAL = 14,
}

/// A static, NUL-terminated English description of `status`.
#[no_mangle]
pub extern "C" fn msh_strerror(status: msh_status) -> *const c_char {
    use msh_status::*;
    let text: &'static [u8] = match status {
        MSH_OK => b"success\0",
        MSH_ERR_NULL => b"a required pointer argument was NULL\0",
        MSH_ERR_INVALID => b"invalid argument\0",
        MSH_ERR_ALREADY_INITIALIZED => b"msh is already initialized\0",
        MSH_ERR_NOT_INITIALIZED => b"msh is not initialized (call msh_init first)\0",
        MSH_ERR_ALREADY_REGISTERED => b"this thread is already registered as a primary\0",
        MSH_ERR_NOT_REGISTERED => b"this thread is not registered as a primary\0",
        MSH_ERR_NO_SLOT => b"every scavenger slot of this thread is taken\0",
        MSH_ERR_NO_MEMORY => b"out of memory\0",
        MSH_ERR_UNSUPPORTED => b"not supported by this kernel or CPU\0",
        MSH_ERR_OS => b"a system call failed (see errno)\0",
        MSH_ERR_UNMAPPED => b"address range is not mapped as required\0",
        MSH_ERR_OVERLAP => b"address range overlaps one already in use\0",
        MSH_ERR_BUSY => b"object is busy\0",
        MSH_ERR_INTERNAL => b"internal error in msh (a bug: please report it)\0",
    };
    text.as_ptr().cast()
}

/// Runs `body` behind the panic boundary: a panic becomes `MSH_ERR_INTERNAL`, never
/// an unwind into C.
pub(crate) fn guard<F>(body: F) -> msh_status
where
    F: FnOnce() -> Result<(), msh_status> + UnwindSafe,
{
    match catch_unwind(body) {
        Ok(Ok(())) => msh_status::MSH_OK,
        Ok(Err(status)) => status,
        Err(_) => msh_status::MSH_ERR_INTERNAL,
    }
}

/// Like [`guard`] for calls that return a value: `fallback` on a panic.
pub(crate) fn guard_value<T, F>(fallback: T, body: F) -> T
where
    F: FnOnce() -> T + UnwindSafe,
{
    catch_unwind(body).unwrap_or(fallback)
}

/// `Err(MSH_ERR_NULL)` when `ptr` is null.
pub(crate) fn non_null<T>(ptr: *const T) -> Result<(), msh_status> {
    if ptr.is_null() {
        Err(msh_status::MSH_ERR_NULL)
    } else {
        Ok(())
    }
}
