//! End to end: programs traced into a database, checked through SQL.
mod common;

use msh_trace::record::{record, RecordOptions};
use msh_trace::source::{SourceKind, SourceOptions};
use rusqlite::Connection;
use std::ffi::OsString;
use std::path::Path;

fn options(db: &Path, source: SourceKind, command: &[&str]) -> RecordOptions {
    RecordOptions {
        db: db.to_owned(),
        name: None,
        source: Some(source),
        source_options: SourceOptions {
            frequency_hz: 2000,
            every: 1000,
        },
        command: command.iter().map(OsString::from).collect(),
    }
}

/// (site, samples, reads, writes, first touch, last touch, never touched).
type Site = (String, i64, i64, i64, Option<i64>, Option<i64>, i64);

/// Each site's summary.
fn sites(conn: &Connection, run: i64) -> Vec<Site> {
    let mut stmt = conn
        .prepare(
            "SELECT site, samples, reads, writes, first_touch_ns, last_touch_ns, never_touched
             FROM site_summaries WHERE run_id = ?1",
        )
        .unwrap();
    stmt.query_map([run], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Sites of hotcold.c by the order of its mallocs in main: cold, gone, reused, hot.
fn site_of<'a>(all: &'a [Site], conn: &Connection, run: i64, nth: i64) -> &'a Site {
    let site: String = conn
        .query_row(
            "SELECT site FROM allocations WHERE run_id = ?1 AND kind = 'malloc' AND site LIKE 'main+%'
             ORDER BY start_ns LIMIT 1 OFFSET ?2",
            [run, nth],
            |r| r.get(0),
        )
        .unwrap();
    all.iter().find(|s| s.0 == site).unwrap()
}

fn no_access_outside_its_allocation(conn: &Connection, run: i64) {
    let outside: i64 = conn
        .query_row(
            "SELECT count(*) FROM accesses x JOIN allocations a ON a.run_id = x.run_id AND a.id = x.allocation_id
             WHERE x.run_id = ?1 AND (x.time_ns < a.start_ns OR (a.end_ns IS NOT NULL AND x.time_ns >= a.end_ns)
                   OR x.address < a.address OR x.address >= a.address + a.size)",
            [run],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outside, 0);
}

#[test]
fn sample_source_finds_the_hot_buffer_and_nothing_in_freed_memory() {
    common::ensure_interposer();
    let dir = tempfile::tempdir().unwrap();
    let program = common::fixture("hotcold", dir.path());
    let db = dir.path().join("t.sqlite");
    let summary = record(&options(
        &db,
        SourceKind::Sample,
        &[program.to_str().unwrap(), "40000000"],
    ))
    .unwrap();
    assert!(summary.accesses >= 50, "too few samples: {summary:?}");
    let conn = Connection::open(&db).unwrap();
    let all = sites(&conn, summary.run_id);
    let (cold, gone, hot) = (
        site_of(&all, &conn, 1, 0),
        site_of(&all, &conn, 1, 1),
        site_of(&all, &conn, 1, 3),
    );
    // The random reads of the hot buffer take most of the run: most samples are there.
    let attributed: i64 = all.iter().map(|s| s.1).sum();
    assert!(hot.1 * 2 > attributed, "hot {hot:?} of {attributed}");
    assert!(hot.1 > 10 * cold.1.max(1), "hot {hot:?} cold {cold:?}");
    // The freed block was never read: its site has no sample, one untouched allocation.
    assert_eq!((gone.1, gone.6), (0, 1));
    no_access_outside_its_allocation(&conn, summary.run_id);
}

#[test]
fn exact_source_sees_the_cold_buffer_written_once_and_the_reused_block() {
    common::ensure_interposer();
    if msh_trace::source::open(
        SourceKind::Exact,
        SourceOptions {
            frequency_hz: 1000,
            every: 1000,
        },
    )
    .is_err()
    {
        eprintln!(
            "qemu-x86_64 or the tracer plugin is missing: the exact source is not tested here"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = common::fixture("hotcold", dir.path());
    let db = dir.path().join("t.sqlite");
    let summary = record(&options(
        &db,
        SourceKind::Exact,
        &[program.to_str().unwrap(), "2000000"],
    ))
    .unwrap();
    let conn = Connection::open(&db).unwrap();
    let all = sites(&conn, summary.run_id);
    let (cold, gone, reused, hot) = (
        site_of(&all, &conn, 1, 0),
        site_of(&all, &conn, 1, 1),
        site_of(&all, &conn, 1, 2),
        site_of(&all, &conn, 1, 3),
    );
    // Cold: written (one in 1000 of 8 MiB of stores), never read.
    assert!(cold.3 > 100 && cold.2 == 0, "cold {cold:?}");
    // ... and untouched once the hot buffer's reads begin.
    let hot_first_read: i64 = conn
        .query_row(
            "SELECT min(x.time_ns) FROM accesses x JOIN allocations a ON a.run_id = x.run_id AND a.id = x.allocation_id
             WHERE x.run_id = ?1 AND a.site = ?2 AND x.is_write = 0",
            rusqlite::params![summary.run_id, hot.0],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        cold.5.unwrap() < hot_first_read,
        "cold last touched at {:?}, hot first read at {hot_first_read}",
        cold.5
    );
    // The freed block's address was reused: every access there went to the new block.
    assert_eq!((gone.1, gone.6), (0, 1), "gone {gone:?}");
    assert!(reused.2 > 1000, "reused {reused:?}");
    assert!(hot.2 > 1000, "hot {hot:?}");
    // (Times of exact accesses are interpolated within their batch, so the lifetime
    // check of the sample test does not apply here.)
}

#[test]
fn the_interposer_records_every_kind_from_every_thread() {
    common::ensure_interposer();
    let dir = tempfile::tempdir().unwrap();
    let program = common::fixture("allocs", dir.path());
    let db = dir.path().join("t.sqlite");
    let summary = record(&options(
        &db,
        SourceKind::Sample,
        &[program.to_str().unwrap()],
    ))
    .unwrap();
    let conn = Connection::open(&db).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [summary.run_id], |r| r.get(0)).unwrap() };
    for kind in ["malloc", "calloc", "realloc", "aligned", "mmap", "mremap"] {
        let n = count(&format!("SELECT count(*) FROM allocations WHERE run_id = ?1 AND kind = '{kind}' AND site LIKE 'main+%'"));
        assert!(n >= 1, "no {kind} from main");
    }
    // posix_memalign and aligned_alloc.
    assert_eq!(count("SELECT count(*) FROM allocations WHERE run_id = ?1 AND kind = 'aligned' AND site LIKE 'main+%'"), 2);
    // 4 threads × 1000 malloc/free pairs, each block ended by its free.
    let worker = count(
        "SELECT count(*) FROM allocations WHERE run_id = ?1 AND site LIKE 'worker+%' AND end_ns IS NOT NULL",
    );
    assert_eq!(worker, 4000);
    let threads = count(
        "SELECT count(DISTINCT thread) FROM allocations WHERE run_id = ?1 AND site LIKE 'worker+%'",
    );
    assert_eq!(threads, 4);
    // The mremap moved 1 MiB to 2 MiB; the munmap of its upper half left the lower half live.
    let pieces = count("SELECT count(*) FROM allocations WHERE run_id = ?1 AND kind = 'mremap' AND end_ns IS NULL AND size = 1048576");
    assert_eq!(pieces, 1);
}
