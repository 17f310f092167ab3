//! Where accesses come from. Each source runs the command itself (with the
//! interposer's environment) and hands back accesses on CLOCK_MONOTONIC, labelled with
//! what they measure.
use anyhow::{bail, Context, Result};
use iced_x86::InstructionInfoFactory;
use msh_core::os::monotonic_ns;
use msh_profile::address::{self, Recovery};
use msh_profile::elf::ObjectCache;
use msh_profile::maps::{AddressSpace, Mapping, ProcessTree};
use msh_profile::perf::{self, EventSpec, Record, RingEvent};
use msh_profile::sample::{locate, Located};
use std::collections::HashMap;
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::time::Instant;

/// The sources, by the name `--access` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Precise hardware load/store sampling with data addresses (PEBS-style): needs a
    /// hardware PMU.
    Pmu,
    /// cpu-clock samples with user registers; the sampled load's address recomputed.
    Sample,
    /// msh's tracer: every load and store under qemu-x86_64 (or one in N).
    Exact,
    /// Physical-address DAMON, translated back through /proc/PID/pagemap.
    Damon,
}

impl SourceKind {
    /// The name stored in `runs.access_source`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Pmu => "pmu",
            SourceKind::Sample => "sample",
            SourceKind::Exact => "exact",
            SourceKind::Damon => "damon",
        }
    }
}

/// One access, time on CLOCK_MONOTONIC (absolute ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Access {
    /// CLOCK_MONOTONIC, ns (for `exact`, interpolated within its batch).
    pub time_ns: u64,
    /// The access happened in `[earliest_ns, latest_ns]` (both `time_ns` where the
    /// source times each access; the batch's window for `exact`).
    pub earliest_ns: u64,
    /// See `earliest_ns`.
    pub latest_ns: u64,
    /// The data address.
    pub address: u64,
    /// None when the source cannot tell.
    pub is_write: Option<bool>,
    /// The instruction, when known.
    pub ip: Option<u64>,
    /// The thread, when known.
    pub thread: Option<u32>,
}

/// How the program ran under a source.
#[derive(Debug, Clone)]
pub struct SourceRun {
    /// The traced process (whose allocation events count); None when the source
    /// cannot tell (then the process whose first event came first).
    pub pid: Option<u32>,
    /// How it ended.
    pub exit: ExitStatus,
    /// Its resource usage (and its children's).
    pub rusage: libc::rusage,
    /// Wall time from start to exit.
    pub wall_ns: u64,
    /// What the accesses measure, in words (stored with the run).
    pub measures: String,
    /// ns between samples (`sample`) or accesses between samples (`exact`).
    pub sample_period: Option<u64>,
    /// Samples the rate asked for over the run.
    pub requested: u64,
    /// Samples or records lost.
    pub lost: u64,
    /// Samples taken that gave no address (kernel code, unknown code, no load).
    pub unaddressed: u64,
}

/// A way to run a command and observe its accesses.
pub trait AccessSource {
    /// Runs `argv` with `env` added and calls `sink` for each access.
    fn run(
        &mut self,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        sink: &mut dyn FnMut(Access),
    ) -> Result<SourceRun>;
}

/// Options every source may use.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// Samples per CPU-second (`sample`).
    pub frequency_hz: u64,
    /// Record one access in this many (`exact`).
    pub every: u64,
}

/// The source `kind`, or a one-line reason this machine cannot use it.
pub fn open(kind: SourceKind, options: SourceOptions) -> Result<Box<dyn AccessSource>> {
    Ok(match kind {
        SourceKind::Sample => Box::new(Sample::new(options.frequency_hz)?),
        SourceKind::Exact => {
            if options.every == 0 {
                bail!("--every must be at least 1");
            }
            msh_tracer::find_qemu(None, std::env::var_os("PATH").as_deref())
                .context("the exact source needs qemu-x86_64")?;
            msh_tracer::find_plugin(None).context("the exact source needs the tracer plugin")?;
            Box::new(Exact {
                every: options.every,
            })
        }
        SourceKind::Pmu => bail!("{}", pmu_unavailable()),
        SourceKind::Damon => bail!("{}", damon_unavailable()),
    })
}

