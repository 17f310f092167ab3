//! msh's exact memory-access tracer.
//!
//! [`trace`] runs a command under Debian's `qemu-x86_64` (QEMU 7.2, user mode) with
//! msh's TCG plugin (`msh-tracer-plugin`), which records every load and store the
//! program makes — instruction address, address, size, read or write, thread — into
//! fixed-size batch slots in shared memory. The tracer hands each batch to a callback
//! as it arrives: no text, no copy, no system call per access. Each guest thread runs
//! on its own QEMU vCPU and fills its own batches, so a batch is one thread's accesses
//! in program order; batches of different threads interleave in the order they filled.
//!
//! [`file`] stores batches in a versioned binary trace file for tools that replay them.
//!
//! What is traced: user-mode code of the started process only. A guest `fork()`'s child
//! runs but is not traced; a guest `execve` replaces qemu with the new program, which then
//! runs natively and untraced (both are reported in [`TraceSummary`]). Code QEMU 7.2
//! cannot run (AVX-512) stops the program with SIGILL; [`trace`] says so.
#![warn(missing_docs)]

pub mod file;
mod launch;
mod vma;

pub use launch::{find_in_path, find_plugin, find_qemu, PLUGIN_ENV, PLUGIN_FILE};
pub use msh_tracer_plugin::shm::Access;
pub use vma::Vma;

use anyhow::{bail, Context, Result};
use msh_tracer_plugin::shm::{self, Config, Layout, Ring};
use std::ffi::OsString;
use std::ops::{ControlFlow, Range};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A batch of one thread's accesses, in program order.
pub struct Batch<'a> {
    /// The thread, numbered from 0 (the main thread) in creation order.
    pub thread: u32,
    /// CLOCK_MONOTONIC when the batch was filled.
    pub time_ns: u64,
    /// The accesses.
    pub accesses: &'a [Access],
}

/// Which accesses to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Sampling {
    /// Every access.
    #[default]
    All,
    /// One access in `n`, per thread (the first, the (n+1)th, …).
    EveryNth(u64),
    /// Per thread, `on` accesses in a row, then `off` skipped, and again.
    Bursts {
        /// Accesses recorded in a row.
        on: u64,
        /// Accesses skipped after each burst.
        off: u64,
    },
}

impl Sampling {
    /// (recorded in a row, skipped after them).
    fn on_off(self) -> Result<(u64, u64)> {
        Ok(match self {
            Sampling::All => (u64::MAX, 0),
            Sampling::EveryNth(0) => {
                bail!("sampling: every 0th access makes no sense (use 1 for all)")
            }
            Sampling::EveryNth(n) => (1, n - 1),
            Sampling::Bursts { on: 0, .. } => {
                bail!("sampling: a burst must record at least one access")
            }
            Sampling::Bursts { on, off } => (on, off),
        })
    }
}

/// How to trace.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Which accesses to record (after the address filter).
    pub sampling: Sampling,
    /// Run this many guest instructions untraced first (counted per translation block,
    /// so tracing starts within one block of the mark).
    pub fast_forward_insns: u64,
    /// Record only accesses whose address is in this range.
    pub addr_filter: Option<Range<u64>>,
    /// Stop after this long: recording stops, and the program gets SIGTERM (SIGKILL two
    /// seconds later if it is still running).
    pub time_limit: Option<Duration>,
    /// Polled while tracing (every batch and every few ms): once it returns true,
    /// tracing stops as at the time limit ([`StopReason::Interrupted`]). For a caller
    /// that catches SIGTERM or Ctrl-C and still wants what was traced.
    pub interrupted: Option<fn() -> bool>,
    /// qemu-x86_64 to use (default: the one on `PATH`).
    pub qemu: Option<PathBuf>,
    /// The plugin (default: `$MSH_TRACER_PLUGIN`, else next to the running executable).
    pub plugin: Option<PathBuf>,
    /// Accesses per batch.
    pub batch_accesses: u32,
    /// Batch slots in the shared ring (the program waits when all are full).
    pub slots: u32,
    /// Send the program's standard output to our standard error, for a caller whose
    /// own standard output is a report (JSON) the program must not mix into.
    pub stdout_to_stderr: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            sampling: Sampling::All,
            fast_forward_insns: 0,
            addr_filter: None,
            time_limit: None,
            interrupted: None,
            qemu: None,
            plugin: None,
            batch_accesses: 4096,
            slots: 256,
            stdout_to_stderr: false,
        }
    }
}

/// Why tracing stopped before the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// [`TraceOptions::time_limit`] passed.
    TimeLimit,
    /// The batch callback returned `ControlFlow::Break`.
    Callback,
    /// [`TraceOptions::interrupted`] returned true.
    Interrupted,
}

