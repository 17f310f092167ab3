//! From per-load event counts to the profile: shares, miss ratios, footprints, the
//! delinquency thresholds, and the order the format promises.
use crate::address::looks_like_pointer;
use crate::elf::ObjectCache;
use crate::footprint::{self, MissModel, PrivateCaches};
use crate::schema::{Profile, ProfiledObject, Site, VERSION};
use std::collections::{BTreeMap, HashMap};
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
    /// Least share of the run's events a site must have (0–1).
    pub min_share: f64,
    /// Least last-level-cache miss ratio, when the backend knows it (0–1).
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
#[derive(Debug, Clone, Default)]
pub struct SiteStats {
    /// Samples (or simulated LLC misses) attributed to the load.
    pub events: u64,
    /// How many times the load executed, when known.
    pub executions: Option<u64>,
    /// Addresses its sampled executions read.
    pub addresses: Vec<u64>,
    /// Values it left in its own base register (see [`crate::address::Recovery::Chased`]).
    pub chased: Vec<u64>,
    /// The register it overwrote, for the `chased` values (named if they are not pointers).
    pub chased_register: Option<String>,
    /// Samples whose address could not be recovered, by reason.
    pub unrecoverable: BTreeMap<String, u64>,
}

/// A chase is believed when at least this fraction of the chased values are pointers.
const CHASED_POINTERS: f64 = 0.9;

/// What the sampled addresses of one site amount to.
struct AddressVerdict {
    footprint: Option<footprint::Footprint>,
    /// The `address` field.
    how: Option<String>,
}

impl SiteStats {
    fn address_verdict(&self) -> AddressVerdict {
        let unrecoverable: u64 = self.unrecoverable.values().sum();
        let pointers = self
            .chased
            .iter()
            .filter(|&&v| looks_like_pointer(v))
            .count();
        let chase_believed = !self.chased.is_empty()
            && pointers as f64 >= CHASED_POINTERS * self.chased.len() as f64;
        let mut reasons = self.unrecoverable.clone();
        if !self.chased.is_empty() && !chase_believed {
            let register = self
                .chased_register
                .clone()
                .unwrap_or_else(|| "base".into());
            *reasons
                .entry(format!("{register} overwritten"))
                .or_default() += self.chased.len() as u64;
        }
        let (addresses, how) = if self.addresses.len() as u64 >= unrecoverable
            && self.addresses.len() >= self.chased.len()
            && !self.addresses.is_empty()
        {
            (&self.addresses, "recovered")
        } else if chase_believed && self.chased.len() as u64 >= unrecoverable {
            (&self.chased, "chased")
        } else if let Some((why, _)) = reasons.iter().max_by_key(|(_, n)| **n) {
            return AddressVerdict {
                footprint: None,
                how: Some(format!("unrecoverable: {why}")),
            };
        } else {
            return AddressVerdict {
                footprint: None,
                how: None,
            };
        };
        match footprint::estimate(addresses) {
            Some(f) => AddressVerdict {
                footprint: Some(f),
                how: Some(how.into()),
            },
            None => AddressVerdict {
                footprint: None,
                how: Some(format!(
                    "unrecoverable: only {} sampled addresses (need {})",
                    addresses.len(),
                    footprint::MIN_ADDRESSES
                )),
            },
        }
    }
}

/// How footprints become `est_miss_ratio` (see [`MissModel`]).
#[derive(Debug, Clone, Copy)]
pub enum MissEstimate {
    /// Footprints are reported, no miss ratio is estimated.
    None,
    /// Every access past L2 counts as a DRAM access.
    ByCapacity(PrivateCaches),
    /// Past L2, the footprint's read latency on this machine decides.
    Measured(PrivateCaches),
}

/// Builds the profile from per-(object, ELF address) counts. `total_events` is the
/// denominator of `share`: every event of the run, attributed or not. Footprints are
/// held against this machine's caches, measured.
pub fn build_profile(
    backend: &str,
    counts: &HashMap<(PathBuf, u64), SiteStats>,
    total_events: u64,
    objects: &mut ObjectCache,
    thresholds: Thresholds,
) -> Profile {
    let estimate = PrivateCaches::host().map_or(MissEstimate::None, MissEstimate::Measured);
    build_profile_with(backend, counts, total_events, objects, thresholds, estimate)
}

