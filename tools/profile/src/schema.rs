//! The profile file format, version 2: the contract between `msh profile` and its
//! readers (`msh profile show`, the binary rewriter).
//!
//! ```json
//! {"version": 2, "backend": "auto",
//!  "objects": [{"path": "/abs/path/prog", "build_id": "3f9a…",
//!               "sites": [{"offset": "0x1189", "symbol": "probe+0x9",
//!                          "insn": "add rbx,[rdx+rax*8]", "samples": 9120,
//!                          "share": 0.61, "miss_ratio": null, "weight": 0.60,
//!                          "footprint_bytes": 268435456, "est_miss_ratio": 0.99,
//!                          "address": "recovered", "decided_by": "sample"}]}]}
//! ```
//!
//! - `offset`: ELF virtual address of the load instruction within its object (what
//!   objdump and addr2line show), as a `0x` hex string.
//! - `build_id`: the GNU build-id note as lowercase hex or, when the object has none,
//!   `sha256:<hex>` of the whole file. Readers must refuse a profile whose id does not
//!   match the binary they are given.
//! - `samples`: events attributed to the site: cpu-clock samples (`sample`), precise
//!   load-miss samples (`pmu`, `import`), simulated last-level-cache misses (`sim`).
//! - `share`: `samples` divided by all events of the run (so shares of the listed sites
//!   need not add up to 1).
//! - `miss_ratio`: fraction of the load's executions that missed the last-level cache,
//!   when the backend knows executions (`sim`); `null` otherwise.
//!
//! Added in version 2 (all optional; a version-1 file reads as if they were absent):
//! - `weight`: the ranking key, `share` × `est_miss_ratio` when the backend estimated
//!   one, else `share`. Sites are sorted by it, descending, within each object;
//!   objects by the weight of their top site. Absent means `share`.
//! - `footprint_bytes`: the memory the load touches, estimated from the addresses of
//!   its sampled executions (`sample`: recomputed from the sampled registers; `pmu`,
//!   `import`: the sampled data addresses).
//! - `est_miss_ratio`: the estimated fraction of a DRAM access each execution costs,
//!   from `footprint_bytes` on this machine: 0 for a footprint that fits in L2, 1 from
//!   128 MiB up, and between the two the measured latency of random reads over a
//!   region that size, placed between an L2-resident region's and a 128 MiB one's (a
//!   table the last-level cache holds costs little of a DRAM access).
//! - `address`: how the addresses were found: `recovered` (base and index registers
//!   intact after the load), `chased` (the load overwrote its own base with the next
//!   address of a pointer chase), or `unrecoverable: <why>`.
//! - `decided_by`: the backend whose measurement put the site in the profile
//!   (`pmu`, `sample`, `sim`, `import`); with `auto` it differs from site to site.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The format version this crate writes.
pub const VERSION: u32 = 2;

/// The largest profile file read (a real one is a few MB at most).
pub const MAX_PROFILE_BYTES: u64 = 256 << 20;

/// The versions this crate reads: version 1 lacks the fields version 2 added.
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// Backends a profile may name.
pub const BACKENDS: [&str; 5] = ["pmu", "sample", "sim", "auto", "import"];

/// A whole profile file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The schema version (1); a reader refuses others.
    pub version: u32,
    /// One of [`BACKENDS`].
    pub backend: String,
    /// Objects with delinquent loads, heaviest first.
    pub objects: Vec<ProfiledObject>,
}

/// One ELF object (executable or shared library) with delinquent loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfiledObject {
    /// Where the object was when it was profiled.
    pub path: String,
    /// Its GNU build-id (or content hash): a profile applies only to this build.
    pub build_id: String,
    /// Its delinquent loads.
    pub sites: Vec<Site>,
}

