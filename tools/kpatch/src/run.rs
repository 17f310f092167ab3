//! One `msh kpatch` run: select the lock, index the tree, generate, check,
//! and only then write the outputs.

use crate::chain::{Chain, LockIndex};
use crate::family::LockFamily;
use crate::infer::{self, Inference};
use crate::patch::{self, GeneratedPatch, Plan};
use crate::sites::{self, FieldAlias, FieldDecl, FileFindings, MemberDecl, Site};
use crate::tree::KernelTree;
use crate::{cocci, cparse, perf_script, Error};
use aho_corasick::AhoCorasick;
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Which lock to patch.
#[derive(Debug, Clone)]
pub enum Selection {
    /// The hottest field in a `perf script` profile; `lock` restricts the family.
    Profile {
        /// The `perf script` text.
        script: PathBuf,
        /// Only fields locked by this API's family.
        lock: Option<String>,
        /// Only this field (FIELD or STRUCT.FIELD), among those the profile shows.
        field: Option<String>,
    },
    /// A lock API and a field: `file_lock` or `files_struct.file_lock`.
    Lock {
        /// The lock API, e.g. `spin_lock`.
        api: String,
        /// The locked field: FIELD or STRUCT.FIELD.
        field: String,
    },
}

/// What one `msh kpatch` run patches and where it writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kernel source tree.
    pub kernel: PathBuf,
    /// Which lock to patch.
    pub selection: Selection,
    /// Name of the policy variable; `STRUCT_FIELD_policy` when `None`.
    pub policy_var: Option<String>,
    /// Where to write the unified diff.
    pub output: PathBuf,
    /// Directory to also write the Coccinelle semantic patch into.
    pub emit_cocci: Option<PathBuf>,
    /// Run spatch with the semantic patch and compare its rewrite with msh's.
    pub check_spatch: bool,
    /// Worker threads for the tree scans.
    pub threads: usize,
    /// Change only `.c` files (for kpatch-build).
    pub livepatch: bool,
}

