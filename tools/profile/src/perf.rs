//! perf_event_open events with a ring buffer, and the records they produce.
//!
//! Per-task events that follow new threads and children (`inherit`) cannot be
//! mmapped when opened for all CPUs (`cpu == -1`), so — like `perf record` — we open
//! one event per online CPU, each with its own ring buffer.
use crate::maps::Mapping;
use msh_core::os::page_size;
use perf_event_open_sys as sys;
use perf_event_open_sys::bindings as b;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

/// What to count and sample.
#[derive(Debug, Clone, Copy)]
pub struct EventSpec {
    /// `perf_event_attr.type` (`PERF_TYPE_SOFTWARE`, `PERF_TYPE_RAW`, …).
    pub type_: u32,
    /// `perf_event_attr.config`: which event of that type.
    pub config: u64,
    /// Events between samples (nanoseconds for cpu-clock); 0 for a side-band-only event.
    pub sample_period: u64,
    /// Skid the hardware may have (0: any; 2 or 3 asks for PEBS-precise IPs).
    pub precise_ip: u8,
    /// Record the sampled data address (`pmu`).
    pub sample_addr: bool,
    /// Record the user-space general-purpose registers with each sample (`sample`:
    /// the charged load's address is recomputed from them).
    pub sample_regs: bool,
    /// Also report non-executable file mappings (valgrind maps client code without
    /// PROT_EXEC).
    pub mmap_data: bool,
    /// Follow threads and children the task creates after the event is opened.
    pub inherit: bool,
}

impl EventSpec {
    /// cpu-clock, one sample every `sample_period_ns` of CPU time, user mode only.
    pub fn cpu_clock(sample_period_ns: u64) -> EventSpec {
        EventSpec {
            type_: b::PERF_TYPE_SOFTWARE,
            config: b::PERF_COUNT_SW_CPU_CLOCK as u64,
            sample_period: sample_period_ns,
            precise_ip: 0,
            sample_addr: false,
            sample_regs: true,
            mmap_data: false,
            inherit: true,
        }
    }

    /// No samples, only mmap/fork/exec records (to map a valgrind client's addresses).
    pub fn side_band_only() -> EventSpec {
        EventSpec {
            type_: b::PERF_TYPE_SOFTWARE,
            config: b::PERF_COUNT_SW_DUMMY as u64,
            sample_period: 0,
            precise_ip: 0,
            sample_addr: false,
            sample_regs: false,
            mmap_data: true,
            inherit: true,
        }
    }

    fn layout(&self) -> SampleLayout {
        SampleLayout {
            addr: self.sample_addr,
            regs: self.sample_regs,
        }
    }

