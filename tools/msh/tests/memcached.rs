//! memcached (Debian's, nobody here wrote it) under `msh run` with compute
//! scavengers serves a bounded loopback load with correct responses.
use msh_cli::memcached;
use msh_tests::*;
use std::time::Duration;

#[test]
fn memcached_under_msh_run_answers_correctly() {
    let scavenger = format!("{}/compute_scav.so", scratch("memcached").display());
    let dir = make_examples("memcached", &[&scavenger]);
    let pool = dir.join("pool");
    let line = format!("{}/compute_scav.so 1000\n", dir.display());
    std::fs::write(&pool, line.repeat(4)).unwrap();
    let prefix: Vec<String> = vec![
        env!("CARGO_BIN_EXE_msh").into(),
        "run".into(),
        "--pool".into(),
        pool.display().to_string(),
        "--stats".into(),
        "--".into(),
    ];
    let server =
        memcached::start(&prefix, 4, &dir.join("memcached.log")).expect("memcached under msh run");
    let load =
        memcached::load(server.port, 4, 2000, Duration::from_secs(30)).expect("correct responses");
    assert_eq!(
        load.requests,
        4 * 2000 * 2,
        "every request was answered in time"
    );
    let stderr = server.stop();
    assert!(!stderr.contains("msh: "), "msh complained: {stderr}");
    assert!(
        stderr.contains("msh-stats: "),
        "memcached exited through msh's exit path: {stderr}"
    );
}