/// [`build_profile`] with the miss estimate given.
pub fn build_profile_with(
    backend: &str,
    counts: &HashMap<(PathBuf, u64), SiteStats>,
    total_events: u64,
    objects: &mut ObjectCache,
    thresholds: Thresholds,
    estimate: MissEstimate,
) -> Profile {
    let share_of = |stats: &SiteStats| stats.events as f64 / total_events.max(1) as f64;
    // Verdicts first: the model measures, once, the footprints of the sites that may
    // be written.
    let verdicts: Vec<(&(PathBuf, u64), &SiteStats, AddressVerdict)> = counts
        .iter()
        .map(|(key, stats)| (key, stats, stats.address_verdict()))
        .collect();
    let model = match estimate {
        MissEstimate::None => None,
        MissEstimate::ByCapacity(caches) => Some(MissModel::by_capacity(caches)),
        MissEstimate::Measured(caches) => {
            let footprints: Vec<u64> = verdicts
                .iter()
                .filter(|(_, stats, _)| share_of(stats) >= thresholds.min_share)
                .filter_map(|(_, _, verdict)| verdict.footprint.map(|f| f.bytes))
                .collect();
            Some(MissModel::measure(caches, &footprints))
        }
    };
    let mut by_object: HashMap<PathBuf, Vec<Site>> = HashMap::new();
    for ((path, address), stats, verdict) in verdicts {
        let share = share_of(stats);
        let miss_ratio = stats
            .executions
            .map(|n| stats.events as f64 / n.max(1) as f64)
            .map(|r| r.min(1.0));
        let footprint_bytes = verdict.footprint.map(|f| f.bytes);
        let est_miss_ratio = footprint_bytes
            .zip(model.as_ref())
            .map(|(bytes, model)| model.dram_fraction(bytes));
        // A load whose footprint fits in L2 is never delinquent, whatever the threshold.
        if share < thresholds.min_share
            || miss_ratio.is_some_and(|r| r < thresholds.min_miss_ratio)
            || est_miss_ratio.is_some_and(|r| r == 0.0 || r < thresholds.min_miss_ratio)
        {
            continue;
        }
        let Some(image) = objects.get(path) else {
            continue;
        };
        by_object.entry(path.clone()).or_default().push(Site {
            miss_ratio,
            weight: Some(share * est_miss_ratio.unwrap_or(1.0)),
            footprint_bytes,
            est_miss_ratio,
            address: verdict.how,
            decided_by: Some(backend.to_owned()),
            ..Site::new(
                *address,
                image.symbolize(*address),
                image.disassemble(*address).unwrap_or_else(|| "?".into()),
                stats.events,
                share,
            )
        });
    }
    let mut profiled: Vec<ProfiledObject> = by_object
        .into_iter()
        .filter_map(|(path, mut sites)| {
            sort_sites(&mut sites);
            let build_id = objects.get(&path)?.build_id.clone();
            Some(ProfiledObject {
                path: path.to_string_lossy().into_owned(),
                build_id,
                sites,
            })
        })
        .collect();
    sort_objects(&mut profiled);
    Profile {
        version: VERSION,
        backend: backend.to_owned(),
        objects: profiled,
    }
}

/// The order the format promises: by weight, descending (ties by offset).
pub fn sort_sites(sites: &mut [Site]) {
    sites.sort_by(|a, b| {
        b.weight()
            .total_cmp(&a.weight())
            .then(a.offset.cmp(&b.offset))
    });
}

