//! The shared memory between the plugin (one producer per guest thread, inside
//! qemu-x86_64) and the tracer (one consumer, in the msh process): a header, a publish
//! queue, a text area for the guest's memory map, and a ring of fixed-size batch slots.
//!
//! A slot is FREE, OWNED by one guest thread that fills it with [`Access`] records, or
//! FULL once published. Publishing appends the slot's index to the queue (a reserved
//! position, then a store), so the consumer takes batches in publish order, which is
//! program order within each thread. The consumer frees a slot after its callback ran;
//! a producer that finds no free slot sleeps on a futex until one is freed (the program
//! waits for the consumer: nothing is dropped). Both sides sleep on futexes in the
//! shared mapping, with timeouts, and wake the other only when it said it sleeps.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// "MSHRING1", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MSHRING1");
/// Bumped whenever the layout changes; the plugin refuses a header of another version.
pub const VERSION: u32 = 2;
/// Bytes reserved for the guest's memory map (the text of `/proc/self/maps` lines).
pub const MAPS_BYTES: usize = 1 << 20;
/// Bytes reserved for the path a guest `execve` named.
pub const EXEC_PATH_BYTES: usize = 256;

/// One memory access of the traced program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Address of the instruction that made the access.
    pub ip: u64,
    /// Virtual address accessed.
    pub addr: u64,
    /// Bytes accessed (1, 2, 4, 8 or 16).
    pub size: u8,
    /// A store (or the store half of a read-modify-write).
    pub is_write: bool,
}

/// What the tracer asks of the plugin; written before qemu starts, read-only after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Record this many accesses in a row, then skip `sample_off` (per thread).
    pub sample_on: u64,
    /// Accesses skipped after each run of `sample_on` recorded ones; 0 records all.
    pub sample_off: u64,
    /// Guest instructions to run before tracing starts (0: trace from the first).
    pub fast_forward_insns: u64,
    /// Only accesses with `addr - filter_start < filter_len` are recorded.
    pub filter_start: u64,
    /// Length of the recorded address range (`u64::MAX`: everything).
    pub filter_len: u64,
}

/// Slot states.
pub const SLOT_FREE: u32 = 0;
/// Being filled by one guest thread.
pub const SLOT_OWNED: u32 = 1;
/// Published, waiting for (or being read by) the consumer.
pub const SLOT_FULL: u32 = 2;

/// The start of the shared region.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// Number of batch slots.
    pub slot_count: u32,
    /// Accesses per slot.
    pub slot_capacity: u32,
    _pad0: u32,
    /// The tracer's requests.
    pub config: Config,
    /// Set to 1 by the plugin once installed (a plugin that failed to load never does).
    pub plugin_ready: AtomicU32,
    /// Set to 1 once the plugin's exit callback flushed every thread's last batch.
    pub finished: AtomicU32,
    /// Set to 1 by the tracer: stop recording (batches filled from now on are dropped).
    pub stop: AtomicU32,
    /// Guest fork()s seen (their children are not traced).
    pub forks: AtomicU32,
    /// 1 once a guest `execve` was attempted (the path is in `exec_path`), 2 if it
    /// failed and the program went on.
    pub exec_state: AtomicU32,
    /// Thread numbers handed out so far (thread 0 is the main thread).
    pub threads: AtomicU32,
    /// 1 once fast-forwarding is over and accesses are recorded.
    pub tracing: AtomicU32,
    /// Bytes of `maps` that are valid (the area is rewritten as the map is learnt).
    pub maps_len: AtomicU32,
    /// Accesses executed while tracing (before the address filter and sampling).
    pub seen: AtomicU64,
    /// Accesses written to batches.
    pub delivered: AtomicU64,
    /// Guest instructions executed (summed per translation block; approximate when
    /// several threads run, as the counter is not atomic).
    pub insns: AtomicU64,
    /// Host address minus guest address (0 on x86-64 hosts).
    pub guest_base: AtomicU64,
    /// Positions taken in the publish queue.
    pub reserved: AtomicU32,
    /// Batches published (a futex word the consumer sleeps on).
    pub published: AtomicU32,
    /// 1 while the consumer sleeps or is about to.
    pub consumer_waiting: AtomicU32,
    /// Slots freed so far (a futex word producers sleep on).
    pub freed: AtomicU32,
    /// Producers sleeping for a free slot.
    pub producers_waiting: AtomicU32,
    /// Times a producer found every slot in use and slept (backpressure: the program
    /// waited for the consumer).
    pub producer_sleeps: AtomicU32,
    /// NUL-terminated path given to the first guest `execve`.
    pub exec_path: [u8; EXEC_PATH_BYTES],
}

