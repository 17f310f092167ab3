//! How every msh command writes its outputs and reads the files it is given.
//!
//! Outputs ([`Outputs`]):
//! - nothing is written until the command has finished its work, and then all of its
//!   outputs land together: each goes to a temporary file beside its destination and
//!   is renamed over it, so a failure leaves no partial or stray file;
//! - a path that exists and is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO,
//!   a symlink) is written in place and never replaced: `-o /dev/stdout` prints, and a
//!   device node stays a device node;
//! - an output that is the same file as one of the command's inputs, or as another
//!   output, is refused before any work is done.
//!
//! Inputs ([`read_regular`], [`open_regular`]): a file named by the user or inside
//! another file (a profile naming its binary, a pool naming its objects) is opened
//! only if it is a regular file, without blocking on a FIFO, and read up to a limit.

#![warn(missing_docs)]

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The identity of an existing file: device and inode.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Where one output goes and how.
#[derive(Debug)]
struct Planned {
    path: PathBuf,
    /// What the output is called in messages (`--report`, `-o`).
    what: String,
    bytes: Option<Vec<u8>>,
    /// Mode bits for a newly created file.
    mode: u32,
    /// A missing directory to create at commit ([`Outputs::plan_in_dir`]).
    create_dir: Option<PathBuf>,
}

/// A command's outputs, checked up front and written together at the end.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// # let (input, output) = (std::path::Path::new("in"), std::path::Path::new("out"));
/// let mut outputs = msh_files::Outputs::new(&[input])?;
/// let out = outputs.plan(output, "-o")?; // refused now if it is the input
/// // ... the long work ...
/// outputs.set(out, b"result".to_vec());
/// outputs.commit()?; // every output, or none
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Outputs {
    inputs: Vec<(PathBuf, (u64, u64))>,
    planned: Vec<Planned>,
}

/// A handle to one planned output, returned by [`Outputs::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputId(usize);

impl Outputs {
    /// Starts a command's set of outputs; `inputs` are the files it reads (ones that
    /// do not exist are ignored: they get their own error where they are opened).
    pub fn new(inputs: &[&Path]) -> Result<Outputs> {
        let inputs = inputs
            .iter()
            .filter_map(|p| identity(p).map(|id| (p.to_path_buf(), id)))
            .collect();
        Ok(Outputs {
            inputs,
            planned: Vec::new(),
        })
    }

    /// Checks an output path now, before the work: its directory exists and is
    /// writable, it is not a directory, and it is not any input or another output.
    pub fn plan(&mut self, path: &Path, what: &str) -> Result<OutputId> {
        self.plan_with_mode(path, what, 0o644)
    }

