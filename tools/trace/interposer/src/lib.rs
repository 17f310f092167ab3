//! `libmshtrace.so`: the allocation interposer `msh trace` preloads into the traced
//! program.
//!
//! It replaces malloc, calloc, realloc, reallocarray, free, the aligned allocations
//! (posix_memalign, aligned_alloc, memalign, valloc), mmap/mmap64, munmap, mremap, brk
//! and sbrk, calls glibc's own implementation (`__libc_malloc`, … and raw system calls:
//! no `dlsym`, whose own `calloc` would recurse at start-up), and records one event per
//! call in a per-thread buffer. Growth of the heap break by glibc's malloc itself is
//! noticed after each allocation by comparing glibc's `__curbrk` with the last value
//! seen. A full buffer, a thread's exit, and the process's exit append the buffer as one
//! chunk to the file named by `MSH_TRACE_FILE` (`O_APPEND`: chunks of different threads
//! never interleave). The wire format is [`wire`]; `msh-trace` reads it.
//!
//! Time is the TSC (an `rdtsc` per event, about 10 ns here against 22 ns for
//! `clock_gettime`); each chunk carries CLOCK_MONOTONIC readings at its first event and
//! at the flush, and the reader interpolates between them.
//!
//! The call stack is the return address of the interposed call (exact, read by a naked
//! entry stub), then up to [`wire::MAX_DEPTH`]` - 1` more frames from the frame-pointer
//! chain, bounded to the thread's stack: right for code built with frame pointers, and
//! for other code possibly wrong beyond the first frame (never unsafe: only the stack is
//! read).
//!
//! Nothing here allocates; a per-thread guard skips recording when the interposer's
//! own work calls back into it. Events made after the process started exiting (after
//! this library's destructor) are not recorded.
#![warn(missing_docs)]

pub mod wire;

use core::cell::Cell;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
// The clocks come from msh-core (no_std, only libc): nothing that allocates.
use msh_core::arch::rdtsc;
use msh_core::os::monotonic_ns;
use wire::{ChunkHeader, Kind, Record, BUFFER_BYTES, MAX_DEPTH};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(ptr: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_valloc(size: usize) -> *mut c_void;
    fn __sbrk(increment: isize) -> *mut c_void;
    static mut __curbrk: *mut c_void;
}

/// One thread's event buffer (mmapped; never freed: a thread's buffer is reused by
/// nobody else, and exited threads' buffers stay on the list, empty).
#[repr(C)]
struct Buffer {
    /// Set while the owner writes or a flush reads.
    busy: AtomicBool,
    next: *mut Buffer,
    tid: u32,
    len: usize,
    dropped: u64,
    first_tsc: u64,
    first_ns: u64,
    stack_low: u64,
    stack_high: u64,
    data: [u8; BUFFER_BYTES],
}

thread_local! {
    /// This thread's buffer; [`CREATING`] while it is being made. One thread-local
    /// access per event: the buffer's `busy` flag doubles as the recursion guard.
    static BUFFER: Cell<*mut Buffer> = const { Cell::new(core::ptr::null_mut()) };
}

/// The value of `BUFFER` while the buffer is being created (calls made meanwhile, by
/// pthread_getattr_np for one, are not recorded).
const CREATING: *mut Buffer = core::ptr::dangling_mut::<Buffer>();

/// Every thread's buffer, for the flush at exit.
static BUFFERS: AtomicPtr<Buffer> = AtomicPtr::new(core::ptr::null_mut());
/// The output file, opened at the first flush; -1 before, -2 when there is none.
static FD: AtomicI32 = AtomicI32::new(-1);
/// Cleared by the destructor: nothing is recorded after it ran.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The break glibc's malloc last left, to notice its own growth of the heap.
static LAST_BRK: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static mut KEY: libc::pthread_key_t = 0;

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;
#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = fini;

extern "C" fn init() {
    // SAFETY: runs once, single-threaded, before main; KEY is written only here.
    unsafe {
        if libc::pthread_key_create(&raw mut KEY, Some(thread_exit)) != 0 {
            return;
        }
        LAST_BRK.store(__curbrk, Ordering::Relaxed);
    }
    ACTIVE.store(true, Ordering::Release);
}

