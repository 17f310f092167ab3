//! The plugin itself: QEMU calls these from its translator and from the guest's
//! threads. Every access the guest makes goes through [`record`], which appends it to
//! the calling thread's batch slot in shared memory; a full slot is published and a
//! new one taken. No callback panics across the C ABI: the hot path cannot panic (no
//! allocation, no indexing without a check) and the rest catches unwinds.
use crate::qemu::{self, Api, Info, Insn, MemInfo, PluginId, Tb};
use crate::shm::{self, Access, Config, Layout, Ring, MAPS_BYTES};
use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use msh_core::os::monotonic_ns;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};

/// Guest threads alive at once (vCPU indices are reused after a thread exits).
const MAX_VCPUS: usize = 4096;

const SYS_MMAP: i64 = 9;
const SYS_CLONE: i64 = 56;
const SYS_FORK: i64 = 57;
const SYS_VFORK: i64 = 58;
const SYS_EXECVE: i64 = 59;
const SYS_EXECVEAT: i64 = 322;
const CLONE_VM: u64 = 0x100;
const PROT_EXEC: u64 = 4;

struct Global {
    api: Api,
    ring: Ring,
    config: Config,
    id: PluginId,
    /// Mappings that existed before the guest was loaded: qemu's own.
    host_maps: Vec<String>,
    /// Every host mapping lies at or above this address; the guest's lie below.
    host_floor: u64,
    /// [`decode_meminfo`] agrees with QEMU's own functions (checked at install).
    inline_meminfo: bool,
}

/// QEMU 7.2's meminfo word: the MemOpIdx (memory op << 4 | MMU index) in the low 16
/// bits, the access direction (1 read, 2 write) above; the op's low 3 bits are log2 of
/// the size. Decoding it here saves two calls into QEMU per access; [`install`] checks
/// this against QEMU's functions and falls back to them if they disagree.
#[inline(always)]
fn decode_meminfo(info: MemInfo) -> (c_uint, bool) {
    ((info >> 4) & 7, (info >> 16) & 2 != 0)
}

/// Whether [`decode_meminfo`] matches QEMU's accessors on every op, MMU index and
/// direction QEMU can encode.
fn inline_decoding_agrees(api: &Api) -> bool {
    (1u32..=3).all(|rw| {
        (0u32..1 << 12).all(|oi| {
            let info = oi | rw << 16;
            // SAFETY: pure functions of the word.
            let theirs = unsafe { ((api.mem_size_shift)(info), (api.mem_is_store)(info)) };
            decode_meminfo(info) == theirs
        })
    })
}

impl Global {
    /// Every access is recorded and meminfo decodes inline: [`record_all`] will do.
    fn records_all(&self) -> bool {
        self.inline_meminfo
            && self.config.sample_off == 0
            && self.config.filter_start == 0
            && self.config.filter_len == u64::MAX
    }
}

static GLOBAL: OnceLock<Global> = OnceLock::new();
static VCPUS: [AtomicPtr<Vcpu>; MAX_VCPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_VCPUS];
/// Set in a forked child: it records nothing and must not touch the parent's slots.
static IN_FORKED_CHILD: AtomicBool = AtomicBool::new(false);
static FAST_FORWARD_DONE: AtomicBool = AtomicBool::new(false);
static MAPS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// One guest thread's recording state; only that thread touches it (and the exit
/// callback, which runs with the other threads stopped).
struct Vcpu {
    thread: u32,
    slot: u32,
    records: *mut Access,
    count: u32,
    capacity: u32,
    /// `capacity` while the thread holds a slot, 0 when it has none: `count < room`
    /// is the one test the hot path needs to know it can append.
    room: u32,
    /// Accesses still to skip before the next recorded one.
    skip: u64,
    /// Accesses still to record in the current burst.
    on_left: u64,
    /// Accesses seen since the last publish.
    seen: u64,
    /// Arguments of the last clone/mmap this thread made, for its return callback.
    clone_flags: u64,
    mmap_prot: u64,
}

