//! The trace database: SQLite, one file, any number of runs.
//!
//! Schema version [`SCHEMA_VERSION`] (`PRAGMA user_version`; `PRAGMA application_id`
//! is [`APPLICATION_ID`], "MSHT"). A file that is not SQLite, an SQLite database of
//! someone else's, or one from a newer schema is refused. Times are ns since the run's
//! start on CLOCK_MONOTONIC; addresses are stored as SQLite integers (user-space
//! addresses are below 2^63).
//!
//! ```sql
//! runs(id, name, command, started_at, wall_ns, user_ns, sys_ns, max_rss_kib, exit,
//!      access_source, access_measures, sample_period, samples_requested,
//!      samples_recorded, lost, allocation_events, allocation_events_dropped)
//! allocations(run_id, id, kind, address, size, start_ns, end_ns, thread, site, stack)
//!      -- end_ns NULL while live at exit; site = the symbolized call site,
//!      -- stack = the symbolized frames, innermost first, separated by " <- "
//! accesses(run_id, time_ns, address, is_write, ip, thread, allocation_id)
//!      -- is_write/ip/thread NULL where the source cannot tell;
//!      -- allocation_id NULL when the address was in no live allocation
//! site_summaries(run_id, site, allocations, bytes, samples, reads, writes,
//!      samples_per_byte_per_s, first_touch_ns, last_touch_ns, never_touched)
//! ```
//! A run is written in one transaction: a failed run leaves nothing behind.
use crate::alloc::Allocation;
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;
/// "MSHT" in `PRAGMA application_id`.
pub const APPLICATION_ID: i64 = 0x4d53_4854;

const SCHEMA: &str = "
CREATE TABLE runs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    command TEXT NOT NULL,
    started_at TEXT NOT NULL,
    wall_ns INTEGER NOT NULL,
    user_ns INTEGER NOT NULL,
    sys_ns INTEGER NOT NULL,
    max_rss_kib INTEGER NOT NULL,
    exit TEXT NOT NULL,
    access_source TEXT NOT NULL,
    access_measures TEXT NOT NULL,
    sample_period INTEGER,
    samples_requested INTEGER NOT NULL,
    samples_recorded INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    allocation_events INTEGER NOT NULL,
    allocation_events_dropped INTEGER NOT NULL
);
CREATE TABLE allocations(
    run_id INTEGER NOT NULL REFERENCES runs(id),
    id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    address INTEGER NOT NULL,
    size INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER,
    thread INTEGER NOT NULL,
    site TEXT NOT NULL,
    stack TEXT NOT NULL,
    PRIMARY KEY(run_id, id)
);
CREATE TABLE accesses(
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time_ns INTEGER NOT NULL,
    address INTEGER NOT NULL,
    is_write INTEGER,
    ip INTEGER,
    thread INTEGER,
    allocation_id INTEGER
);
CREATE INDEX accesses_by_time ON accesses(run_id, time_ns);
CREATE INDEX accesses_by_allocation ON accesses(run_id, allocation_id);
CREATE TABLE site_summaries(
    run_id INTEGER NOT NULL REFERENCES runs(id),
    site TEXT NOT NULL,
    allocations INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    reads INTEGER NOT NULL,
    writes INTEGER NOT NULL,
    samples_per_byte_per_s REAL NOT NULL,
    first_touch_ns INTEGER,
    last_touch_ns INTEGER,
    never_touched INTEGER NOT NULL,
    PRIMARY KEY(run_id, site)
);
";

/// Opens (creating if needed) a trace database, refusing one that is not ours.
pub fn open(path: &Path, create: bool) -> Result<Connection> {
    let what = || format!("trace database {}", path.display());
    if !create && !path.exists() {
        bail!("{}: no such file", what());
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            bail!("{}: not a regular file", what());
        }
    }
    let flags = if create {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = Connection::open_with_flags(path, flags).with_context(what)?;
    check_or_create(&conn).with_context(what)?;
    Ok(conn)
}

fn check_or_create(conn: &Connection) -> Result<()> {
    // The first read of a non-SQLite file fails here ("file is not a database").
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if tables == 0 && app == 0 {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        return Ok(());
    }
    if app != APPLICATION_ID {
        bail!("not an msh trace database (it has other tables)");
    }
    if version > SCHEMA_VERSION {
        bail!("written by a newer msh (schema {version}; this msh reads up to {SCHEMA_VERSION})");
    }
    if version < 1 {
        bail!("damaged msh trace database (schema version {version})");
    }
    Ok(())
}

/// One access, ready for the database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessRow {
    /// ns since the run's start.
    pub time_ns: u64,
    /// The data address.
    pub address: u64,
    /// None when the source cannot tell.
    pub is_write: Option<bool>,
    /// The accessing instruction, when known.
    pub ip: Option<u64>,
    /// The accessing thread, when known.
    pub thread: Option<u32>,
    /// The allocation holding the address then.
    pub allocation_id: Option<u64>,
}