extern "C" fn fini() {
    if !ACTIVE.swap(false, Ordering::AcqRel) {
        return;
    }
    let mut buffer = BUFFERS.load(Ordering::Acquire);
    while !buffer.is_null() {
        // SAFETY: buffers on the list are never unmapped.
        let b = unsafe { &mut *buffer };
        if !b.busy.swap(true, Ordering::Acquire) {
            flush(b);
            b.busy.store(false, Ordering::Release);
        }
        buffer = b.next;
    }
    dump_maps();
}

extern "C" fn thread_exit(buffer: *mut c_void) {
    // SAFETY: the key's value is this thread's buffer, set by `buffer()`.
    let b = unsafe { &mut *(buffer as *mut Buffer) };
    if !b.busy.swap(true, Ordering::Acquire) {
        flush(b);
        b.busy.store(false, Ordering::Release);
    }
}

fn output_fd() -> c_int {
    let fd = FD.load(Ordering::Acquire);
    if fd != -1 {
        return fd;
    }
    // SAFETY: getenv/open with a NUL-terminated name; neither allocates.
    let opened = unsafe {
        let path = libc::getenv(c"MSH_TRACE_FILE".as_ptr());
        if path.is_null() {
            -2
        } else {
            let fd = libc::open(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC);
            if fd < 0 {
                -2
            } else {
                fd
            }
        }
    };
    match FD.compare_exchange(-1, opened, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => opened,
        Err(other) => {
            if opened >= 0 {
                // SAFETY: our own descriptor, lost the race to another thread's.
                unsafe { libc::close(opened) };
            }
            other
        }
    }
}

/// Writes all of `bytes` (one write for a chunk: O_APPEND keeps it whole).
fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: bytes is a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

fn write_chunk(kind: u16, tid: u32, payload: &[u8], header_extra: [u64; 5]) {
    let fd = output_fd();
    if fd < 0 {
        return;
    }
    let header = ChunkHeader {
        magic: wire::MAGIC,
        version: wire::VERSION,
        kind,
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() } as u32,
        tid,
        payload_len: payload.len() as u64,
        first_tsc: header_extra[0],
        first_ns: header_extra[1],
        flush_tsc: header_extra[2],
        flush_ns: header_extra[3],
        dropped: header_extra[4],
    };
    // One buffer, one write: the header goes into the scratch space before the data.
    let mut iov = [
        libc::iovec {
            iov_base: (&header as *const ChunkHeader).cast_mut().cast(),
            iov_len: core::mem::size_of::<ChunkHeader>(),
        },
        libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        },
    ];
    let total = iov[0].iov_len + iov[1].iov_len;
    // SAFETY: both iovecs point at live memory of the given lengths.
    let n = unsafe { libc::writev(fd, iov.as_mut_ptr(), 2) };
    if n >= 0 && (n as usize) < total {
        // A short write (disk full, signal): finish it; the reader checks lengths.
        let done = n as usize;
        if done < iov[0].iov_len {
            write_all(fd, &header.as_bytes()[done..]);
            write_all(fd, payload);
        } else {
            write_all(fd, &payload[done - iov[0].iov_len..]);
        }
    }
}

fn flush(b: &mut Buffer) {
    if b.len == 0 {
        return;
    }
    let extra = [b.first_tsc, b.first_ns, rdtsc(), monotonic_ns(), b.dropped];
    write_chunk(wire::CHUNK_EVENTS, b.tid, &b.data[..b.len], extra);
    b.len = 0;
    b.dropped = 0;
}

/// Appends `/proc/self/maps` as chunks, so the reader can symbolize call sites after
/// the process is gone.
fn dump_maps() {
    let mut scratch = [0u8; 16384];
    // SAFETY: open/read/close of a procfs file into a stack buffer.
    unsafe {
        let fd = libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        loop {
            let n = libc::read(fd, scratch.as_mut_ptr().cast(), scratch.len());
            if n <= 0 {
                break;
            }
            write_chunk(wire::CHUNK_MAPS, 0, &scratch[..n as usize], [0; 5]);
        }
        libc::close(fd);
    }
}