    /// As [`Outputs::plan`], with the mode bits a newly created file gets (an
    /// existing file keeps its own).
    pub fn plan_with_mode(&mut self, path: &Path, what: &str, mode: u32) -> Result<OutputId> {
        if path.as_os_str().is_empty() {
            bail!("{what}: empty path");
        }
        if let Some(id) = identity(path) {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.is_dir() {
                    bail!("{what} {} is a directory", path.display());
                }
            }
            // Devices such as /dev/null are shared by everyone; aliasing only matters
            // for files whose contents we would replace.
            let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
            if regular {
                if let Some((input, _)) = self.inputs.iter().find(|(_, i)| *i == id) {
                    bail!(
                        "{what} {} is the same file as the input {}: refusing to overwrite it",
                        path.display(),
                        input.display()
                    );
                }
                if let Some(other) = self.planned.iter().find(|p| identity(&p.path) == Some(id)) {
                    bail!(
                        "{what} {} is the same file as {} {}",
                        path.display(),
                        other.what,
                        other.path.display()
                    );
                }
            }
        } else {
            if let Some(other) = self.planned.iter().find(|p| p.path == path) {
                bail!(
                    "{what} {} is the same path as {}",
                    path.display(),
                    other.what
                );
            }
            let dir = parent_dir(path);
            let meta = std::fs::metadata(&dir).with_context(|| {
                format!("{what} {}: no directory {}", path.display(), dir.display())
            })?;
            if !meta.is_dir() {
                bail!(
                    "{what} {}: {} is not a directory",
                    path.display(),
                    dir.display()
                );
            }
        }
        self.planned.push(Planned {
            path: path.to_path_buf(),
            what: what.to_string(),
            bytes: None,
            mode,
            create_dir: None,
        });
        Ok(OutputId(self.planned.len() - 1))
    }

    /// Plans the file `name` in the directory `dir` (`--emit-cocci DIR`). A missing
    /// `dir` whose parent exists is created only at [`Outputs::commit`], so a failed
    /// command leaves no empty directory behind.
    pub fn plan_in_dir(&mut self, dir: &Path, name: &str, what: &str) -> Result<OutputId> {
        let path = dir.join(name);
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => return self.plan(&path, what),
            Ok(_) => bail!("{what} {} is not a directory", dir.display()),
            Err(_) => {}
        }
        let parent = parent_dir(dir);
        if !std::fs::metadata(&parent).is_ok_and(|m| m.is_dir()) {
            bail!(
                "{what} {}: no directory {}",
                dir.display(),
                parent.display()
            );
        }
        if let Some(other) = self.planned.iter().find(|p| p.path == path) {
            bail!(
                "{what} {} is the same path as {}",
                path.display(),
                other.what
            );
        }
        self.planned.push(Planned {
            path,
            what: what.to_string(),
            bytes: None,
            mode: 0o644,
            create_dir: Some(dir.to_path_buf()),
        });
        Ok(OutputId(self.planned.len() - 1))
    }

    /// Gives a planned output its contents (written at [`Outputs::commit`]).
    pub fn set(&mut self, id: OutputId, bytes: Vec<u8>) {
        self.planned[id.0].bytes = Some(bytes);
    }

    /// Writes every output that was given contents: first all temporary files, then
    /// all renames, so an error before the renames leaves nothing behind. Outputs
    /// that are not regular files are written in place last.
    pub fn commit(self) -> Result<()> {
        let mut created = Vec::new();
        let result = self
            .create_dirs(&mut created)
            .and_then(|()| self.write_all());
        if result.is_err() {
            // Directories we made for outputs that never landed go too (only if empty).
            for dir in created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        result
    }

    fn create_dirs(&self, created: &mut Vec<PathBuf>) -> Result<()> {
        for planned in self.planned.iter().filter(|p| p.bytes.is_some()) {
            let Some(dir) = &planned.create_dir else {
                continue;
            };
            match std::fs::create_dir(dir) {
                Ok(()) => created.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create {} {}", planned.what, dir.display())
                    })
                }
            }
        }
        Ok(())
    }

    fn write_all(&self) -> Result<()> {
        let mut staged: Vec<(tempfile::Staged, &Planned)> = Vec::new();
        let mut in_place = Vec::new();
        for planned in &self.planned {
            let Some(bytes) = &planned.bytes else {
                continue;
            };
            if writes_in_place(&planned.path) {
                in_place.push((planned, bytes));
                continue;
            }
            let stage =
                tempfile::Staged::write(&planned.path, bytes, planned.mode).with_context(|| {
                    format!("cannot write {} {}", planned.what, planned.path.display())
                })?;
            staged.push((stage, planned));
        }
        for (stage, planned) in staged {
            stage.persist().with_context(|| {
                format!("cannot write {} {}", planned.what, planned.path.display())
            })?;
        }
        for (planned, bytes) in in_place {
            write_in_place(&planned.path, bytes).with_context(|| {
                format!("cannot write {} {}", planned.what, planned.path.display())
            })?;
        }
        Ok(())
    }
}

