//! `auto`: the most accurate backend that fits this machine and this program.
//!
//! 1. `pmu`, when the machine has a hardware PMU whose load-miss event the kernel
//!    accepts: precise samples of real misses decide every site.
//! 2. Otherwise `sample` (cpu-clock with registers: stall time weighted by the
//!    footprint's estimated miss ratio), then a `sim` run of at most
//!    [`Options::confirm_for`] over the same command checks its top
//!    [`CONFIRMED_SITES`] sites. `sim` models the private caches only (L1, L2 from
//!    sysfs, the sizes sysfs gets right), so it answers how often the load leaves the
//!    core: an upper bound on `est_miss_ratio`. A site `sim` saw missing less than
//!    `--min-miss-ratio` is dropped; one it saw missing more is `decided_by: sim`
//!    with `sim`'s ratio in `miss_ratio`; one it did not reach in time stays
//!    `decided_by: sample`.
//!
//! Every fallback says so in one line, in the words of [`crate::unavailable`].
use crate::footprint::PrivateCaches;
use crate::schema::Profile;
use crate::sim::cache::HierarchyConfig;
use crate::{pmu, sample, sim, target, unavailable, Backend, Options, RunReport, Thresholds, What};
use anyhow::Result;
use std::collections::HashMap;
use std::time::Duration;

/// The confirming `sim` run's default time limit.
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(10);

/// How many of `sample`'s top sites `sim` is asked about.
pub const CONFIRMED_SITES: usize = 5;

/// Runs `auto` (see the module documentation).
pub fn run(what: &What, options: &Options) -> Result<(Profile, RunReport)> {
    let no_pmu = match pmu::choose() {
        Ok(chosen) => {
            let (mut profile, report) =
                pmu::run_chosen(chosen, target(what)?, options.duration, options.thresholds)?;
            profile.backend = "auto".into();
            return Ok((profile, report));
        }
        Err(pmu::NoPmu(why)) => {
            unavailable("pmu", &format!("no hardware PMU: {why}"), "using sample")
        }
    };
    let (mut profile, mut report) = sample::run(
        target(what)?,
        options.frequency_hz,
        options.sample_registers,
        options.duration,
        options.thresholds,
    )?;
    profile.backend = "auto".into();
    report.backend = "auto".into();
    report.notes.insert(0, no_pmu);
    report.notes.push(confirm(&mut profile, what, options));
    Ok((profile, report))
}

/// Asks `sim` about the top sites of `profile`; returns the one line that says what
/// came of it.
fn confirm(profile: &mut Profile, what: &What, options: &Options) -> String {
    let keep = "sample decided every site";
    if options.confirm_for.is_zero() {
        return unavailable("sim", "not asked to confirm", keep);
    }
    if crate::collect::stopped_by().is_some() {
        return unavailable("sim", "the run was stopped by a signal", keep);
    }
    if matches!(what, What::Pid(_)) {
        return unavailable("sim", "it cannot attach to a running process", keep);
    }
    let Some(private) = private_caches(options) else {
        return unavailable("sim", "no cache sizes in sysfs", keep);
    };
    // A run bounded by --duration is not made longer than twice that by confirming.
    let limit = options
        .duration
        .map_or(options.confirm_for, |d| d.min(options.confirm_for));
    let sim_options = Options {
        backend: Backend::Sim,
        duration: Some(limit),
        cache: Some(private),
        // Every load sim sees, with its ratio: the verdict is made here.
        thresholds: Thresholds {
            min_share: 0.0,
            min_miss_ratio: 0.0,
        },
        ..options.clone()
    };
    let simulated = match sim::run(what, &sim_options) {
        Ok((simulated, _)) => simulated,
        Err(err) => return unavailable("sim", &format!("{err:#}"), keep),
    };
    let ratios: HashMap<(&str, &str), Option<f64>> = simulated
        .objects
        .iter()
        .flat_map(|o| {
            o.sites
                .iter()
                .map(move |s| ((o.build_id.as_str(), s.offset.as_str()), s.miss_ratio))
        })
        .collect();
    let verdicts = judge(profile, &ratios, options.thresholds.min_miss_ratio);
    format!(
        "sim: checked sample's top {} sites for {:.0} s over L1+L2 only: {} confirmed, {} refuted (dropped), {} not reached",
        verdicts.confirmed + verdicts.refuted + verdicts.unreached,
        limit.as_secs_f64(),
        verdicts.confirmed,
        verdicts.refuted,
        verdicts.unreached
    )
}