/// This thread's buffer, created at its first event.
fn buffer() -> Option<&'static mut Buffer> {
    let existing = BUFFER.with(|b| b.get());
    if existing == CREATING {
        return None;
    }
    if !existing.is_null() {
        // SAFETY: the pointer is this thread's own buffer.
        return Some(unsafe { &mut *existing });
    }
    BUFFER.with(|cell| cell.set(CREATING));
    // SAFETY: an anonymous private mapping; the kernel zero-fills it.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0usize,
            core::mem::size_of::<Buffer>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1i64,
            0usize,
        )
    };
    if raw < 0 {
        BUFFER.with(|cell| cell.set(core::ptr::null_mut()));
        return None;
    }
    // SAFETY: a fresh zeroed mapping large enough for a Buffer, which is valid zeroed.
    let b = unsafe { &mut *(raw as *mut Buffer) };
    // SAFETY: gettid has no preconditions.
    b.tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    (b.stack_low, b.stack_high) = stack_bounds();
    let mut head = BUFFERS.load(Ordering::Acquire);
    loop {
        b.next = head;
        match BUFFERS.compare_exchange_weak(head, b, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    BUFFER.with(|cell| cell.set(b));
    // SAFETY: KEY was created in init (setting a key of ours, with our own value).
    unsafe { libc::pthread_setspecific(KEY, (b as *mut Buffer).cast()) };
    Some(b)
}

/// This thread's stack, for walking frame pointers safely.
fn stack_bounds() -> (u64, u64) {
    // SAFETY: attr is initialised by pthread_getattr_np before use and destroyed after;
    // its own allocations go to glibc directly because the guard is set.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut addr = core::ptr::null_mut();
        let mut size = 0usize;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            (addr as u64, addr as u64 + size as u64)
        } else {
            (0, 0)
        }
    }
}

/// Records one event (unless the interposer itself caused it, or recording is off).
#[inline(always)]
fn record(kind: Kind, caller: usize, frame: usize, addr: u64, size: u64, old: u64, old_size: u64) {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    record_guarded(kind, caller, frame, addr, size, old, old_size);
}

fn record_guarded(
    kind: Kind,
    caller: usize,
    frame: usize,
    addr: u64,
    size: u64,
    old: u64,
    old_size: u64,
) {
    let Some(b) = buffer() else { return };
    // Busy: a call made by the interposer's own work (a flush), or the exit flush
    // holds the buffer. Only this thread sets it otherwise, so no atomic exchange.
    if b.busy.load(Ordering::Relaxed) {
        b.dropped += 1;
        return;
    }
    b.busy.store(true, Ordering::Relaxed);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    let tsc = rdtsc();
    let mut stack = [0u64; MAX_DEPTH];
    stack[0] = caller as u64;
    let mut depth = 1;
    // Frame-pointer chain: [rbp] = caller's rbp, [rbp+8] = return address.
    let mut fp = frame as u64;
    while depth < MAX_DEPTH && fp >= b.stack_low && fp + 16 <= b.stack_high && fp.is_multiple_of(8)
    {
        // SAFETY: fp and fp+8 lie inside this thread's stack (checked just above).
        let (next, ret) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if ret < 4096 {
            break;
        }
        stack[depth] = ret;
        depth += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    let bytes = Record::encoded_len(depth);
    if b.len + bytes > BUFFER_BYTES {
        flush(b);
    }
    if b.len == 0 {
        b.first_tsc = tsc;
        b.first_ns = monotonic_ns();
    }
    let rec = Record {
        kind: kind as u8,
        depth: depth as u8,
        tsc,
        addr,
        size,
        old,
        old_size,
    };
    rec.encode(&mut b.data[b.len..b.len + bytes], &stack[..depth]);
    b.len += bytes;
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    b.busy.store(false, Ordering::Relaxed);
}

/// glibc's malloc grew (or shrank) the heap with its internal sbrk: record it.
#[inline(always)]
fn check_brk(caller: usize, frame: usize) {
    // SAFETY: reading glibc's exported variable; a torn read is impossible for a word.
    let now = unsafe { core::ptr::read_volatile(&raw const __curbrk) };
    let last = LAST_BRK.load(Ordering::Relaxed);
    if now != last
        && LAST_BRK
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        record(
            Kind::Brk,
            caller,
            frame,
            last as u64,
            (now as u64).wrapping_sub(last as u64),
            0,
            0,
        );
    }
}