/// Writes one output: [`Outputs`] with a single entry.
pub fn write_output(path: &Path, what: &str, bytes: &[u8], inputs: &[&Path]) -> Result<()> {
    let mut outputs = Outputs::new(inputs)?;
    let id = outputs.plan(path, what)?;
    outputs.set(id, bytes.to_vec());
    outputs.commit()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Only a regular file (or nothing) at the path itself is replaced by a rename;
/// anything else, symlinks included, is written through.
fn writes_in_place(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file())
}

fn write_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    open_in_place(path)?.write_all(bytes)?;
    Ok(())
}

/// Opens an existing non-regular path (a device, a FIFO, a symlink to one) for writing.
fn open_in_place(path: &Path) -> std::io::Result<File> {
    let regular_target = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    OpenOptions::new()
        .write(true)
        .truncate(regular_target)
        .open(path)
}

/// One output written while it is produced (a trace of unknown length), under the
/// rules of [`Outputs`]: checked up front, streamed into a temporary file beside its
/// destination and renamed over it by [`Stream::commit`]; dropped uncommitted, it
/// leaves nothing. A path that exists and is not a regular file is written in place.
#[derive(Debug)]
pub struct Stream {
    file: File,
    /// `None` when written in place.
    staged: Option<tempfile::Staged>,
}

impl Stream {
    /// Checks `path` as [`Outputs::plan`] does (refused if it is one of `inputs`), then
    /// opens where the bytes go.
    pub fn create(path: &Path, what: &str, inputs: &[&Path]) -> Result<Stream> {
        Outputs::new(inputs)?.plan(path, what)?;
        let context = || format!("cannot write {what} {}", path.display());
        // A symlink to a regular file: the file it names is replaced, whole, at commit.
        let symlink_to_file = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_symlink())
            && std::fs::metadata(path).is_ok_and(|m| m.is_file());
        if writes_in_place(path) && !symlink_to_file {
            let file = open_in_place(path).with_context(context)?;
            return Ok(Stream { file, staged: None });
        }
        let dest = if symlink_to_file {
            std::fs::canonicalize(path).with_context(context)?
        } else {
            path.to_path_buf()
        };
        let (staged, file) = tempfile::Staged::create(&dest, 0o644).with_context(context)?;
        Ok(Stream {
            file,
            staged: Some(staged),
        })
    }

    /// Makes the output appear under its name, complete.
    pub fn commit(mut self) -> Result<()> {
        self.file.flush()?;
        if let Some(staged) = self.staged.take() {
            staged.seal(&self.file)?;
            staged.persist()?;
        }
        Ok(())
    }
}

impl Write for Stream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Checks up front that `dir` can be an output directory: an existing directory, or
/// missing under an existing directory.
pub fn check_output_dir(dir: &Path, what: &str) -> Result<()> {
    let mut at = dir.to_path_buf();
    loop {
        match std::fs::metadata(&at) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) if at == dir => bail!("{what} {} is not a directory", dir.display()),
            Ok(_) => bail!(
                "{what} {}: {} is not a directory",
                dir.display(),
                at.display()
            ),
            Err(_) => at = parent_dir(&at),
        }
        if at == Path::new(".") && !Path::new(".").is_dir() {
            bail!("{what} {}: no current directory", dir.display());
        }
    }
}

/// A directory of outputs (one checkpoint) built under a temporary name beside its
/// destination and renamed into place by [`StagedDir::commit`], never over an existing
/// entry. Dropped uncommitted, it is removed with its contents, and so are the missing
/// parent directories [`StagedDir::create`] made.
#[derive(Debug)]
pub struct StagedDir {
    tmp: PathBuf,
    dest: PathBuf,
    /// Parents created for it, innermost first.
    made: Vec<PathBuf>,
    committed: bool,
}