const NO_SLOT: u32 = u32::MAX;

impl Vcpu {
    /// Publishes the current batch (or, when the tracer said stop or in a forked child,
    /// drops it and keeps the slot).
    fn flush(&mut self, g: &Global) {
        let header = g.ring.header();
        header.seen.fetch_add(self.seen, Ordering::Relaxed);
        self.seen = 0;
        if self.slot == NO_SLOT {
            return;
        }
        if header.stop.load(Ordering::Relaxed) != 0 || IN_FORKED_CHILD.load(Ordering::Relaxed) {
            self.count = 0;
            return;
        }
        header
            .delivered
            .fetch_add(self.count as u64, Ordering::Relaxed);
        g.ring
            .publish(self.slot, self.thread, self.count, monotonic_ns());
        self.slot = NO_SLOT;
        self.records = core::ptr::null_mut();
        self.count = 0;
        self.room = 0;
    }

    /// The thread is done: publish what it has, give an empty slot back.
    fn finish(&mut self, g: &Global) {
        if self.count > 0 {
            self.flush(g);
        } else {
            g.ring.header().seen.fetch_add(self.seen, Ordering::Relaxed);
            self.seen = 0;
        }
        if self.slot != NO_SLOT && !IN_FORKED_CHILD.load(Ordering::Relaxed) {
            g.ring.release(self.slot);
            self.slot = NO_SLOT;
            self.records = core::ptr::null_mut();
            self.count = 0;
            self.room = 0;
        }
    }

    fn acquire(&mut self, g: &Global) -> bool {
        match g.ring.acquire(self.thread.wrapping_mul(7)) {
            Some(slot) => {
                self.slot = slot;
                self.records = g.ring.records(slot);
                self.count = 0;
                self.room = self.capacity;
                true
            }
            None => false,
        }
    }
}

/// The state of the vCPU whose thread runs this callback, once it has one.
#[inline(always)]
fn this_vcpu(vcpu: c_uint) -> Option<&'static mut Vcpu> {
    let pointer = VCPUS.get(vcpu as usize)?.load(Ordering::Relaxed);
    // SAFETY: the state belongs to this vCPU's thread, the only one running callbacks
    // for it; it is freed only by the same thread (exit) or the exit callback.
    unsafe { pointer.as_mut() }
}

/// One guest load or store, with the address filter and sampling applied ([`record_all`]
/// is the hot path when neither is asked for).
#[inline(always)]
fn record(vcpu: c_uint, info: MemInfo, addr: u64, ip: u64) {
    let Some(g) = GLOBAL.get() else { return };
    let Some(v) = this_vcpu(vcpu) else { return };
    v.seen += 1;
    if addr.wrapping_sub(g.config.filter_start) >= g.config.filter_len {
        return;
    }
    if v.skip != 0 {
        v.skip -= 1;
        return;
    }
    v.on_left -= 1;
    if v.on_left == 0 {
        v.on_left = g.config.sample_on;
        v.skip = g.config.sample_off;
    }
    if v.count >= v.room && !v.acquire(g) {
        return;
    }
    let (shift, is_write) = if g.inline_meminfo {
        decode_meminfo(info)
    } else {
        // SAFETY: these only decode the meminfo word QEMU passed us.
        unsafe { ((g.api.mem_size_shift)(info), (g.api.mem_is_store)(info)) }
    };
    v.append(ip, addr, shift, is_write);
    if v.count == v.room {
        v.flush(g);
    }
}

impl Vcpu {
    /// Appends one record; the caller checked `count < room`.
    #[inline(always)]
    fn append(&mut self, ip: u64, addr: u64, shift: c_uint, is_write: bool) {
        debug_assert!(self.count < self.room);
        // SAFETY: count < room = capacity while a slot is held, and the slot holds
        // capacity records.
        unsafe {
            self.records.add(self.count as usize).write(Access {
                ip,
                addr,
                size: (1u32 << shift.min(7)) as u8,
                is_write,
            })
        };
        self.count += 1;
    }
}