/// The `runs` row of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRow {
    /// Unique within the database.
    pub name: String,
    /// The command line.
    pub command: String,
    /// UTC, RFC 3339.
    pub started_at: String,
    /// Wall time of the traced run.
    pub wall_ns: u64,
    /// User CPU time of the program.
    pub user_ns: u64,
    /// System CPU time of the program.
    pub sys_ns: u64,
    /// Peak resident set.
    pub max_rss_kib: u64,
    /// "exit 0", "signal 9", …
    pub exit: String,
    /// `pmu`, `sample`, `exact` or `damon`.
    pub access_source: String,
    /// What the source measures, in words.
    pub access_measures: String,
    /// ns between samples (`sample`), accesses between samples (`exact`).
    pub sample_period: Option<u64>,
    /// Samples the rate asked for over the run.
    pub samples_requested: u64,
    /// Accesses written.
    pub samples_recorded: u64,
    /// Samples or records the source lost.
    pub lost: u64,
    /// Events the interposer recorded.
    pub allocation_events: u64,
    /// Events it could not record.
    pub allocation_events_dropped: u64,
}

fn i(v: u64) -> i64 {
    v as i64
}

/// Writes one run in one transaction: nothing is left if any part fails.
pub fn insert_run(
    conn: &mut Connection,
    run: &RunRow,
    allocations: &[Allocation],
    sites: &[(String, String)],
    accesses: &[AccessRow],
) -> Result<i64> {
    let tx = conn.transaction()?;
    let taken: Option<i64> = tx
        .query_row("SELECT id FROM runs WHERE name = ?1", [&run.name], |r| {
            r.get(0)
        })
        .optional()?;
    if taken.is_some() {
        bail!(
            "a run named {:?} is already in the database (choose another --run-name)",
            run.name
        );
    }
    tx.execute(
        "INSERT INTO runs(name, command, started_at, wall_ns, user_ns, sys_ns, max_rss_kib, exit,
             access_source, access_measures, sample_period, samples_requested, samples_recorded,
             lost, allocation_events, allocation_events_dropped)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            run.name,
            run.command,
            run.started_at,
            i(run.wall_ns),
            i(run.user_ns),
            i(run.sys_ns),
            i(run.max_rss_kib),
            run.exit,
            run.access_source,
            run.access_measures,
            run.sample_period.map(i),
            i(run.samples_requested),
            i(run.samples_recorded),
            i(run.lost),
            i(run.allocation_events),
            i(run.allocation_events_dropped),
        ],
    )?;
    let run_id = tx.last_insert_rowid();
    {
        let mut insert = tx.prepare(
            "INSERT INTO allocations(run_id, id, kind, address, size, start_ns, end_ns, thread, site, stack)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (a, (site, stack)) in allocations.iter().zip(sites) {
            insert.execute(params![
                run_id,
                i(a.id),
                a.kind,
                i(a.address),
                i(a.size),
                i(a.start_ns),
                a.end_ns.map(i),
                a.thread,
                site,
                stack
            ])?;
        }
        let mut insert = tx.prepare(
            "INSERT INTO accesses(run_id, time_ns, address, is_write, ip, thread, allocation_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for a in accesses {
            insert.execute(params![
                run_id,
                i(a.time_ns),
                i(a.address),
                a.is_write,
                a.ip.map(i),
                a.thread,
                a.allocation_id.map(i)
            ])?;
        }
    }
    insert_summaries(&tx, run_id, allocations, sites, accesses)?;
    tx.commit()?;
    Ok(run_id)
}

/// Per allocation site: how many allocations and bytes, how many samples fell in
/// them (reads, writes), samples per byte per second of lifetime, first and last
/// touch, and how many allocations were never touched.
fn insert_summaries(
    tx: &rusqlite::Transaction,
    run_id: i64,
    allocations: &[Allocation],
    sites: &[(String, String)],
    accesses: &[AccessRow],
) -> Result<()> {
    #[derive(Default)]
    struct Site {
        allocations: u64,
        bytes: u64,
        byte_seconds: f64,
        samples: u64,
        reads: u64,
        writes: u64,
        first: Option<u64>,
        last: Option<u64>,
        never_touched: u64,
    }
    let run_end = accesses
        .iter()
        .map(|a| a.time_ns)
        .chain(allocations.iter().map(|a| a.end_ns.unwrap_or(a.start_ns)))
        .max()
        .unwrap_or(0);
    let mut touched: HashMap<u64, (u64, u64, u64, u64, u64)> = HashMap::new(); // id -> (n, r, w, first, last)
    for a in accesses {
        if let Some(id) = a.allocation_id {
            let t = touched.entry(id).or_insert((0, 0, 0, u64::MAX, 0));
            t.0 += 1;
            t.1 += (a.is_write == Some(false)) as u64;
            t.2 += (a.is_write == Some(true)) as u64;
            t.3 = t.3.min(a.time_ns);
            t.4 = t.4.max(a.time_ns);
        }
    }
    let mut by_site: HashMap<&str, Site> = HashMap::new();
    for (a, (site, _)) in allocations.iter().zip(sites) {
        let s = by_site.entry(site.as_str()).or_default();
        s.allocations += 1;
        s.bytes += a.size;
        let life = a
            .end_ns
            .unwrap_or(run_end)
            .saturating_sub(a.start_ns)
            .max(1);
        s.byte_seconds += a.size as f64 * life as f64 / 1e9;
        match touched.get(&a.id) {
            Some(&(n, r, w, first, last)) => {
                s.samples += n;
                s.reads += r;
                s.writes += w;
                s.first = Some(s.first.map_or(first, |f| f.min(first)));
                s.last = Some(s.last.map_or(last, |l| l.max(last)));
            }
            None => s.never_touched += 1,
        }
    }
    let mut insert = tx.prepare(
        "INSERT INTO site_summaries(run_id, site, allocations, bytes, samples, reads, writes,
             samples_per_byte_per_s, first_touch_ns, last_touch_ns, never_touched)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for (site, s) in by_site {
        let density = if s.byte_seconds > 0.0 {
            s.samples as f64 / s.byte_seconds
        } else {
            0.0
        };
        insert.execute(params![
            run_id,
            site,
            i(s.allocations),
            i(s.bytes),
            i(s.samples),
            i(s.reads),
            i(s.writes),
            density,
            s.first.map(i),
            s.last.map(i),
            i(s.never_touched)
        ])?;
    }
    Ok(())
}

