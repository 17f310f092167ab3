//! `msh bench server`: harvest inside a real server under load. Debian's redis or
//! memcached is pinned to one CPU with a dataset far larger than the LLC; an
//! open-loop generator on the other CPU offers a fixed fraction of the server's
//! measured capacity and records latency from each request's scheduled time. The
//! same compute work then runs beside the server in each configuration, and its
//! units per second, over what it does alone on that CPU, is the core fraction
//! harvested:
//!
//! | config | the compute work runs as |
//! |---|---|
//! | `alone` | (nothing: the baseline) |
//! | `os_thread` | an ordinary process on the server's CPU |
//! | `sched_idle` | a `SCHED_IDLE` process there (Linux's way to use idle time) |
//! | `msh` | scavengers of the server rewritten from its own profile (`msh run`) |
//! | `msh_idle` | the same, and also while the server waits in `epoll_wait`/`poll` |
//!
//! Configurations are interleaved run by run; figures are medians over runs.

mod keys;
mod load;
pub mod process;
mod protocol;

use crate::examples;
use anyhow::{bail, Context, Result};
use keys::{KeyDistribution, KeySampler};
use load::{LoadResult, Mix, Schedule, Target};
use msh_profile::stats::median;
use process::{Placement, Server, ServerLaunch};
pub use protocol::Protocol;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `msh bench server` options.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The server (Debian's package).
    #[arg(long, value_enum, default_value_t = Protocol::Redis)]
    pub server: Protocol,
    /// Offered load, as a fraction of the capacity measured first.
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    pub load: f64,
    /// Size of the values stored, MiB (at least 10x the LLC for the loads to miss).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub dataset_mib: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub value_bytes: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Zipf)]
    pub keys: KeyDistribution,
    /// Share of requests that are SETs (the rest are GETs).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub set_fraction: f64,
    /// Measured seconds per configuration and run (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub seconds: f64,
    /// Runs (figures are medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
    /// Client connections.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub connections: u64,
    /// Configurations to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Config::ALL)]
    pub configs: Vec<Config>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The name a user types for `value` (`os_thread`, `redis`, `zipf`).
fn name_of(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

pub(crate) fn bounded_f64(
    text: &str,
    low: f64,
    high: f64,
    low_inclusive: bool,
) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number"))?;
    let above = if low_inclusive {
        value >= low
    } else {
        value > low
    };
    if !(above && value <= high) {
        let open = if low_inclusive { '[' } else { '(' };
        return Err(format!("{text} is outside {open}{low}, {high}]"));
    }
    Ok(value)
}

fn fraction(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, 1.0, false)
}

fn share(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, 1.0, true)
}

fn seconds(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, 3600.0, false)
}

/// One way of running the compute work beside the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Config {
    /// No compute work: the baseline
    Alone,
    /// The compute as an ordinary process on the server's CPU
    OsThread,
    /// The compute as a SCHED_IDLE process on the server's CPU
    SchedIdle,
    /// The compute as scavengers of the server rewritten from its own profile (msh run)
    Msh,
    /// As msh, and also while the server waits in epoll_wait or poll
    MshIdle,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Alone,
        Config::OsThread,
        Config::SchedIdle,
        Config::Msh,
        Config::MshIdle,
    ];

    fn uses_msh(self) -> bool {
        matches!(self, Config::Msh | Config::MshIdle)
    }
}

/// One configuration's medians.
#[derive(Debug, Serialize)]
pub struct ConfigReport {
    /// The configuration.
    pub name: Config,
    /// Requests answered per second.
    pub achieved_rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// 99.9th percentile latency, µs.
    pub p999_us: f64,
    /// Compute units done beside the server / units the compute does alone on that CPU.
    pub scavenger_core_fraction: f64,
    /// Share of requests the generator sent more than 1 ms late (0 when it kept up).
    pub late_fraction: f64,
}

/// What `msh rewrite` made of the server's profile.
#[derive(Debug, Serialize)]
pub struct RewriteSummary {
    /// The profile backend that found the loads.
    pub profile_backend: String,
    /// The hottest load site.
    pub top_site: String,
    /// The hottest site's share of the samples.
    pub top_share: f64,
    /// Load sites patched.
    pub patched: usize,
}

/// The report (`--json`).
#[derive(Debug, Serialize)]
pub struct ServerReport {
    /// The server measured.
    pub server: Protocol,
    /// Size of the values stored, MiB.
    pub dataset_mib: u64,
    /// Bytes per value.
    pub value_bytes: u64,
    /// How keys were drawn.
    pub keys: KeyDistribution,
    /// Runs the medians are over.
    pub runs: u64,
    /// Requests per second the server answered, measured first.
    pub capacity_rps: f64,
    /// Requests per second offered (`--load` × capacity).
    pub offered_rps: f64,
    /// One entry per configuration, in the order run.
    pub configs: Vec<ConfigReport>,
    /// How the msh configurations' binary was rewritten, when one ran.
    pub rewrite: Option<RewriteSummary>,
    /// Anything that makes the figures less than they seem.
    pub notes: Vec<String>,
}

