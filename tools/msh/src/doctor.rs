//! `msh doctor`: what this machine offers msh, and what each capability will use.
//!
//! Every row comes from the same probe the capability itself runs (the profiler's PMU
//! detection, the dirty tracker's self-tests, ...), so the reason printed here is the
//! reason a command gives when it falls back. Probes are cheap and side-effect free:
//! the whole report takes well under a second.

use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// `msh doctor` options.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print JSON: {"checks": [{"name", "supported", "reason", "used_by"}], "elapsed_ms"}.
    #[arg(long)]
    pub json: bool,
}

/// One capability of this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable name, e.g. `hardware-pmu`.
    pub name: &'static str,
    /// Whether msh can use it here.
    pub supported: bool,
    /// One line: what was found, or why not.
    pub reason: String,
    /// Which msh capability depends on it, and what it does without it.
    pub used_by: &'static str,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// How long the probes took.
    pub elapsed_ms: f64,
}

/// Runs `msh doctor`.
pub fn run(args: &DoctorArgs) -> Result<()> {
    let report = report();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for check in &report.checks {
        println!(
            "{:<width$}  {:<3}  {}\n{:<width$}       used by: {}",
            check.name,
            if check.supported { "yes" } else { "no" },
            check.reason,
            "",
            check.used_by,
        );
    }
    println!("({:.0} ms)", report.elapsed_ms);
    Ok(())
}

/// Probes everything.
pub fn report() -> Report {
    let start = Instant::now();
    let mut checks = Vec::new();
    checks.extend(profiling());
    checks.extend(dirty_tracking());
    checks.push(damon());
    checks.push(thp());
    checks.push(tsc());
    checks.push(avx512());
    checks.push(max_map_count());
    checks.extend(programs());
    checks.push(kernel_tree());
    Report {
        checks,
        elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
    }
}

fn check(name: &'static str, result: Result<String, String>, used_by: &'static str) -> Check {
    let (supported, reason) = match result {
        Ok(reason) => (true, reason),
        Err(reason) => (false, reason),
    };
    Check {
        name,
        supported,
        reason,
        used_by,
    }
}

fn cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|line| line.starts_with("flags"))
            .is_some_and(|line| line.split_whitespace().any(|f| f == flag))
    })
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn profiling() -> Vec<Check> {
    use msh_profile::perf::{probe, EventSpec};
    use perf_event_open_sys::bindings as b;
    let paranoid = read_trimmed("/proc/sys/kernel/perf_event_paranoid").unwrap_or("?".into());
    let in_vm = cpu_flag("hypervisor");
    let pmu = msh_profile::pmu::detect().map_err(|e| {
        let mut reason = e.to_string();
        if in_vm {
            reason.push_str(" [running under a hypervisor]");
        }
        reason
    });
    let have_pmu = pmu.is_ok();
    let hardware = check(
        "hardware-pmu",
        pmu.map(|()| format!("core PMU present (perf_event_paranoid {paranoid})")),
        "msh profile --backend pmu; without it auto uses sample",
    );
    let precise = if have_pmu {
        let spec = EventSpec {
            type_: b::PERF_TYPE_HW_CACHE,
            config: (b::PERF_COUNT_HW_CACHE_LL
                | (b::PERF_COUNT_HW_CACHE_OP_READ << 8)
                | (b::PERF_COUNT_HW_CACHE_RESULT_MISS << 16)) as u64,
            sample_period: 1000,
            precise_ip: 2,
            sample_addr: true,
            sample_regs: false,
            mmap_data: false,
            inherit: false,
        };
        probe(&spec)
            .map(|()| "LLC read misses with precise_ip=2 and data addresses".to_string())
            .map_err(|e| format!("the PMU refuses precise LLC-miss sampling: {e}"))
    } else {
        Err("needs a hardware PMU".to_string())
    };
    let cpu_clock = EventSpec {
        type_: b::PERF_TYPE_SOFTWARE,
        config: b::PERF_COUNT_SW_CPU_CLOCK as u64,
        sample_period: 1_000_000,
        precise_ip: 0,
        sample_addr: false,
        sample_regs: false,
        mmap_data: false,
        inherit: false,
    };
    let software = probe(&cpu_clock)
        .map(|()| format!("cpu-clock sampling works (perf_event_paranoid {paranoid})"))
        .map_err(|e| {
            format!("perf_event_open(cpu-clock) failed: {e} (perf_event_paranoid {paranoid})")
        });
    vec![
        hardware,
        check(
            "precise-sampling",
            precise,
            "msh profile --backend pmu: sampled IP is the load itself",
        ),
        check(
            "software-sampling",
            software,
            "msh profile --backend sample (the default without a PMU)",
        ),
    ]
}

