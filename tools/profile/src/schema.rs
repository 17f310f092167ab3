//! The profile file format, version 1: the contract between `msh profile` and its
//! readers (`msh profile show`, the binary rewriter).
//!
//! ```json
//! {"version": 1, "backend": "sample",
//!  "objects": [{"path": "/abs/path/prog", "build_id": "3f9a…",
//!               "sites": [{"offset": "0x1189", "symbol": "chase+0x9",
//!                          "insn": "mov rax,[rax]", "samples": 9120,
//!                          "share": 0.97, "miss_ratio": null}]}]}
//! ```
//!
//! - `offset`: ELF virtual address of the load instruction within its object (what
//!   objdump and addr2line show), as a `0x` hex string.
//! - `build_id`: the GNU build-id note as lowercase hex or, when the object has none,
//!   `sha256:<hex>` of the whole file. Readers must refuse a profile whose id does not
//!   match the binary they are given.
//! - `samples`: events attributed to the site: cpu-clock samples (`sample`), precise
//!   load-miss samples (`pmu`), simulated last-level-cache misses (`sim`).
//! - `share`: `samples` divided by all events of the run (so shares of the listed sites
//!   need not add up to 1). Sites are sorted by `share`, descending, within each object;
//!   objects by the share of their top site.
//! - `miss_ratio`: fraction of the load's executions that missed the last-level cache,
//!   when the backend knows executions (`sim`); `null` otherwise.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The only format version this crate reads and writes.
pub const VERSION: u32 = 1;

/// A whole profile file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub version: u32,
    /// `pmu`, `sample` or `sim`.
    pub backend: String,
    pub objects: Vec<ProfiledObject>,
}

/// One ELF object (executable or shared library) with delinquent loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfiledObject {
    pub path: String,
    pub build_id: String,
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
    pub samples: u64,
    pub share: f64,
    pub miss_ratio: Option<f64>,
}

impl Site {
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
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                bail!("profile version {v} is not supported (this msh reads version {VERSION})")
            }
            None => bail!("not an msh profile (no \"version\" field)"),
        }
        let profile: Profile = serde_json::from_value(value).context("not an msh profile")?;
        profile.validate()?;
        Ok(profile)
    }

    /// Reads a profile file; the error names the file and the cause in one line.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        Profile::from_json(&text)
            .with_context(|| format!("{} is not a valid profile", path.display()))
    }

    /// Checks what serde cannot: hex offsets, shares and ratios in range, sort order.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.backend.as_str(), "pmu" | "sample" | "sim") {
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
                if let Some(ratio) = site.miss_ratio {
                    if !(0.0..=1.0).contains(&ratio) {
                        bail!("site {} has miss_ratio {ratio} outside [0, 1]", site.offset);
                    }
                }
            }
            if object.sites.windows(2).any(|w| w[0].share < w[1].share) {
                bail!("sites of {} are not sorted by share", object.path);
            }
        }
        Ok(())
    }

    /// The entry for the object at `path`, after checking that the file is the one
    /// that was profiled (same build-id or content hash): a profile must never be
    /// applied to another binary.
    pub fn object_for(&self, path: &Path) -> Result<&ProfiledObject> {
        let actual = crate::elf::build_id(path)?;
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
                None => bail!("the profile has no sites for {} (build-id {actual})", path.display()),
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a profile always serializes")
    }

    /// Writes the profile atomically: a temporary file beside `path`, then a rename, so
    /// a failure never leaves a partial profile behind.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path.file_name().context("output path has no file name")?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(self.to_json().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.with_context(|| format!("cannot write profile {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_profile() -> Profile {
        Profile {
            version: 1,
            backend: "sample".into(),
            objects: vec![ProfiledObject {
                path: "/bin/x".into(),
                build_id: "abcd".into(),
                sites: vec![
                    Site {
                        offset: "0x1189".into(),
                        symbol: "chase+0x9".into(),
                        insn: "mov rax,[rax]".into(),
                        samples: 90,
                        share: 0.9,
                        miss_ratio: None,
                    },
                    Site {
                        offset: "0x11a0".into(),
                        symbol: "main+0x2".into(),
                        insn: "mov eax,[rbx]".into(),
                        samples: 5,
                        share: 0.05,
                        miss_ratio: Some(0.5),
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
                "{\"version\": 2, \"backend\": \"sample\", \"objects\": []}",
                "version 2",
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
        assert!(Profile::from_json(&unsorted.to_json()).is_err());
        let mut bad_offset = sample_profile();
        bad_offset.objects[0].sites[0].offset = "1189".into();
        assert!(Profile::from_json(&bad_offset.to_json()).is_err());
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
            let _ = Profile::from_json(&String::from_utf8_lossy(&bytes));
            let _ = Profile::from_json(&String::from_utf8_lossy(truncated));
        }
    }

    #[test]
    fn objects_are_matched_by_build_id() {
        let exe = std::env::current_exe().unwrap();
        let mut profile = sample_profile();
        profile.objects[0].path = exe.canonicalize().unwrap().to_string_lossy().into_owned();
        let err = profile.object_for(&exe).unwrap_err().to_string();
        assert!(err.contains("another binary"), "{err}");
        profile.objects[0].build_id = crate::elf::build_id(&exe).unwrap();
        assert_eq!(profile.object_for(&exe).unwrap().sites.len(), 2);
        profile.objects.clear();
        assert!(profile
            .object_for(&exe)
            .unwrap_err()
            .to_string()
            .contains("no sites"));
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
