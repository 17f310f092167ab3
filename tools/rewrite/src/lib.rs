//! `msh rewrite`: prefetch+yield trampolines at loads of unmodified x86-64 ELF
//! executables and shared objects, in E9Patch's model: never move an instruction
//! boundary that could be a jump target; replace a window of at least 5 bytes inside one
//! basic block with a `jmp rel32` to a trampoline (prefetch, save, yield, restore, the
//! displaced instructions relocated, `jmp` back), and skip, saying why, any site where
//! that is not provably safe. No relinking: the windows are patched in place and the
//! trampolines appended in a new segment ([`writer`]).
//!
//! Pipeline: [`elf::Image`] reads the file, [`code::Code`] decodes its functions and
//! collects every possible jump target, [`liveness`] finds what each site must save,
//! [`window`] picks a patch window per site, [`trampoline`] encodes the code, and
//! [`writer`] emits the new file. Every site that is not provably safe is skipped and
//! counted under its reason in the [`Report`].
#![warn(missing_docs)]

pub mod cli;
pub mod code;
pub mod elf;
pub mod interproc;
pub mod liveness;
pub mod scavenger;
pub mod skip;
pub mod trampoline;
pub mod window;
pub mod writer;

use anyhow::{bail, Context, Result};
use code::{Code, Function};
use iced_x86::{Instruction, InstructionInfoFactory};
use liveness::RegSet;
use serde::Serialize;
use skip::Skip;
use std::collections::BTreeMap;
use std::path::PathBuf;
use trampoline::{FastPath, YieldPoint};

/// Which loads to instrument.
#[derive(Clone, Debug)]
pub enum Selection {
    /// Every load that can be proven safe.
    AllLoads,
    /// The sites of a profile recorded for this binary.
    Profile {
        /// The profile file.
        path: PathBuf,
        /// Keep only sites with at least this share of the profile's events.
        min_share: Option<f64>,
        /// Keep only the heaviest this many sites.
        top: Option<usize>,
    },
    /// No loads: budget checks that bound the time between a scavenger's yields
    /// (see [`scavenger`]).
    Scavenger {
        /// Target interval between yields, in ns.
        every_ns: u64,
        /// A profile of this binary: its loads are costed as misses.
        profile: Option<PathBuf>,
    },
}

/// What `msh rewrite` does: one input, one output, which loads.
#[derive(Clone, Debug)]
pub struct Options {
    /// The ELF file to read.
    pub input: PathBuf,
    /// Where the rewritten file goes.
    pub output: PathBuf,
    /// Which loads to instrument.
    pub selection: Selection,
    /// Let a window end with a call. Its return address is then in the trampoline,
    /// which no FDE describes: unwinding through that call (C++ exceptions, thread
    /// cancellation, backtraces) fails. Off by default; it adds ~2% coverage.
    pub allow_call_windows: bool,
}

/// One patched site, as the report shows it.
#[derive(Serialize, Debug, Default)]
pub struct SiteReport {
    /// File offset of the load, in hex.
    pub offset: String,
    /// The function holding it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Bytes replaced by the jump (the window).
    pub window: u64,
    /// Registers the switch path saves (besides %rbp, which it always pushes).
    pub saved: String,
    /// Which fast check guards the yield (see `trampoline`).
    pub fast_path: &'static str,
    /// `--scavenger`: the cost the check subtracts, in cost units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<i32>,
}

