//! Bad input: one-line errors, and the database never half-written.
mod common;

use msh_trace::record::{record, RecordOptions};
use msh_trace::source::{SourceKind, SourceOptions};
use rusqlite::Connection;
use std::ffi::OsString;
use std::path::Path;

fn try_record(db: &Path, source: SourceKind, command: &[&str]) -> String {
    let options = RecordOptions {
        db: db.to_owned(),
        name: None,
        source: Some(source),
        source_options: SourceOptions {
            frequency_hz: 1000,
            every: 100,
        },
        command: command.iter().map(OsString::from).collect(),
    };
    let err = format!("{:#}", record(&options).unwrap_err());
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

fn runs(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn missing_and_failing_commands_leave_the_database_unchanged() {
    common::ensure_interposer();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.sqlite");
    let err = try_record(&db, SourceKind::Sample, &["no-such-command-msh-trace"]);
    assert_eq!(err, "command not found: no-such-command-msh-trace");
    assert_eq!(runs(&db), 0);
    let err = try_record(&db, SourceKind::Sample, &["false"]);
    assert!(
        err.contains("exited with status 1") && err.contains("no run written"),
        "{err}"
    );
    assert_eq!(runs(&db), 0);
    let err = try_record(&db, SourceKind::Sample, &[]);
    assert!(err.starts_with("no command given"), "{err}");
}

#[test]
fn databases_not_ours_or_newer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = try_record(&other, SourceKind::Sample, &["true"]);
    assert!(err.contains("not an msh trace database"), "{err}");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "hello, this is not a database at all, just some text in a file\n".repeat(100),
    )
    .unwrap();
    let err = try_record(&text, SourceKind::Sample, &["true"]);
    assert!(
        err.contains("notes.txt") && err.contains("not a database"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(&text).unwrap().starts_with("hello"),
        "left as it was"
    );

    let newer = dir.path().join("newer.sqlite");
    msh_trace::db::open(&newer, true)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = try_record(&newer, SourceKind::Sample, &["true"]);
    assert!(err.contains("newer msh (schema 99"), "{err}");
}

#[test]
fn sources_this_machine_lacks_say_why() {
    let pmu = msh_trace::source::open(
        SourceKind::Pmu,
        SourceOptions {
            frequency_hz: 1000,
            every: 1,
        },
    );
    let err = format!(
        "{:#}",
        pmu.err()
            .expect("the pmu source is never silently accepted")
    );
    assert!(err.starts_with("access source pmu: "), "{err}");
    let damon = msh_trace::source::open(
        SourceKind::Damon,
        SourceOptions {
            frequency_hz: 1000,
            every: 1,
        },
    );
    let err = format!("{:#}", damon.err().expect("damon is not built"));
    assert!(err.starts_with("access source damon: "), "{err}");
}