/// What a run found and wrote; `Display` prints it for the user.
pub struct Report {
    /// The tree's `VERSION.PATCHLEVEL.SUBLEVEL`.
    pub kernel_version: String,
    /// The lock family patched.
    pub family: &'static LockFamily,
    /// The structure whose field is patched.
    pub structure: String,
    /// The patched field.
    pub field: String,
    /// The policy variable the rewritten sites pass down.
    pub policy_var: String,
    /// The sites rewritten.
    pub sites: Vec<Site>,
    /// Sites of a same-named field of another structure.
    pub other_structures: Vec<Site>,
    /// Sites whose structure the file does not say, left alone.
    pub unresolved: Vec<Site>,
    /// Files with a call of the family's API on the field that were not
    /// parsed: they never name the structure, so none of their sites can be
    /// typed as its (the field has several declaring structures).
    pub files_not_naming_structure: Vec<String>,
    /// The chains copied with the policy threaded through.
    pub chains: Vec<Chain>,
    /// Files the patch creates or changes.
    pub patched_files: Vec<String>,
    /// C files in the tree.
    pub files_in_tree: usize,
    /// The profile's candidate fields, for a `--perf-script` run.
    pub inference: Option<Inference>,
    /// Semantic patches written (`--emit-cocci`).
    pub cocci_files: Vec<PathBuf>,
    /// How spatch's rewrite compared (`--check-spatch`).
    pub spatch: Option<cocci::SpatchCheck>,
    /// The `--livepatch` layout of header helpers, for a `--livepatch` run.
    pub livepatch: Option<crate::livepatch::Layout>,
    /// Time of each phase, then the total.
    pub timings: Vec<(&'static str, Duration)>,
}

impl Report {
    /// The header the patch creates.
    pub fn header_path(&self) -> String {
        patch::header_path(self.family)
    }
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Runs `msh kpatch`: selects the lock, generates and checks the patch, then writes the outputs.
pub fn run(options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let mut timings = Vec::new();
    let mut lap = {
        let mut last = Instant::now();
        move |what: &'static str, timings: &mut Vec<(&'static str, Duration)>| {
            timings.push((what, last.elapsed()));
            last = Instant::now();
        }
    };
    // Cheap argument checks first: a bad primitive fails before any I/O.
    let (explicit_family, field_arg) = match &options.selection {
        Selection::Lock { api, field } => {
            (Some(LockFamily::by_acquire_api(api)?), Some(field.clone()))
        }
        Selection::Profile { lock, field, .. } => (
            lock.as_deref()
                .map(LockFamily::by_acquire_api)
                .transpose()?,
            field.clone(),
        ),
    };
    let (struct_arg, field_arg) = match field_arg
        .as_deref()
        .map(|f| f.split_once('.').unwrap_or(("", f)))
    {
        Some((s, f)) => ((!s.is_empty()).then(|| s.to_owned()), Some(f.to_owned())),
        None => (None, None),
    };
    for name in struct_arg
        .iter()
        .chain(&field_arg)
        .chain(&options.policy_var)
    {
        if !is_identifier(name) {
            return Err(Error::Usage(format!("`{name}` is not a C identifier")));
        }
    }
    // The outputs are checked before the long work and written together after it.
    let script = match &options.selection {
        Selection::Profile { script, .. } => Some(script.as_path()),
        Selection::Lock { .. } => None,
    };
    let mut outputs =
        msh_files::Outputs::new(&script.into_iter().collect::<Vec<_>>()).map_err(files_error)?;
    let patch_out = outputs.plan(&options.output, "-o").map_err(files_error)?;
    if let Some(dir) = &options.emit_cocci {
        // Its file name depends on the lock family, known only later: check the
        // directory now so a bad one fails fast; it is planned for real below.
        msh_files::Outputs::new(&[])
            .and_then(|mut check| check.plan_in_dir(dir, "x.cocci", "--emit-cocci"))
            .map_err(files_error)?;
    }
    let tree = KernelTree::open(&options.kernel)?;
    let tree_name = options.kernel.display().to_string();
    lap("list tree", &mut timings);

    // 1. The lock: from the profile or the arguments.
    let (family, field, mut structure, inference) = match &options.selection {
        Selection::Lock { .. } => (
            explicit_family.expect("set above"),
            field_arg.clone().expect("set above"),
            struct_arg,
            None,
        ),
        Selection::Profile { script, .. } => {
            let name = script.display().to_string();
            let text = msh_files::read_regular(script, "--perf-script", MAX_PERF_SCRIPT_BYTES)
                .map_err(files_error)?;
            let profile = perf_script::parse(&String::from_utf8_lossy(&text), &name)?;
            let mut inference =
                infer::fields_from_profile(&tree, &profile, explicit_family, options.threads)?;
            inference
                .candidates
                .retain(|c| field_arg.as_ref().is_none_or(|f| *f == c.field));
            inference
                .candidates
                .retain(|c| struct_arg.is_none() || c.structure == struct_arg);
            let Some(top) = inference.candidates.first().cloned() else {
                let callers: Vec<_> = profile
                    .callers
                    .iter()
                    .take(5)
                    .map(|c| c.function.as_str())
                    .collect();
                return Err(Error::NoFieldInProfile(format!(
                    "{name}: none of the {} functions calling a lock primitive ({}{}) locks a matching structure field in {tree_name}",
                    profile.callers.len(),
                    callers.join(", "),
                    if profile.callers.len() > 5 { ", ..." } else { "" }
                )));
            };
            (
                top.family,
                top.field,
                top.structure.or(struct_arg),
                Some(inference),
            )
        }
    };
    lap("profile", &mut timings);