    fn attr(&self, ring_bytes: usize) -> b::perf_event_attr {
        let mut attr = b::perf_event_attr {
            type_: self.type_,
            size: std::mem::size_of::<b::perf_event_attr>() as u32,
            config: self.config,
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = self.sample_period;
        attr.sample_type = (b::PERF_SAMPLE_IP | b::PERF_SAMPLE_TID | b::PERF_SAMPLE_TIME) as u64;
        if self.sample_addr {
            attr.sample_type |= b::PERF_SAMPLE_ADDR as u64;
        }
        if self.sample_regs {
            attr.sample_type |= b::PERF_SAMPLE_REGS_USER as u64;
            attr.sample_regs_user = Regs::MASK;
        }
        attr.set_inherit(self.inherit as u64);
        attr.set_exclude_kernel(1);
        attr.set_exclude_hv(1);
        attr.set_mmap(1);
        attr.set_mmap2(1);
        // MMAP2 records carry the mapped file's build-id (Linux 5.12+), so a file
        // replaced on disk during the run is noticed.
        attr.set_build_id(1);
        attr.set_mmap_data(self.mmap_data as u64);
        attr.set_comm(1);
        attr.set_task(1);
        attr.set_sample_id_all(1);
        // Sample times on CLOCK_MONOTONIC, the clock msh trace's other events use.
        attr.set_use_clockid(1);
        attr.clockid = libc::CLOCK_MONOTONIC;
        attr.set_precise_ip(self.precise_ip as u64);
        // Wake the reader when a quarter of the buffer is full.
        attr.set_watermark(1);
        attr.__bindgen_anon_2.wakeup_watermark = (ring_bytes / 4) as u32;
        attr
    }
}

/// Can this event be opened at all? Opens it on the calling thread, without a ring
/// buffer, and closes it again: lets a backend choose its event before starting the
/// program.
pub fn probe(spec: &EventSpec) -> io::Result<()> {
    let mut attr = spec.attr(RING_PAGES * page_size());
    attr.set_disabled(1);
    // SAFETY: attr is a valid, fully initialised perf_event_attr that outlives the call.
    let fd = unsafe { sys::perf_event_open(&mut attr, 0, -1, -1, b::PERF_FLAG_FD_CLOEXEC as u64) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

fn open_attr(attr: &mut b::perf_event_attr, pid: i32, cpu: i32) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid, fully initialised perf_event_attr that outlives the call.
    let fd = unsafe { sys::perf_event_open(attr, pid, cpu, -1, b::PERF_FLAG_FD_CLOEXEC as u64) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Which optional fields a sample record carries (they follow IP, TID and TIME).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleLayout {
    /// `PERF_SAMPLE_ADDR`.
    pub addr: bool,
    /// `PERF_SAMPLE_REGS_USER` with [`Regs::MASK`].
    pub regs: bool,
}

/// The user-space general-purpose registers at a sample, in the kernel's
/// `perf_regs.h` order restricted to [`Regs::MASK`]: rax, rbx, rcx, rdx, rsi, rdi,
/// rbp, rsp, rip, r8 … r15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regs(pub [u64; Regs::COUNT]);

impl Regs {
    /// Registers sampled.
    pub const COUNT: usize = 17;
    /// `PERF_REG_X86_AX` … `PERF_REG_X86_IP` (bits 0–8) and `PERF_REG_X86_R8` …
    /// `PERF_REG_X86_R15` (bits 16–23); flags and segment registers are left out
    /// (the kernel refuses DS/ES/FS/GS on x86-64, and no address uses the others).
    pub const MASK: u64 = 0x1ff | (0xff << 16);

    /// The value of a 64-bit general-purpose register, by iced-x86's name for it.
    pub fn get(&self, register: iced_x86::Register) -> Option<u64> {
        Some(self.0[Regs::index(register)?])
    }

    /// Where a 64-bit general-purpose register sits in the sampled array; `None` for a
    /// register that is not sampled.
    pub fn index(register: iced_x86::Register) -> Option<usize> {
        use iced_x86::Register as R;
        Some(match register {
            R::RAX => 0,
            R::RBX => 1,
            R::RCX => 2,
            R::RDX => 3,
            R::RSI => 4,
            R::RDI => 5,
            R::RBP => 6,
            R::RSP => 7,
            R::RIP => 8,
            R::R8 => 9,
            R::R9 => 10,
            R::R10 => 11,
            R::R11 => 12,
            R::R12 => 13,
            R::R13 => 14,
            R::R14 => 15,
            R::R15 => 16,
            _ => return None,
        })
    }
}

/// One record from the ring buffer, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A sample.
    Sample {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// Instruction address (the sampled IP, with its skid).
        ip: u64,
        /// Data address, when the event records one (`pmu`).
        addr: Option<u64>,
        /// User registers, when sampled and the sample interrupted user code.
        regs: Option<Regs>,
        /// Whether the sample interrupted user-space code.
        user: bool,
        /// CLOCK_MONOTONIC at the sample, in ns.
        time: u64,
    },
    /// A new mapping (`PERF_RECORD_MMAP2`).
    Mmap {
        /// Process id.
        pid: u32,
        /// First address.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// File offset of `start`.
        pgoff: u64,
        /// The mapped file, or `[vdso]`, `//anon` and the like.
        path: String,
        /// The GNU build-id of the mapped file, as the kernel read it at mmap time.
        build_id: Option<String>,
        /// CLOCK_MONOTONIC at the mmap, in ns.
        time: u64,
    },
    /// A new task; for a new thread `pid == ppid`.
    Fork {
        /// The new task's process.
        pid: u32,
        /// The process it was forked from.
        ppid: u32,
        /// CLOCK_MONOTONIC at the fork, in ns.
        time: u64,
    },
    /// An exec: the process's old mappings are gone.
    Exec {
        /// Process id.
        pid: u32,
        /// CLOCK_MONOTONIC at the exec, in ns.
        time: u64,
    },
    /// The kernel dropped records (the ring buffer was full).
    Lost {
        /// How many.
        count: u64,
    },
    /// A record the collectors do not use.
    Other,
}

impl Record {
    /// A mapping of a file (a path starting with `/`, not `[vdso]` or anonymous memory)
    /// as `(time, pid, mapping)`, the one way the samplers turn an mmap record into a
    /// [`Mapping`]; `None` for every other record.
    pub fn into_file_mapping(self) -> Option<(u64, u32, Mapping)> {
        match self {
            Record::Mmap {
                pid,
                start,
                len,
                pgoff,
                path,
                build_id,
                time,
            } if path.starts_with('/') => Some((
                time,
                pid,
                Mapping {
                    start,
                    end: start + len,
                    pgoff,
                    path: path.into(),
                    build_id,
                },
            )),
            _ => None,
        }
    }
}

/// 256 KiB of data per CPU: at the default 1 kHz that is minutes of samples, and at
/// 100 kHz still 50 ms, the reader's polling interval.
const RING_PAGES: usize = 64;

/// An open event and its mmapped ring buffer, or an event whose records go to another
/// event's buffer on the same CPU (threads of an attached process share one buffer per
/// CPU, so attaching to a process with many threads does not pin memory per thread).
pub struct RingEvent {
    fd: OwnedFd,
    /// Null when the records are redirected to another event's buffer.
    base: *mut u8,
    map_len: usize,
    layout: SampleLayout,
    scratch: Vec<u8>,
}

// SAFETY: the mapping is owned by this value and only accessed through &mut self.
unsafe impl Send for RingEvent {}

impl RingEvent {
    /// Opens the event for task `pid` (and, through `inherit`, the threads and children
    /// it creates from now on) on one CPU, with its own ring buffer, or writing into
    /// `output`'s buffer (which must be on the same CPU).
    pub fn open(
        spec: &EventSpec,
        pid: i32,
        cpu: i32,
        output: Option<&RingEvent>,
    ) -> io::Result<RingEvent> {
        let page = page_size();
        let ring_bytes = RING_PAGES * page;
        let mut attr = spec.attr(ring_bytes);
        let mut fd = open_attr(&mut attr, pid, cpu);
        if fd
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // Kernels before 5.12 do not know the build_id bit: do without.
            attr.set_build_id(0);
            fd = open_attr(&mut attr, pid, cpu);
        }
        let fd = fd?;
        if let Some(output) = output {
            // SAFETY: both are valid perf fds; SET_OUTPUT takes the target fd by value.
            if unsafe { sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), output.raw_fd()) } == -1 {
                return Err(io::Error::last_os_error());
            }
            let base = std::ptr::null_mut();
            return Ok(RingEvent {
                fd,
                base,
                map_len: 0,
                layout: spec.layout(),
                scratch: Vec::new(),
            });
        }
        let map_len = (RING_PAGES + 1) * page;
        // SAFETY: mapping a perf fd as the kernel documents: one metadata page plus 2^n
        // data pages, shared, read-write (so we can advance data_tail).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RingEvent {
            fd,
            base: base as *mut u8,
            map_len,
            layout: spec.layout(),
            scratch: Vec::new(),
        })
    }

    /// The event's file descriptor, to poll on.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Stops counting; records already in the buffer can still be drained.
    pub fn disable(&self) {
        // SAFETY: a valid perf fd; DISABLE takes no pointer argument.
        unsafe { sys::ioctls::DISABLE(self.fd.as_raw_fd(), 0) };
    }

    /// Whether this event owns a ring buffer (else `drain` has nothing to do).
    pub fn has_buffer(&self) -> bool {
        !self.base.is_null()
    }

    /// Decodes and consumes every record currently in the buffer.
    pub fn drain(&mut self, mut sink: impl FnMut(Record)) {
        if self.base.is_null() {
            return;
        }
        let meta = self.base as *mut b::perf_event_mmap_page;
        // SAFETY: meta points at the mapped metadata page; the kernel writes data_head,
        // we write data_tail; volatile accesses plus fences follow the documented protocol.
        let (head, tail, data_offset, data_size) = unsafe {
            let head = std::ptr::read_volatile(&(*meta).data_head);
            fence(Ordering::Acquire);
            (
                head,
                std::ptr::read_volatile(&(*meta).data_tail),
                (*meta).data_offset,
                (*meta).data_size,
            )
        };
        // SAFETY: data_offset/data_size describe the data area inside our mapping.
        let data = unsafe {
            std::slice::from_raw_parts(self.base.add(data_offset as usize), data_size as usize)
        };
        let mut position = tail;
        while position + 8 <= head {
            // A record may wrap around the end of the data area: copy it in two parts.
            let copy = |scratch: &mut Vec<u8>, from: u64, len: usize| {
                scratch.clear();
                let start = (from % data_size) as usize;
                let first = len.min(data.len() - start);
                scratch.extend_from_slice(&data[start..start + first]);
                scratch.extend_from_slice(&data[..len - first]);
            };
            copy(&mut self.scratch, position, 8);
            let size = u16::from_le_bytes([self.scratch[6], self.scratch[7]]) as u64;
            if size < 8 || position + size > head {
                break;
            }
            copy(&mut self.scratch, position, size as usize);
            sink(parse_record(&self.scratch, self.layout));
            position += size;
        }
        fence(Ordering::Release);
        // SAFETY: as above; publishing how far we have read frees the space.
        unsafe { std::ptr::write_volatile(&mut (*meta).data_tail, position) };
    }
}

