//! From per-load event counts to the profile: shares, miss ratios, the delinquency
//! thresholds, and the order the format promises.
use crate::elf::ObjectCache;
use crate::schema::{format_offset, Profile, ProfiledObject, Site, VERSION};
use std::collections::HashMap;
use std::path::PathBuf;

/// Which loads count as delinquent (only those are written to the profile).
///
/// A prefetch+yield at a load pays off only when the load misses often enough for the
/// saved stall (~165 ns from DRAM here) to outweigh the yield's cost on the hits, and
/// when it matters to the run as a whole. So a site must have at least `min_share` of
/// all the run's events and, when the backend knows how often the load executes, a
/// last-level-cache miss ratio of at least `min_miss_ratio`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub min_share: f64,
    pub min_miss_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_share: DEFAULT_MIN_SHARE,
            min_miss_ratio: DEFAULT_MIN_MISS_RATIO,
        }
    }
}

/// 5% of the run's samples (or simulated misses).
pub const DEFAULT_MIN_SHARE: f64 = 0.05;
/// One execution in five misses the last-level cache.
pub const DEFAULT_MIN_MISS_RATIO: f64 = 0.2;

/// Counts for one load.
#[derive(Debug, Clone, Copy, Default)]
pub struct SiteStats {
    /// Samples (or simulated LLC misses) attributed to the load.
    pub events: u64,
    /// How many times the load executed, when known.
    pub executions: Option<u64>,
}

/// Builds the profile from per-(object, ELF address) counts. `total_events` is the
/// denominator of `share`: every event of the run, attributed or not.
pub fn build_profile(
    backend: &str,
    counts: &HashMap<(PathBuf, u64), SiteStats>,
    total_events: u64,
    objects: &mut ObjectCache,
    thresholds: Thresholds,
) -> Profile {
    let mut by_object: HashMap<PathBuf, Vec<Site>> = HashMap::new();
    for ((path, address), stats) in counts {
        let share = stats.events as f64 / total_events.max(1) as f64;
        let miss_ratio = stats
            .executions
            .map(|n| stats.events as f64 / n.max(1) as f64)
            .map(|r| r.min(1.0));
        if share < thresholds.min_share || miss_ratio.is_some_and(|r| r < thresholds.min_miss_ratio)
        {
            continue;
        }
        let Some(image) = objects.get(path) else {
            continue;
        };
        by_object.entry(path.clone()).or_default().push(Site {
            offset: format_offset(*address),
            symbol: image.symbolize(*address),
            insn: image.disassemble(*address).unwrap_or_else(|| "?".into()),
            samples: stats.events,
            share,
            miss_ratio,
        });
    }
    let mut profiled: Vec<ProfiledObject> = by_object
        .into_iter()
        .filter_map(|(path, mut sites)| {
            sites.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.offset.cmp(&b.offset)));
            let build_id = objects.get(&path)?.build_id.clone();
            Some(ProfiledObject {
                path: path.to_string_lossy().into_owned(),
                build_id,
                sites,
            })
        })
        .collect();
    profiled.sort_by(|a, b| {
        b.sites[0]
            .share
            .total_cmp(&a.sites[0].share)
            .then(a.path.cmp(&b.path))
    });
    Profile {
        version: VERSION,
        backend: backend.to_owned(),
        objects: profiled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_filter_and_order() {
        let exe = std::env::current_exe().unwrap();
        let mut objects = ObjectCache::default();
        let mut counts = HashMap::new();
        counts.insert(
            (exe.clone(), 0x1000),
            SiteStats {
                events: 60,
                executions: Some(100),
            },
        );
        counts.insert(
            (exe.clone(), 0x2000),
            SiteStats {
                events: 30,
                executions: Some(40),
            },
        );
        counts.insert(
            (exe.clone(), 0x3000),
            SiteStats {
                events: 6,
                executions: Some(600),
            },
        ); // rarely misses
        counts.insert(
            (exe.clone(), 0x4000),
            SiteStats {
                events: 1,
                executions: Some(1),
            },
        ); // too small a share
        let profile = build_profile("sim", &counts, 100, &mut objects, Thresholds::default());
        assert_eq!(profile.objects.len(), 1);
        let sites = &profile.objects[0].sites;
        let offsets: Vec<&str> = sites.iter().map(|s| s.offset.as_str()).collect();
        assert_eq!(offsets, ["0x1000", "0x2000"]);
        assert_eq!(sites[0].miss_ratio, Some(0.6));
        assert_eq!(sites[1].share, 0.3);
        profile.validate().unwrap();
    }
}