/// One delinquent load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// `0x`-prefixed hex ELF virtual address; see [`Site::address`].
    pub offset: String,
    /// `function+0xN`; `sub_<hex>+0xN` when the function has no symbol (bounds from .eh_frame).
    pub symbol: String,
    /// The instruction, Intel syntax.
    pub insn: String,
    /// Events charged to the site.
    pub samples: u64,
    /// `samples` / all events of the run.
    pub share: f64,
    /// LLC misses / executions, when the backend counts executions.
    pub miss_ratio: Option<f64>,
    /// The ranking key; see [`Site::weight`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Estimated bytes the load touches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint_bytes: Option<u64>,
    /// Estimated fraction of executions that miss L2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub est_miss_ratio: Option<f64>,
    /// How the sampled addresses were found, or why they could not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The backend whose measurement put the site in the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

impl Site {
    /// A site with the version-1 fields; the version-2 ones are left empty.
    pub fn new(offset: u64, symbol: String, insn: String, samples: u64, share: f64) -> Site {
        Site {
            offset: format_offset(offset),
            symbol,
            insn,
            samples,
            share,
            miss_ratio: None,
            weight: None,
            footprint_bytes: None,
            est_miss_ratio: None,
            address: None,
            decided_by: None,
        }
    }

    /// The ranking key: `weight` when recorded, else `share`.
    pub fn weight(&self) -> f64 {
        self.weight.unwrap_or(self.share)
    }

    /// The site's ELF virtual address, parsed from `offset`.
    pub fn address(&self) -> Result<u64> {
        parse_hex(&self.offset).with_context(|| format!("bad site offset {:?}", self.offset))
    }
}

fn parse_hex(text: &str) -> Result<u64> {
    let digits = text.strip_prefix("0x").context("missing 0x prefix")?;
    Ok(u64::from_str_radix(digits, 16)?)
}

/// Formats an address the way `offset` stores it.
pub fn format_offset(address: u64) -> String {
    format!("{address:#x}")
}