/// The header of one slot, followed by `slot_capacity` [`Access`] records.
#[repr(C, align(64))]
pub struct SlotHeader {
    /// [`SLOT_FREE`], [`SLOT_OWNED`] or [`SLOT_FULL`].
    pub state: AtomicU32,
    /// The thread that filled it.
    pub thread: u32,
    /// Valid records.
    pub count: u32,
    _pad: u32,
    /// CLOCK_MONOTONIC when it was published.
    pub time_ns: u64,
}

/// Byte offsets of the parts of the shared region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of slots.
    pub slot_count: u32,
    /// Accesses per slot.
    pub slot_capacity: u32,
    /// Offset of the publish queue (`slot_count` u32 words).
    pub queue: usize,
    /// Offset of the memory-map text area.
    pub maps: usize,
    /// Offset of slot 0.
    pub slots: usize,
    /// Bytes per slot, header included.
    pub slot_bytes: usize,
    /// Total bytes.
    pub total: usize,
}

const fn align64(n: usize) -> usize {
    (n + 63) & !63
}

impl Layout {
    /// The layout for `slot_count` slots of `slot_capacity` accesses.
    pub const fn new(slot_count: u32, slot_capacity: u32) -> Layout {
        let queue = align64(core::mem::size_of::<Header>());
        let maps = align64(queue + 4 * slot_count as usize);
        let slots = align64(maps + MAPS_BYTES);
        let slot_bytes = align64(
            core::mem::size_of::<SlotHeader>()
                + slot_capacity as usize * core::mem::size_of::<Access>(),
        );
        Layout {
            slot_count,
            slot_capacity,
            queue,
            maps,
            slots,
            slot_bytes,
            total: slots + slot_count as usize * slot_bytes,
        }
    }
}

/// A view of a mapped shared region. Both sides use it; the methods say which side
/// calls them.
#[derive(Clone, Copy)]
pub struct Ring {
    base: *mut u8,
    layout: Layout,
}