/// The hot path when every access is recorded (no address filter, no sampling) and
/// the meminfo word decodes inline: one check and one 24-byte store per access. It
/// is the guest's own memory-level parallelism that pays for the length of this
/// path: its loads' cache misses overlap only as far as the host's reorder window
/// reaches past the callbacks in between.
#[inline(always)]
fn record_all(vcpu: c_uint, info: MemInfo, addr: u64, ip: u64) {
    let Some(v) = this_vcpu(vcpu) else { return };
    v.seen += 1;
    if v.count >= v.room {
        return take_slot_and_append(v, info, addr, ip);
    }
    let (shift, is_write) = decode_meminfo(info);
    v.append(ip, addr, shift, is_write);
    if v.count == v.room {
        flush_full(v);
    }
}

/// Once per batch: the thread has no slot yet (or its last one was published).
#[cold]
#[inline(never)]
fn take_slot_and_append(v: &mut Vcpu, info: MemInfo, addr: u64, ip: u64) {
    let Some(g) = GLOBAL.get() else { return };
    if !v.acquire(g) {
        return;
    }
    let (shift, is_write) = decode_meminfo(info);
    v.append(ip, addr, shift, is_write);
}

/// Once per batch: the slot is full.
#[cold]
#[inline(never)]
fn flush_full(v: &mut Vcpu) {
    if let Some(g) = GLOBAL.get() {
        v.flush(g);
    }
}

unsafe extern "C" fn on_access_all(vcpu: c_uint, info: MemInfo, addr: u64, ip: *mut c_void) {
    record_all(vcpu, info, addr, ip as u64);
}

unsafe extern "C" fn on_access(vcpu: c_uint, info: MemInfo, addr: u64, ip: *mut c_void) {
    record(vcpu, info, addr, ip as u64);
}

/// Translation while tracing: a memory callback on every instruction (QEMU calls it
/// only for instructions that access memory), the instruction address as its user
/// data, and an inline instruction counter per block.
unsafe extern "C" fn on_translate(_id: PluginId, tb: *mut Tb) {
    let Some(g) = GLOBAL.get() else { return };
    // SAFETY: tb is the block QEMU is translating; the API calls only read it.
    unsafe {
        let n = (g.api.tb_n_insns)(tb);
        count_instructions(g, tb, n);
        let callback = if g.records_all() {
            on_access_all
        } else {
            on_access
        };
        for i in 0..n {
            let insn: *mut Insn = (g.api.tb_get_insn)(tb, i);
            let ip = (g.api.insn_vaddr)(insn) as *mut c_void;
            (g.api.register_vcpu_mem_cb)(insn, callback, qemu::CB_NO_REGS, qemu::MEM_RW, ip);
        }
        learn_guest_base(g, tb, n);
    }
}

/// Translation while fast-forwarding: only count instructions, with a callback that
/// notices when enough have run.
unsafe extern "C" fn on_translate_fast_forward(_id: PluginId, tb: *mut Tb) {
    let Some(g) = GLOBAL.get() else { return };
    // SAFETY: as in on_translate.
    unsafe {
        let n = (g.api.tb_n_insns)(tb);
        (g.api.register_vcpu_tb_exec_cb)(
            tb,
            on_block_fast_forward,
            qemu::CB_NO_REGS,
            n as *mut c_void,
        );
        learn_guest_base(g, tb, n);
    }
}

/// # Safety
/// `tb` is a block being translated.
unsafe fn count_instructions(g: &Global, tb: *mut Tb, n: usize) {
    let counter = g.ring.header().insns.as_ptr() as *mut c_void;
    // SAFETY: the counter is a u64 in the shared mapping, which outlives qemu's code.
    unsafe { (g.api.register_vcpu_tb_exec_inline)(tb, qemu::INLINE_ADD_U64, counter, n as u64) };
}

