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
//! 3. [`patch`]: a header of `bpf_policy_`-prefixed copies of the chains that
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
//! **Speed.** A whole run reads each of the tree's 51,927 C files once per
//! scan and parses only the files that pass a byte prefilter (`memchr` for
//! the field name, Aho-Corasick for function names, then a check that a
//! name sits on a definition line), on a small pool of scoped threads that
//! take files one at a time ([`tree::default_threads`]). The site scan's
//! prefilter ([`sites::may_mention`]) wants the field as a whole word after
//! `->`/`.` in a file that calls the family's API, next to a lock type, or
//! after `#define`: a field named `lock` still passes thousands of files,
//! each parsed whole (36 s for `zone.lock`, the known slow case). On the 2-vCPU build
//! VM (busy with other builds): 3-5 s with `--lock`, 9-13 s with
//! `--perf-script`, against a 60 s budget; two threads gave 0-30% over one
//! (I/O and page cache dominate the `--lock` runs).
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