/// What a rewrite did, printed as JSON.
#[derive(Serialize, Debug, Default)]
pub struct Report {
    /// The input file.
    pub input: String,
    /// The output file.
    pub output: String,
    /// The input's build-id (the profile was matched against it).
    pub build_id: String,
    /// `all-loads` or `profile`.
    pub mode: &'static str,
    /// Loads considered.
    pub candidates: usize,
    /// Loads patched.
    pub patched: usize,
    /// Loads skipped, by reason.
    pub skipped: BTreeMap<&'static str, usize>,
    /// Trampolines written (one per window; a window may hold several loads).
    pub trampolines: usize,
    /// Bytes of trampoline code added.
    pub trampoline_bytes: usize,
    /// Widest width at which a patched site saves vector registers (16 = xmm,
    /// 32 = ymm). Each function saves at its own width and its callers'.
    pub vector_width: usize,
    /// Number of saved registers (GPRs + vectors + flags) -> number of sites.
    pub saved_registers_histogram: BTreeMap<usize, usize>,
    /// Patched sites by fast path.
    pub fast_paths: BTreeMap<&'static str, usize>,
    /// `--scavenger`: the interval, the cost model's unit, the checks by kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scavenger: Option<scavenger::ScavengerReport>,
    /// Every patched site.
    pub sites: Vec<SiteReport>,
}

impl Report {
    fn skip(&mut self, reason: Skip) {
        *self.skipped.entry(reason.text()).or_default() += 1;
    }
}

/// Whether the instruction is a load (see [`msh_binary::classify_load`]): loads
/// through memory that do not fall through (`call [rax]`) are candidates too.
fn is_load(factory: &mut InstructionInfoFactory, insn: &Instruction) -> bool {
    msh_binary::classify_load(insn, factory).is_some()
}

/// The largest input this command reads (a binary, a profile).
pub const MAX_INPUT_BYTES: u64 = 4 << 30;

impl Options {
    /// The files the rewrite reads: no output may be one of them.
    pub fn inputs(&self) -> Vec<&std::path::Path> {
        let mut inputs = vec![self.input.as_path()];
        match &self.selection {
            Selection::Profile { path, .. }
            | Selection::Scavenger {
                profile: Some(path),
                ..
            } => inputs.push(path),
            _ => {}
        }
        inputs
    }

    /// Plans `-o` in `outputs`: refused now if it is an input; a new file gets the
    /// input's permissions (the rewritten binary stays executable).
    pub fn plan_output(&self, outputs: &mut msh_files::Outputs) -> Result<msh_files::OutputId> {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(&self.input).map_or(0o755, |m| m.permissions().mode() & 0o7777);
        outputs.plan_with_mode(&self.output, "-o", mode)
    }
}

/// Rewrites `options.input` into `options.output` (through [`msh_files`]: whole or
/// not at all, never over an input, a device written in place).
pub fn rewrite(options: &Options) -> Result<Report> {
    let mut outputs = msh_files::Outputs::new(&options.inputs())?;
    let out = options.plan_output(&mut outputs)?;
    let (bytes, report) = rewrite_to_bytes(options)?;
    outputs.set(out, bytes);
    outputs.commit()?;
    Ok(report)
}

