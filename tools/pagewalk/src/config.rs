//! The simulated machine: TLBs, page-walk caches, data caches, latencies and the sizes
//! of the simulated physical memories. Defaults are the DMT artifact's (ASPLOS'24, a
//! drcachesim fork): L1 dTLB 64/4-way, STLB 1536/12-way, PWCs PML4E 2, PDPTE 4,
//! PDE 32/4-way, L1D 32 KiB/8, L2 256 KiB/8, LLC 8 MiB/16, latencies PWC 1, L1 4,
//! L2 14, LLC 54, memory 200 cycles.
//!
//! `--config FILE.json` overrides any subset (JSON through serde_json rather than TOML:
//! serde_json is on the project's dependency list, TOML is not). Unknown keys are an
//! error, so a typo never silently keeps a default.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A set-associative translation structure (TLB, page-walk cache, nested TLB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssocConfig {
    /// Total entries.
    pub entries: u64,
    /// Ways per set (`entries / ways` sets, a power of two).
    pub ways: u64,
}

/// One data cache level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Capacity in bytes.
    pub size: u64,
    /// Ways per set.
    pub ways: u64,
}

/// The page-walk caches of one walker (x86 paging-structure caches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PwcConfig {
    /// PML4 entries (each covers 512 GiB).
    pub pml4e: AssocConfig,
    /// PDPT entries (1 GiB each).
    pub pdpte: AssocConfig,
    /// PD entries that point to a page table (2 MiB each).
    pub pde: AssocConfig,
}

impl Default for PwcConfig {
    fn default() -> Self {
        PwcConfig {
            pml4e: AssocConfig {
                entries: 2,
                ways: 2,
            },
            pdpte: AssocConfig {
                entries: 4,
                ways: 4,
            },
            pde: AssocConfig {
                entries: 32,
                ways: 4,
            },
        }
    }
}

/// Latencies in cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Latencies {
    /// A page-walk-cache (or nested TLB) hit.
    pub pwc: u64,
    /// L1 data cache hit.
    pub l1: u64,
    /// L2 hit.
    pub l2: u64,
    /// Last-level cache hit.
    pub llc: u64,
    /// Memory.
    pub mem: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            pwc: 1,
            l1: 4,
            l2: 14,
            llc: 54,
            mem: 200,
        }
    }
}

/// The whole machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MachineConfig {
    /// First-level data TLB.
    pub l1_tlb: AssocConfig,
    /// Second-level (shared) TLB.
    pub stlb: AssocConfig,
    /// Page-walk caches, one set per walker (guest and host each have their own in a VM).
    pub pwc: PwcConfig,
    /// Nested TLB: guest-physical page → host-physical page, for the guest page-table
    /// pages a 2-D walk reads (AMD's NTLB; the designs that translate guest table
    /// addresses through the host use it, pvDMT does not need to).
    pub nested_tlb: AssocConfig,
    /// L1 data cache.
    pub l1: CacheConfig,
    /// L2.
    pub l2: CacheConfig,
    /// Last-level cache.
    pub llc: CacheConfig,
    /// Cache line size in bytes.
    pub line: u64,
    /// Latencies.
    pub latency: Latencies,
    /// Ways (hash tables probed in parallel) of the elastic cuckoo page table.
    pub ecpt_ways: u64,
    /// Physical memory of the host (or of the machine, native), GiB.
    pub host_memory_gib: u64,
    /// Physical memory of a guest (`virt`; L1 guest in `nested`), GiB.
    pub guest_memory_gib: u64,
    /// Physical memory of the L2 guest in `nested`, GiB.
    pub nested_guest_memory_gib: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            l1_tlb: AssocConfig {
                entries: 64,
                ways: 4,
            },
            stlb: AssocConfig {
                entries: 1536,
                ways: 12,
            },
            pwc: PwcConfig::default(),
            nested_tlb: AssocConfig {
                entries: 16,
                ways: 4,
            },
            l1: CacheConfig {
                size: 32 << 10,
                ways: 8,
            },
            l2: CacheConfig {
                size: 256 << 10,
                ways: 8,
            },
            llc: CacheConfig {
                size: 8 << 20,
                ways: 16,
            },
            line: 64,
            latency: Latencies::default(),
            ecpt_ways: 3,
            host_memory_gib: 64,
            guest_memory_gib: 32,
            nested_guest_memory_gib: 24,
        }
    }
}