impl StagedDir {
    /// Creates the temporary directory (and `dest`'s missing parents).
    pub fn create(dest: &Path, what: &str) -> Result<StagedDir> {
        let parent = parent_dir(dest);
        check_output_dir(&parent, what)?;
        let mut staged = StagedDir {
            tmp: PathBuf::new(),
            dest: dest.to_path_buf(),
            made: Vec::new(),
            committed: false,
        };
        let mut missing = Vec::new();
        let mut at = parent.clone();
        while std::fs::metadata(&at).is_err() {
            missing.push(at.clone());
            at = parent_dir(&at);
        }
        for dir in missing.iter().rev() {
            std::fs::create_dir(dir)
                .with_context(|| format!("cannot create {what} {}", dir.display()))?;
            staged.made.insert(0, dir.clone());
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        for attempt in 0..100u32 {
            let tmp = parent.join(format!(".{name}.msh-{}-{attempt}.tmp", std::process::id()));
            match std::fs::create_dir(&tmp) {
                Ok(()) => {
                    staged.tmp = tmp;
                    return Ok(staged);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create a directory in {}", parent.display())
                    })
                }
            }
        }
        bail!(
            "cannot create a temporary directory in {}",
            parent.display()
        )
    }

    /// Where to write the directory's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the directory into place; refused if `dest` exists by then.
    pub fn commit(mut self) -> Result<()> {
        sync_dir(&self.tmp)?;
        rename_no_replace(&self.tmp, &self.dest)
            .with_context(|| format!("cannot rename into {}", self.dest.display()))?;
        self.committed = true;
        sync_dir(&parent_dir(&self.dest))
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
        for dir in &self.made {
            let _ = std::fs::remove_dir(dir); // only if empty
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// rename(2) that fails with `EEXIST` instead of replacing an existing `to`.
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // A file system without RENAME_NOREPLACE: check, then rename.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
            }
            std::fs::rename(from, to)
        }
        _ => Err(err),
    }
}

/// Temporary files beside their destination, removed unless persisted.
mod tempfile {
    use super::*;

    /// A complete temporary copy of one output, waiting for its rename.
    #[derive(Debug)]
    pub struct Staged {
        tmp: PathBuf,
        dest: PathBuf,
        persisted: bool,
        mode: u32,
    }

    impl Staged {
        pub fn write(dest: &Path, bytes: &[u8], mode: u32) -> Result<Staged> {
            let (staged, mut file) = Staged::create(dest, mode)?;
            file.write_all(bytes)?;
            staged.seal(&file)?;
            Ok(staged)
        }

        /// An empty temporary file beside `dest`, to be written by the caller and
        /// [`Staged::seal`]ed before [`Staged::persist`].
        pub fn create(dest: &Path, mode: u32) -> Result<(Staged, File)> {
            let dir = parent_dir(dest);
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "output".into());
            // An existing destination keeps its permissions.
            let mode = std::fs::metadata(dest)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(mode);
            for attempt in 0..100u32 {
                let tmp = dir.join(format!(".{name}.msh-{}-{attempt}.tmp", std::process::id()));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&tmp);
                let file = match file {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e.into()),
                };
                let staged = Staged {
                    tmp,
                    dest: dest.to_path_buf(),
                    persisted: false,
                    mode,
                };
                return Ok((staged, file));
            }
            bail!("cannot create a temporary file in {}", dir.display())
        }

        /// Makes the written contents durable and gives the file its exact mode.
        pub fn seal(&self, file: &File) -> Result<()> {
            file.sync_all()?;
            // create_new applies the umask; set the exact bits.
            std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(self.mode))?;
            Ok(())
        }

        pub fn persist(mut self) -> Result<()> {
            std::fs::rename(&self.tmp, &self.dest)?;
            self.persisted = true;
            Ok(())
        }
    }

    impl Drop for Staged {
        fn drop(&mut self) {
            if !self.persisted {
                let _ = std::fs::remove_file(&self.tmp);
            }
        }
    }
}

/// Opens `path` for reading only if it is a regular file. A FIFO does not block the
/// open (`O_NONBLOCK`) and is refused; so are devices and directories.
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {what} {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    Ok(file)
}

/// Reads a regular file of at most `limit` bytes.
pub fn read_regular(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    Ok(read_regular_open(path, what, limit)?.1)
}

