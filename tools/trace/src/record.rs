//! `msh trace -o DB -- CMD`: one traced run, from start to the committed database row.
use crate::alloc::{lifetimes, Attributor};
use crate::db::{self, AccessRow, RunRow};
use crate::events;
use crate::source::{self, Access, SourceKind, SourceOptions};
use crate::symbols::Symbolizer;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// What to run and where to store it.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The database (created if missing).
    pub db: PathBuf,
    /// The run's name (default: the program's name and the run number).
    pub name: Option<String>,
    /// The access source (default: [`source::best`]).
    pub source: Option<SourceKind>,
    /// Source rates.
    pub source_options: SourceOptions,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// What a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordSummary {
    /// The run's name.
    pub name: String,
    /// Its row id.
    pub run_id: i64,
    /// The source used.
    pub access_source: SourceKind,
    /// Accesses written.
    pub accesses: u64,
    /// Of which in an allocation.
    pub attributed: u64,
    /// Allocations written.
    pub allocations: u64,
    /// Wall time of the traced run.
    pub wall_ns: u64,
    /// Samples the source took that gave no address.
    pub unaddressed: u64,
}

/// The interposer: `$MSH_TRACE_INTERPOSER`, else `libmshtrace.so` next to the running
/// executable or in `../lib` (an installed msh).
pub fn find_interposer() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MSH_TRACE_INTERPOSER") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("MSH_TRACE_INTERPOSER={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    for candidate in [
        dir.join("libmshtrace.so"),
        dir.join("../libmshtrace.so"),
        dir.join("../lib/libmshtrace.so"),
    ] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find libmshtrace.so next to {} (build it: cargo build --release -p msh-trace-interposer, or set MSH_TRACE_INTERPOSER)",
        exe.display()
    )
}

/// A file the interposer appends to, removed when dropped.
struct EventFile(PathBuf);

impl EventFile {
    fn create() -> Result<EventFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir();
        for attempt in 0..100u32 {
            let path = dir.join(format!(
                "msh-trace-{}-{}-{attempt}.events",
                std::process::id(),
                source::now_ns()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => return Ok(EventFile(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!("cannot create a temporary file in {}", dir.display())
    }
}

impl Drop for EventFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn exit_text(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (_, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".into(),
    }
}

/// Runs the command under the interposer and the access source, and appends the run
/// to the database in one transaction.
pub fn record(options: &RecordOptions) -> Result<RecordSummary> {
    let Some(program) = options.command.first() else {
        bail!("no command given (usage: msh trace -o DB.sqlite -- CMD ARGS…)");
    };
    // Everything that can be refused is refused before the program runs.
    let mut conn = db::open(&options.db, true)?;
    let program = msh_profile::launch::resolve_program(&program.to_string_lossy())?;
    let interposer = find_interposer()?;
    let kind = options.source.unwrap_or_else(source::best);
    let mut access_source = source::open(kind, options.source_options)?;
    let display = options
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let event_file = EventFile::create()?;
    let mut preload = OsString::from(&interposer);
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let env = vec![
        (OsString::from("LD_PRELOAD"), preload),
        (
            OsString::from("MSH_TRACE_FILE"),
            event_file.0.clone().into_os_string(),
        ),
    ];
    let mut argv = options.command.clone();
    argv[0] = program.into_os_string();

    let start_ns = source::now_ns();
    let started_at = utc_now();
    let mut accesses: Vec<Access> = Vec::new();
    let run = access_source.run(&argv, &env, &mut |a| accesses.push(a))?;
    match (run.exit.code(), run.exit.signal()) {
        (Some(0), _) => {}
        (Some(code), _) => bail!("{display} exited with status {code}: no run written"),
        (_, Some(signal)) => bail!("{display} was killed by signal {signal}: no run written"),
        _ => bail!("{display} ended abnormally: no run written"),
    }
    let log = events::read(&event_file.0, run.pid, start_ns)?;
    let allocations = lifetimes(&log.events);

    // Attribution walks the accesses in order of the latest time each can have.
    accesses.sort_by_key(|a| a.latest_ns);
    let mut attributor = Attributor::new(&allocations);
    let mut attributed = 0;
    let rows: Vec<AccessRow> = accesses
        .iter()
        .map(|a| {
            let time_ns = a.time_ns.saturating_sub(start_ns);
            let allocation_id = attributor.find_in_window(
                a.earliest_ns.saturating_sub(start_ns),
                a.latest_ns.saturating_sub(start_ns),
                a.address,
            );
            attributed += allocation_id.is_some() as u64;
            AccessRow {
                time_ns,
                address: a.address,
                is_write: a.is_write,
                ip: a.ip,
                thread: a.thread,
                allocation_id,
            }
        })
        .collect();

    let mut symbolizer = Symbolizer::new(&log.maps);
    let sites: Vec<(String, String)> = allocations
        .iter()
        .map(|a| {
            let names: Vec<String> = a.stack.iter().map(|&ip| symbolizer.name(ip)).collect();
            let site = names.first().cloned().unwrap_or_else(|| "?".into());
            (site, names.join(" <- "))
        })
        .collect();

    let name = match &options.name {
        Some(name) => name.clone(),
        None => {
            let base = Path::new(&options.command[0])
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let n: i64 = conn.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?;
            format!("{base}-{}", n + 1)
        }
    };
    let row = RunRow {
        name: name.clone(),
        command: display,
        started_at,
        wall_ns: run.wall_ns,
        user_ns: run.rusage.ru_utime.tv_sec as u64 * 1_000_000_000
            + run.rusage.ru_utime.tv_usec as u64 * 1000,
        sys_ns: run.rusage.ru_stime.tv_sec as u64 * 1_000_000_000
            + run.rusage.ru_stime.tv_usec as u64 * 1000,
        max_rss_kib: run.rusage.ru_maxrss as u64,
        exit: exit_text(run.exit),
        access_source: kind.name().into(),
        access_measures: run.measures.clone(),
        sample_period: run.sample_period,
        samples_requested: run.requested,
        samples_recorded: rows.len() as u64,
        lost: run.lost,
        allocation_events: log.events.len() as u64,
        allocation_events_dropped: log.dropped,
    };
    let run_id = db::insert_run(&mut conn, &row, &allocations, &sites, &rows)
        .with_context(|| format!("cannot write the run to {}", options.db.display()))?;
    Ok(RecordSummary {
        name,
        run_id,
        access_source: kind,
        accesses: rows.len() as u64,
        attributed,
        allocations: allocations.len() as u64,
        wall_ns: run.wall_ns,
        unaddressed: run.unaddressed,
    })
}