impl MachineConfig {
    /// Reads a JSON config (any subset of the fields) and validates it.
    pub fn load(path: &Path) -> Result<MachineConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: MachineConfig =
            serde_json::from_str(&text).with_context(|| format!("config {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("config {}", path.display()))?;
        Ok(config)
    }

    /// Checks every geometry: sets a power of two, no zero ways, sizes that divide.
    pub fn validate(&self) -> Result<()> {
        let assoc = [
            ("l1_tlb", self.l1_tlb),
            ("stlb", self.stlb),
            ("pwc.pml4e", self.pwc.pml4e),
            ("pwc.pdpte", self.pwc.pdpte),
            ("pwc.pde", self.pwc.pde),
            ("nested_tlb", self.nested_tlb),
        ];
        for (name, a) in assoc {
            check_sets(name, a.entries, a.ways)?;
        }
        if !self.line.is_power_of_two() || self.line < 8 {
            bail!("line: {} bytes is not a power of two ≥ 8", self.line);
        }
        for (name, c) in [("l1", self.l1), ("l2", self.l2), ("llc", self.llc)] {
            if c.ways == 0 {
                bail!("{name}: zero ways");
            }
            if !c.size.is_multiple_of(c.ways * self.line) {
                bail!(
                    "{name}: {} bytes is not a whole number of {}-way sets of {}-byte lines",
                    c.size,
                    c.ways,
                    self.line
                );
            }
            check_sets(name, c.size / self.line, c.ways)?;
        }
        if self.ecpt_ways == 0 || self.ecpt_ways > 8 {
            bail!("ecpt_ways: {} (expected 1 to 8)", self.ecpt_ways);
        }
        for (name, gib) in [
            ("host_memory_gib", self.host_memory_gib),
            ("guest_memory_gib", self.guest_memory_gib),
            ("nested_guest_memory_gib", self.nested_guest_memory_gib),
        ] {
            if gib == 0 || gib > 4096 {
                bail!("{name}: {gib} (expected 1 to 4096)");
            }
        }
        if self.guest_memory_gib > self.host_memory_gib
            || self.nested_guest_memory_gib > self.guest_memory_gib
        {
            bail!("a guest's memory cannot exceed its host's (nested_guest_memory_gib ≤ guest_memory_gib ≤ host_memory_gib)");
        }
        Ok(())
    }

    /// The data-cache hierarchy in the form the shared cache model takes.
    pub(crate) fn hierarchy(&self) -> msh_profile::sim::cache::HierarchyConfig {
        use msh_profile::sim::cache::{HierarchyConfig, LevelConfig};
        let level = |name: &str, c: CacheConfig| LevelConfig {
            name: name.to_owned(),
            size: c.size,
            ways: c.ways,
            line: self.line,
        };
        HierarchyConfig {
            levels: vec![
                level("L1", self.l1),
                level("L2", self.l2),
                level("LLC", self.llc),
            ],
        }
    }
}

fn check_sets(name: &str, entries: u64, ways: u64) -> Result<()> {
    if ways == 0 {
        bail!("{name}: zero ways");
    }
    if entries == 0 || !entries.is_multiple_of(ways) {
        bail!("{name}: {entries} entries is not a whole number of {ways}-way sets");
    }
    let sets = entries / ways;
    if !sets.is_power_of_two() {
        bail!("{name}: {sets} sets is not a power of two ({entries} entries, {ways} ways)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_machine_is_valid() {
        MachineConfig::default().validate().unwrap();
    }

    #[test]
    fn impossible_geometries_are_refused_with_the_cause() {
        let cases: [(&str, &str); 6] = [
            (
                r#"{"stlb": {"entries": 1536, "ways": 0}}"#,
                "stlb: zero ways",
            ),
            (
                r#"{"l1_tlb": {"entries": 48, "ways": 4}}"#,
                "l1_tlb: 12 sets is not a power of two",
            ),
            (
                r#"{"llc": {"size": 6291456, "ways": 16}}"#,
                "llc: 6144 sets is not a power of two",
            ),
            (r#"{"l2": {"size": 1000, "ways": 8}}"#, "l2: 1000 bytes"),
            (r#"{"line": 48}"#, "line: 48 bytes"),
            (r#"{"l1_tbl": {"entries": 64, "ways": 4}}"#, "unknown field"),
        ];
        for (json, cause) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.json");
            std::fs::write(&path, json).unwrap();
            let err = format!("{:#}", MachineConfig::load(&path).unwrap_err());
            assert!(err.contains(cause), "{json}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_partial_config_keeps_the_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, r#"{"latency": {"mem": 300}}"#).unwrap();
        let config = MachineConfig::load(&path).unwrap();
        assert_eq!(config.latency.mem, 300);
        assert_eq!(config.latency.llc, 54);
        assert_eq!(config.stlb.entries, 1536);
    }
}
