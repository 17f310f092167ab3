//! The kernel source tree: validation, the list of C files, and a parallel
//! scan that reads every file once, keeps those that pass a byte prefilter,
//! and hands them to a per-thread callback (where the tree-sitter parse
//! happens). The prefilter is what makes a whole-tree run fast: of 50k files,
//! a field name appears in a few dozen.

use crate::Error;
use memchr::memmem;
use std::path::{Path, PathBuf};

/// Top-level directories that are not kernel C: documentation, host tools
/// (their own copies of the lock API), build scripts.
const SKIPPED_TOP_DIRS: &[&str] = &["Documentation", "tools", "scripts", "usr", ".git"];

/// A validated kernel source tree and its C files.
pub struct KernelTree {
    /// The tree's root directory.
    pub root: PathBuf,
    /// Paths of `.c` and `.h` files relative to `root`, sorted.
    pub files: Vec<String>,
}

/// One source file that passed a prefilter.
pub struct SourceFile {
    /// Path relative to the tree's root.
    pub path: String,
    /// The file's text.
    pub text: String,
}

impl KernelTree {
    /// Opens `root` after checking that it looks like a kernel tree.
    pub fn open(root: &Path) -> Result<Self, Error> {
        let not_kernel =
            |why: &str| Error::NotKernelTree(root.display().to_string(), why.to_owned());
        if !root.is_dir() {
            return Err(not_kernel("no such directory"));
        }
        for marker in [
            "Makefile",
            "Kconfig",
            "include/linux/spinlock.h",
            "kernel/locking",
        ] {
            if !root.join(marker).exists() {
                return Err(not_kernel(&format!("{marker} is missing")));
            }
        }
        let makefile = std::fs::read_to_string(root.join("Makefile"))
            .map_err(|e| not_kernel(&format!("Makefile: {e}")))?;
        if !makefile.lines().any(|l| l.starts_with("VERSION =")) {
            return Err(not_kernel("Makefile has no VERSION line"));
        }
        // Canonical: spatch mistakes `/a/b/../c/x.c` for several files.
        let root = &root
            .canonicalize()
            .map_err(|e| not_kernel(&e.to_string()))?;
        let mut files = Vec::new();
        collect_sources(root, root, &mut files)
            .map_err(|e| Error::Io(root.display().to_string(), e))?;
        files.sort();
        Ok(KernelTree {
            root: root.to_owned(),
            files,
        })
    }

    /// `VERSION.PATCHLEVEL.SUBLEVEL` from the top Makefile.
    pub fn version(&self) -> String {
        let makefile = std::fs::read_to_string(self.root.join("Makefile")).unwrap_or_default();
        let get = |key: &str| {
            makefile
                .lines()
                .find_map(|l| {
                    l.strip_prefix(key)
                        .map(|v| v.trim_start_matches([' ', '=']).trim().to_owned())
                })
                .unwrap_or_default()
        };
        format!(
            "{}.{}.{}",
            get("VERSION"),
            get("PATCHLEVEL"),
            get("SUBLEVEL")
        )
    }

    /// Reads a file of the tree as text (Latin-1 bytes replaced).
    pub fn read(&self, path: &str) -> Result<String, Error> {
        let bytes =
            std::fs::read(self.root.join(path)).map_err(|e| Error::Io(path.to_owned(), e))?;
        // Kernel sources are UTF-8 but a few old files carry Latin-1 bytes.
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Reads every file among `paths` that contains all of `required` (bytes),
    /// and calls `visit` on it from one of `threads` workers. Returns what the
    /// workers return, in path order.
    pub fn scan<T: Send>(
        &self,
        paths: &[String],
        required: &[&[u8]],
        threads: usize,
        visit: impl Fn(&mut tree_sitter::Parser, SourceFile) -> Option<T> + Sync,
    ) -> Result<Vec<T>, Error> {
        let finders: Vec<memmem::Finder> = required.iter().map(memmem::Finder::new).collect();
        self.scan_filtered(
            paths,
            |bytes| finders.iter().all(|f| f.find(bytes).is_some()),
            threads,
            visit,
        )
    }

    /// Like [`scan`](Self::scan), for files that contain any of `matcher`'s patterns.
    pub fn scan_any<T: Send>(
        &self,
        paths: &[String],
        matcher: &aho_corasick::AhoCorasick,
        threads: usize,
        visit: impl Fn(&mut tree_sitter::Parser, SourceFile) -> Option<T> + Sync,
    ) -> Result<Vec<T>, Error> {
        self.scan_filtered(paths, |bytes| matcher.is_match(bytes), threads, visit)
    }

    /// Like [`scan`](Self::scan), for files whose bytes `keep` accepts.
    pub fn scan_filtered<T: Send>(
        &self,
        paths: &[String],
        keep: impl Fn(&[u8]) -> bool + Sync,
        threads: usize,
        visit: impl Fn(&mut tree_sitter::Parser, SourceFile) -> Option<T> + Sync,
    ) -> Result<Vec<T>, Error> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    let (keep, visit, next) = (&keep, &visit, &next);
                    scope.spawn(move || -> Result<Vec<(usize, T)>, Error> {
                        let mut parser = crate::cparse::parser();
                        let mut out = Vec::new();
                        // Files are handed out one at a time: sizes vary by 1000x.
                        loop {
                            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(path) = paths.get(index) else { break };
                            let bytes = std::fs::read(self.root.join(path))
                                .map_err(|e| Error::Io(path.clone(), e))?;
                            if !keep(&bytes) {
                                continue;
                            }
                            let text = String::from_utf8(bytes).unwrap_or_else(|e| {
                                String::from_utf8_lossy(e.as_bytes()).into_owned()
                            });
                            if let Some(result) = visit(
                                &mut parser,
                                SourceFile {
                                    path: path.clone(),
                                    text,
                                },
                            ) {
                                out.push((index, result));
                            }
                        }
                        Ok(out)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("scan worker panicked"))
                .collect::<Vec<_>>()
        });
        let mut all = Vec::new();
        for result in results {
            all.extend(result?);
        }
        all.sort_by_key(|(index, _)| *index);
        Ok(all.into_iter().map(|(_, result)| result).collect())
    }
}

fn collect_sources(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        let relative = path
            .strip_prefix(root)
            .expect("walk stays under root")
            .to_string_lossy()
            .into_owned();
        if file_type.is_dir() {
            if dir == root && SKIPPED_TOP_DIRS.contains(&relative.as_str()) {
                continue;
            }
            collect_sources(root, &path, out)?;
        } else if file_type.is_file() && (relative.ends_with(".c") || relative.ends_with(".h")) {
            out.push(relative);
        }
    }
    Ok(())
}

/// Worker threads for scans: the machine's parallelism, at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_directory_that_is_not_a_kernel_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Makefile"), "all:\n").unwrap();
        let err = KernelTree::open(dir.path()).err().unwrap();
        assert!(matches!(err, Error::NotKernelTree(..)), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}
