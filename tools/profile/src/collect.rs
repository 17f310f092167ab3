//! Starting (or attaching to) the profiled program and collecting perf records until
//! it exits, the duration runs out, or the user presses Ctrl-C.
use crate::launch::{check_pid, wait_for_exec_stop};
use crate::maps::{AddressSpace, Mapping, ProcessTree};
use crate::perf::{online_cpus, EventSpec, Record, Regs, RingEvent};
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// What to profile.
#[allow(clippy::large_enum_variant)] // one per run: boxing would buy nothing
pub enum Target {
    /// A command to start; `display` names it in messages.
    Command {
        /// The command, ready to spawn.
        command: Command,
        /// How messages name it.
        display: String,
    },
    /// A running process.
    Pid(i32),
}

/// Everything the kernel told us during a run.
#[derive(Debug, Default)]
pub struct Collection {
    /// The started (or attached) process.
    pub root_pid: u32,
    /// Sample counts by (pid, user-space instruction address).
    pub samples: HashMap<(u32, u64), u64>,
    /// What the samples at each (pid, IP) said about the data they touched: the
    /// user registers (`sample`) or the data address (`pmu`), a bounded random subset.
    pub evidence: HashMap<(u32, u64), Evidence>,
    /// All samples (user mode only: kernel samples are excluded), attributed or not.
    pub total_samples: u64,
    /// Records the kernel dropped because the ring buffer was full.
    pub lost_records: u64,
    /// Threads seen in samples.
    pub threads: HashSet<u32>,
    /// The mappings of every process in the tree, as they were at the end of the run.
    pub processes: ProcessTree,
    /// How long the run took.
    pub wall: Duration,
    /// How the started command ended (`None` when attached to a process).
    pub exit: Option<ExitStatus>,
}

/// At most this many register sets or addresses are kept per (pid, IP): enough to
/// estimate a footprint, and memory stays bounded on long runs.
pub const EVIDENCE_PER_IP: usize = 512;

/// A uniform random subset (reservoir sampling) of what the samples at one IP carried.
#[derive(Debug, Default, Clone)]
pub struct Evidence {
    /// Registers of the kept samples.
    pub regs: Vec<Regs>,
    /// Data addresses of the kept samples.
    pub addrs: Vec<u64>,
    seen: u64,
}

impl Evidence {
    fn add(&mut self, regs: Option<Regs>, addr: Option<u64>) {
        self.seen += 1;
        // xorshift on the count: a deterministic, well-spread slot choice.
        let mut x = self.seen.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 29;
        let slot = (x % self.seen) as usize;
        if let Some(regs) = regs {
            keep(&mut self.regs, regs, slot);
        }
        if let Some(addr) = addr.filter(|&a| a != 0) {
            keep(&mut self.addrs, addr, slot);
        }
    }
}

fn keep<T>(kept: &mut Vec<T>, value: T, slot: usize) {
    if kept.len() < EVIDENCE_PER_IP {
        kept.push(value);
    } else if slot < EVIDENCE_PER_IP {
        kept[slot] = value;
    }
}

/// A side-band record kept for replay in time order (records of different CPUs
/// arrive in different buffers).
enum SideBand {
    Mmap(u32, Mapping),
    Fork(u32, u32),
    Exec(u32),
}

/// The signals that end a run early and still write the profile: Ctrl-C, and what
/// a service manager or a closing terminal sends.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The stop signal received during the current run, or 0.
static STOPPED_BY: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOPPED_BY.store(signal, Ordering::SeqCst);
}

/// The stop signal (SIGINT, SIGTERM, SIGHUP) that ended the last run early, if any:
/// later phases (auto's confirming run) are then skipped.
pub fn stopped_by() -> Option<libc::c_int> {
    match STOPPED_BY.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// While alive, SIGINT, SIGTERM and SIGHUP only record that they came ([`stopped_by`]):
/// the run in progress ends early and its profile is still written. Dropping it puts
/// the previous handlers back.
pub struct StopSignals {
    previous: [libc::sighandler_t; 3],
}

impl StopSignals {
    /// Catches the stop signals, forgetting one caught by an earlier run.
    pub fn catch() -> StopSignals {
        STOPPED_BY.store(0, Ordering::SeqCst);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = STOP_SIGNALS.map(|signal| unsafe {
            libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t)
        });
        StopSignals { previous }
    }

    /// Says, in one line, that a stop signal cut the run short (if one did).
    pub fn report(&self) {
        if let Some(signal) = stopped_by() {
            eprintln!(
                "msh profile: stopped by {}: writing the profile of what was collected",
                signal_name(signal)
            );
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for (signal, previous) in STOP_SIGNALS.into_iter().zip(self.previous) {
            // SAFETY: restoring the handler we replaced.
            unsafe { libc::signal(signal, previous) };
        }
    }
}

/// How long a command msh started gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Stops our child: SIGTERM, then SIGKILL if it is still there after [`STOP_GRACE`].
fn stop_child(child: &mut std::process::Child) -> Result<std::process::ExitStatus> {
    // SAFETY: plain kill(2) of our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "msh profile: note: the command ignored SIGTERM for {} s: killed",
        STOP_GRACE.as_secs()
    );
    child.kill()?;
    Ok(child.wait()?)
}

