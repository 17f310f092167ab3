//! The `sim` backend: run the program under valgrind's lackey tool, which prints every
//! guest instruction address and data access; stream that trace through a pipe into
//! the cache model ([`cache`]) and count, per load instruction, its executions and
//! its last-level-cache misses. Slow (valgrind) but exact for the modelled caches.
//!
//! Addresses in the trace are the client's own (valgrind loads it at addresses of its
//! choosing), so a side-band-only perf event records the valgrind process's file
//! mappings, exactly as the `sample` backend does for its samples.
pub mod cache;
pub mod trace;

use crate::collect::{collect, Target};
use crate::elf::ObjectCache;
use crate::launch::{command_for, resolve_program};
use crate::perf::EventSpec;
use crate::sample::{locate, refuse_if_all_replaced, replaced_note, Located};
use crate::schema::Profile;
use crate::sites::{build_profile, SiteStats};
use crate::{Options, RunReport, What};
use anyhow::{bail, Context, Result};
use cache::HierarchyConfig;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// A run that executed fewer guest instructions than this "exited at once".
pub const MIN_INSTRUCTIONS: u64 = 1_000_000;

/// Pipe capacity asked for (the default maximum for unprivileged users).
const PIPE_BYTES: i32 = 1 << 20;

/// The file descriptor lackey writes its trace to, in the valgrind process.
const TRACE_FD: i32 = 3;

pub fn run(what: &What, options: &Options) -> Result<(Profile, RunReport)> {
    let argv = match what {
        What::Command(argv) => argv,
        What::Pid(_) => bail!(
            "the sim backend runs the program under valgrind: it cannot attach to a running PID"
        ),
    };
    let config = match &options.cache {
        Some(config) => config.clone(),
        None => {
            HierarchyConfig::host().context("cannot read the host's cache sizes (pass --cache)")?
        }
    };
    let valgrind = resolve_program("valgrind")
        .context("the sim backend needs valgrind (apt-get install valgrind)")?;
    let program = command_for(argv)?; // checks the command exists before valgrind starts
    let (read_end, write_end) = pipe()?;
    // A large pipe lets valgrind run ahead while the reader batches its reads.
    // SAFETY: fcntl on a descriptor we own; failure only costs speed.
    unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    let mut command = Command::new(valgrind);
    command
        .args([
            "--tool=lackey",
            "--trace-mem=yes",
            "--trace-children=no",
            "-q",
        ])
        .arg(format!("--log-fd={TRACE_FD}"))
        .arg(program.get_program())
        .args(program.get_args());
    // SAFETY: runs in the forked child before exec; dup2/fcntl are async-signal-safe.
    // The closure owns the write end, so it is closed in msh when the Command is dropped
    // right after spawning, and the reader sees end-of-file when valgrind exits.
    unsafe {
        command.pre_exec(move || {
            let fd = write_end.as_raw_fd();
            let r = if fd == TRACE_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, TRACE_FD)
            };
            if r == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut hierarchy = cache::Hierarchy::new(&config);
    // A spinner on stderr (hidden when it is not a terminal): sim runs are long.
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sim: {bytes} of valgrind trace simulated ({bytes_per_sec}), {elapsed}",
        )
        .expect("a valid template"),
    );
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let reader_progress = progress.clone();
    let reader = std::thread::spawn(move || {
        let file = std::fs::File::from(read_end);
        trace::simulate(reader_progress.wrap_read(file), &mut hierarchy)
    });
    let collection = collect(
        &EventSpec::side_band_only(),
        Target::Command {
            command,
            display: argv[0].clone(),
        },
        options.duration,
    );
    let joined = reader.join();
    progress.finish_and_clear();
    let stats = joined
        .map_err(|_| anyhow::anyhow!("the trace reader panicked"))?
        .context("reading the valgrind trace")?;
    let collection = collection?;
    if stats.instructions < MIN_INSTRUCTIONS {
        bail!(
            "{} exited almost at once ({} instructions under valgrind): nothing to profile",
            argv[0],
            stats.instructions
        );
    }
    let root = collection.root_pid;
    let mut objects = ObjectCache::default();
    let mut counts: HashMap<(PathBuf, u64), SiteStats> = HashMap::new();
    let mut attributed = 0;
    let mut replaced = 0;
    for (&ip, load) in &stats.loads {
        let (located, path) = locate(&collection.processes, &mut objects, root, ip);
        let (image, vaddr) = match located {
            Located::Found(image, vaddr) => (image, vaddr),
            Located::Replaced => {
                replaced += load.llc_misses;
                continue;
            }
            Located::Unknown => continue,
        };
        // Lackey also reports implicit stack reads (pop, ret) and indirect branches
        // through memory: their misses count in the total, but they are not sites a
        // prefetch could be placed at, and `sample` cannot see them either.
        if !image.is_load_at(vaddr) {
            continue;
        }
        let Some(path) = path else { continue };
        let site = counts.entry((path, vaddr)).or_default();
        site.events += load.llc_misses;
        *site.executions.get_or_insert(0) += load.executions;
        attributed += load.llc_misses;
    }
    refuse_if_all_replaced(attributed, replaced)?;
    let profile = build_profile(
        "sim",
        &counts,
        stats.llc_load_misses,
        &mut objects,
        options.thresholds,
    );
    let model_rate = stats.accesses as f64 / stats.model_time.as_secs_f64().max(1e-9) / 1e6;
    let run_rate = stats.accesses as f64 / collection.wall.as_secs_f64().max(1e-9) / 1e6;
    let report = RunReport {
        backend: "sim".into(),
        events: stats.llc_load_misses,
        attributed,
        threads: 1,
        lost_records: collection.lost_records,
        wall: collection.wall,
        notes: replaced_note(replaced).into_iter().chain([
            format!(
                "sim: {} instructions, {} data accesses ({} loads) through {}",
                stats.instructions,
                stats.accesses,
                stats.load_accesses,
                config.describe()
            ),
            format!(
                "sim: cache model alone {model_rate:.1} M accesses/s ({:.2} s); whole run {run_rate:.1} M accesses/s ({:.2} s)",
                stats.model_time.as_secs_f64(),
                collection.wall.as_secs_f64()
            ),
        ])
        .collect(),
    };
    Ok((profile, report))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