/// A run as `list` and `stat` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    /// Row id.
    pub id: i64,
    /// See [`RunRow`].
    pub name: String,
    /// See [`RunRow`].
    pub command: String,
    /// See [`RunRow`].
    pub started_at: String,
    /// See [`RunRow`].
    pub wall_ns: i64,
    /// See [`RunRow`].
    pub user_ns: i64,
    /// See [`RunRow`].
    pub sys_ns: i64,
    /// See [`RunRow`].
    pub max_rss_kib: i64,
    /// See [`RunRow`].
    pub exit: String,
    /// See [`RunRow`].
    pub access_source: String,
    /// See [`RunRow`].
    pub access_measures: String,
    /// See [`RunRow`].
    pub sample_period: Option<i64>,
    /// See [`RunRow`].
    pub samples_requested: i64,
    /// See [`RunRow`].
    pub samples_recorded: i64,
    /// See [`RunRow`].
    pub lost: i64,
    /// See [`RunRow`].
    pub allocation_events: i64,
    /// Rows in `allocations`.
    pub allocations: i64,
}

/// Every run, oldest first.
pub fn runs(conn: &Connection) -> Result<Vec<RunInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, command, started_at, wall_ns, user_ns, sys_ns, max_rss_kib, exit,
                access_source, access_measures, sample_period, samples_requested,
                samples_recorded, lost, allocation_events,
                (SELECT count(*) FROM allocations a WHERE a.run_id = runs.id)
         FROM runs ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RunInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            command: r.get(2)?,
            started_at: r.get(3)?,
            wall_ns: r.get(4)?,
            user_ns: r.get(5)?,
            sys_ns: r.get(6)?,
            max_rss_kib: r.get(7)?,
            exit: r.get(8)?,
            access_source: r.get(9)?,
            access_measures: r.get(10)?,
            sample_period: r.get(11)?,
            samples_requested: r.get(12)?,
            samples_recorded: r.get(13)?,
            lost: r.get(14)?,
            allocation_events: r.get(15)?,
            allocations: r.get(16)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The run named `name`, or the latest run.
pub fn pick_run(conn: &Connection, name: Option<&str>) -> Result<RunInfo> {
    let all = runs(conn)?;
    match name {
        Some(name) => all.into_iter().find(|r| r.name == name).with_context(|| {
            format!("no run named {name:?} in the database (msh trace list shows them)")
        }),
        None => all
            .into_iter()
            .last()
            .context("the database has no runs yet"),
    }
}

/// One site's summary row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteSummary {
    /// The symbolized call site.
    pub site: String,
    /// Allocations made there.
    pub allocations: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Samples in them.
    pub samples: i64,
    /// Of which reads.
    pub reads: i64,
    /// Of which writes.
    pub writes: i64,
    /// Samples per byte per second of lifetime.
    pub samples_per_byte_per_s: f64,
    /// First sample in one of them.
    pub first_touch_ns: Option<i64>,
    /// Last sample in one of them.
    pub last_touch_ns: Option<i64>,
    /// Allocations no sample fell in.
    pub never_touched: i64,
}

/// A run's site summaries, most samples first.
pub fn site_summaries(conn: &Connection, run_id: i64) -> Result<Vec<SiteSummary>> {
    let mut stmt = conn.prepare(
        "SELECT site, allocations, bytes, samples, reads, writes, samples_per_byte_per_s,
                first_touch_ns, last_touch_ns, never_touched
         FROM site_summaries WHERE run_id = ?1 ORDER BY samples DESC, bytes DESC",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        Ok(SiteSummary {
            site: r.get(0)?,
            allocations: r.get(1)?,
            bytes: r.get(2)?,
            samples: r.get(3)?,
            reads: r.get(4)?,
            writes: r.get(5)?,
            samples_per_byte_per_s: r.get(6)?,
            first_touch_ns: r.get(7)?,
            last_touch_ns: r.get(8)?,
            never_touched: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