/// The first translated block is the guest's first code: its loader has mapped the
/// program and the dynamic linker by then, so the memory map is worth reading.
///
/// # Safety
/// `tb` is a block being translated, with `n` instructions.
unsafe fn learn_guest_base(g: &Global, tb: *mut Tb, n: usize) {
    static LEARNT: AtomicBool = AtomicBool::new(false);
    if n == 0 || LEARNT.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: instruction 0 exists (n > 0).
    let (vaddr, haddr) = unsafe {
        let insn = (g.api.tb_get_insn)(tb, 0);
        ((g.api.insn_vaddr)(insn), (g.api.insn_haddr)(insn) as u64)
    };
    g.ring
        .header()
        .guest_base
        .store(haddr.wrapping_sub(vaddr), Ordering::Relaxed);
    snapshot_maps(g);
}

unsafe extern "C" fn on_block_fast_forward(_vcpu: c_uint, n: *mut c_void) {
    let Some(g) = GLOBAL.get() else { return };
    let done = g.ring.header().insns.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
    if done >= g.config.fast_forward_insns && !FAST_FORWARD_DONE.swap(true, Ordering::Relaxed) {
        // Drops every callback and flushes translated code; on_reset registers the
        // tracing ones, so blocks translated from now on record accesses.
        // SAFETY: reset is asynchronous and safe to request from a callback.
        unsafe { (g.api.reset)(g.id, on_reset) };
    }
}

unsafe extern "C" fn on_reset(id: PluginId) {
    let _ = catch_unwind(|| {
        if let Some(g) = GLOBAL.get() {
            register(g, id, true);
        }
    });
}

unsafe extern "C" fn on_vcpu_init(_id: PluginId, vcpu: c_uint) {
    let _ = catch_unwind(|| {
        let Some(g) = GLOBAL.get() else { return };
        let Some(cell) = VCPUS.get(vcpu as usize) else {
            return;
        };
        if IN_FORKED_CHILD.load(Ordering::Relaxed) {
            return;
        }
        let thread = g.ring.header().threads.fetch_add(1, Ordering::Relaxed);
        let state = Box::into_raw(Box::new(Vcpu {
            thread,
            slot: NO_SLOT,
            records: core::ptr::null_mut(),
            count: 0,
            capacity: g.ring.layout().slot_capacity,
            room: 0,
            skip: 0,
            on_left: g.config.sample_on,
            seen: 0,
            clone_flags: 0,
            mmap_prot: 0,
        }));
        let old = cell.swap(state, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the previous owner of this index has exited; nobody else has it.
            let mut old = unsafe { Box::from_raw(old) };
            old.finish(g);
        }
    });
}

unsafe extern "C" fn on_vcpu_exit(_id: PluginId, vcpu: c_uint) {
    let _ = catch_unwind(|| {
        let Some(g) = GLOBAL.get() else { return };
        let Some(cell) = VCPUS.get(vcpu as usize) else {
            return;
        };
        let state = cell.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !state.is_null() {
            // SAFETY: called in the exiting thread, the state's only user.
            let mut state = unsafe { Box::from_raw(state) };
            state.finish(g);
        }
    });
}

