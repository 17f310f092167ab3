//! Accuracy on the cases that mislead stall-time sampling (fixtures/accuracy.c): a
//! load that misses DRAM beside a loop that runs 1.5x longer over cached data. The
//! DRAM load must rank first and no cache-resident load above it, for `sample` and
//! for `auto` (here: sample, confirmed by a short sim run where it gets that far).
//! Each loop runs for a fixed CPU time, so the margins hold on a busy machine.
mod common;

use common::{argv, build};
use msh_profile::{profile, Backend, Options, Profile, Site, Thresholds, What};
use std::time::Duration;

/// CPU seconds of the DRAM loop (the cache-resident one runs 1.5x as long).
const SECONDS: &str = "0.6";

fn run(backend: Backend, mode: &str) -> Profile {
    let program = build("accuracy", "accuracy", &[]);
    let options = Options {
        backend,
        // Keep every load, so the test sees where the cache-resident ones rank.
        thresholds: Thresholds {
            min_share: 0.01,
            min_miss_ratio: 0.0,
        },
        confirm_for: Duration::from_secs(3),
        ..Options::default()
    };
    let (profile, report) = profile(&What::Command(argv(&program, &[mode, SECONDS])), &options)
        .expect("profiling the accuracy fixture");
    eprintln!("{report:?}");
    eprintln!("{}", msh_profile::show::render(&profile, 10));
    profile.validate().unwrap();
    profile
}

fn ranked(profile: &Profile) -> Vec<&Site> {
    let mut sites: Vec<&Site> = profile.objects.iter().flat_map(|o| &o.sites).collect();
    sites.sort_by(|a, b| b.weight().total_cmp(&a.weight()));
    sites
}

/// The top site is the load in `dram`; no site of `cached` ranks above it, and a
/// load whose footprint fits in L2 is not reported at all.
fn check(profile: &Profile, dram: &str, cached: &str, cached_fits_l2: bool) {
    let sites = ranked(profile);
    let top = sites.first().expect("a delinquent load");
    assert!(
        top.symbol.starts_with(&format!("{dram}+")),
        "top site {top:?}"
    );
    assert!(
        top.est_miss_ratio.is_some_and(|r| r > 0.9),
        "the DRAM load's footprint is known and large: {top:?}"
    );
    let cached_sites: Vec<&&Site> = sites
        .iter()
        .filter(|s| s.symbol.starts_with(&format!("{cached}+")))
        .collect();
    if cached_fits_l2 {
        assert!(
            cached_sites.is_empty(),
            "L1-resident loads reported: {cached_sites:?}"
        );
    }
    for site in cached_sites {
        assert!(site.weight() < top.weight(), "{site:?} above {top:?}");
        let ratio = site.est_miss_ratio.expect("a recovered footprint");
        assert!(
            ratio < 0.75,
            "an LLC-resident table costs less of a DRAM access: {site:?}"
        );
    }
}

#[test]
fn sample_ranks_random_probes_above_a_longer_l1_loop() {
    let profile = run(Backend::Sample, "probes");
    check(&profile, "dram_probes", "l1_loop", true);
    assert_eq!(ranked(&profile)[0].address.as_deref(), Some("recovered"));
}

#[test]
fn sample_ranks_a_dram_chase_above_a_longer_llc_loop() {
    let profile = run(Backend::Sample, "chase");
    check(&profile, "dram_chase", "llc_loop", false);
    assert_eq!(ranked(&profile)[0].address.as_deref(), Some("chased"));
}

#[test]
fn sample_ranks_a_streaming_scan_above_a_longer_l1_loop() {
    let profile = run(Backend::Sample, "scan");
    check(&profile, "dram_scan", "l1_loop", true);
}

#[test]
fn auto_ranks_random_probes_above_a_longer_l1_loop() {
    let profile = run(Backend::Auto, "probes");
    check(&profile, "dram_probes", "l1_loop", true);
    assert!(ranked(&profile).iter().all(|s| s.decided_by.is_some()));
}

#[test]
fn auto_ranks_a_dram_chase_above_a_longer_llc_loop() {
    let profile = run(Backend::Auto, "chase");
    check(&profile, "dram_chase", "llc_loop", false);
}

#[test]
fn auto_ranks_a_streaming_scan_above_a_longer_l1_loop() {
    let profile = run(Backend::Auto, "scan");
    check(&profile, "dram_scan", "l1_loop", true);
}