/// Rewrites `options.input` and returns the new file with the report; writes nothing.
pub fn rewrite_to_bytes(options: &Options) -> Result<(Vec<u8>, Report)> {
    let data = msh_files::read_regular(&options.input, "input", MAX_INPUT_BYTES)?;
    let image = elf::parse(data).with_context(|| format!("{}", options.input.display()))?;
    let code = Code::analyse(&image);
    let mut factory = InstructionInfoFactory::new();
    let mut report = Report {
        input: options.input.display().to_string(),
        output: options.output.display().to_string(),
        build_id: image.build_id.clone(),
        vector_width: 16,
        ..Default::default()
    };

    // Sites per function index, as instruction indices, ascending.
    let mut sites: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    match &options.selection {
        Selection::AllLoads => {
            report.mode = "all-loads";
            // PLT stubs are the linker's, not the program's loads: not candidates.
            for (fi, f) in code
                .functions
                .iter()
                .enumerate()
                .filter(|(_, f)| f.unpatchable != Some(Skip::PltStub))
            {
                for (i, insn) in f.insns.iter().enumerate() {
                    if is_load(&mut factory, insn) {
                        sites.entry(fi).or_default().push(i);
                    }
                }
            }
        }
        Selection::Profile {
            path,
            min_share,
            top,
        } => {
            report.mode = "profile";
            let profile = msh_profile::Profile::load(path)?;
            let object = profile.object_for(&options.input)?;
            for addr in msh_profile::Profile::select(object, *min_share, *top)? {
                let Some(fi) = code
                    .functions
                    .iter()
                    .position(|f| f.start <= addr && addr < f.end)
                else {
                    if code.unowned_insns.contains(&addr) {
                        report.candidates += 1;
                        report.skip(Skip::NoFunctionBounds);
                        continue;
                    }
                    if image.is_code(addr) {
                        bail!("profile site {addr:#x} is not on an instruction boundary");
                    }
                    bail!("profile site {addr:#x} is not in executable code (it lies in data or outside the file)");
                };
                let f = &code.functions[fi];
                let Some(i) = f.index_of(addr) else {
                    let next = f.insns.partition_point(|x| x.ip() <= addr);
                    let at = next
                        .checked_sub(1)
                        .map(|p| f.insns[p].ip())
                        .unwrap_or(f.start);
                    bail!("profile site {addr:#x} is not on an instruction boundary (the instruction there starts at {at:#x})");
                };
                if !is_load(&mut factory, &f.insns[i]) {
                    report.candidates += 1;
                    report.skip(Skip::NotALoad);
                    continue;
                }
                sites.entry(fi).or_default().push(i);
            }
            for list in sites.values_mut() {
                list.sort_unstable();
                list.dedup();
            }
        }
        Selection::Scavenger { every_ns, profile } => {
            return rewrite_scavenger(
                options,
                &image,
                &code,
                *every_ns,
                profile.as_deref(),
                report,
            );
        }
    }

    let allow_call = options.allow_call_windows;
    let mut text_relocations = image.text_relocations.clone();
    text_relocations.sort_unstable();
    let rules = window::Rules {
        leaders: &code.leaders,
        text_relocations: &text_relocations,
        allow_call,
    };
    let layout = writer::Layout::plan(&image)?;
    let mut planned = Vec::new();
    let liveness_by_function = interproc::solve(&code);
    let vector_widths = interproc::vector_widths(&code);

    for (&fi, indices) in &sites {
        let f = &code.functions[fi];
        report.candidates += indices.len();
        if let Some(reason) = f.unpatchable {
            for _ in indices {
                report.skip(reason);
            }
            continue;
        }
        if vector_widths[fi] > 32 {
            for _ in indices {
                report.skip(Skip::Avx512);
            }
            continue;
        }
        let Some(live) = &liveness_by_function[fi] else {
            for _ in indices {
                report.skip(Skip::Undecodable);
            }
            continue;
        };
        // Windows of this function: (window, yield points, site addresses).
        let mut windows: Vec<(window::Window, Vec<YieldPoint>)> = Vec::new();
        for &i in indices {
            let insn = &f.insns[i];
            if insn.memory_index().is_vector_register() {
                report.skip(Skip::VectorIndexed);
                continue;
            }
            if let Some((w, yields)) = windows
                .last_mut()
                .filter(|(w, _)| w.first <= i && i <= w.last)
            {
                yields.push(YieldPoint {
                    at: i - w.first,
                    live: live[i],
                    budget: None,
                });
                continue;
            }
            let not_before = windows.last().map_or(0, |(w, _)| w.last + 1);
            match window::find(f, i, not_before, &rules) {
                Ok(w) => windows.push((
                    w,
                    vec![YieldPoint {
                        at: i - w.first,
                        live: live[i],
                        budget: None,
                    }],
                )),
                Err(reason) => report.skip(reason),
            }
        }
        for (w, yields) in windows {
            planned.push(Planned {
                function: fi,
                window: w,
                yields,
                vector_width: vector_widths[fi],
            });
        }
    }
    finish(&image, &code, &planned, &layout, report)
}