unsafe extern "C" fn on_exit(_id: PluginId, _data: *mut c_void) {
    let _ = catch_unwind(|| {
        let Some(g) = GLOBAL.get() else { return };
        if IN_FORKED_CHILD.load(Ordering::Relaxed) {
            return;
        }
        // QEMU stops the other vCPUs before calling this in user mode.
        for cell in &VCPUS {
            let state = cell.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !state.is_null() {
                // SAFETY: the vCPUs are stopped; we took the state out of the table.
                let mut state = unsafe { Box::from_raw(state) };
                state.finish(g);
            }
        }
        snapshot_maps(g);
        let header = g.ring.header();
        header.finished.store(1, Ordering::SeqCst);
        shm::futex_wake(&header.published, 1);
    });
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn on_syscall(
    _id: PluginId,
    vcpu: c_uint,
    number: i64,
    a1: u64,
    a2: u64,
    a3: u64,
    _a4: u64,
    _a5: u64,
    _a6: u64,
    _a7: u64,
    _a8: u64,
) {
    let _ = catch_unwind(|| {
        let Some(g) = GLOBAL.get() else { return };
        let state = VCPUS
            .get(vcpu as usize)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(core::ptr::null_mut());
        // SAFETY: this vCPU's own state, used by its own thread.
        let state = unsafe { state.as_mut() };
        match number {
            SYS_CLONE | SYS_FORK | SYS_VFORK => {
                if let Some(v) = state {
                    v.clone_flags = if number == SYS_CLONE { a1 } else { 0 };
                }
            }
            SYS_MMAP => {
                if let Some(v) = state {
                    v.mmap_prot = a3;
                }
            }
            SYS_EXECVE | SYS_EXECVEAT => {
                let path = if number == SYS_EXECVE { a1 } else { a2 };
                note_exec(g, path);
                // The process image is about to go: publish what this thread has.
                if let Some(v) = state {
                    v.flush(g);
                }
                snapshot_maps(g);
            }
            _ => {}
        }
    });
}

unsafe extern "C" fn on_syscall_ret(_id: PluginId, vcpu: c_uint, number: i64, ret: i64) {
    let _ = catch_unwind(|| {
        let Some(g) = GLOBAL.get() else { return };
        let state = VCPUS
            .get(vcpu as usize)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(core::ptr::null_mut());
        // SAFETY: this vCPU's own state, used by its own thread.
        let state = unsafe { state.as_mut() };
        match number {
            SYS_CLONE | SYS_FORK | SYS_VFORK => {
                let flags = state.as_ref().map_or(0, |v| v.clone_flags);
                if flags & CLONE_VM != 0 {
                    return; // a thread: QEMU gave it its own vCPU
                }
                if ret == 0 {
                    leave_forked_child();
                } else if ret > 0 {
                    g.ring.header().forks.fetch_add(1, Ordering::Relaxed);
                }
            }
            SYS_MMAP if ret > 0 && state.is_some_and(|v| v.mmap_prot & PROT_EXEC != 0) => {
                snapshot_maps(g); // dlopen: new code to attribute
            }
            SYS_EXECVE | SYS_EXECVEAT => {
                // Still here: the exec failed and the program goes on.
                let _ = g.ring.header().exec_state.compare_exchange(
                    1,
                    2,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
    });
}

/// In the child of a guest fork: the batch slots in use are the parent's (the child
/// has a copy of its state), so forget them and record nothing.
fn leave_forked_child() {
    IN_FORKED_CHILD.store(true, Ordering::Relaxed);
    for cell in &VCPUS {
        // Leaked on purpose: finishing them would release the parent's slots.
        cell.store(core::ptr::null_mut(), Ordering::Relaxed);
    }
}

/// Records the first exec's path in the header.
fn note_exec(g: &Global, guest_path: u64) {
    let header = g.ring.header();
    if header
        .exec_state
        .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let host = guest_path.wrapping_add(header.guest_base.load(Ordering::Relaxed));
    let mut buffer = [0u8; shm::EXEC_PATH_BYTES];
    // process_vm_readv on ourselves: a bad guest pointer is EFAULT, not a crash.
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr() as *mut c_void,
        iov_len: buffer.len() - 1,
    };
    let remote = libc::iovec {
        iov_base: host as *mut c_void,
        iov_len: buffer.len() - 1,
    };
    // SAFETY: reads at most 255 bytes into our buffer; the kernel checks the source.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n <= 0 {
        // Maybe the string ends before a page boundary that follows it: read less.
        let page_left = 4096 - (host as usize & 4095);
        let remote = libc::iovec {
            iov_base: host as *mut c_void,
            iov_len: page_left.min(buffer.len() - 1),
        };
        let local = libc::iovec {
            iov_base: buffer.as_mut_ptr() as *mut c_void,
            iov_len: page_left.min(buffer.len() - 1),
        };
        // SAFETY: as above.
        unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    }
    buffer[shm::EXEC_PATH_BYTES - 1] = 0;
    // SAFETY: exec_path is written only here, once (guarded by exec_state above).
    unsafe {
        let target = header.exec_path.as_ptr() as *mut u8;
        core::ptr::copy_nonoverlapping(buffer.as_ptr(), target, buffer.len());
    }
}

/// Reads `/proc/self/maps` and keeps the guest's lines: those below every host mapping
/// that were not there before the guest was loaded. File mappings from earlier
/// snapshots that are gone now (a dlclose'd library) are kept, older first, so an
/// address seen earlier still resolves.
fn snapshot_maps(g: &Global) {
    if IN_FORKED_CHILD.load(Ordering::Relaxed) {
        return;
    }
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let guest_base = g.ring.header().guest_base.load(Ordering::Relaxed);
    let current: Vec<String> = text
        .lines()
        .filter(|line| !g.host_maps.iter().any(|h| h == line))
        .filter_map(|line| {
            let (start, end) = range_of(line)?;
            (end <= g.host_floor).then(|| shift_line(line, start, end, guest_base))
        })
        .collect();
    let Ok(mut maps) = MAPS.lock() else { return };
    let mut merged: Vec<String> = maps
        .iter()
        .filter(|old| is_file_line(old) && !current.iter().any(|new| overlaps(old, new)))
        .cloned()
        .collect();
    merged.extend(current);
    *maps = merged;
    // Write the text, whole lines only, then its length (the tracer reads it at exit).
    let area = g.ring.maps_area();
    let mut used = 0usize;
    for line in maps.iter() {
        if used + line.len() + 1 > MAPS_BYTES {
            break;
        }
        // SAFETY: used + len + 1 <= MAPS_BYTES, the size of the area.
        unsafe {
            core::ptr::copy_nonoverlapping(line.as_ptr(), area.add(used), line.len());
            *area.add(used + line.len()) = b'\n';
        }
        used += line.len() + 1;
    }
    g.ring
        .header()
        .maps_len
        .store(used as u32, Ordering::Release);
}

fn range_of(line: &str) -> Option<(u64, u64)> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    ))
}