/// Objects by the weight of their top site, descending; objects without sites last.
pub fn sort_objects(objects: &mut [ProfiledObject]) {
    let top = |o: &ProfiledObject| o.sites.first().map_or(-1.0, Site::weight);
    objects.sort_by(|a, b| top(b).total_cmp(&top(a)).then(a.path.cmp(&b.path)));
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
                ..SiteStats::default()
            },
        );
        counts.insert(
            (exe.clone(), 0x2000),
            SiteStats {
                events: 30,
                executions: Some(40),
                ..SiteStats::default()
            },
        );
        counts.insert(
            (exe.clone(), 0x3000),
            SiteStats {
                events: 6,
                executions: Some(600),
                ..SiteStats::default()
            },
        ); // rarely misses
        counts.insert(
            (exe.clone(), 0x4000),
            SiteStats {
                events: 1,
                executions: Some(1),
                ..SiteStats::default()
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

    fn spread(base: u64, bytes: u64, n: u64) -> Vec<u64> {
        (0..n).map(|i| base + (i * 0x9e37_79b9) % bytes).collect()
    }

    #[test]
    fn footprints_rank_and_filter_sampled_loads() {
        let exe = std::env::current_exe().unwrap();
        let mut objects = ObjectCache::default();
        let caches = MissEstimate::ByCapacity(PrivateCaches {
            l1: 48 << 10,
            l2: 2 << 20,
        });
        let mut counts = HashMap::new();
        // The longest loop, over a 16 KiB table: fits in L1, never delinquent.
        counts.insert(
            (exe.clone(), 0x1000),
            SiteStats {
                events: 50,
                addresses: spread(0x5000_0000, 16 << 10, 400),
                ..SiteStats::default()
            },
        );
        // Probes into 256 MiB: ranked by share × (1 − 2 MiB / 256 MiB).
        counts.insert(
            (exe.clone(), 0x2000),
            SiteStats {
                events: 30,
                addresses: spread(0x7f00_0000_0000, 256 << 20, 400),
                ..SiteStats::default()
            },
        );
        // A 4 MiB table: half its accesses leave L2; more samples, less weight.
        counts.insert(
            (exe.clone(), 0x3000),
            SiteStats {
                events: 40,
                addresses: spread(0x6000_0000, 4 << 20, 400),
                ..SiteStats::default()
            },
        );
        // A chase whose addresses are gone: ranked by its share alone, and says why.
        let mut unrecoverable = BTreeMap::new();
        unrecoverable.insert("rax overwritten".to_string(), 100);
        counts.insert(
            (exe.clone(), 0x4000),
            SiteStats {
                events: 10,
                unrecoverable,
                ..SiteStats::default()
            },
        );
        let profile = build_profile_with(
            "sample",
            &counts,
            130,
            &mut objects,
            Thresholds::default(),
            caches,
        );
        profile.validate().unwrap();
        let sites = &profile.objects[0].sites;
        let offsets: Vec<&str> = sites.iter().map(|s| s.offset.as_str()).collect();
        assert_eq!(offsets, ["0x2000", "0x3000", "0x4000"]);
        assert!(sites[0].est_miss_ratio.unwrap() > 0.99);
        assert!((0.4..0.6).contains(&sites[1].est_miss_ratio.unwrap()));
        assert_eq!(sites[0].address.as_deref(), Some("recovered"));
        assert_eq!(
            sites[2].address.as_deref(),
            Some("unrecoverable: rax overwritten")
        );
        assert_eq!(sites[2].est_miss_ratio, None);
        assert!(sites
            .iter()
            .all(|s| s.decided_by.as_deref() == Some("sample")));
    }

    #[test]
    fn a_chase_is_believed_only_through_pointers() {
        let chase = SiteStats {
            events: 10,
            chased: spread(0x5555_0000_0000, 256 << 20, 100),
            chased_register: Some("rax".into()),
            ..SiteStats::default()
        };
        let verdict = chase.address_verdict();
        assert_eq!(verdict.how.as_deref(), Some("chased"));
        assert!(verdict.footprint.unwrap().bytes > 200 << 20);
        let integers = SiteStats {
            chased: (0..100).collect(),
            ..chase
        };
        assert_eq!(
            integers.address_verdict().how.as_deref(),
            Some("unrecoverable: rax overwritten")
        );
    }
}