// SAFETY: every field the two sides share is an atomic or is handed over through the
// slot states (release/acquire); the raw pointer is only dereferenced within the
// mapping, which outlives every user of the view.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// Wraps a mapping of `layout.total` bytes at `base`, aligned to a page.
    ///
    /// # Safety
    /// `base` must point to a readable and writable mapping of at least `layout.total`
    /// bytes that stays mapped as long as the `Ring` (and copies of it) are used.
    pub unsafe fn from_raw(base: *mut u8, layout: Layout) -> Ring {
        Ring { base, layout }
    }

    /// The layout of the region.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the region starts with a Header (from_raw's contract); its non-atomic
        // fields are written only before the other side starts.
        unsafe { &*(self.base as *const Header) }
    }

    /// Writes the header for a fresh region (tracer side, before qemu starts). The
    /// memory must be zeroed (a new memfd is).
    pub fn init(&self, config: Config) {
        // SAFETY: nobody else sees the region yet; the header lies at its start.
        let header = unsafe { &mut *(self.base as *mut Header) };
        header.magic = MAGIC;
        header.version = VERSION;
        header.slot_count = self.layout.slot_count;
        header.slot_capacity = self.layout.slot_capacity;
        header.config = config;
    }

    fn queue(&self, position: u32) -> &AtomicU32 {
        let index = (position % self.layout.slot_count) as usize;
        // SAFETY: the queue holds slot_count aligned u32 words at layout.queue.
        unsafe { &*(self.base.add(self.layout.queue + 4 * index) as *const AtomicU32) }
    }

    /// The header of slot `index` (< slot_count).
    pub fn slot(&self, index: u32) -> &SlotHeader {
        debug_assert!(index < self.layout.slot_count);
        let offset = self.layout.slots + index as usize * self.layout.slot_bytes;
        // SAFETY: in bounds for index < slot_count; 64-byte aligned.
        unsafe { &*(self.base.add(offset) as *const SlotHeader) }
    }

    /// The records of slot `index`.
    pub fn records(&self, index: u32) -> *mut Access {
        let offset = self.layout.slots
            + index as usize * self.layout.slot_bytes
            + core::mem::size_of::<SlotHeader>();
        // SAFETY: in bounds for index < slot_count (the records follow the header).
        unsafe { self.base.add(offset) as *mut Access }
    }

    /// The text area for the guest's memory map.
    pub fn maps_area(&self) -> *mut u8 {
        // SAFETY: MAPS_BYTES bytes at layout.maps.
        unsafe { self.base.add(self.layout.maps) }
    }

    /// Producer: takes a free slot, starting the search at `hint`. Sleeps while every
    /// slot is in use; returns `None` when the tracer asked to stop meanwhile.
    pub fn acquire(&self, hint: u32) -> Option<u32> {
        let header = self.header();
        let n = self.layout.slot_count;
        loop {
            let freed = header.freed.load(Ordering::SeqCst);
            for i in 0..n {
                let index = (hint.wrapping_add(i)) % n;
                let state = &self.slot(index).state;
                if state.load(Ordering::Relaxed) == SLOT_FREE
                    && state
                        .compare_exchange(
                            SLOT_FREE,
                            SLOT_OWNED,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    return Some(index);
                }
            }
            if header.stop.load(Ordering::Relaxed) != 0 {
                return None;
            }
            header.producers_waiting.fetch_add(1, Ordering::SeqCst);
            header.producer_sleeps.fetch_add(1, Ordering::Relaxed);
            if header.freed.load(Ordering::SeqCst) == freed {
                futex_wait(&header.freed, freed, 50);
            }
            header.producers_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Producer: publishes an owned slot holding `count` records of `thread`.
    pub fn publish(&self, index: u32, thread: u32, count: u32, time_ns: u64) {
        let header = self.header();
        let slot = self.slot(index);
        // SAFETY: the producer owns the slot: nobody else touches its plain fields.
        unsafe {
            let slot = slot as *const SlotHeader as *mut SlotHeader;
            (*slot).thread = thread;
            (*slot).count = count;
            (*slot).time_ns = time_ns;
        }
        slot.state.store(SLOT_FULL, Ordering::Release);
        let position = header.reserved.fetch_add(1, Ordering::Relaxed);
        self.queue(position).store(index + 1, Ordering::Release);
        header.published.fetch_add(1, Ordering::SeqCst);
        if header.consumer_waiting.load(Ordering::SeqCst) != 0 {
            futex_wake(&header.published, 1);
        }
    }

    /// Consumer: the slot published at queue position `head`, if it is there yet.
    /// The caller reads it, then calls [`Ring::release`].
    pub fn take(&self, head: u32) -> Option<u32> {
        let entry = self.queue(head).load(Ordering::Acquire);
        if entry == 0 {
            return None;
        }
        self.queue(head).store(0, Ordering::Relaxed);
        let index = entry - 1;
        if index >= self.layout.slot_count
            || self.slot(index).state.load(Ordering::Acquire) != SLOT_FULL
        {
            return None; // cannot happen with our plugin; never trust it blindly
        }
        Some(index)
    }

    /// Consumer: hands a slot back to the producers.
    pub fn release(&self, index: u32) {
        let header = self.header();
        self.slot(index).state.store(SLOT_FREE, Ordering::Release);
        header.freed.fetch_add(1, Ordering::SeqCst);
        if header.producers_waiting.load(Ordering::SeqCst) != 0 {
            futex_wake(&header.freed, i32::MAX);
        }
    }

    /// Consumer: sleeps until something is published after `seen_published` or
    /// `timeout_ms` passes.
    pub fn wait_for_publish(&self, seen_published: u32, timeout_ms: u64) {
        let header = self.header();
        header.consumer_waiting.store(1, Ordering::SeqCst);
        if header.published.load(Ordering::SeqCst) == seen_published {
            futex_wait(&header.published, seen_published, timeout_ms);
        }
        header.consumer_waiting.store(0, Ordering::SeqCst);
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout_ms` (a shared futex: the two
/// sides are different processes).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout_ms: u64) {
    let timeout = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word` and sleeps; no memory is
    // written. Errors (EAGAIN, ETIMEDOUT, EINTR) all mean "look again".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

/// Wakes up to `n` sleepers on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_24_bytes_and_the_layout_is_aligned() {
        assert_eq!(core::mem::size_of::<Access>(), 24);
        let layout = Layout::new(8, 100);
        assert_eq!(layout.queue % 64, 0);
        assert_eq!(layout.slots % 64, 0);
        assert_eq!(layout.slot_bytes % 64, 0);
        assert!(layout.slot_bytes >= 64 + 100 * 24);
        assert_eq!(layout.total, layout.slots + 8 * layout.slot_bytes);
    }

    #[test]
    fn batches_come_out_in_publish_order_and_slots_are_reused() {
        let layout = Layout::new(4, 16);
        let mut memory = vec![0u64; layout.total / 8 + 8];
        // SAFETY: the vector outlives the ring and is large enough.
        let ring = unsafe { Ring::from_raw(memory.as_mut_ptr() as *mut u8, layout) };
        ring.init(Config {
            sample_on: 1,
            sample_off: 0,
            fast_forward_insns: 0,
            filter_start: 0,
            filter_len: u64::MAX,
        });
        let mut head = 0;
        for round in 0..10u32 {
            let a = ring.acquire(round).unwrap();
            let b = ring.acquire(round).unwrap();
            assert_ne!(a, b);
            ring.publish(b, 7, 3, 1);
            ring.publish(a, 8, 5, 2);
            for (thread, count) in [(7, 3), (8, 5)] {
                let index = ring.take(head).unwrap();
                assert_eq!(
                    (ring.slot(index).thread, ring.slot(index).count),
                    (thread, count)
                );
                ring.release(index);
                head += 1;
            }
            assert!(ring.take(head).is_none());
        }
    }
}