/// Rewrites a host maps line in guest addresses (a no-op when guest_base is 0).
fn shift_line(line: &str, start: u64, end: u64, guest_base: u64) -> String {
    if guest_base == 0 {
        return line.to_owned();
    }
    let rest = line.split_once(' ').map_or("", |(_, rest)| rest);
    format!(
        "{:x}-{:x} {rest}",
        start.wrapping_sub(guest_base),
        end.wrapping_sub(guest_base)
    )
}

fn is_file_line(line: &str) -> bool {
    line.split_whitespace()
        .nth(5)
        .is_some_and(|p| p.starts_with('/'))
}

fn overlaps(a: &str, b: &str) -> bool {
    match (range_of(a), range_of(b)) {
        (Some((s1, e1)), Some((s2, e2))) => s1 < e2 && s2 < e1,
        _ => false,
    }
}

fn register(g: &Global, id: PluginId, tracing: bool) {
    // SAFETY: registering callbacks for our own plugin id.
    unsafe {
        if tracing {
            g.ring.header().tracing.store(1, Ordering::Relaxed);
            (g.api.register_vcpu_tb_trans_cb)(id, on_translate);
        } else {
            (g.api.register_vcpu_tb_trans_cb)(id, on_translate_fast_forward);
        }
        (g.api.register_vcpu_init_cb)(id, on_vcpu_init);
        (g.api.register_vcpu_exit_cb)(id, on_vcpu_exit);
        (g.api.register_vcpu_syscall_cb)(id, on_syscall);
        (g.api.register_vcpu_syscall_ret_cb)(id, on_syscall_ret);
        (g.api.register_atexit_cb)(id, on_exit, core::ptr::null_mut());
    }
}

