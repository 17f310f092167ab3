//! The HTML report in headless Chromium: the script ran (the site table is sorted by
//! samples, hottest first) and the page renders more than a blank page does.
mod common;

use msh_trace::record::{record, RecordOptions};
use msh_trace::source::{SourceKind, SourceOptions};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

fn chromium(dir: &Path, args: &[&str], page: &Path) -> Option<std::process::Output> {
    let profile = tempfile::tempdir_in(dir).unwrap();
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .ok()
}

#[test]
fn the_report_renders_and_sorts_in_chromium() {
    if Command::new("chromium").arg("--version").output().is_err() {
        eprintln!("chromium is not installed: the report is not tested in a browser here");
        return;
    }
    common::ensure_interposer();
    let dir = tempfile::tempdir().unwrap();
    let program = common::fixture("hotcold", dir.path());
    let db = dir.path().join("t.sqlite");
    record(&RecordOptions {
        db: db.clone(),
        name: Some("hot".into()),
        source: Some(SourceKind::Sample),
        source_options: SourceOptions {
            frequency_hz: 2000,
            every: 100,
        },
        command: vec![OsString::from(&program), OsString::from("20000000")],
    })
    .unwrap();
    let page = dir.path().join("report.html");
    msh_trace::report::run(&msh_trace::report::ReportArgs {
        db,
        run: None,
        output: page.clone(),
    })
    .unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(
            !html.contains(fetch),
            "nothing fetched from the network ({fetch})"
        );
    }

    let dom = chromium(dir.path(), &["--dump-dom"], &page).expect("chromium runs");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(r#"data-sorted="3 desc""#),
        "the script sorted the table"
    );
    let body = &dom[dom.find("<tbody>").expect("the table")..];
    let first_row = &body[..body.find("</tr>").unwrap()];
    assert!(
        first_row.contains("main+"),
        "the hottest site first: {first_row}"
    );

    let shot = dir.path().join("report.png");
    let blank_page = dir.path().join("blank.html");
    std::fs::write(&blank_page, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank = dir.path().join("blank.png");
    for (page, png) in [(&page, &shot), (&blank_page, &blank)] {
        chromium(
            dir.path(),
            &[
                &format!("--screenshot={}", png.display()),
                "--window-size=1200,1600",
            ],
            page,
        )
        .expect("chromium runs");
    }
    let (shot, blank) = (
        std::fs::read(&shot).unwrap(),
        std::fs::read(&blank).unwrap(),
    );
    assert_eq!(&shot[1..4], b"PNG");
    // A blank page compresses to almost nothing; the heatmap, text and table do not.
    assert!(
        shot.len() > 4 * blank.len(),
        "report {} bytes, blank {} bytes",
        shot.len(),
        blank.len()
    );
}