/// Encodes the planned windows and writes the file; refuses when nothing was patched.
fn finish(
    image: &elf::Image,
    code: &Code,
    planned: &[Planned],
    layout: &writer::Layout,
    mut report: Report,
) -> Result<(Vec<u8>, Report)> {
    let (patches, blob) = encode_all(code, planned, layout, &mut report);
    if report.patched == 0 {
        let skipped: Vec<String> = report
            .skipped
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        bail!(
            "no site could be patched ({} candidates; skipped: {})",
            report.candidates,
            skipped.join(", ")
        );
    }
    let out = writer::build(image, layout, &patches, &blob)?;
    Ok((out, report))
}

/// `--scavenger`: budget checks at function entries, loop headers and in long
/// straight-line stretches (see [`scavenger`]).
fn rewrite_scavenger(
    options: &Options,
    image: &elf::Image,
    code: &Code,
    every_ns: u64,
    profile: Option<&std::path::Path>,
    mut report: Report,
) -> Result<(Vec<u8>, Report)> {
    report.mode = "scavenger";
    let mut profiled_loads = std::collections::HashSet::new();
    if let Some(path) = profile {
        let profile = msh_profile::Profile::load(path)?;
        let object = profile.object_for(&options.input)?;
        profiled_loads.extend(msh_profile::Profile::select(object, None, None)?);
    }
    let settings = scavenger::Settings {
        every_ns,
        profiled_loads,
    };
    let mut text_relocations = image.text_relocations.clone();
    text_relocations.sort_unstable();
    let rules = window::Rules {
        leaders: &code.leaders,
        text_relocations: &text_relocations,
        allow_call: options.allow_call_windows,
    };
    let layout = writer::Layout::plan(image)?;
    let liveness = interproc::solve(code);
    let vector_widths = interproc::vector_widths(code);
    let mut scav = scavenger::ScavengerReport::default();
    let planned: Vec<Planned> = scavenger::plan(
        code,
        &liveness,
        &vector_widths,
        &rules,
        &settings,
        &mut scav,
        &mut report.candidates,
        &mut report.skipped,
    )
    .into_iter()
    .map(|p| Planned {
        function: p.function,
        window: p.window,
        yields: p.yields,
        vector_width: vector_widths[p.function],
    })
    .collect();
    report.scavenger = Some(scav);
    finish(image, code, &planned, &layout, report)
}

/// A window chosen for patching, and its yield points.
struct Planned {
    function: usize,
    window: window::Window,
    yields: Vec<YieldPoint>,
    /// Width at which its live vector registers are saved (16 or 32).
    vector_width: usize,
}

/// Distance between the hot and cold regions: keeps every hot-to-cold jump out of
/// reach of a short jump, so a hot part's size does not depend on where its cold part is.
const HOT_COLD_GAP: u64 = 256;