/// What happened during a trace.
#[derive(Debug, Clone)]
pub struct TraceSummary {
    /// How the program (qemu) ended.
    pub exit: ExitStatus,
    /// Accesses made while tracing (after fast-forward), before filter and sampling.
    pub accesses_seen: u64,
    /// Accesses delivered in batches.
    pub accesses_delivered: u64,
    /// Batches delivered.
    pub batches: u64,
    /// Times the program found every batch slot full and waited for the consumer.
    pub producer_waits: u32,
    /// Guest instructions executed, fast-forward included (approximate with several
    /// threads).
    pub instructions: u64,
    /// Threads the program ran.
    pub threads: u32,
    /// Wall time from start to exit.
    pub wall: Duration,
    /// The program's memory areas (see [`Vma`] for what is and is not there).
    pub vmas: Vec<Vma>,
    /// Guest fork()s: their children ran untraced.
    pub forks: u32,
    /// The first path the program tried to `execve`, and whether that exec succeeded
    /// (the new program then ran natively, untraced).
    pub exec: Option<(String, bool)>,
    /// Set when tracing stopped before the program ended.
    pub stopped: Option<StopReason>,
    /// False when the program ended before fast-forward was over.
    pub traced: bool,
}

/// Grace period between SIGTERM and SIGKILL when tracing stops early.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the consumer sleeps between looks at the program when nothing arrives.
const POLL_MS: u64 = 20;
/// A SIGSEGV within this many instructions is "at start".
const EARLY_CRASH_INSNS: u64 = 20_000_000;

/// Runs `cmd` under qemu-x86_64 with the tracer plugin and calls `on_batch` for every
/// batch of accesses, in the order the batches were filled. Returns when the program
/// has exited; its exit status is in the summary (a failing program is not an error).
/// Errors: qemu or the plugin missing, a program qemu-x86_64 cannot run, a plugin that
/// fails to load, a program killed by an instruction QEMU lacks.
pub fn trace(
    cmd: &[OsString],
    opts: &TraceOptions,
    mut on_batch: impl FnMut(&Batch) -> ControlFlow<()>,
) -> Result<TraceSummary> {
    let Some(argv0) = cmd.first() else {
        bail!("no command to trace")
    };
    let qemu = launch::find_qemu(opts.qemu.as_deref(), std::env::var_os("PATH").as_deref())?;
    let plugin = launch::find_plugin(opts.plugin.as_deref())?;
    let program = launch::check_program(argv0)?;
    let (sample_on, sample_off) = opts.sampling.on_off()?;
    let (filter_start, filter_len) = match &opts.addr_filter {
        Some(range) if range.is_empty() => bail!("the address filter {range:x?} is empty"),
        Some(range) => (range.start, range.end - range.start),
        None => (0, u64::MAX),
    };
    if opts.batch_accesses == 0 || opts.slots < 2 {
        bail!("the ring needs at least 2 slots of at least one access");
    }
    let region = SharedRegion::new(Layout::new(opts.slots, opts.batch_accesses))?;
    let ring = region.ring();
    ring.init(Config {
        sample_on,
        sample_off,
        fast_forward_insns: opts.fast_forward_insns,
        filter_start,
        filter_len,
    });
    let header = ring.header();

    let mut command = Command::new(&qemu);
    command
        .arg("-plugin")
        .arg(format!(
            "{},shm={}",
            plugin.display(),
            region.fd.as_raw_fd()
        ))
        .arg("-0")
        .arg(&program.argv0)
        .arg(&program.path)
        .args(&cmd[1..]);
    if opts.stdout_to_stderr {
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot duplicate standard error for the program's output")?;
        command.stdout(stderr);
    }
    let fd = region.fd.as_raw_fd();
    // SAFETY: runs in the forked child before exec; fcntl, setrlimit and prctl are
    // async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            // The shared region survives exec (it is the plugin's); nothing else does.
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // qemu writes a core file into the working directory when the guest
            // crashes; the tracer reports the crash instead.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            // The program stops when msh does (its producers would wait forever).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", qemu.display()))?;

    let mut head: u32 = 0;
    let mut batches = 0u64;
    let mut stopped: Option<StopReason> = None;
    let mut stop_sent: Option<Instant> = None;
    let mut killed = false;
    let exit = loop {
        let published = header.published.load(Ordering::SeqCst);
        drain(&ring, &mut head, &mut stopped, &mut batches, &mut on_batch);
        if stopped.is_none()
            && opts
                .time_limit
                .is_some_and(|limit| started.elapsed() >= limit)
        {
            stopped = Some(StopReason::TimeLimit);
        }
        if stopped.is_none() && opts.interrupted.is_some_and(|interrupted| interrupted()) {
            stopped = Some(StopReason::Interrupted);
        }
        if stopped.is_some() {
            match stop_sent {
                None => {
                    header.stop.store(1, Ordering::SeqCst);
                    // SAFETY: signalling our own child, which has not been reaped.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    stop_sent = Some(Instant::now());
                }
                Some(at) if !killed && at.elapsed() > KILL_GRACE => {
                    let _ = child.kill();
                    killed = true;
                }
                _ => {}
            }
        }
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            // Everything it published is in the queue now: empty it, then done.
            while header.reserved.load(Ordering::SeqCst) != head {
                let before = head;
                drain(&ring, &mut head, &mut stopped, &mut batches, &mut on_batch);
                if head == before {
                    break; // a position reserved by a producer that died before storing
                }
            }
            break status;
        }
        ring.wait_for_publish(published, POLL_MS);
    };
    let wall = started.elapsed();

    if header.plugin_ready.load(Ordering::SeqCst) == 0 {
        bail!(
            "the tracer plugin {} failed to load in {} (its message is above); rebuild it with `cargo build --release -p msh-tracer-plugin`",
            plugin.display(),
            qemu.display()
        );
    }
    let instructions = header.insns.load(Ordering::Relaxed);
    let name = program.path.display();
    if stopped.is_none() {
        match exit.signal() {
            Some(libc::SIGILL) => bail!(
                "{name} hit an instruction QEMU 7.2's TCG cannot run (SIGILL after {instructions} instructions): QEMU 7.2's TCG lacks AVX-512, the usual cause; use `--backend sample`"
            ),
            Some(libc::SIGSEGV) if instructions < EARLY_CRASH_INSNS => bail!(
                "{name} crashed (SIGSEGV) under QEMU after only {instructions} instructions; if it runs natively, QEMU 7.2 cannot run it (AVX-512 code is the usual cause): use `--backend sample`"
            ),
            _ => {}
        }
    }
    let maps_len = (header.maps_len.load(Ordering::Acquire) as usize).min(shm::MAPS_BYTES);
    // SAFETY: the plugin has exited; the area holds maps_len bytes of text it wrote.
    let maps = unsafe { std::slice::from_raw_parts(ring.maps_area(), maps_len) };
    let exec = match header.exec_state.load(Ordering::Relaxed) {
        0 => None,
        state => {
            let bytes = &header.exec_path;
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            Some((
                String::from_utf8_lossy(&bytes[..end]).into_owned(),
                state == 1,
            ))
        }
    };
    Ok(TraceSummary {
        exit,
        accesses_seen: header.seen.load(Ordering::Relaxed),
        accesses_delivered: header.delivered.load(Ordering::Relaxed),
        batches,
        producer_waits: header.producer_sleeps.load(Ordering::Relaxed),
        instructions,
        threads: header.threads.load(Ordering::Relaxed),
        wall,
        vmas: Vma::parse_maps(&String::from_utf8_lossy(maps)),
        forks: header.forks.load(Ordering::Relaxed),
        exec,
        stopped,
        traced: header.tracing.load(Ordering::Relaxed) != 0,
    })
}

