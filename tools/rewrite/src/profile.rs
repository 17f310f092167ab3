//! Reader for the profile JSON written by `msh profile` (version 1).
//!
//! Only the fields the rewriter needs are read; this module is the one place to swap
//! for the profiler crate's shared types once it exports them.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
pub struct Profile {
    pub version: u32,
    #[serde(default)]
    pub backend: Option<String>,
    pub objects: Vec<ProfiledObject>,
}

#[derive(Debug, Deserialize)]
pub struct ProfiledObject {
    pub path: String,
    pub build_id: String,
    pub sites: Vec<ProfiledSite>,
}

#[derive(Debug, Deserialize)]
pub struct ProfiledSite {
    /// ELF virtual address of the load, as a `0x…` string.
    #[serde(deserialize_with = "hex_address")]
    pub offset: u64,
    #[serde(default)]
    pub symbol: Option<String>,
    #[serde(default)]
    pub samples: Option<u64>,
    #[serde(default)]
    pub share: f64,
    #[serde(default)]
    pub miss_ratio: Option<f64>,
}

fn hex_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .ok_or_else(|| {
            serde::de::Error::custom(format!("offset {text:?} is not 0x-prefixed hex"))
        })?;
    u64::from_str_radix(digits, 16)
        .map_err(|e| serde::de::Error::custom(format!("offset {text:?}: {e}")))
}

impl Profile {
    pub fn parse(bytes: &[u8]) -> Result<Profile> {
        let profile: Profile = serde_json::from_slice(bytes).context("not an msh profile")?;
        if profile.version != 1 {
            bail!(
                "unsupported profile version {} (this msh reads version 1)",
                profile.version
            );
        }
        Ok(profile)
    }

    pub fn load(path: &Path) -> Result<Profile> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        Profile::parse(&bytes).with_context(|| format!("profile {}", path.display()))
    }

    /// The object profiled from the binary with this build-id, or an error naming what
    /// the profile was recorded for.
    pub fn object_for(&self, build_id: &str) -> Result<&ProfiledObject> {
        if let Some(object) = self
            .objects
            .iter()
            .find(|o| o.build_id.eq_ignore_ascii_case(build_id))
        {
            return Ok(object);
        }
        let recorded: Vec<String> = self
            .objects
            .iter()
            .map(|o| format!("{} ({})", o.path, o.build_id))
            .collect();
        bail!(
            "profile is for another binary: input build-id {build_id} matches none of [{}]",
            recorded.join(", ")
        )
    }
}

/// Which profiled sites to patch: those with at least `min_share`, the `top` first.
pub fn select_sites(
    object: &ProfiledObject,
    min_share: Option<f64>,
    top: Option<usize>,
) -> Vec<u64> {
    let mut sites: Vec<&ProfiledSite> = object
        .sites
        .iter()
        .filter(|s| s.share >= min_share.unwrap_or(0.0))
        .collect();
    sites.sort_by(|a, b| b.share.total_cmp(&a.share));
    if let Some(top) = top {
        sites.truncate(top);
    }
    sites.iter().map(|s| s.offset).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"version":1,"backend":"sample","objects":[{"path":"/bin/x","build_id":"abcd",
        "sites":[{"offset":"0x1010","symbol":"f+0x10","insn":"mov","samples":5,"share":0.2,"miss_ratio":null},
                 {"offset":"0x1020","symbol":"f+0x20","insn":"mov","samples":20,"share":0.8,"miss_ratio":0.5}]}]}"#;

    #[test]
    fn parses_and_selects_by_share() {
        let p = Profile::parse(SAMPLE.as_bytes()).unwrap();
        let o = p.object_for("ABCD").unwrap();
        assert_eq!(select_sites(o, None, None), vec![0x1020, 0x1010]);
        assert_eq!(select_sites(o, Some(0.5), None), vec![0x1020]);
        assert_eq!(select_sites(o, None, Some(1)), vec![0x1020]);
    }

    #[test]
    fn rejects_other_binary_and_bad_input() {
        let p = Profile::parse(SAMPLE.as_bytes()).unwrap();
        let err = p.object_for("ffff").unwrap_err().to_string();
        assert!(err.contains("another binary"), "{err}");
        assert!(Profile::parse(b"{}").is_err());
        assert!(Profile::parse(br#"{"version":2,"objects":[]}"#).is_err());
        assert!(Profile::parse(
            br#"{"version":1,"objects":[{"path":"x","build_id":"a","sites":[{"offset":"12"}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap fuzz: every prefix and some byte flips of a valid profile.
        let bytes = SAMPLE.as_bytes();
        for end in 0..bytes.len() {
            let _ = Profile::parse(&bytes[..end]);
        }
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut copy = bytes.to_vec();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % copy.len() as u64) as usize;
            copy[at] = (seed >> 32) as u8;
            let _ = Profile::parse(&copy);
        }
    }
}