/// The best source that works here: `pmu` where the hardware has one, else `sample`.
pub fn best() -> SourceKind {
    if pmu_probe().is_ok() {
        SourceKind::Pmu
    } else {
        SourceKind::Sample
    }
}

fn pmu_probe() -> std::io::Result<()> {
    // The generic hardware cycles event: where even it is refused there is no PMU.
    let spec = EventSpec {
        type_: perf_event_open_sys::bindings::PERF_TYPE_HARDWARE,
        config: perf_event_open_sys::bindings::PERF_COUNT_HW_CPU_CYCLES as u64,
        precise_ip: 0,
        sample_regs: false,
        ..EventSpec::cpu_clock(1_000_000)
    };
    perf::probe(&spec)
}

/// Why `pmu` cannot run. On a machine with a PMU it is still refused: it was written
/// without one to test on, and an untested source would be a guess.
fn pmu_unavailable() -> String {
    match pmu_probe() {
        Err(err) => format!(
            "access source pmu: this machine has no hardware PMU (perf_event_open of cycles: {err}); use --access sample"
        ),
        Ok(()) => "access source pmu: not built yet (no PMU to test it on where it was written); use --access sample".into(),
    }
}

/// Why `damon` cannot run here.
fn damon_unavailable() -> String {
    if !std::path::Path::new("/sys/kernel/mm/damon/admin/kdamonds").exists() {
        return "access source damon: this kernel has no DAMON sysfs interface (/sys/kernel/mm/damon/admin)".into();
    }
    "access source damon: not built yet (physical-address DAMON plus pagemap translation); use --access sample".into()
}

/// The `sample` source: cpu-clock samples with user registers (msh-profile's perf
/// layer); the sampled load's address recomputed as `msh profile --backend sample` does.
pub struct Sample {
    period_ns: u64,
}

/// Default `sample` rate: 1,000 samples per CPU-second, the profiler's default (each
/// sample costs about 30 µs of the program's time on this VM).
pub const DEFAULT_FREQUENCY_HZ: u64 = msh_profile::sample::DEFAULT_FREQUENCY_HZ;

impl Sample {
    /// A sampler at `frequency_hz` samples per CPU-second.
    pub fn new(frequency_hz: u64) -> Result<Sample> {
        if frequency_hz == 0 || frequency_hz > 100_000 {
            bail!("--frequency must be between 1 and 100000 Hz, not {frequency_hz}");
        }
        let spec = EventSpec::cpu_clock(1_000_000_000 / frequency_hz);
        perf::probe(&spec).map_err(|e| {
            anyhow::anyhow!("access source sample: perf_event_open of cpu-clock: {e}")
        })?;
        Ok(Sample {
            period_ns: 1_000_000_000 / frequency_hz,
        })
    }
}

struct RawSample {
    time: u64,
    pid: u32,
    tid: u32,
    ip: u64,
    regs: perf::Regs,
}