fn dirty_tracking() -> Vec<Check> {
    use msh_core::dirty::{features, Backend};
    let reason = |u: msh_core::dirty::Unavailable| {
        if u.errno != 0 {
            format!("{} (errno {})", u.reason, u.errno)
        } else {
            u.reason.to_string()
        }
    };
    let mut checks = vec![
        check(
            "userfaultfd",
            features::userfaultfd(false)
                .map(|()| "userfaultfd(2) opens (kernel and user faults)".into())
                .map_err(reason),
            "dirty tracking: uffd-async and uffd-sync backends",
        ),
        check(
            "userfaultfd-user-mode",
            features::userfaultfd(true)
                .map(|()| {
                    "userfaultfd(UFFD_USER_MODE_ONLY) opens: unprivileged users get it".into()
                })
                .map_err(reason),
            "dirty tracking for unprivileged users",
        ),
        check(
            "pagemap-scan",
            features::pagemap_scan()
                .map(|()| "PAGEMAP_SCAN ioctl on /proc/self/pagemap".into())
                .map_err(reason),
            "dirty tracking: uffd-async collects and re-arms in one call",
        ),
        check(
            "uffd-wp-async",
            features::wp_async()
                .map(|()| "UFFD_FEATURE_WP_ASYNC granted".into())
                .map_err(reason),
            "dirty tracking: uffd-async (write faults resolved in the kernel)",
        ),
        check(
            "soft-dirty",
            Backend::SoftDirty
                .probe()
                .map(|()| "self-test: a written page shows pagemap bit 55".into())
                .map_err(reason),
            "dirty tracking: soft-dirty backend; CRIU's incremental pre-dump",
        ),
    ];
    let chosen = Backend::ALL.into_iter().find(|b| b.probe().is_ok());
    checks.push(check(
        "dirty-backend",
        chosen
            .map(|b| format!("MSH_DIRTY_AUTO picks {b}"))
            .ok_or_else(|| "no backend passed its self-test".to_string()),
        "msh_dirty_create(MSH_DIRTY_AUTO), msh bench dirty",
    ));
    checks
}

fn damon() -> Check {
    let result = if !Path::new("/sys/kernel/mm/damon").exists() {
        Err("no /sys/kernel/mm/damon: kernel built without DAMON sysfs".to_string())
    } else {
        // The operation sets show up as their functions in kallsyms (names are listed
        // even where addresses are hidden): damon_va_* for virtual, damon_pa_* for
        // physical addresses.
        let symbols = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let has = |prefix: &str| {
            symbols.lines().any(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|s| s.starts_with(prefix))
            })
        };
        match (has("damon_va_"), has("damon_pa_")) {
            (true, true) => Ok("virtual and physical address monitoring".to_string()),
            (true, false) => Ok("virtual address monitoring only".to_string()),
            (false, true) => Err(
                "physical addresses only (CONFIG_DAMON_VADDR off): translate through /proc/PID/pagemap"
                    .to_string(),
            ),
            (false, false) => Err("DAMON sysfs present but no operation set found".to_string()),
        }
    };
    check(
        "damon",
        result,
        "access sampling without a PMU or an emulator",
    )
}

fn thp() -> Check {
    let result = match read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled") {
        Some(mode) if mode.contains("[never]") => Err(format!("disabled ({mode})")),
        Some(mode) => Ok(format!("enabled: {mode}")),
        None => Err("no /sys/kernel/mm/transparent_hugepage".to_string()),
    };
    check(
        "thp",
        result,
        "dirty tracking arms 2 MiB pages faster; page-walk studies with --pages thp",
    )
}