impl Drop for RingEvent {
    fn drop(&mut self) {
        if self.base.is_null() {
            return;
        }
        // SAFETY: base/map_len are exactly what mmap returned; nothing borrows it now.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Parses one record (header included). Non-sample records end with the sample_id
/// trailer {pid, tid, time} because `sample_id_all` is set.
pub fn parse_record(record: &[u8], layout: SampleLayout) -> Record {
    let kind = u32_at(record, 0);
    let misc = u16::from_le_bytes([record[4], record[5]]) as u32;
    let body = &record[8..];
    let trailer_time = u64_at(record, record.len().saturating_sub(8));
    match kind {
        b::PERF_RECORD_SAMPLE => {
            let regs_at = if layout.addr { 32 } else { 24 };
            Record::Sample {
                ip: u64_at(body, 0),
                pid: u32_at(body, 8),
                tid: u32_at(body, 12),
                addr: layout.addr.then(|| u64_at(body, 24)),
                regs: layout.regs.then(|| sample_regs(body, regs_at)).flatten(),
                user: misc & b::PERF_RECORD_MISC_CPUMODE_MASK == b::PERF_RECORD_MISC_USER,
                time: u64_at(body, 16),
            }
        }
        b::PERF_RECORD_MMAP2 => {
            let name = body.get(64..).unwrap_or(&[]);
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            Record::Mmap {
                pid: u32_at(body, 0),
                start: u64_at(body, 8),
                len: u64_at(body, 16),
                pgoff: u64_at(body, 24),
                path: String::from_utf8_lossy(&name[..end]).into_owned(),
                build_id: mmap_build_id(body, misc),
                time: trailer_time,
            }
        }
        b::PERF_RECORD_FORK => Record::Fork {
            pid: u32_at(body, 0),
            ppid: u32_at(body, 4),
            time: trailer_time,
        },
        b::PERF_RECORD_COMM if misc & b::PERF_RECORD_MISC_COMM_EXEC != 0 => Record::Exec {
            pid: u32_at(body, 0),
            time: trailer_time,
        },
        b::PERF_RECORD_LOST => Record::Lost {
            count: u64_at(body, 8),
        },
        _ => Record::Other,
    }
}

/// `PERF_SAMPLE_REGS_USER`: an ABI word (0 when the sample has no user registers,
/// e.g. a kernel thread), then one word per register of the mask.
fn sample_regs(body: &[u8], at: usize) -> Option<Regs> {
    if u64_at(body, at) == 0 || body.len() < at + 8 + 8 * Regs::COUNT {
        return None;
    }
    let mut regs = [0; Regs::COUNT];
    for (i, value) in regs.iter_mut().enumerate() {
        *value = u64_at(body, at + 8 + 8 * i);
    }
    Some(Regs(regs))
}

/// The build-id an MMAP2 record carries when `build_id` was requested: a size byte,
/// three reserved bytes, then up to 20 bytes in place of the device and inode numbers.
fn mmap_build_id(body: &[u8], misc: u32) -> Option<String> {
    if misc & b::PERF_RECORD_MISC_MMAP_BUILD_ID == 0 {
        return None;
    }
    let size = (*body.get(32)? as usize).min(20);
    let id = body.get(36..36 + size)?;
    (!id.is_empty()).then(|| id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The CPUs that are online now (`/sys/devices/system/cpu/online`, e.g. `0-1,4`).
pub fn online_cpus() -> Vec<i32> {
    let text =
        std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_else(|_| "0".into());
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<i32>()),
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, misc: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_le_bytes().to_vec();
        out.extend(misc.to_le_bytes());
        out.extend(((body.len() + 8) as u16).to_le_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn parses_samples_and_mmaps() {
        let mut body = 0x401136u64.to_le_bytes().to_vec();
        body.extend(7u32.to_le_bytes());
        body.extend(8u32.to_le_bytes());
        body.extend(99u64.to_le_bytes()); // time
        let sample = record(
            b::PERF_RECORD_SAMPLE,
            b::PERF_RECORD_MISC_USER as u16,
            &body,
        );
        assert_eq!(
            parse_record(&sample, SampleLayout::default()),
            Record::Sample {
                pid: 7,
                tid: 8,
                ip: 0x401136,
                addr: None,
                regs: None,
                user: true,
                time: 99,
            }
        );
        // The same sample with a data address and the registers (ABI 2 = 64-bit).
        body.extend(0xdead_beefu64.to_le_bytes());
        body.extend(2u64.to_le_bytes());
        for i in 0..Regs::COUNT as u64 {
            body.extend((0x1000 + i).to_le_bytes());
        }
        let sample = record(
            b::PERF_RECORD_SAMPLE,
            b::PERF_RECORD_MISC_USER as u16,
            &body,
        );
        let layout = SampleLayout {
            addr: true,
            regs: true,
        };
        let Record::Sample { addr, regs, .. } = parse_record(&sample, layout) else {
            panic!("not a sample");
        };
        assert_eq!(addr, Some(0xdead_beef));
        let regs = regs.expect("registers");
        assert_eq!(regs.get(iced_x86::Register::RAX), Some(0x1000));
        assert_eq!(regs.get(iced_x86::Register::RIP), Some(0x1008));
        assert_eq!(regs.get(iced_x86::Register::R15), Some(0x1010));
        assert_eq!(regs.get(iced_x86::Register::EAX), None);

        let mut body = Vec::new();
        body.extend(7u32.to_le_bytes());
        body.extend(7u32.to_le_bytes());
        body.extend(0x7f00_0000_0000u64.to_le_bytes());
        body.extend(0x2000u64.to_le_bytes());
        body.extend(0x1000u64.to_le_bytes());
        body.extend([0u8; 24]);
        body.extend(5u32.to_le_bytes());
        body.extend(2u32.to_le_bytes());
        body.extend(b"/lib/x.so\0\0\0\0\0\0\0");
        body.extend(7u32.to_le_bytes());
        body.extend(7u32.to_le_bytes());
        body.extend(1234u64.to_le_bytes());
        let mmap = record(b::PERF_RECORD_MMAP2, 0, &body);
        assert_eq!(
            parse_record(&mmap, SampleLayout::default()),
            Record::Mmap {
                pid: 7,
                start: 0x7f00_0000_0000,
                len: 0x2000,
                pgoff: 0x1000,
                path: "/lib/x.so".into(),
                build_id: None,
                time: 1234
            }
        );
    }

    #[test]
    fn arbitrary_records_never_panic_the_parser() {
        let mut state = 0x2545f4914f6cdd1du64;
        for len in 8..400usize {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                for kind in [
                    b::PERF_RECORD_SAMPLE,
                    b::PERF_RECORD_MMAP2,
                    b::PERF_RECORD_FORK,
                    b::PERF_RECORD_COMM,
                ] {
                    let mut record = bytes.clone();
                    record[..4].copy_from_slice(&kind.to_le_bytes());
                    for (addr, regs) in [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let _ = parse_record(&record, SampleLayout { addr, regs });
                    }
                }
            }
        }
    }

    #[test]
    fn cpu_clock_can_be_opened() {
        // Software events exist on every Linux with perf_event_open, VMs included.
        probe(&EventSpec::cpu_clock(1_000_000)).unwrap();
    }

    #[test]
    fn user_registers_can_be_sampled() {
        probe(&EventSpec::cpu_clock(1_000_000)).unwrap();
        let no_regs = EventSpec {
            sample_regs: false,
            ..EventSpec::cpu_clock(1_000_000)
        };
        probe(&no_regs).unwrap();
    }

    #[test]
    fn lists_online_cpus() {
        assert!(!online_cpus().is_empty());
    }
}