impl AccessSource for Sample {
    fn run(
        &mut self,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        sink: &mut dyn FnMut(Access),
    ) -> Result<SourceRun> {
        let spec = EventSpec::cpu_clock(self.period_ns);
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)));
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe ptrace system call.
        unsafe {
            command.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let display = argv[0].to_string_lossy().into_owned();
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {display}"))?;
        let pid = child.id() as i32;
        msh_profile::launch::wait_for_exec_stop(pid)
            .with_context(|| format!("cannot start {display}"))?;
        let mut processes = ProcessTree::default();
        processes.insert(pid as u32, AddressSpace::read_proc(pid).unwrap_or_default());
        let mut events = Vec::new();
        let mut opened = Ok(());
        for cpu in perf::online_cpus() {
            match RingEvent::open(&spec, pid, cpu, None) {
                Ok(e) => events.push(e),
                Err(e) => {
                    opened = Err(e);
                    break;
                }
            }
        }
        // SAFETY: pid is our stopped tracee; detaching lets it run (signal 0), or, when
        // the events could not be opened, we kill it.
        unsafe {
            if opened.is_err() {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        }
        if let Err(e) = opened {
            reap(pid);
            bail!("access source sample: perf_event_open: {e}");
        }
        let mut samples: Vec<RawSample> = Vec::new();
        let mut mmaps: Vec<(u64, u32, Mapping)> = Vec::new();
        let mut lost = 0;
        let mut absorb = |record: Record| match record {
            Record::Sample {
                pid,
                tid,
                ip,
                regs: Some(regs),
                user: true,
                time,
                ..
            } => samples.push(RawSample {
                time,
                pid,
                tid,
                ip,
                regs,
            }),
            record @ Record::Mmap { .. } => mmaps.extend(record.into_file_mapping()),
            Record::Lost { count } => lost += count,
            _ => {}
        };
        let mut pollfds: Vec<libc::pollfd> = events
            .iter()
            .map(|e| libc::pollfd {
                fd: e.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let (status, rusage) = loop {
            // SAFETY: pollfds is a valid array for the call.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 50) };
            for e in events.iter_mut() {
                e.drain(&mut absorb);
            }
            if let Some(done) = try_reap(pid)? {
                break done;
            }
        };
        let wall_ns = started.elapsed().as_nanos() as u64;
        for e in events.iter_mut() {
            e.drain(&mut absorb);
        }
        mmaps.sort_by_key(|(t, _, _)| *t);
        for (_, p, m) in mmaps {
            processes.mmap(p, m);
        }
        samples.sort_by_key(|s| s.time);
        let cpu_ns = (tv_ns(rusage.ru_utime) + tv_ns(rusage.ru_stime)).max(1);
        let mut objects = ObjectCache::default();
        let mut info = InstructionInfoFactory::new();
        // (pid, ip) -> the load before it and its runtime address, or None.
        let mut loads: HashMap<(u32, u64), Option<(iced_x86::Instruction, u64)>> = HashMap::new();
        let mut unaddressed = 0;
        for s in &samples {
            if s.pid != pid as u32 {
                unaddressed += 1;
                continue;
            }
            let load = *loads.entry((s.pid, s.ip)).or_insert_with(|| {
                match locate(&processes, &mut objects, s.pid, s.ip).0 {
                    Located::Found(image, vaddr) => image
                        .load_before(vaddr)
                        .map(|l| (l, s.ip - (vaddr - l.ip()))),
                    _ => None,
                }
            });
            let Some((load, load_ip)) = load else {
                unaddressed += 1;
                continue;
            };
            let address = match address::recover(&load, &mut info, &s.regs, s.ip) {
                Recovery::Recovered(a) => a,
                // The next address this load will read: still an address of the data
                // this site chases.
                Recovery::Chased(next, _) => next,
                Recovery::Unrecoverable(_) => {
                    unaddressed += 1;
                    continue;
                }
            };
            sink(Access {
                time_ns: s.time,
                earliest_ns: s.time,
                latest_ns: s.time,
                address,
                is_write: Some(false),
                ip: Some(load_ip),
                thread: Some(s.tid),
            });
        }
        Ok(SourceRun {
            pid: Some(pid as u32),
            exit: status,
            rusage,
            wall_ns,
            measures: "cpu-clock samples (user registers): the address of the load just before each sampled instruction, recomputed; loads only, weighted by time stalled".into(),
            sample_period: Some(self.period_ns),
            requested: cpu_ns / self.period_ns,
            lost,
            unaddressed,
        })
    }
}

fn tv_ns(tv: libc::timeval) -> u64 {
    tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000
}

/// Reaps `pid` if it has exited: its status and resource usage.
fn try_reap(pid: i32) -> Result<Option<(ExitStatus, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out pointers.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
    if r == -1 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok((r == pid).then(|| (ExitStatus::from_raw(status), rusage)))
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// The `exact` source: msh's tracer (qemu-x86_64 and its plugin), one access in
/// `every` per thread.
pub struct Exact {
    every: u64,
}

/// Accesses per tracer batch: each batch is timed once, so small batches time
/// accesses finely (the ring then needs more slots: 4096 of them).
const EXACT_BATCH: u32 = 256;

/// Default `exact` sampling: one access in 100.
pub const DEFAULT_EVERY: u64 = 100;

impl AccessSource for Exact {
    fn run(
        &mut self,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        sink: &mut dyn FnMut(Access),
    ) -> Result<SourceRun> {
        // qemu-user passes its own environment to the guest, and QEMU_SET_ENV adds to
        // the guest's only: the interposer must not be preloaded into qemu itself.
        let mut set = OsString::new();
        for (i, (k, v)) in env.iter().enumerate() {
            if i > 0 {
                set.push(",");
            }
            set.push(k);
            set.push("=");
            set.push(v);
        }
        std::env::set_var("QEMU_SET_ENV", &set);
        let before = children_rusage();
        let options = msh_tracer::TraceOptions {
            sampling: if self.every == 1 {
                msh_tracer::Sampling::All
            } else {
                msh_tracer::Sampling::EveryNth(self.every)
            },
            batch_accesses: EXACT_BATCH,
            slots: 4096,
            ..Default::default()
        };
        // A batch carries the time it filled: its accesses are spread evenly between
        // the thread's previous batch and this one (small batches keep that close).
        let mut previous: HashMap<u32, u64> = HashMap::new();
        let start = monotonic_ns();
        let summary = msh_tracer::trace(argv, &options, |batch| {
            let from = *previous.get(&batch.thread).unwrap_or(&start);
            previous.insert(batch.thread, batch.time_ns);
            let span = batch.time_ns.saturating_sub(from);
            let n = batch.accesses.len().max(1) as u64;
            for (i, a) in batch.accesses.iter().enumerate() {
                sink(Access {
                    time_ns: from + span * (i as u64 + 1) / n,
                    earliest_ns: from,
                    latest_ns: batch.time_ns,
                    address: a.addr,
                    is_write: Some(a.is_write),
                    ip: Some(a.ip),
                    thread: Some(batch.thread),
                });
            }
            ControlFlow::Continue(())
        });
        std::env::remove_var("QEMU_SET_ENV");
        let summary = summary?;
        let after = children_rusage();
        let mut rusage = after;
        rusage.ru_utime = sub_tv(after.ru_utime, before.ru_utime);
        rusage.ru_stime = sub_tv(after.ru_stime, before.ru_stime);
        Ok(SourceRun {
            pid: None,
            exit: summary.exit,
            rusage,
            wall_ns: summary.wall.as_nanos() as u64,
            measures: format!(
                "every load and store under qemu-x86_64 (msh tracer), one in {} per thread; times interpolated within batches of 256; thread = the tracer's thread number",
                self.every
            ),
            sample_period: Some(self.every),
            requested: summary.accesses_seen / self.every,
            lost: 0,
            unaddressed: 0,
        })
    }
}

fn children_rusage() -> libc::rusage {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) };
    r
}

fn sub_tv(a: libc::timeval, b: libc::timeval) -> libc::timeval {
    let ns = tv_ns(a).saturating_sub(tv_ns(b));
    libc::timeval {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_usec: ((ns % 1_000_000_000) / 1000) as i64,
    }
}

/// CLOCK_MONOTONIC now, for the run's start.
pub fn now_ns() -> u64 {
    monotonic_ns()
}