impl Profile {
    /// Parses and validates a profile from JSON text.
    pub fn from_json(text: &str) -> Result<Profile> {
        let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if READABLE_VERSIONS.iter().any(|&r| u64::from(r) == v) => {}
            Some(v) => {
                bail!("profile version {v} is not supported (this msh reads versions 1 and 2)")
            }
            None => bail!("not an msh profile (no \"version\" field)"),
        }
        let profile: Profile = serde_json::from_value(value).context("not an msh profile")?;
        profile.validate()?;
        Ok(profile)
    }

    /// Reads a profile file (regular, at most [`MAX_PROFILE_BYTES`]); the error names the file and the cause in one line.
    pub fn load(path: &Path) -> Result<Profile> {
        let bytes = msh_files::read_regular(path, "profile", MAX_PROFILE_BYTES)?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("cannot read profile {}: not UTF-8", path.display()))?;
        Profile::from_json(&text)
            .with_context(|| format!("{} is not a valid profile", path.display()))
    }

    /// Checks what serde cannot: hex offsets, shares and ratios in range, sort order.
    pub fn validate(&self) -> Result<()> {
        if !BACKENDS.contains(&self.backend.as_str()) {
            bail!("unknown backend {:?}", self.backend);
        }
        for object in &self.objects {
            if object.build_id.is_empty() {
                bail!("object {} has an empty build_id", object.path);
            }
            for site in &object.sites {
                site.address()?;
                if !(0.0..=1.0).contains(&site.share) {
                    bail!(
                        "site {} has share {} outside [0, 1]",
                        site.offset,
                        site.share
                    );
                }
                for (name, value) in [
                    ("miss_ratio", site.miss_ratio),
                    ("est_miss_ratio", site.est_miss_ratio),
                    ("weight", site.weight),
                ] {
                    if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                        bail!(
                            "site {} has {name} {} outside [0, 1]",
                            site.offset,
                            value.unwrap_or_default()
                        );
                    }
                }
            }
            if object
                .sites
                .windows(2)
                .any(|w| w[0].weight() < w[1].weight())
            {
                bail!("sites of {} are not sorted by weight", object.path);
            }
        }
        Ok(())
    }

    /// The entry for the object at `path`, after checking that the file is the one
    /// that was profiled (same build-id or content hash): a profile must never be
    /// applied to another binary.
    pub fn object_for(&self, path: &Path) -> Result<&ProfiledObject> {
        let actual = msh_binary::build_id(path)?;
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        let by_id = self.objects.iter().find(|o| o.build_id == actual);
        match by_id {
            Some(object) => Ok(object),
            None => match self.objects.iter().find(|o| Path::new(&o.path) == canonical) {
                Some(object) => bail!(
                    "{} has build-id {actual}, but the profile was recorded for build-id {}: it is another binary",
                    path.display(),
                    object.build_id
                ),
                None => {
                    let recorded: Vec<String> = self
                        .objects
                        .iter()
                        .map(|o| format!("{} ({})", o.path, o.build_id))
                        .collect();
                    bail!(
                        "the profile has no sites for {} (build-id {actual}): it was recorded for another binary ([{}])",
                        path.display(),
                        recorded.join(", ")
                    )
                }
            },
        }
    }

    /// The addresses of `object`'s sites with at least `min_share`, highest weight
    /// first, at most `top` of them: what a reader acts on.
    pub fn select(
        object: &ProfiledObject,
        min_share: Option<f64>,
        top: Option<usize>,
    ) -> Result<Vec<u64>> {
        let mut sites: Vec<&Site> = object
            .sites
            .iter()
            .filter(|s| s.share >= min_share.unwrap_or(0.0))
            .collect();
        sites.sort_by(|a, b| b.weight().total_cmp(&a.weight()));
        sites.truncate(top.unwrap_or(usize::MAX));
        sites.iter().map(|s| s.address()).collect()
    }

    /// The profile as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a profile always serializes")
    }

    /// The profile file's contents: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.to_json().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    /// Writes the profile through [`msh_files`]: whole or not at all.
    pub fn save(&self, path: &Path) -> Result<()> {
        msh_files::write_output(path, "profile", &self.to_bytes(), &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_profile() -> Profile {
        Profile {
            version: VERSION,
            backend: "sample".into(),
            objects: vec![ProfiledObject {
                path: "/bin/x".into(),
                build_id: "abcd".into(),
                sites: vec![
                    Site {
                        footprint_bytes: Some(1 << 28),
                        est_miss_ratio: Some(0.99),
                        weight: Some(0.891),
                        address: Some("chased".into()),
                        decided_by: Some("sample".into()),
                        ..Site::new(0x1189, "chase+0x9".into(), "mov rax,[rax]".into(), 90, 0.9)
                    },
                    Site {
                        miss_ratio: Some(0.5),
                        ..Site::new(0x11a0, "main+0x2".into(), "mov eax,[rbx]".into(), 5, 0.05)
                    },
                ],
            }],
        }
    }

    #[test]
    fn round_trips_and_keeps_the_field_names() {
        let profile = sample_profile();
        let json = profile.to_json();
        for field in [
            "\"version\"",
            "\"backend\"",
            "\"objects\"",
            "\"path\"",
            "\"build_id\"",
            "\"sites\"",
            "\"offset\"",
            "\"symbol\"",
            "\"insn\"",
            "\"samples\"",
            "\"share\"",
            "\"miss_ratio\": null",
            "\"weight\"",
            "\"footprint_bytes\"",
            "\"est_miss_ratio\"",
            "\"address\"",
            "\"decided_by\"",
        ] {
            assert!(json.contains(field), "{field} missing in {json}");
        }
        assert_eq!(Profile::from_json(&json).unwrap(), profile);
        assert_eq!(profile.objects[0].sites[0].address().unwrap(), 0x1189);
    }

    #[test]
    fn rejects_what_is_not_a_profile() {
        for (text, needle) in [
            ("hello", "not JSON"),
            ("{}", "no \"version\""),
            (
                "{\"version\": 3, \"backend\": \"sample\", \"objects\": []}",
                "version 3",
            ),
            (
                "{\"version\": 1, \"backend\": \"magic\", \"objects\": []}",
                "unknown backend",
            ),
            (
                "{\"version\": 1, \"backend\": \"sample\"}",
                "not an msh profile",
            ),
        ] {
            let err = format!("{:#}", Profile::from_json(text).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
        let mut unsorted = sample_profile();
        unsorted.objects[0].sites.reverse();
        let mut bad_ratio = sample_profile();
        bad_ratio.objects[0].sites[0].est_miss_ratio = Some(1.5);
        assert!(Profile::from_json(&bad_ratio.to_json()).is_err());
        assert!(Profile::from_json(&unsorted.to_json()).is_err());
        let mut bad_offset = sample_profile();
        bad_offset.objects[0].sites[0].offset = "1189".into();
        assert!(Profile::from_json(&bad_offset.to_json()).is_err());
    }

    #[test]
    fn reads_version_1_files() {
        let v1 = r#"{"version": 1, "backend": "sample", "objects": [{"path": "/x",
            "build_id": "ab", "sites": [
              {"offset": "0x10", "symbol": "f+0x0", "insn": "mov", "samples": 9, "share": 0.9, "miss_ratio": null},
              {"offset": "0x20", "symbol": "f+0x10", "insn": "mov", "samples": 1, "share": 0.1, "miss_ratio": 0.5}]}]}"#;
        let profile = Profile::from_json(v1).unwrap();
        let site = &profile.objects[0].sites[1];
        assert_eq!(
            (site.weight(), site.est_miss_ratio, site.address.as_deref()),
            (0.1, None, None)
        );
        let unsorted = v1.replace("0.9, \"miss", "0.05, \"miss");
        let err = format!("{:#}", Profile::from_json(&unsorted).unwrap_err());
        assert!(err.contains("not sorted by weight"), "{err}");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser() {
        // A small deterministic fuzz: random bytes and mutations of a valid profile.
        let valid = sample_profile().to_json().into_bytes();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let truncated = &bytes[..(next() as usize) % bytes.len()];
            // Whatever the bytes, a profile or a one-line error naming the cause.
            for text in [&bytes[..], truncated] {
                if let Err(err) = Profile::from_json(&String::from_utf8_lossy(text)) {
                    let shown = format!("{err:#}");
                    assert!(!shown.is_empty() && !shown.contains('\n'), "{shown}");
                }
            }
        }
    }

    #[test]
    fn objects_are_matched_by_build_id() {
        let exe = std::env::current_exe().unwrap();
        let mut profile = sample_profile();
        profile.objects[0].path = exe.canonicalize().unwrap().to_string_lossy().into_owned();
        let err = profile.object_for(&exe).unwrap_err().to_string();
        assert!(err.contains("another binary"), "{err}");
        profile.objects[0].build_id = msh_binary::build_id(&exe).unwrap();
        assert_eq!(profile.object_for(&exe).unwrap().sites.len(), 2);
        profile.objects.clear();
        assert!(profile
            .object_for(&exe)
            .unwrap_err()
            .to_string()
            .contains("no sites"));
        let object = sample_profile().objects.remove(0);
        assert_eq!(
            Profile::select(&object, None, None).unwrap(),
            [0x1189, 0x11a0]
        );
        assert_eq!(Profile::select(&object, Some(0.5), None).unwrap(), [0x1189]);
        assert_eq!(Profile::select(&object, None, Some(1)).unwrap(), [0x1189]);
    }

    #[test]
    fn save_is_atomic_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        sample_profile().save(&path).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), sample_profile());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        let missing_dir = dir.path().join("nope/p.json");
        assert!(sample_profile().save(&missing_dir).is_err());
    }
}
