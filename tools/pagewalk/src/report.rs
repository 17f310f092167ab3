//! Results: one row per design × environment × page size, speedups against radix in
//! the same environment and page size, as a table or JSON.
//!
//! - `refs_per_walk`: references that went to the cache hierarchy (L1, L2, LLC or
//!   memory), per walk; PWC and nested-TLB hits are counted in `served` but are not
//!   references.
//! - `pagewalk_speedup`: radix's mean walk cycles over this design's.
//! - `app_speedup`: Amdahl, as the DMT paper: `1 / ((1 − f) + f / s)` with `s` the
//!   page-walk speedup and `f` the fraction of time radix spends walking. `f` is
//!   `--walk-fraction` when given (measure it with `perf stat` on a machine with a
//!   PMU, e.g. `dtlb_load_misses.walk_active / cycles`), else estimated here as walk
//!   cycles over walk + data-access cycles under radix: an upper bound, since it
//!   leaves out computation and memory-level parallelism.
use crate::sim::{Served, SimConfig, Stats};
use crate::{Design, Env, Pages};
use serde::Serialize;
use std::fmt::Write;

/// One design in one environment.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Design name.
    pub design: Design,
    /// Environment name.
    pub env: Env,
    /// Page-size policy.
    pub pages: Pages,
    /// Accesses simulated.
    pub accesses: u64,
    /// Page walks (TLB misses).
    pub walks: u64,
    /// Cache-hierarchy references per walk.
    pub refs_per_walk: f64,
    /// Mean cycles per walk.
    pub walk_cycles_mean: f64,
    /// Radix's mean walk cycles over this design's.
    pub pagewalk_speedup: f64,
    /// The walk-time fraction used for `app_speedup`.
    pub walk_fraction: f64,
    /// Application speedup over radix (Amdahl).
    pub app_speedup: f64,
    /// Where walk steps were served.
    pub served: Served,
    /// Walks per access.
    pub tlb_miss_rate: f64,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Simulated accesses per second, all simulations together (accesses × simulations
    /// / wall time).
    pub accesses_per_s: f64,
    /// Simulations run (each design × environment × page size).
    pub simulations: usize,
    /// Threads they ran on.
    pub threads: usize,
    /// Wall time of the simulation, seconds.
    pub seconds: f64,
    /// The rows.
    pub results: Vec<Row>,
    /// Combinations asked for but not modelled, with the reason.
    pub skipped: Vec<String>,
}

impl Report {
    pub(crate) fn new(
        configs: &[SimConfig],
        stats: &[Stats],
        walk_fraction: Option<f64>,
        seconds: f64,
        skipped: Vec<String>,
    ) -> Report {
        let baseline = |c: &SimConfig| {
            configs
                .iter()
                .zip(stats)
                .find(|(b, _)| b.design == Design::Radix && b.env == c.env && b.pages == c.pages)
                .map(|(_, s)| *s)
        };
        let mean = |s: &Stats| {
            if s.walks == 0 {
                0.0
            } else {
                s.walk_cycles as f64 / s.walks as f64
            }
        };
        let results = configs
            .iter()
            .zip(stats)
            .map(|(c, s)| {
                let base = baseline(c).unwrap_or(*s);
                let speedup = if s.walk_cycles == 0 {
                    1.0
                } else {
                    mean(&base) / mean(s)
                };
                let f = walk_fraction.unwrap_or_else(|| {
                    let total = base.walk_cycles + base.data_cycles;
                    if total == 0 {
                        0.0
                    } else {
                        base.walk_cycles as f64 / total as f64
                    }
                });
                let refs = s.served.l1 + s.served.l2 + s.served.llc + s.served.mem;
                let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
                Row {
                    design: c.design,
                    env: c.env,
                    pages: c.pages,
                    accesses: s.accesses,
                    walks: s.walks,
                    refs_per_walk: per(refs, s.walks),
                    walk_cycles_mean: mean(s),
                    pagewalk_speedup: speedup,
                    walk_fraction: f,
                    app_speedup: 1.0 / ((1.0 - f) + f / speedup),
                    served: s.served,
                    tlb_miss_rate: per(s.walks, s.accesses),
                }
            })
            .collect();
        let accesses: u64 = stats.iter().map(|s| s.accesses).sum();
        Report {
            accesses_per_s: if seconds > 0.0 {
                accesses as f64 / seconds
            } else {
                0.0
            },
            simulations: configs.len(),
            threads: rayon::current_num_threads(),
            seconds,
            results,
            skipped,
        }
    }

    /// The table printed by default.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<6} {:<7} {:<5} {:>11} {:>10} {:>6} {:>8} {:>8} {:>7}   {:>5} {:>5} {:>5} {:>5} {:>5}",
            "design", "env", "pages", "accesses", "walks", "refs", "cycles", "walk×", "app×",
            "pwc%", "l1%", "l2%", "llc%", "mem%"
        );
        for r in &self.results {
            let s = r.served;
            let steps = (s.pwc + s.l1 + s.l2 + s.llc + s.mem).max(1) as f64;
            let pct = |n: u64| 100.0 * n as f64 / steps;
            let _ = writeln!(
                out,
                "{:<6} {:<7} {:<5} {:>11} {:>10} {:>6.2} {:>8.1} {:>8.2} {:>7.3}   {:>5.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1}",
                r.design.name(),
                r.env.name(),
                r.pages.name(),
                r.accesses,
                r.walks,
                r.refs_per_walk,
                r.walk_cycles_mean,
                r.pagewalk_speedup,
                r.app_speedup,
                pct(s.pwc),
                pct(s.l1),
                pct(s.l2),
                pct(s.llc),
                pct(s.mem)
            );
        }
        if let Some(f) = self.results.first().map(|r| r.walk_fraction) {
            let _ = writeln!(
                out,
                "walk× = page-walk speedup over radix; app× = Amdahl with walk fraction {f:.2} (first row; --walk-fraction to set)"
            );
        }
        for note in &self.skipped {
            let _ = writeln!(out, "skipped: {note}");
        }
        let _ = writeln!(
            out,
            "{} simulations, {:.1} M accesses/s on {} threads ({:.2} s)",
            self.simulations,
            self.accesses_per_s / 1e6,
            self.threads,
            self.seconds
        );
        out
    }
}