fn tsc() -> Check {
    let invariant = cpu_flag("constant_tsc") && cpu_flag("nonstop_tsc");
    let mhz = msh_core::tsc::ticks_per_us();
    let result = if invariant {
        Ok(format!(
            "invariant (constant_tsc, nonstop_tsc), {mhz} MHz measured"
        ))
    } else {
        Err(format!(
            "not invariant ({mhz} MHz measured now): scavenger budgets may drift with frequency"
        ))
    };
    check("invariant-tsc", result, "the runtime's budget calibration")
}

fn avx512() -> Check {
    let result = if std::arch::is_x86_feature_detected!("avx512f") {
        Ok("AVX-512F present: QEMU 7.2's TCG cannot run code that uses it".to_string())
    } else {
        Err("no AVX-512F".to_string())
    };
    check(
        "avx512",
        result,
        "msh rewrite saves zmm state; the exact tracer needs SSE/AVX2 builds",
    )
}

fn max_map_count() -> Check {
    let result = read_trimmed("/proc/sys/vm/max_map_count")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| format!("{n} mappings per process"))
        .ok_or_else(|| "cannot read /proc/sys/vm/max_map_count".to_string());
    check(
        "vm.max_map_count",
        result,
        "dirty tracking: mprotect backend (one mapping per dirty run)",
    )
}

/// The first line a program prints for `args`, if it runs.
fn version_line(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if output.status.success() {
        Ok(line)
    } else {
        Err(format!("{program} {}: {line}", args.join(" ")))
    }
}

fn package(program: &str, args: &[&str], package: &str) -> Result<String, String> {
    version_line(program, args).map_err(|e| format!("{e} (install: apt-get install {package})"))
}

fn programs() -> Vec<Check> {
    vec![
        check(
            "cc-and-make",
            package("cc", &["--version"], "build-essential")
                .and_then(|cc| package("make", &["--version"], "build-essential").map(|_| cc)),
            "msh demo and the C examples",
        ),
        check(
            "qemu-user",
            package("qemu-x86_64", &["--version"], "qemu-user"),
            "the exact access tracer (TCG plugins): msh profile --backend sim",
        ),
        check(
            "valgrind",
            package("valgrind", &["--version"], "valgrind"),
            "the sim backend's lackey comparison (cargo bench -p msh-profile --bench sim_speed)",
        ),
        check(
            "perf",
            package("perf", &["--version"], "linux-perf"),
            "recording kernel profiles for msh kpatch --perf-script",
        ),
        check(
            "spatch",
            package("spatch", &["--version"], "coccinelle"),
            "msh kpatch --check-spatch",
        ),
        check(
            "libgc",
            if Path::new("/usr/include/gc/gc.h").exists() {
                Ok("/usr/include/gc/gc.h".to_string())
            } else {
                Err("no gc/gc.h (install: apt-get install libgc-dev)".to_string())
            },
            "the Boehm GC examples (make -C c-examples dirty)",
        ),
        check(
            "memcached",
            package("memcached", &["--version"], "memcached"),
            "msh bench attach (preload overhead on a real server)",
        ),
    ]
}

fn kernel_tree() -> Check {
    let tree: PathBuf = crate::examples::repo_root().join("target/linux-source-6.1");
    let tarball = Path::new("/usr/src/linux-source-6.1.tar.xz");
    let result = if tree.join("Makefile").exists() {
        Ok(format!("{}", tree.display()))
    } else if tarball.exists() {
        Err(format!(
            "{} is not extracted yet: run bash kernel-patches/fetch-kernel.sh",
            tarball.display()
        ))
    } else {
        Err("no kernel source (install: apt-get install linux-source-6.1)".to_string())
    };
    check("kernel-tree", result, "msh kpatch --kernel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_a_one_line_reason() {
        let report = report();
        assert!(report.checks.len() >= 20);
        for check in &report.checks {
            assert!(!check.reason.is_empty(), "{}: empty reason", check.name);
            assert!(
                !check.reason.contains('\n'),
                "{}: {}",
                check.name,
                check.reason
            );
        }
        let names: std::collections::HashSet<_> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), report.checks.len(), "duplicate check names");
    }
}