/// Hands the batches published so far to `on_batch` (none once stopped) and frees
/// its slot.
fn drain(
    ring: &Ring,
    head: &mut u32,
    stopped: &mut Option<StopReason>,
    batches: &mut u64,
    on_batch: &mut impl FnMut(&Batch) -> ControlFlow<()>,
) {
    let capacity = ring.layout().slot_capacity;
    // At most one ring's worth per call, so the caller gets to check the time limit
    // even when the program produces as fast as the callback consumes.
    for _ in 0..ring.layout().slot_count {
        let Some(index) = ring.take(*head) else { break };
        *head = head.wrapping_add(1);
        if stopped.is_none() {
            let slot = ring.slot(index);
            let count = slot.count.min(capacity) as usize;
            // SAFETY: the slot is FULL: its producer is done with it and we own it until
            // release. Its first `count` records were written by the plugin as valid
            // `Access` values.
            let accesses = unsafe { std::slice::from_raw_parts(ring.records(index), count) };
            *batches += 1;
            let batch = Batch {
                thread: slot.thread,
                time_ns: slot.time_ns,
                accesses,
            };
            if on_batch(&batch).is_break() {
                *stopped = Some(StopReason::Callback);
            }
        }
        ring.release(index);
    }
}

/// A memfd mapped shared: the ring both sides use.
struct SharedRegion {
    fd: OwnedFd,
    base: *mut u8,
    layout: Layout,
}

impl SharedRegion {
    fn new(layout: Layout) -> Result<SharedRegion> {
        // SAFETY: memfd_create with a static NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"msh-tracer".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: raw was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sizing our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), layout.total as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sizing the shared ring");
        }
        // SAFETY: a fresh shared mapping of the whole memfd, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the shared ring");
        }
        Ok(SharedRegion {
            fd,
            base: base as *mut u8,
            layout,
        })
    }

    fn ring(&self) -> Ring {
        // SAFETY: base maps layout.total bytes until self is dropped, and the ring is
        // only used while self lives (within `trace`).
        unsafe { Ring::from_raw(self.base, self.layout) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no Ring made from it outlives self.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.layout.total) };
    }
}