/// Runs `msh bench server`.
pub fn run_cli(args: &ServerArgs) -> Result<()> {
    let report = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} MiB of {}-byte values, {} keys; capacity {:.0} req/s, offered {:.0} ({:.0}%), median of {} runs",
        name_of(report.server),
        report.dataset_mib,
        report.value_bytes,
        name_of(report.keys),
        report.capacity_rps,
        report.offered_rps,
        100.0 * args.load,
        report.runs
    );
    if let Some(rewrite) = &report.rewrite {
        println!(
            "rewritten from its own profile ({}): {} site(s) patched, top {} ({:.0}% of samples)",
            rewrite.profile_backend,
            rewrite.patched,
            rewrite.top_site,
            100.0 * rewrite.top_share
        );
    }
    println!(
        "{:<11} {:>12} {:>9} {:>9} {:>9} {:>10}",
        "config", "achieved/s", "p50 µs", "p99 µs", "p99.9 µs", "harvested"
    );
    for config in &report.configs {
        println!(
            "{:<11} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.3}c",
            name_of(config.name),
            config.achieved_rps,
            config.p50_us,
            config.p99_us,
            config.p999_us,
            config.scavenger_core_fraction
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    Ok(())
}

/// Per-run samples of one configuration.
#[derive(Default)]
struct Samples {
    achieved: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    fraction: Vec<f64>,
    late: Vec<f64>,
}

/// Everything a run needs that stays fixed.
struct Bench<'a> {
    args: &'a ServerArgs,
    work: PathBuf,
    server_cpu: usize,
    generator_cpu: usize,
    keys: u64,
    counter: PathBuf,
    pool: PathBuf,
}

const WARMUP: Duration = Duration::from_secs(1);
const FILL_DEPTH: usize = 32;
const CAPACITY_DEPTH: usize = 16;
/// How long the server is profiled under load before it is rewritten.
const PROFILE_FOR: Duration = Duration::from_secs(5);