    // 2. Every site and declaration of the field.
    let (findings, unparsed) =
        scan_sites(&tree, family, &field, structure.as_deref(), options.threads)?;
    let mut decls: Vec<FieldDecl> = findings
        .iter()
        .flat_map(|f| f.decls.iter().cloned())
        .collect();
    let aliases: BTreeSet<FieldAlias> = findings
        .iter()
        .flat_map(|f| f.aliases.iter().cloned())
        .collect();
    for alias in &aliases {
        for structure in alias_holders(&tree, alias, family, options.threads)? {
            decls.push(FieldDecl {
                structure,
                path: alias.path.clone(),
                line: alias.line,
            });
        }
    }
    let declaring: BTreeSet<String> = decls.iter().map(|d| d.structure.clone()).collect();
    let via: Vec<String> = aliases
        .iter()
        .map(|a| format!("{field} = {} ({}:{})", a.members.join("."), a.path, a.line))
        .collect();
    let all_sites: Vec<Site> = findings.into_iter().flat_map(|f| f.sites).collect();
    lap("index sites", &mut timings);
    let types = family.field_types.join(" or ");
    if declaring.is_empty() {
        let aliased = if via.is_empty() {
            String::new()
        } else {
            format!(
                " (macro {}: no structure holds that member as a {types})",
                via.join(", ")
            )
        };
        return Err(Error::FieldNeverLocked(format!(
            "no structure in {tree_name} declares a {types} field `{field}`{aliased}: it is never locked with {}",
            family.acquire[0]
        )));
    }
    if let Some(s) = &structure {
        if !declaring.contains(s) {
            return Err(Error::FieldNeverLocked(format!(
                "struct {s} has no {types} field `{field}` in {tree_name} (declared in: {})",
                declaring.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if structure.is_none() {
        if declaring.len() == 1 {
            structure = declaring.first().cloned();
        } else {
            let count = |s: &String| {
                all_sites
                    .iter()
                    .filter(|x| x.base_struct.as_ref() == Some(s))
                    .count()
            };
            let listed: Vec<String> = declaring
                .iter()
                .map(|s| format!("{s}: {} sites", count(s)))
                .collect();
            return Err(Error::AmbiguousField(format!(
                "field `{field}` is a {types} in {} structures ({}); name one as --field STRUCT.{field}",
                declaring.len(),
                listed.join(", ")
            )));
        }
    }
    let structure = structure.expect("resolved above");
    let (mut taken, mut other_structures, mut unresolved) = (Vec::new(), Vec::new(), Vec::new());
    for site in all_sites {
        match &site.base_struct {
            Some(s) if *s == structure => taken.push(site),
            Some(s) if declaring.contains(s) => other_structures.push(site),
            _ if declaring.len() == 1 => taken.push(site),
            _ => unresolved.push(site),
        }
    }
    // Files that never name the structure cannot type a base as it: read
    // only when the field has a single declaring structure (see scan_sites).
    let mut unparsed_sites = Vec::new();
    if !unparsed.is_empty() {
        if declaring.len() == 1 {
            let more = tree.scan(&unparsed, &[], options.threads, |parser, file| {
                let found = sites::scan_file(parser, &file.path, &file.text, family, &field);
                (!found.sites.is_empty()).then_some(found.sites)
            })?;
            taken.extend(more.into_iter().flatten());
            taken.sort_by(|a, b| (&a.path, a.callee.start).cmp(&(&b.path, b.callee.start)));
        } else {
            unparsed_sites = unparsed;
        }
    }
    if taken.is_empty() {
        return Err(Error::FieldNeverLocked(format!(
            "{structure}.{field} is never locked or unlocked with {} primitives in {tree_name}",
            family.key
        )));
    }

    // 3. The chains of every API the sites use.
    let index = LockIndex::build(&tree, options.threads)?;
    let mut apis: Vec<&str> = family
        .acquire
        .iter()
        .chain(family.release)
        .copied()
        .collect();
    apis.retain(|api| taken.iter().any(|s| s.api == *api));
    let chains = apis
        .iter()
        .map(|api| index.resolve(api))
        .collect::<Result<Vec<_>, _>>()?;
    lap("resolve chains", &mut timings);

    // 4. The patch, checked before anything is written.
    let policy_var = options
        .policy_var
        .clone()
        .unwrap_or_else(|| format!("{structure}_{field}_policy"));
    let version = tree.version();
    let layout = options
        .livepatch
        .then(|| crate::livepatch::plan(&tree, &taken, options.threads))
        .transpose()?;
    lap("livepatch layout", &mut timings);
    let plan = Plan {
        family,
        structure: &structure,
        field: &field,
        sites: &taken,
        chains: &chains,
        index: &index,
        prefix: "bpf_policy_",
        policy_var: &policy_var,
        kernel_version: &version,
        livepatch: layout.as_ref(),
    };
    let generated = patch::generate(&plan, |path| tree.read(path))?;
    check_names_unused(&tree, &generated, options.threads)?;
    check_still_parses(&generated)?;
    lap("generate", &mut timings);

    // The semantic patch covers the whole family, so one file serves every field.
    let family_apis: Vec<&str> = family
        .acquire
        .iter()
        .chain(family.release)
        .copied()
        .collect();
    let cocci_text = cocci::semantic_patch(family, &family_apis, "bpf_policy_");
    let spatch = if options.check_spatch {
        // spatch rewrites by field name alone: the sites of the files the
        // scan skipped (they never name the structure) are other structures'.
        let mut not_ours = other_structures.clone();
        let skipped = tree.scan(&unparsed_sites, &[], options.threads, |parser, file| {
            let found = sites::scan_file(parser, &file.path, &file.text, family, &field);
            (!found.sites.is_empty()).then_some(found.sites)
        })?;
        not_ours.extend(skipped.into_iter().flatten());
        let check = cocci::check_with_spatch(
            &tree,
            &cocci_text,
            family,
            &family_apis,
            &field,
            &policy_var,
            &taken,
            &not_ours,
            &unresolved,
        )?;
        lap("spatch", &mut timings);
        Some(check)
    } else {
        None
    };

    // 5. Outputs: all of them or none.
    outputs.set(patch_out, generated.diff.into_bytes());
    let mut cocci_files = Vec::new();
    if let Some(dir) = &options.emit_cocci {
        let name = cocci::file_name(family);
        let id = outputs
            .plan_in_dir(dir, &name, "--emit-cocci")
            .map_err(files_error)?;
        outputs.set(id, cocci_text.into_bytes());
        cocci_files.push(dir.join(name));
    }
    outputs.commit().map_err(files_error)?;
    timings.push(("total", started.elapsed()));
    Ok(Report {
        kernel_version: version,
        family,
        structure,
        field,
        policy_var,
        sites: taken,
        other_structures,
        unresolved,
        files_not_naming_structure: unparsed_sites,
        chains,
        patched_files: generated.files.iter().map(|f| f.path.clone()).collect(),
        files_in_tree: tree.files.len(),
        inference,
        cocci_files,
        spatch,
        livepatch: layout,
        timings,
    })
}

/// The site and declaration scan of `field`. With `structure` known, a
/// file that never names it (nor `current`, for `task_struct`) cannot type
/// a site as its: such files are parsed only for declarations, and only
/// until a second declaring structure is found (a common name such as
/// `lock` has hundreds); their paths are returned for a second pass when
/// the field turns out to have one declaring structure (its untyped sites
/// are then its own). Parsing is what a scan spends its time on.
fn scan_sites(
    tree: &KernelTree,
    family: &'static LockFamily,
    field: &str,
    structure: Option<&str>,
    threads: usize,
) -> Result<(Vec<FileFindings>, Vec<String>), Error> {
    // Leftmost-longest: `spin_lock` must not hide `spin_lock_irqsave`.
    let api_matcher = AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(family.acquire.iter().chain(family.release))
        .expect("API names are plain strings");
    let names_structure = |bytes: &[u8]| match structure {
        Some(s) => {
            sites::has_word(bytes, s) || (s == "task_struct" && sites::has_word(bytes, "current"))
        }
        None => true,
    };
    let other_declarer = AtomicBool::new(false);
    enum Part {
        Found(FileFindings),
        Unparsed(String),
    }
    let parts = tree.scan_filtered(
        &tree.files,
        |bytes| sites::may_mention(bytes, field, &api_matcher, family.field_types),
        threads,
        |parser, file| {
            let bytes = file.text.as_bytes();
            let named = names_structure(bytes);
            let site = sites::may_have_site(bytes, field, &api_matcher);
            let wanted = (site && named)
                || (sites::may_declare(bytes, field, family.field_types)
                    && (named || !other_declarer.load(Ordering::Relaxed)));
            if !wanted {
                return site.then_some(Part::Unparsed(file.path));
            }
            let found = sites::scan_file(parser, &file.path, &file.text, family, field);
            if found
                .decls
                .iter()
                .any(|d| Some(d.structure.as_str()) != structure)
            {
                other_declarer.store(true, Ordering::Relaxed);
            }
            (!found.sites.is_empty() || !found.decls.is_empty() || !found.aliases.is_empty())
                .then_some(Part::Found(found))
        },
    )?;
    let (mut findings, mut unparsed) = (Vec::new(), Vec::new());
    for part in parts {
        match part {
            Part::Found(f) => findings.push(f),
            Part::Unparsed(p) => unparsed.push(p),
        }
    }
    Ok((findings, unparsed))
}

/// The structures in which `alias` (`d_lock` = `d_lockref.lock`) names a
/// lock of `family`: those declaring the first member, whose type declares
/// the next, ..., whose type declares the last with a lock type.
fn alias_holders(
    tree: &KernelTree,
    alias: &FieldAlias,
    family: &'static LockFamily,
    threads: usize,
) -> Result<BTreeSet<String>, Error> {
    let (last, path) = alias
        .members
        .split_last()
        .expect("an alias has two members or more");
    // (outermost structure, type of the member reached so far)
    let mut reached: Vec<(String, String)> = Vec::new();
    for (depth, member) in path.iter().enumerate() {
        let found: Vec<MemberDecl> = tree
            .scan(
                &tree.files,
                &[member.as_bytes()],
                threads,
                |parser, file| {
                    let decls = sites::member_decls(parser, &file.text, member);
                    (!decls.is_empty()).then_some(decls)
                },
            )?
            .into_iter()
            .flatten()
            .collect();
        reached = if depth == 0 {
            found
                .into_iter()
                .map(|m| (m.structure, m.member_type))
                .collect()
        } else {
            reached
                .iter()
                .flat_map(|(outer, ty)| {
                    found
                        .iter()
                        .filter(move |m| m.structure == *ty)
                        .map(move |m| (outer.clone(), m.member_type.clone()))
                })
                .collect()
        };
    }
    let types: BTreeSet<&str> = reached.iter().map(|(_, ty)| ty.as_str()).collect();
    let holders_of_last: BTreeSet<String> = tree
        .scan(&tree.files, &[last.as_bytes()], threads, |parser, file| {
            if !types.iter().any(|t| file.text.contains(t)) {
                return None;
            }
            let decls = sites::lock_decls(parser, &file.path, &file.text, family, last);
            (!decls.is_empty()).then_some(decls)
        })?
        .into_iter()
        .flatten()
        .map(|d| d.structure)
        .collect();
    Ok(reached
        .into_iter()
        .filter(|(_, ty)| holders_of_last.contains(ty))
        .map(|(outer, _)| outer)
        .collect())
}

/// Refuses names the tree already uses (`bpf_spin_lock` is a BPF helper in
/// 6.1, hence the `bpf_policy_` prefix) and a header that exists.
fn check_names_unused(
    tree: &KernelTree,
    generated: &GeneratedPatch,
    threads: usize,
) -> Result<(), Error> {
    let header_in_patch = generated
        .files
        .iter()
        .any(|f| f.path == generated.header_path);
    if header_in_patch && tree.root.join(&generated.header_path).exists() {
        return Err(Error::NameTaken(format!(
            "{} already exists: is the tree already patched?",
            generated.header_path
        )));
    }
    let matcher = AhoCorasick::new(&generated.new_names).expect("names are plain strings");
    // The names share a few stems (the prefix, the policy type, the policy
    // variable): memmem on those is far faster than the automaton on every
    // file, which then runs only where a stem occurs.
    let mut stems: Vec<&str> = generated
        .new_names
        .iter()
        .map(|n| {
            if n.starts_with(generated.prefix.as_str()) {
                generated.prefix.as_str()
            } else {
                n.as_str()
            }
        })
        .collect();
    stems.sort();
    stems.dedup();
    let finders: Vec<memchr::memmem::Finder> = stems
        .iter()
        .map(|s| memchr::memmem::Finder::new(s.as_bytes()))
        .collect();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let keep = |bytes: &[u8]| finders.iter().any(|f| f.find(bytes).is_some());
    let clashes = tree.scan_filtered(&tree.files, keep, threads, |_, file| {
        let bytes = file.text.as_bytes();
        matcher.find_iter(bytes).find_map(|m| {
            let before_ok = m.start() == 0 || !is_ident(bytes[m.start() - 1]);
            let after_ok = m.end() == bytes.len() || !is_ident(bytes[m.end()]);
            (before_ok && after_ok).then(|| {
                (
                    file.path.clone(),
                    generated.new_names[m.pattern().as_usize()].clone(),
                )
            })
        })
    })?;
    match clashes.first() {
        Some((path, name)) => Err(Error::NameTaken(format!(
            "generated name `{name}` is already used in {path}"
        ))),
        None => Ok(()),
    }
}

/// Every file the patch changes parses with no parse error the original
/// file, or the kernel code the patch copies into it, did not already have
/// (tree-sitter cannot read some attribute macros, so copying such code
/// copies the error). Each copy must parse as a definition of its new name.
fn check_still_parses(generated: &GeneratedPatch) -> Result<(), Error> {
    // Every livepatch file carries the same block: each distinct text is
    // parsed once. Files are checked on the scan threads' budget, in parallel.
    let cache: std::sync::Mutex<std::collections::HashMap<u64, usize>> = Default::default();
    let errors_cached = |parser: &mut tree_sitter::Parser, text: &str| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(n) = cache.lock().expect("no panics while held").get(&key) {
            return *n;
        }
        let n = cparse::error_count(&cparse::parse(parser, text));
        cache.lock().expect("no panics while held").insert(key, n);
        n
    };
    use rayon::prelude::*;
    generated
        .files
        .par_iter()
        .map_init(cparse::parser, |parser, file| -> Result<(), Error> {
            let new_tree = cparse::parse(parser, &file.new);
            let Some(old) = &file.old else {
                return check_defines(&new_tree, file);
            };
            let copied: usize = file.copied.iter().map(|c| errors_cached(parser, c)).sum();
            let allowed = cparse::error_count(&cparse::parse(parser, old)) + copied;
            let after = cparse::error_count(&new_tree);
            if after > allowed {
                let mut errors = |text: &str| cparse::error_count(&cparse::parse(parser, text));
                let culprit = file
                    .culprit(&mut errors, copied)
                    .unwrap_or_else(|| format!("{}: the changes together (none alone)", file.path));
                return Err(Error::BreaksParse(culprit, after - allowed));
            }
            check_defines(&new_tree, file)
        })
        .collect::<Result<Vec<()>, Error>>()?;
    Ok(())
}

/// Each copy in `file` parses as a definition of its new name.
fn check_defines(new_tree: &tree_sitter::Tree, file: &patch::PatchedFile) -> Result<(), Error> {
    let defined = cparse::defined_names_in(new_tree, &file.new);
    match file.defines.iter().find(|n| !defined.contains(*n)) {
        Some(missing) => Err(Error::BreaksParse(
            format!(
                "{}: the copy `{missing}` does not parse as a definition",
                file.path
            ),
            1,
        )),
        None => Ok(()),
    }
}

/// The largest `perf script` text read (a minute of `perf record -g -a` on a big
/// machine is a few hundred MB).
pub const MAX_PERF_SCRIPT_BYTES: u64 = 2 << 30;

/// An [`msh_files`] refusal or failure, as one line.
fn files_error(e: anyhow::Error) -> Error {
    Error::Files(format!("{e:#}"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(inference) = &self.inference {
            writeln!(f, "profile: locked fields, by samples")?;
            for c in inference.candidates.iter().take(5) {
                writeln!(
                    f,
                    "  {:>8.1}  {} {}.{}  (via {})",
                    c.samples,
                    c.family.key,
                    c.structure.as_deref().unwrap_or("?"),
                    c.field,
                    c.callers.join(", ")
                )?;
            }
            for note in inference.notes.iter().take(5) {
                writeln!(f, "  note: {note}")?;
            }
        }
        let acquires = self.sites.iter().filter(|s| !s.is_release).count();
        writeln!(
            f,
            "lock: {}.{} ({}), Linux {}: {} sites ({} lock, {} unlock) in {} files",
            self.structure,
            self.field,
            self.family.key,
            self.kernel_version,
            self.sites.len(),
            acquires,
            self.sites.len() - acquires,
            self.sites
                .iter()
                .map(|s| &s.path)
                .collect::<BTreeSet<_>>()
                .len()
        )?;
        if !self.other_structures.is_empty() {
            writeln!(
                f,
                "  left alone: {} sites of a `{}` in other structures",
                self.other_structures.len(),
                self.field
            )?;
        }
        if !self.files_not_naming_structure.is_empty() {
            writeln!(
                f,
                "  left alone: {} files lock a `{}` but never name struct {} (not parsed)",
                self.files_not_naming_structure.len(),
                self.field,
                self.structure
            )?;
        }
        const SHOWN: usize = 10;
        for site in self.unresolved.iter().take(SHOWN) {
            writeln!(
                f,
                "  warning: {}:{}: structure of `{}` unknown, left alone",
                site.path, site.line, site.call_text
            )?;
        }
        if self.unresolved.len() > SHOWN {
            let more = self.unresolved.len() - SHOWN;
            writeln!(
                f,
                "  warning: ... and {more} more sites whose structure is unknown, left alone"
            )?;
        }
        for chain in &self.chains {
            writeln!(f, "chain: {}", chain.names().join(" -> "))?;
        }
        writeln!(f, "policy: struct bpf_lock_policy {}", self.policy_var)?;
        writeln!(
            f,
            "patch: {} files ({})",
            self.patched_files.len(),
            self.patched_files.join(", ")
        )?;
        if let Some(layout) = &self.livepatch {
            writeln!(
                f,
                "livepatch: {} header helpers copied into the {} .c files calling them; headers untouched",
                layout.helpers.len(),
                layout.callers.len()
            )?;
            for line in layout.uncovered.iter().take(SHOWN) {
                writeln!(f, "  not covered: {line}")?;
            }
            if layout.uncovered.len() > SHOWN {
                writeln!(
                    f,
                    "  not covered: ... and {} more (listed in the patch)",
                    layout.uncovered.len() - SHOWN
                )?;
            }
        }
        if let Some(check) = &self.spatch {
            writeln!(f, "spatch: {check}")?;
        }
        let times: Vec<String> = self
            .timings
            .iter()
            .map(|(what, d)| format!("{what} {:.2}s", d.as_secs_f64()))
            .collect();
        write!(
            f,
            "time over {} files: {}",
            self.files_in_tree,
            times.join(", ")
        )
    }
}