/// Maps the shared region the tracer passed as descriptor `fd`.
fn map_region(fd: c_int) -> Result<Ring, String> {
    // SAFETY: fstat into a zeroed struct.
    let mut stat: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: stat is a valid out pointer.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(format!("shm descriptor {fd} is not open"));
    }
    let size = stat.st_size as usize;
    if size < core::mem::size_of::<shm::Header>() {
        return Err(format!("shm descriptor {fd} is too small ({size} bytes)"));
    }
    // SAFETY: a shared read-write mapping of the whole file, checked below.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err("cannot map the shared region".into());
    }
    // The mapping stays; the descriptor must not leak into programs the guest execs.
    // SAFETY: closing a descriptor we were given for this purpose.
    unsafe { libc::close(fd) };
    // SAFETY: base maps `size` bytes; the header is checked before the layout is used.
    let header = unsafe { &*(base as *const shm::Header) };
    if header.magic != shm::MAGIC || header.version != shm::VERSION {
        return Err("the shared region is not an msh tracer ring of this version".into());
    }
    let layout = Layout::new(header.slot_count, header.slot_capacity);
    if header.slot_count == 0 || header.slot_capacity == 0 || layout.total > size {
        return Err("the shared region's header does not match its size".into());
    }
    // SAFETY: the mapping holds layout.total bytes and is never unmapped.
    Ok(unsafe { Ring::from_raw(base as *mut u8, layout) })
}

fn install(id: PluginId, info: &Info, args: &[&str]) -> Result<(), String> {
    if info.system_emulation {
        return Err("needs user-mode QEMU (qemu-x86_64)".into());
    }
    let fd: c_int = args
        .iter()
        .find_map(|a| a.strip_prefix("shm="))
        .ok_or("missing the shm=FD argument")?
        .parse()
        .map_err(|_| "shm=FD: not a descriptor number")?;
    let api = Api::resolve()?;
    let inline_meminfo = inline_decoding_agrees(&api);
    let ring = map_region(fd)?;
    let config = ring.header().config;
    let host_maps: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?
        .lines()
        .map(str::to_owned)
        .collect();
    let host_floor = host_maps
        .iter()
        .filter_map(|l| range_of(l))
        .map(|(start, _)| start)
        .min()
        .unwrap_or(u64::MAX);
    let global = Global {
        api,
        ring,
        config,
        id,
        host_maps,
        host_floor,
        inline_meminfo,
    };
    if GLOBAL.set(global).is_err() {
        return Err("installed twice".into());
    }
    let g = GLOBAL.get().ok_or("not installed")?;
    register(g, id, config.fast_forward_insns == 0);
    g.ring.header().plugin_ready.store(1, Ordering::SeqCst);
    Ok(())
}

/// QEMU's entry point: `-plugin libmsh_tracer_plugin.so,shm=FD`.
///
/// # Safety
/// Called by QEMU with a valid `info` and `argc` C strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: PluginId,
    info: *const Info,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    let result = catch_unwind(|| {
        // SAFETY: QEMU passes argc valid C strings and a valid info.
        let args: Vec<&str> = (0..argc.max(0) as usize)
            .filter_map(|i| unsafe { CStr::from_ptr(*argv.add(i)) }.to_str().ok())
            .collect();
        // SAFETY: as above.
        install(id, unsafe { &*info }, &args)
    });
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(message)) => {
            eprintln!("msh tracer plugin: {message}");
            -1
        }
        Err(_) => {
            eprintln!("msh tracer plugin: internal error while installing");
            -1
        }
    }
}

/// The plugin API version this plugin speaks; QEMU checks it before installing.
#[no_mangle]
pub static qemu_plugin_version: c_int = qemu::PLUGIN_VERSION;