/// Runs the benchmark.
pub fn run(args: &ServerArgs) -> Result<ServerReport> {
    let cpus = process::allowed_cpus();
    if cpus.len() < 2 {
        bail!("msh bench server needs 2 CPUs (the server on one, the load generator on the other); this process may use {}", cpus.len());
    }
    let binary = PathBuf::from(args.server.binary());
    if !binary.exists() {
        bail!(
            "{} is missing: install Debian's {} (apt-get install {})",
            binary.display(),
            args.server.package(),
            args.server.package()
        );
    }
    let build = examples::build()?;
    let work = build.join("bench-server");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let counter = work.join("units");
    std::fs::write(&counter, 0u64.to_le_bytes())
        .with_context(|| format!("cannot create {}", counter.display()))?;
    let pool = work.join("compute.pool");
    std::fs::write(
        &pool,
        format!("{}\n", build.join("compute_scav.so").display()),
    )?;
    let bench = Bench {
        args,
        server_cpu: cpus[cpus.len() - 1],
        generator_cpu: cpus[0],
        keys: (args.dataset_mib << 20) / args.value_bytes,
        counter,
        pool,
        work,
    };
    let steps = 2 + args.runs * (1 + args.configs.len() as u64);
    let bar = super::harvest::progress_bar(steps, "measuring capacity");
    let mut notes = Vec::new();

    let capacity = bench.measure_capacity()?;
    bar.inc(1);
    let offered = capacity * args.load;
    let wants_msh = args.configs.iter().any(|c| c.uses_msh());
    bar.set_message("profiling and rewriting the server");
    let (rewritten, rewrite) = if wants_msh {
        match bench.rewrite_from_profile(offered) {
            Ok((path, summary)) => (Some(path), Some(summary)),
            Err(err) => {
                notes.push(format!("msh configurations skipped: {err:#}"));
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    bar.inc(1);

    let configs: Vec<Config> = args
        .configs
        .iter()
        .copied()
        .filter(|c| !c.uses_msh() || rewritten.is_some())
        .collect();
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    for run in 0..args.runs {
        bar.set_message(format!("run {}/{}", run + 1, args.runs));
        let alone_units_per_s = bench.compute_alone()?;
        bar.inc(1);
        // The plain server serves alone, os_thread and sched_idle (listed first); msh
        // ones get their own, started after it stops.
        let mut plain: Option<Server> = None;
        for (index, &config) in configs.iter().enumerate() {
            let mut own_server = None;
            let server = if config.uses_msh() {
                // An idle server is not idle: memcached's LRU threads and redis's cron
                // keep working on the dataset, on the same CPU.
                if let Some(plain) = plain.take() {
                    plain.stop();
                }
                own_server =
                    Some(bench.start_filled(rewritten.as_deref(), config == Config::MshIdle)?);
                own_server.as_ref().expect("just set")
            } else {
                if plain.is_none() {
                    plain = Some(bench.start_filled(None, false)?);
                }
                plain.as_ref().expect("just set")
            };
            let beside = match config {
                Config::OsThread | Config::SchedIdle => {
                    Some(bench.start_compute(config == Config::SchedIdle)?)
                }
                _ => None,
            };
            let (result, units) = bench.measure(server.port, offered, run)?;
            drop(beside);
            if let Some(server) = own_server {
                server.stop();
            }
            let s = &mut samples[index];
            s.achieved.push(result.answered_per_s());
            s.p50.push(result.quantile_us(0.5));
            s.p99.push(result.quantile_us(0.99));
            s.p999.push(result.quantile_us(0.999));
            s.fraction.push(units / args.seconds / alone_units_per_s);
            s.late.push(result.late as f64 / result.due.max(1) as f64);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let reports: Vec<ConfigReport> = configs
        .iter()
        .zip(&mut samples)
        .map(|(&name, s)| ConfigReport {
            name,
            achieved_rps: median(&mut s.achieved),
            p50_us: median(&mut s.p50),
            p99_us: median(&mut s.p99),
            p999_us: median(&mut s.p999),
            scavenger_core_fraction: median(&mut s.fraction),
            late_fraction: median(&mut s.late),
        })
        .collect();
    for config in &reports {
        if config.late_fraction > 0.01 {
            notes.push(format!(
                "{}: the load generator sent {:.1}% of requests more than 1 ms late (it could not keep up; latencies still count from the schedule)",
                name_of(config.name),
                100.0 * config.late_fraction
            ));
        }
        if config.achieved_rps < 0.95 * offered {
            notes.push(format!(
                "{}: achieved {:.0} req/s of {:.0} offered",
                name_of(config.name),
                config.achieved_rps,
                offered
            ));
        }
    }
    Ok(ServerReport {
        server: args.server,
        dataset_mib: args.dataset_mib,
        value_bytes: args.value_bytes,
        keys: args.keys,
        runs: args.runs,
        capacity_rps: capacity,
        offered_rps: offered,
        configs: reports,
        rewrite,
        notes,
    })
}

impl Bench<'_> {
    fn target(&self, port: u16) -> Target {
        Target {
            protocol: self.args.server,
            port,
            value_bytes: self.args.value_bytes as usize,
        }
    }

    fn mix(&self, seed: u64) -> Mix {
        Mix {
            keys: KeySampler::new(self.args.keys, self.keys),
            set_fraction: self.args.set_fraction,
            seed,
        }
    }

    /// Runs `schedule` from a thread pinned to the generator's CPU.
    fn generate(&self, port: u16, schedule: Schedule) -> Result<LoadResult> {
        let target = self.target(port);
        let connections = self.args.connections as usize;
        let cpu = self.generator_cpu;
        std::thread::spawn(move || {
            process::pin_this_thread(cpu)?;
            load::run(target, connections, &schedule)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
    }

    /// Starts a server (plain, or `binary` under `msh run`) and stores every key.
    fn start_filled(&self, msh_binary: Option<&Path>, idle: bool) -> Result<Server> {
        let plain = PathBuf::from(self.args.server.binary());
        let mut prefix = Vec::new();
        let mut env = Vec::new();
        if msh_binary.is_some() {
            let mut run_args = vec!["--abandon-at-exit"];
            if idle {
                run_args.push("--harvest-idle");
            }
            prefix = super::attach::msh_run_prefix(&self.pool, &run_args)?;
            env.push((
                "COMPUTE_COUNTER".to_string(),
                self.counter.display().to_string(),
            ));
        }
        let value_mib = (self.keys * self.args.value_bytes) >> 20;
        let server = process::start_server(&ServerLaunch {
            protocol: self.args.server,
            binary: msh_binary.unwrap_or(&plain),
            prefix: &prefix,
            env: &env,
            // Room for every item and its overhead.
            memory_mib: value_mib * 3 / 2 + 64,
            threads: 1,
            placement: Placement {
                cpu: Some(self.server_cpu),
                sched_idle: false,
            },
            log: &self.work.join("server.log"),
        })?;
        self.generate(
            server.port,
            Schedule::Fill {
                keys: self.keys,
                depth: FILL_DEPTH,
            },
        )
        .context("storing the dataset")?;
        Ok(server)
    }

    /// Requests/s the plain server answers with requests always outstanding.
    fn measure_capacity(&self) -> Result<f64> {
        let server = self.start_filled(None, false)?;
        let result = self.generate(
            server.port,
            Schedule::Closed {
                depth: CAPACITY_DEPTH,
                warmup: WARMUP,
                window: Duration::from_secs(2),
                mix: self.mix(99),
            },
        )?;
        server.stop();
        if result.answered == 0 {
            bail!("the server answered nothing while its capacity was measured");
        }
        Ok(result.answered_per_s())
    }

    /// Profiles the plain server under the offered load (`msh profile --pid`) and
    /// rewrites it from that profile (`msh rewrite --profile`), as a user would.
    fn rewrite_from_profile(&self, offered: f64) -> Result<(PathBuf, RewriteSummary)> {
        let binary = PathBuf::from(self.args.server.binary())
            .canonicalize()
            .context("cannot resolve the server binary")?;
        let server = self.start_filled(None, false)?;
        let pid = server.process.pid();
        let schedule = Schedule::Open {
            rate: offered,
            warmup: Duration::ZERO,
            window: PROFILE_FOR + Duration::from_secs(1),
            mix: self.mix(7),
        };
        let options = msh_profile::Options {
            duration: Some(PROFILE_FOR),
            // A running server: no confirming sim run (it would start another copy).
            confirm_for: Duration::ZERO,
            ..msh_profile::Options::default()
        };
        let (profile, report) = std::thread::scope(|scope| {
            let generator = scope.spawn(|| self.generate(server.port, schedule));
            let profiled = msh_profile::profile(&msh_profile::What::Pid(pid), &options);
            generator
                .join()
                .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
            profiled.context("msh profile --pid of the server")
        })?;
        server.stop();
        let object = profile.object_for(&binary)?;
        let top = object
            .sites
            .first()
            .with_context(|| {
                format!(
                    "msh profile found no delinquent load in {}",
                    binary.display()
                )
            })?
            .clone();
        let profile_path = self.work.join("server.profile.json");
        profile.save(&profile_path)?;
        // Not named like the original: redis picks its role from argv[0].
        let rewritten = self
            .work
            .join(format!("{}.msh", self.args.server.package()));
        let rewrite = msh_rewrite::rewrite(&msh_rewrite::Options {
            input: binary,
            output: rewritten.clone(),
            selection: msh_rewrite::Selection::Profile {
                path: profile_path,
                min_share: None,
                top: None,
            },
            allow_call_windows: false,
        })
        .context("msh rewrite of the server")?;
        if rewrite.patched == 0 {
            bail!(
                "msh rewrite patched none of the profiled sites ({})",
                top.symbol
            );
        }
        Ok((
            rewritten,
            RewriteSummary {
                profile_backend: report.backend,
                top_site: top.symbol,
                top_share: top.share,
                patched: rewrite.patched,
            },
        ))
    }

    /// Compute units/s the compute program does alone on the server's CPU.
    fn compute_alone(&self) -> Result<f64> {
        let compute = self.start_compute(false)?;
        std::thread::sleep(Duration::from_millis(200));
        let before = self.units()?;
        let window = Duration::from_secs(1);
        std::thread::sleep(window);
        let units = self.units()? - before;
        drop(compute);
        Ok(units as f64 / window.as_secs_f64())
    }

    /// `compute --forever` on the server's CPU, counting into the shared counter.
    fn start_compute(&self, sched_idle: bool) -> Result<process::Process> {
        let mut command = Command::new(examples::build_dir().join("compute"));
        command
            .arg("--forever")
            .env("COMPUTE_COUNTER", &self.counter)
            .stdout(std::process::Stdio::null());
        process::spawn(
            &mut command,
            &Placement {
                cpu: Some(self.server_cpu),
                sched_idle,
            },
        )
    }

    /// The shared counter's value.
    fn units(&self) -> Result<u64> {
        let bytes = std::fs::read(&self.counter)
            .with_context(|| format!("cannot read {}", self.counter.display()))?;
        let head: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .context("the unit counter is shorter than 8 bytes")?;
        Ok(u64::from_le_bytes(head))
    }

    /// Offers `rate` requests/s; returns the load's result and the compute units done
    /// in its measured window.
    fn measure(&self, port: u16, rate: f64, run: u64) -> Result<(LoadResult, f64)> {
        let window = Duration::from_secs_f64(self.args.seconds);
        let schedule = Schedule::Open {
            rate,
            warmup: WARMUP,
            window,
            mix: self.mix(1000 + run),
        };
        std::thread::scope(|scope| {
            let generator = scope.spawn(|| self.generate(port, schedule));
            // The generator's window opens WARMUP after it starts (connecting takes
            // microseconds), so the counter is read at the same edges.
            std::thread::sleep(WARMUP);
            let before = self.units();
            std::thread::sleep(window);
            let after = self.units();
            let result = generator
                .join()
                .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
            Ok((result, after?.saturating_sub(before?) as f64))
        })
    }
}