/// Runs `target` under the events `spec` until it exits, `duration` passes or Ctrl-C.
pub fn collect(spec: &EventSpec, target: Target, duration: Option<Duration>) -> Result<Collection> {
    let cpus = online_cpus();
    let mut collection = Collection::default();
    let started = Instant::now();
    let (mut child, pid, display) = match target {
        Target::Command {
            mut command,
            display,
        } => {
            // SAFETY: the closure runs in the forked child before exec and only makes
            // async-signal-safe system calls (prctl, ptrace).
            unsafe {
                command.pre_exec(|| {
                    // The command never outlives msh, even one killed by SIGKILL.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .with_context(|| format!("cannot run {display}"))?;
            drop(command); // closes descriptors the pre_exec closures own (sim's pipe)
            let pid = child.id() as i32;
            wait_for_exec_stop(pid).with_context(|| format!("cannot start {display}"))?;
            (Some(child), pid, display)
        }
        Target::Pid(pid) => {
            check_pid(pid)?;
            (None, pid, format!("PID {pid}"))
        }
    };
    let initial = AddressSpace::read_proc(pid).map(|mut space| {
        space.identify_files(|path| crate::elf::build_id(path).ok());
        space
    });
    let opened = open_events(spec, pid, child.is_none(), &cpus);
    if child.is_some() {
        // SAFETY: pid is our stopped tracee; detaching lets it run (signal 0).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    }
    let mut events = match opened {
        Ok(set) => set,
        Err(err) => {
            if let Some(child) = child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(err).with_context(|| format!("cannot trace {display}"));
        }
    };
    collection.root_pid = pid as u32;
    collection
        .processes
        .insert(pid as u32, initial.unwrap_or_default());

    let stop_signals = StopSignals::catch();
    let mut side_band: Vec<(u64, SideBand)> = Vec::new();
    let deadline = duration.map(|d| started + d);
    let mut poll_fds: Vec<libc::pollfd> = events
        .events
        .iter()
        .filter(|e| e.has_buffer())
        .map(|e| libc::pollfd {
            fd: e.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let attached = child.is_none();
    loop {
        // SAFETY: poll_fds is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, 50) };
        for event in events.events.iter_mut() {
            event.drain(|record| absorb(record, &mut collection, &mut side_band));
        }
        if attached {
            // The process may exit while we list its threads: that ends the run below.
            let _ = events.add_new_threads(pid);
        }
        let finished = match child.as_mut() {
            Some(child) => child
                .try_wait()?
                .map(|status| collection.exit = Some(status))
                .is_some(),
            None => !Path::new(&format!("/proc/{pid}")).exists(),
        };
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        if finished || timed_out || stopped_by().is_some() {
            break;
        }
    }
    for event in &events.events {
        event.disable();
    }
    for event in events.events.iter_mut() {
        event.drain(|record| absorb(record, &mut collection, &mut side_band));
    }
    collection.wall = started.elapsed();
    if let Some(child) = child.as_mut() {
        if collection.exit.is_none() {
            // The duration ran out, or a stop signal came: stop the command we
            // started, with our handlers still in place so a second signal does not
            // kill msh before the profile is written.
            collection.exit = Some(stop_child(child)?);
        }
    }
    stop_signals.report();
    drop(stop_signals);
    side_band.sort_by_key(|(time, _)| *time);
    for (_, record) in side_band {
        match record {
            SideBand::Mmap(pid, mapping) => collection.processes.mmap(pid, mapping),
            SideBand::Fork(parent, child) => collection.processes.fork(parent, child),
            SideBand::Exec(pid) => collection.processes.exec(pid),
        }
    }
    match collection
        .exit
        .map(|status| (status.code(), status.signal()))
    {
        Some((Some(code), _)) if code != 0 => {
            eprintln!("msh profile: note: {display} exited with status {code}")
        }
        Some((_, Some(signal)))
            if signal != libc::SIGTERM && signal != libc::SIGINT && signal != libc::SIGKILL =>
        {
            eprintln!("msh profile: note: {display} was killed by signal {signal}")
        }
        _ => {}
    }
    Ok(collection)
}

pub(crate) fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn absorb(record: Record, collection: &mut Collection, side_band: &mut Vec<(u64, SideBand)>) {
    match record {
        Record::Sample {
            pid,
            tid,
            ip,
            user,
            regs,
            addr,
            ..
        } => {
            collection.total_samples += 1;
            collection.threads.insert(tid);
            if user {
                *collection.samples.entry((pid, ip)).or_default() += 1;
                if regs.is_some() || addr.is_some() {
                    collection
                        .evidence
                        .entry((pid, ip))
                        .or_default()
                        .add(regs, addr);
                }
            }
        }
        record @ Record::Mmap { .. } => {
            if let Some((time, pid, mapping)) = record.into_file_mapping() {
                side_band.push((time, SideBand::Mmap(pid, mapping)));
            }
        }
        Record::Fork { pid, ppid, time } => side_band.push((time, SideBand::Fork(ppid, pid))),
        Record::Exec { pid, time } => side_band.push((time, SideBand::Exec(pid))),
        Record::Lost { count } => collection.lost_records += count,
        _ => {}
    }
}

/// The events of a run: one per CPU per traced thread. The first thread's events own
/// one ring buffer per CPU; every later thread's event writes into the buffer of its
/// CPU (SET_OUTPUT), so many threads do not pin many buffers.
struct EventSet {
    spec: EventSpec,
    cpus: Vec<i32>,
    events: Vec<RingEvent>,
    threads: HashSet<i32>,
}

impl EventSet {
    fn new(spec: EventSpec, cpus: Vec<i32>) -> EventSet {
        EventSet {
            spec,
            cpus,
            events: Vec::new(),
            threads: HashSet::new(),
        }
    }

    /// Starts tracing thread `tid` on every CPU. Ok(false) if it has exited meanwhile.
    fn add_thread(&mut self, tid: i32) -> std::io::Result<bool> {
        if !self.threads.insert(tid) {
            return Ok(true);
        }
        let mut thread_events = Vec::with_capacity(self.cpus.len());
        for (i, &cpu) in self.cpus.iter().enumerate() {
            let output = self.events.get(i);
            match RingEvent::open(&self.spec, tid, cpu, output) {
                Ok(event) => thread_events.push(event),
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        self.events.extend(thread_events);
        Ok(true)
    }

    /// When attached: traces the process's threads not traced yet (without `inherit`,
    /// new threads are found by listing them again; one living less than a polling
    /// interval can be missed).
    fn add_new_threads(&mut self, pid: i32) -> Result<()> {
        let tids = list_threads(pid)?;
        for tid in tids {
            if !self.threads.contains(&tid) {
                self.add_thread(tid).map_err(explain_open_error)?;
            }
        }
        Ok(())
    }
}

fn list_threads(pid: i32) -> Result<Vec<i32>> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("cannot list the threads of PID {pid}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_by_key(|&tid| (tid != pid, tid)); // the main thread first
    Ok(tids)
}

/// Opens the events: for a started command, on its one thread with `inherit` (it has
/// not run yet, so every later thread and child inherits them); when attaching, on each
/// thread that exists now, without `inherit` (a thread created between listing and
/// opening would otherwise be counted twice), and new threads are added as they appear.
fn open_events(spec: &EventSpec, pid: i32, attach: bool, cpus: &[i32]) -> Result<EventSet> {
    let spec = EventSpec {
        inherit: !attach,
        ..*spec
    };
    let mut set = EventSet::new(spec, cpus.to_vec());
    if attach {
        set.add_new_threads(pid)?;
        if set.events.is_empty() {
            bail!("perf_event_open: no such process");
        }
    } else if !set.add_thread(pid).map_err(explain_open_error)? {
        bail!("perf_event_open: no such process");
    }
    Ok(set)
}

fn explain_open_error(err: std::io::Error) -> anyhow::Error {
    let paranoid =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => anyhow::anyhow!(
            "perf_event_open: permission denied (kernel.perf_event_paranoid = {}; run as root or lower it)",
            paranoid.trim()
        ),
        Some(libc::ESRCH) => anyhow::anyhow!("perf_event_open: no such process"),
        _ => anyhow::anyhow!("perf_event_open: {err}"),
    }
}