/// Defines an exported function whose naked entry reads its return address (the call
/// site) and its caller's frame pointer, and passes both after the real arguments.
macro_rules! entry {
    ($(#[$doc:meta])* fn $name:ident => $imp:ident, caller in $caller:literal, frame in $frame:literal) => {
        $(#[$doc])*
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub extern "C" fn $name() {
            core::arch::naked_asm!(
                concat!("mov ", $caller, ", [rsp]"),
                concat!("mov ", $frame, ", rbp"),
                "jmp {imp}",
                imp = sym $imp,
            )
        }
    };
}

entry!(
    /// malloc(size), recorded.
    fn malloc => malloc_imp, caller in "rsi", frame in "rdx");
extern "C" fn malloc_imp(size: usize, caller: usize, frame: usize) -> *mut c_void {
    // SAFETY: glibc's allocator, with the caller's arguments.
    let p = unsafe { __libc_malloc(size) };
    if !p.is_null() {
        record(Kind::Malloc, caller, frame, p as u64, size as u64, 0, 0);
        check_brk(caller, frame);
    }
    p
}

entry!(
    /// calloc(n, size), recorded.
    fn calloc => calloc_imp, caller in "rdx", frame in "rcx");
extern "C" fn calloc_imp(n: usize, size: usize, caller: usize, frame: usize) -> *mut c_void {
    // SAFETY: glibc's allocator, with the caller's arguments.
    let p = unsafe { __libc_calloc(n, size) };
    if !p.is_null() {
        record(
            Kind::Calloc,
            caller,
            frame,
            p as u64,
            n.wrapping_mul(size) as u64,
            0,
            0,
        );
        check_brk(caller, frame);
    }
    p
}

entry!(
    /// realloc(ptr, size), recorded as the end of the old block and a new one.
    fn realloc => realloc_imp, caller in "rdx", frame in "rcx");
extern "C" fn realloc_imp(
    old: *mut c_void,
    size: usize,
    caller: usize,
    frame: usize,
) -> *mut c_void {
    // SAFETY: glibc's allocator, with the caller's arguments.
    let p = unsafe { __libc_realloc(old, size) };
    // realloc(p, 0) frees p and returns NULL; a failed realloc leaves p alone.
    if !p.is_null() || (size == 0 && !old.is_null()) {
        record(
            Kind::Realloc,
            caller,
            frame,
            p as u64,
            size as u64,
            old as u64,
            0,
        );
        check_brk(caller, frame);
    }
    p
}

entry!(
    /// reallocarray(ptr, n, size), recorded like realloc.
    fn reallocarray => reallocarray_imp, caller in "rcx", frame in "r8");
extern "C" fn reallocarray_imp(
    old: *mut c_void,
    n: usize,
    size: usize,
    caller: usize,
    frame: usize,
) -> *mut c_void {
    let Some(bytes) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    realloc_imp(old, bytes, caller, frame)
}

entry!(
    /// free(ptr), recorded.
    fn free => free_imp, caller in "rsi", frame in "rdx");
extern "C" fn free_imp(ptr: *mut c_void, caller: usize, frame: usize) {
    if ptr.is_null() {
        return;
    }
    // Recorded before the block can be reused by another thread.
    record(Kind::Free, caller, frame, ptr as u64, 0, 0, 0);
    // SAFETY: glibc's allocator, with the caller's argument.
    unsafe { __libc_free(ptr) };
}

fn set_errno(value: c_int) {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = value };
}

fn aligned(align: usize, size: usize, caller: usize, frame: usize) -> *mut c_void {
    // SAFETY: glibc's allocator, with the caller's arguments.
    let p = unsafe { __libc_memalign(align, size) };
    if !p.is_null() {
        record(
            Kind::Aligned,
            caller,
            frame,
            p as u64,
            size as u64,
            0,
            align as u64,
        );
        check_brk(caller, frame);
    }
    p
}

entry!(
    /// posix_memalign(out, align, size), recorded.
    fn posix_memalign => posix_memalign_imp, caller in "rcx", frame in "r8");
extern "C" fn posix_memalign_imp(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
    caller: usize,
    frame: usize,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = aligned(align, size, caller, frame);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: out is the caller's valid out pointer, as posix_memalign requires.
    unsafe { *out = p };
    0
}

entry!(
    /// aligned_alloc(align, size), recorded.
    fn aligned_alloc => aligned_alloc_imp, caller in "rdx", frame in "rcx");
extern "C" fn aligned_alloc_imp(
    align: usize,
    size: usize,
    caller: usize,
    frame: usize,
) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    aligned(align, size, caller, frame)
}

entry!(
    /// memalign(align, size), recorded.
    fn memalign => aligned_alloc_imp, caller in "rdx", frame in "rcx");

entry!(
    /// valloc(size), recorded.
    fn valloc => valloc_imp, caller in "rsi", frame in "rdx");
extern "C" fn valloc_imp(size: usize, caller: usize, frame: usize) -> *mut c_void {
    // SAFETY: glibc's allocator, with the caller's argument.
    let p = unsafe { __libc_valloc(size) };
    if !p.is_null() {
        record(Kind::Aligned, caller, frame, p as u64, size as u64, 0, 4096);
        check_brk(caller, frame);
    }
    p
}