/// As [`read_regular`], keeping the descriptor that was checked and read: anything
/// that must open the file again (a debug-info loader) opens [`fd_path`] of it, the
/// same file, never whatever the path names by then.
pub fn read_regular_open(path: &Path, what: &str, limit: u64) -> Result<(File, Vec<u8>)> {
    let file = open_regular(path, what)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        bail!(
            "{what} {} is {len} bytes, more than the {limit} this command reads",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // A file that grows while we read is cut at the limit, never read without bound.
    (&file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{what} {} grew past {limit} bytes while read",
            path.display()
        );
    }
    Ok((file, bytes))
}

/// `/proc/self/fd/N`: opening it opens the file `file` refers to, not a path's
/// current target.
pub fn fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("msh-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_new_and_replaces_regular_files_atomically() {
        let d = dir("regular");
        let out = d.join("out");
        write_output(&out, "-o", b"one", &[]).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_output(&out, "-o", b"two", &[]).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an existing file keeps its mode");
        assert_eq!(entries(&d), ["out"], "no temporary file left");
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_and_untouched() {
        let d = dir("alias");
        let input = d.join("prog");
        std::fs::write(&input, b"ELF").unwrap();
        let link = d.join("alias");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        for out in [&input, &link] {
            let err = write_output(out, "-o", b"json", &[&input]).unwrap_err();
            assert!(
                format!("{err:#}").contains("same file as the input"),
                "{err:#}"
            );
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"ELF");
        let mut outputs = Outputs::new(&[]).unwrap();
        let out = d.join("new");
        outputs.plan(&out, "-o").unwrap();
        let err = outputs.plan(&out, "--report").unwrap_err();
        assert!(err.to_string().contains("same path as -o"), "{err}");
    }

    #[test]
    fn devices_and_symlinks_are_written_in_place_never_replaced() {
        write_output(Path::new("/dev/null"), "-o", b"discarded", &[]).unwrap();
        let meta = std::fs::symlink_metadata("/dev/null").unwrap();
        assert!(!meta.is_file(), "/dev/null must stay a device");
        let d = dir("symlink");
        let target = d.join("target");
        std::fs::write(&target, b"old contents, longer").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_output(&link, "-o", b"new", &[]).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn nothing_is_written_when_one_output_fails() {
        let d = dir("all-or-none");
        let mut outputs = Outputs::new(&[]).unwrap();
        let good = outputs.plan(&d.join("good"), "-o").unwrap();
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let bad = outputs.plan(&sub.join("report"), "--report").unwrap();
        outputs.set(good, b"x".to_vec());
        outputs.set(bad, b"y".to_vec());
        // The directory disappears between planning and committing.
        std::fs::remove_dir(&sub).unwrap();
        assert!(outputs.commit().is_err());
        assert_eq!(entries(&d), Vec::<String>::new());
    }

    #[test]
    fn a_missing_output_directory_is_made_at_commit_and_removed_on_failure() {
        let d = dir("plan-in-dir");
        let cocci = d.join("cocci");
        let mut outputs = Outputs::new(&[]).unwrap();
        let id = outputs
            .plan_in_dir(&cocci, "x.cocci", "--emit-cocci")
            .unwrap();
        assert!(!cocci.exists(), "nothing made before the commit");
        outputs.set(id, b"@@".to_vec());
        outputs.commit().unwrap();
        assert_eq!(std::fs::read(cocci.join("x.cocci")).unwrap(), b"@@");

        // A second output that fails takes the new directory with it.
        let fresh = d.join("fresh");
        let mut outputs = Outputs::new(&[]).unwrap();
        let good = outputs
            .plan_in_dir(&fresh, "x.cocci", "--emit-cocci")
            .unwrap();
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let bad = outputs.plan(&sub.join("out"), "-o").unwrap();
        outputs.set(good, b"@@".to_vec());
        outputs.set(bad, b"diff".to_vec());
        std::fs::remove_dir(&sub).unwrap();
        assert!(outputs.commit().is_err());
        assert_eq!(entries(&d), ["cocci"], "no directory or file left behind");

        let err = Outputs::new(&[])
            .unwrap()
            .plan_in_dir(&d.join("no/such"), "x.cocci", "--emit-cocci")
            .unwrap_err();
        assert!(err.to_string().contains("no directory"), "{err}");
    }

    #[test]
    fn missing_directories_and_directories_are_refused_up_front() {
        let d = dir("dirs");
        let mut outputs = Outputs::new(&[]).unwrap();
        let err = outputs.plan(&d.join("no/such/out"), "-o").unwrap_err();
        assert!(format!("{err:#}").contains("no directory"), "{err:#}");
        let err = outputs.plan(&d, "-o").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn a_stream_lands_whole_at_commit_or_not_at_all() {
        let d = dir("stream");
        let out = d.join("t.trace");
        std::fs::write(&out, b"old").unwrap();
        let mut stream = Stream::create(&out, "trace", &[]).unwrap();
        stream.write_all(b"new contents").unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"old",
            "untouched until commit"
        );
        drop(stream);
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        assert_eq!(
            entries(&d),
            ["t.trace"],
            "an uncommitted stream leaves nothing"
        );
        let mut stream = Stream::create(&out, "trace", &[]).unwrap();
        stream.write_all(b"new").unwrap();
        stream.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(entries(&d), ["t.trace"]);

        let input = d.join("prog");
        std::fs::write(&input, b"ELF").unwrap();
        let err = Stream::create(&input, "trace", &[&input]).unwrap_err();
        assert!(err.to_string().contains("same file as the input"), "{err}");
        let mut null = Stream::create(Path::new("/dev/null"), "trace", &[]).unwrap();
        null.write_all(b"discarded").unwrap();
        null.commit().unwrap();
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
        // A symlink to a regular file: the file is replaced, the link stays.
        let link = d.join("link");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        let mut stream = Stream::create(&link, "trace", &[]).unwrap();
        stream.write_all(b"through").unwrap();
        stream.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"through");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_staged_directory_never_replaces_one_and_leaves_nothing_on_failure() {
        let d = dir("staged-dir");
        let ck = d.join("ck");
        let staged = StagedDir::create(&ck.join("000000"), "-o").unwrap();
        std::fs::write(staged.path().join("pages.bin"), b"p").unwrap();
        drop(staged);
        assert_eq!(entries(&d), Vec::<String>::new(), "no temporary, no ck/");
        let staged = StagedDir::create(&ck.join("000000"), "-o").unwrap();
        std::fs::write(staged.path().join("pages.bin"), b"p").unwrap();
        staged.commit().unwrap();
        assert_eq!(entries(&ck), ["000000"]);
        let staged = StagedDir::create(&ck.join("000000"), "-o").unwrap();
        assert!(staged.commit().is_err(), "an existing checkpoint stays");
        assert_eq!(entries(&ck), ["000000"]);
        assert_eq!(entries(&ck.join("000000")), ["pages.bin"]);

        std::fs::write(d.join("file"), b"x").unwrap();
        let err = check_output_dir(&d.join("file"), "-o").unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = check_output_dir(&d.join("file/sub"), "-o").unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = check_output_dir(Path::new("/dev/null"), "-o").unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        check_output_dir(&d.join("a/b/c"), "-o").unwrap();
    }

    #[test]
    fn inputs_must_be_regular_and_bounded() {
        let d = dir("inputs");
        let err = read_regular(Path::new("/dev/zero"), "profile object", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_regular(&fifo, "pool", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = d.join("big");
        std::fs::write(&big, vec![0u8; 4096]).unwrap();
        let err = read_regular(&big, "profile", 1024).unwrap_err();
        assert!(err.to_string().contains("more than the 1024"), "{err}");
        assert_eq!(read_regular(&big, "profile", 4096).unwrap().len(), 4096);
    }
}