/// The hierarchy `sim` models to confirm: L1 and L2 of `--cache` or of this host.
fn private_caches(options: &Options) -> Option<HierarchyConfig> {
    let full = match &options.cache {
        Some(config) => config.clone(),
        None => HierarchyConfig::host().ok()?,
    };
    PrivateCaches::from_config(&full)?;
    Some(HierarchyConfig {
        levels: full.levels.into_iter().take(2).collect(),
    })
}

#[derive(Debug, Default, PartialEq)]
struct Verdicts {
    confirmed: usize,
    refuted: usize,
    unreached: usize,
}

/// Applies `sim`'s miss ratios (by build-id and offset) to the top sites of `profile`.
fn judge(
    profile: &mut Profile,
    ratios: &HashMap<(&str, &str), Option<f64>>,
    min_miss_ratio: f64,
) -> Verdicts {
    let mut ranked: Vec<(f64, usize, usize)> = profile
        .objects
        .iter()
        .enumerate()
        .flat_map(|(o, object)| {
            object
                .sites
                .iter()
                .enumerate()
                .map(move |(s, site)| (site.weight(), o, s))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut verdicts = Verdicts::default();
    let mut refuted = Vec::new();
    for &(_, o, s) in ranked.iter().take(CONFIRMED_SITES) {
        let object = &mut profile.objects[o];
        let site = &mut object.sites[s];
        match ratios.get(&(object.build_id.as_str(), site.offset.as_str())) {
            Some(Some(ratio)) if *ratio < min_miss_ratio || *ratio == 0.0 => {
                verdicts.refuted += 1;
                refuted.push((o, s));
            }
            Some(Some(ratio)) => {
                verdicts.confirmed += 1;
                site.miss_ratio = Some(*ratio);
                site.decided_by = Some("sim".into());
            }
            _ => verdicts.unreached += 1,
        }
    }
    refuted.sort_unstable_by(|a, b| b.cmp(a));
    for (o, s) in refuted {
        profile.objects[o].sites.remove(s);
    }
    profile.objects.retain(|o| !o.sites.is_empty());
    crate::sites::sort_objects(&mut profile.objects);
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ProfiledObject, Site, VERSION};

    #[test]
    fn sim_confirms_refutes_or_leaves_sample_s_sites() {
        let site = |offset, weight: f64| Site {
            weight: Some(weight),
            decided_by: Some("sample".into()),
            ..Site::new(offset, "f".into(), "mov".into(), 10, weight)
        };
        let mut profile = Profile {
            version: VERSION,
            backend: "auto".into(),
            objects: vec![ProfiledObject {
                path: "/x".into(),
                build_id: "ab".into(),
                sites: vec![site(0x10, 0.5), site(0x20, 0.3), site(0x30, 0.1)],
            }],
        };
        let mut ratios = HashMap::new();
        ratios.insert(("ab", "0x10"), Some(0.9));
        ratios.insert(("ab", "0x20"), Some(0.01));
        let verdicts = judge(&mut profile, &ratios, 0.2);
        assert_eq!(
            verdicts,
            Verdicts {
                confirmed: 1,
                refuted: 1,
                unreached: 1
            }
        );
        let sites = &profile.objects[0].sites;
        assert_eq!(sites.len(), 2);
        assert_eq!(
            (sites[0].decided_by.as_deref(), sites[0].miss_ratio),
            (Some("sim"), Some(0.9))
        );
        assert_eq!(
            (sites[1].offset.as_str(), sites[1].decided_by.as_deref()),
            ("0x30", Some("sample"))
        );
        profile.validate().unwrap();
    }

    #[test]
    fn fallback_lines_use_the_same_words() {
        let line = unavailable("pmu", "no hardware PMU: none here", "using sample");
        assert_eq!(
            line,
            "pmu: unavailable (no hardware PMU: none here); using sample"
        );
        assert!(pmu::NoPmu("none here".into())
            .to_string()
            .starts_with("pmu: unavailable (no hardware PMU: none here); "));
    }
}