/// Returns a raw system call's result as glibc does: -1 and errno on failure.
fn syscall_result(r: libc::c_long) -> libc::c_long {
    if r < 0 {
        set_errno(-r as c_int);
        -1
    } else {
        r
    }
}

/// mmap(addr, len, prot, flags, fd, offset), recorded. Six arguments fill the argument
/// registers, so the call site and frame go on the stack as arguments 7 and 8.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn mmap() {
    core::arch::naked_asm!(
        "push rbp",      // argument 8: the caller's frame pointer
        "push [rsp+8]",  // argument 7: the return address (rsp is 16-aligned after both)
        "call {imp}",
        "add rsp, 16",
        "ret",
        imp = sym mmap_imp,
    )
}

/// mmap64: the same function on x86-64.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn mmap64() {
    core::arch::naked_asm!("jmp {m}", m = sym mmap)
}

#[allow(clippy::too_many_arguments)]
extern "C" fn mmap_imp(
    addr: usize,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: i64,
    caller: usize,
    frame: usize,
) -> *mut c_void {
    // SAFETY: the mmap system call with the caller's arguments.
    let r = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) };
    let r = syscall_result(r);
    if r == -1 {
        return libc::MAP_FAILED;
    }
    let flags_prot = ((flags as u32 as u64) << 32) | prot as u32 as u64;
    record(
        Kind::Mmap,
        caller,
        frame,
        r as u64,
        len as u64,
        flags_prot,
        0,
    );
    r as *mut c_void
}

entry!(
    /// munmap(addr, len), recorded.
    fn munmap => munmap_imp, caller in "rdx", frame in "rcx");
extern "C" fn munmap_imp(addr: usize, len: usize, caller: usize, frame: usize) -> c_int {
    // Recorded first: once unmapped, the range can be mapped again by another thread.
    record(Kind::Munmap, caller, frame, addr as u64, len as u64, 0, 0);
    // SAFETY: the munmap system call with the caller's arguments.
    syscall_result(unsafe { libc::syscall(libc::SYS_munmap, addr, len) }) as c_int
}

/// mremap(old, old_size, new_size, flags, new_address), recorded with its call site
/// (argument 6; the frame-pointer chain is not walked for it).
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn mremap() {
    core::arch::naked_asm!("mov r9, [rsp]", "jmp {imp}", imp = sym mremap_imp)
}
extern "C" fn mremap_imp(
    old: usize,
    old_size: usize,
    new_size: usize,
    flags: c_int,
    new_address: usize,
    caller: usize,
) -> *mut c_void {
    // SAFETY: the mremap system call with the caller's arguments (new_address is read
    // by the kernel only with MREMAP_FIXED).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            old,
            old_size,
            new_size,
            flags,
            new_address,
        )
    };
    let r = syscall_result(r);
    if r == -1 {
        return libc::MAP_FAILED;
    }
    record(
        Kind::Mremap,
        caller,
        0,
        r as u64,
        new_size as u64,
        old as u64,
        old_size as u64,
    );
    r as *mut c_void
}

entry!(
    /// sbrk(increment), recorded.
    fn sbrk => sbrk_imp, caller in "rsi", frame in "rdx");
extern "C" fn sbrk_imp(increment: isize, caller: usize, frame: usize) -> *mut c_void {
    // SAFETY: glibc's sbrk, with the caller's argument.
    let old = unsafe { __sbrk(increment) };
    if old as isize != -1 && increment != 0 {
        LAST_BRK.store(
            (old as u64).wrapping_add(increment as u64) as *mut c_void,
            Ordering::Relaxed,
        );
        record(Kind::Brk, caller, frame, old as u64, increment as u64, 0, 0);
    }
    old
}

entry!(
    /// brk(addr), recorded.
    fn brk => brk_imp, caller in "rsi", frame in "rdx");
extern "C" fn brk_imp(addr: *mut c_void, caller: usize, frame: usize) -> c_int {
    // SAFETY: reading glibc's break and asking sbrk for the difference, which is what
    // glibc's brk does (sbrk keeps __curbrk right).
    let current = unsafe { __sbrk(0) };
    let increment = (addr as isize).wrapping_sub(current as isize);
    if sbrk_imp(increment, caller, frame) as isize == -1 {
        return -1;
    }
    0
}
