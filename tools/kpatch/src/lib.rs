//! msh kpatch: from a perf profile (or a lock API and a field) to a kernel
//! patch that moves one lock, one structure's field, to a policy-aware
//! implementation.
//!
//! Pipeline:
//! 1. [`perf_script`]: `perf script` call chains -> functions that call a lock
//!    primitive, by samples. [`infer`] finds those functions in the tree and
//!    the field each one locks (`spin_lock(&files->file_lock)` -> `file_lock`
//!    of `struct files_struct`), following inline lock wrappers such as
//!    `mmap_write_lock_killable`.
//! 2. [`sites`]: every lock and unlock site of that field in the tree;
//!    [`chain`]: the API's call chain down to the slowpath, from the tree's
//!    own lock implementation, following macros, for the configuration in
//!    [`config`].
//! 3. [`patch`] (and [`livepatch`] for `--livepatch`): a header of `bpf_policy_`-prefixed copies of the chains that
//!    thread a `struct bpf_lock_policy *` down to the slowpath, the call-site
//!    rewrites, the includes: one unified diff (`patch -p1`, `git apply`).
//!    The prefix is `bpf_policy_`, not `bpf_`: 6.1 already has a BPF helper
//!    named `bpf_spin_lock`; every generated name is checked unused.
//! 4. [`cocci`]: the same site rewrite as a Coccinelle semantic patch,
//!    generic over the field through `-D` virtual identifiers, and a check
//!    that runs `spatch` and compares.
//!
//! **Why tree-sitter-c.** Kernel sources cannot be parsed as C without the
//! kernel's own preprocessing (a configured build, its include paths and
//! compiler flags): attribute macros (`__sched`, `__lockfunc`,
//! `____cacheline_aligned_in_smp`), statement macros (`LOCK_CONTENDED`,
//! `list_for_each_entry`) and conditional code make a strict parser (clang
//! without a build, `lang-c`) reject whole files. tree-sitter parses the
//! unpreprocessed text, recovers from what it cannot know by confining it to
//! small `ERROR` nodes, keeps every byte position (so rewrites are exact text
//! edits), and is fast enough to parse every candidate file of a whole tree.
//! Function-like macro bodies, which it leaves as text, are parsed again on
//! their own (see [`cparse::parse_macro_body`]).
//!
//! **Speed.** A run reads the tree's 51,927 C files a few times (the site
//! scan, the name check, for `--livepatch` the helper scans) and parses only
//! files that pass a byte prefilter; parsing is where the time goes. The
//! site scan ([`sites::may_have_site`], [`sites::may_declare`]) parses a
//! file only for a call of the family's API whose *first argument* names
//! the field as a member, or a statement declaring the field with a lock
//! type; with the structure known and several structures declaring the
//! field, only files that name the structure (none other can type a site as
//! its). `zone.lock` (`lock` is a member in thousands of files): 125 s
//! before, 19 s after, at load 11 on the 2-vCPU VM; `--livepatch` on
//! `xarray.xa_lock` (51 helpers, 139 files): 76 s -> 19 s. The patch checks
//! parse each distinct text once, in parallel (rayon).
#![warn(missing_docs)]

pub mod chain;
pub mod cocci;
pub mod config;
pub mod cparse;
pub mod family;
pub mod infer;
pub mod livepatch;
pub mod patch;
pub mod perf_script;
pub mod sites;
pub mod tree;

mod run;
pub use run::{run, Options, Report, Selection};

/// Everything that makes `msh kpatch` refuse to write a patch. Each message
/// is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory lacks what every kernel tree has.
    #[error("{0} is not a kernel source tree: {1}")]
    NotKernelTree(String, String),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The `perf script` input is unreadable, empty or without call chains.
    #[error("perf script: {0}")]
    PerfScript(String),
    /// The profile has no call chain through a lock primitive.
    #[error("{0}: none of the {1} call chains goes through a lock primitive (spin_lock, down_write, mutex_lock families); record with `perf record -g` while the lock is hot")]
    NoLockFrames(String, u64),
    /// `--lock` names no API of a known family.
    #[error("unknown lock primitive `{0}` (known: {known})", known = family::LockFamily::known_apis())]
    UnknownPrimitive(String),
    /// No site in the tree locks the field with that family.
    #[error("{0}")]
    FieldNeverLocked(String),
    /// Several structures declare the field and the input does not say which.
    #[error("{0}")]
    AmbiguousField(String),
    /// No caller in the profile locks a field the tree shows.
    #[error("{0}")]
    NoFieldInProfile(String),
    /// The API's chain down to the slowpath could not be followed.
    #[error("lock call chain: {0}")]
    Chain(String),
    /// A name the patch would introduce is already used in the tree.
    #[error("{0}")]
    NameTaken(String),
    /// The patched files parse with more errors than the originals.
    #[error("generated patch would break {0} ({1} new parse errors)")]
    BreaksParse(String, usize),
    /// `--livepatch` cannot keep the change to `.c` files.
    #[error("{0}")]
    Livepatch(String),
    /// spatch failed or could not be run.
    #[error("spatch: {0}")]
    Spatch(String),
    /// Arguments that contradict each other or name nothing usable.
    #[error("bad argument: {0}")]
    Usage(String),
    /// A file refused or not written by `msh-files`: an output that is an input, a
    /// missing directory, an input that is not a regular file or is too large.
    #[error("{0}")]
    Files(String),
}