/// Encodes every planned window: hot parts first (their sizes do not depend on where
/// the cold parts go), then the cold parts, then the hot parts again with the real
/// cold addresses. Returns the window patches and the segment's bytes.
fn encode_all(
    code: &Code,
    planned: &[Planned],
    layout: &writer::Layout,
    report: &mut Report,
) -> (Vec<writer::Patch>, Vec<u8>) {
    let magic = elf::TRAMPOLINE_MAGIC.len() as u64;
    let far = |address: u64| address + (1 << 30);
    let mut hot_cursor = layout.vaddr + magic;
    let mut sized = Vec::new();
    for p in planned {
        let f = &code.functions[p.function];
        let insns = &f.insns[p.window.first..=p.window.last];
        let resume = insns[insns.len() - 1].next_ip();
        let placeholders = vec![far(hot_cursor); p.yields.len()];
        match trampoline::encode_hot(hot_cursor, insns, &p.yields, resume, &placeholders) {
            Ok(hot) => {
                sized.push((p, hot_cursor, hot));
                hot_cursor += sized.last().unwrap().2.bytes.len() as u64;
            }
            Err(_) => {
                for _ in &p.yields {
                    report.skip(Skip::DisplacedNotRelocatable);
                }
            }
        }
    }
    let cold_base = (hot_cursor + HOT_COLD_GAP).div_ceil(16) * 16;
    let mut hot_blob = Vec::new();
    let mut cold_blob = Vec::new();
    let mut patches = Vec::new();
    for (p, hot_addr, sizing) in sized {
        let f = &code.functions[p.function];
        let insns = &f.insns[p.window.first..=p.window.last];
        let start = insns[0].ip();
        let end = insns[insns.len() - 1].next_ip();
        let cold_addr = cold_base + cold_blob.len() as u64;
        let encoded =
            trampoline::encode_cold(cold_addr, &p.yields, &sizing.return_ips, p.vector_width)
                .and_then(|cold| {
                    Ok((
                        trampoline::encode_hot(hot_addr, insns, &p.yields, end, &cold.switch_ips)?,
                        cold,
                    ))
                });
        let (hot, cold) = match encoded {
            Ok((hot, cold))
                if hot.bytes.len() == sizing.bytes.len() && hot.return_ips == sizing.return_ips =>
            {
                (hot, cold)
            }
            _ => {
                // Cannot happen while both encodings are deterministic; never emit a
                // trampoline whose layout moved. Pad its slot and skip its sites.
                hot_blob.resize(hot_blob.len() + sizing.bytes.len(), 0xcc);
                for _ in &p.yields {
                    report.skip(Skip::DisplacedNotRelocatable);
                }
                continue;
            }
        };
        hot_blob.extend_from_slice(&hot.bytes);
        cold_blob.extend_from_slice(&cold.bytes);
        let mut patch = vec![0xe9];
        patch.extend_from_slice(&((hot_addr as i64 - (start as i64 + 5)) as i32).to_le_bytes());
        patch.resize((end - start) as usize, 0xcc); // never executed: trap if it is
        patches.push(writer::Patch {
            addr: start,
            bytes: patch,
        });
        report.trampolines += 1;
        for y in &p.yields {
            record_site(report, f, &insns[y.at], end - start, y, p.vector_width);
        }
    }
    report.trampoline_bytes = hot_blob.len() + cold_blob.len();
    let mut blob = elf::TRAMPOLINE_MAGIC.to_vec();
    blob.extend_from_slice(&hot_blob);
    blob.resize((cold_base - layout.vaddr) as usize, 0xcc);
    blob.extend_from_slice(&cold_blob);
    (patches, blob)
}

fn record_site(
    report: &mut Report,
    f: &Function,
    load: &Instruction,
    window: u64,
    y: &YieldPoint,
    vector_width: usize,
) {
    let live: RegSet = y.live;
    let saved = trampoline::saved_registers(live);
    report.vector_width = report.vector_width.max(vector_width);
    let prefix = if vector_width >= 32 { "ymm" } else { "xmm" };
    let names = saved.names(prefix);
    *report
        .saved_registers_histogram
        .entry(names.len())
        .or_default() += 1;
    let path = match (y.budget, FastPath::for_live(live)) {
        (Some(_), _) if trampoline::budget_keeps_flags(live) => "sub-pushf",
        (Some(_), _) => "sub",
        (None, FastPath::FlagsDead) => "cmp",
        (None, FastPath::RcxDead) => "jrcxz",
        (None, FastPath::RcxWrapped) => "jrcxz-wrapped",
    };
    *report.fast_paths.entry(path).or_default() += 1;
    report.patched += 1;
    report.sites.push(SiteReport {
        offset: format!("{:#x}", load.ip()),
        symbol: f
            .name
            .as_ref()
            .map(|n| format!("{n}+{:#x}", load.ip() - f.start)),
        window,
        saved: names.join(","),
        fast_path: path,
        cost: y.budget.map(|b| b.cost),
    });
}
