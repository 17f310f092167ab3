//! A checkpoint directory: one subdirectory per checkpoint, `000000`, `000001`, …, each
//! holding `pages.bin` (the saved pages, run after run) and `index.json` (the process,
//! its regions, and each run's address, offset in `pages.bin` and CRC-32). A
//! checkpoint is written into a hidden temporary directory, read back and checked, and
//! renamed into place only then: a directory holds complete, verified checkpoints only.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The largest `index.json` read (a few hundred bytes per run of pages).
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// The format tag in every index.
pub const FORMAT: &str = "msh-checkpoint/1";

/// A region of the image: a writable private mapping at checkpoint time.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Tracked (saved when written) or untracked (saved whole every time).
    pub tracked: bool,
}

/// A run of saved pages.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEntry {
    /// Address of the first page.
    pub start: u64,
    /// Number of pages.
    pub pages: u64,
    /// Offset in `pages.bin`.
    pub offset: u64,
    /// CRC-32 of the run's bytes.
    pub crc32: u32,
}

/// `index.json`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Index {
    /// [`FORMAT`].
    pub format: String,
    /// The checkpointed process.
    pub pid: u32,
    /// The process's tracking session (hex): images of one process life share it.
    pub session: String,
    /// Position in the directory (0, 1, …).
    pub seq: u64,
    /// The process's collect count after this checkpoint.
    pub epoch: u64,
    /// Every page of every region (rather than the pages written since `seq - 1`).
    pub full: bool,
    /// The dirty-tracking backend.
    pub backend: String,
    /// Page size.
    pub page_size: u64,
    /// Seconds since the Unix epoch.
    pub created_unix_s: f64,
    /// How long the process was stopped, ms.
    pub stopped_ms: f64,
    /// The regions of the image.
    pub regions: Vec<RegionEntry>,
    /// The saved runs, in `pages.bin` order.
    pub runs: Vec<RunEntry>,
}

impl Index {
    /// Pages saved.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }
}

/// The checkpoints in `dir`, in order (empty when `dir` does not exist).
pub fn list(dir: &Path) -> Result<Vec<(PathBuf, Index)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue; // an unfinished checkpoint's temporary directory
        }
        if name.len() != 6 || !name.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "{} holds {name}, which is not a checkpoint: not a checkpoint directory",
                dir.display()
            );
        }
        let path = entry.path();
        let text = msh_files::read_regular(
            &path.join("index.json"),
            "checkpoint index",
            MAX_INDEX_BYTES,
        )?;
        let index: Index = serde_json::from_slice(&text)
            .with_context(|| format!("{}/index.json is not a checkpoint index", path.display()))?;
        if index.format != FORMAT {
            bail!(
                "{}/index.json: unknown format {:?}",
                path.display(),
                index.format
            );
        }
        found.push((path, index));
    }
    found.sort_by_key(|(_, index)| index.seq);
    for (i, (path, index)) in found.iter().enumerate() {
        if index.seq != i as u64 {
            bail!("{}: checkpoint {} is missing", path.display(), i);
        }
    }
    Ok(found)
}

/// The CRC-32 of each run of `data`, laid out as `runs` says.
pub fn checksums(runs: &[(usize, usize)], page: usize, data: &[u8]) -> Vec<RunEntry> {
    let mut offset = 0usize;
    runs.iter()
        .map(|&(start, pages)| {
            let len = pages * page;
            let entry = RunEntry {
                start: start as u64,
                pages: pages as u64,
                offset: offset as u64,
                crc32: crc32fast::hash(&data[offset..offset + len]),
            };
            offset += len;
            entry
        })
        .collect()
}

/// Reads `pages.bin` of a checkpoint and checks every run's CRC.
pub fn read_pages(path: &Path, index: &Index) -> Result<Vec<u8>> {
    let file = path.join("pages.bin");
    let page = index.page_size;
    let expected: u64 = index.runs.iter().map(|r| r.pages * page).sum();
    // Never more than the index accounts for (a bigger file fails below).
    let data = msh_files::read_regular(&file, "checkpoint pages", expected.saturating_add(1))?;
    if data.len() as u64 != expected {
        bail!(
            "{}: {} bytes, the index says {expected}",
            file.display(),
            data.len()
        );
    }
    for run in &index.runs {
        let (from, len) = (run.offset as usize, (run.pages * page) as usize);
        let bytes = data
            .get(from..from + len)
            .with_context(|| format!("{}: a run lies outside the file", file.display()))?;
        if crc32fast::hash(bytes) != run.crc32 {
            bail!(
                "{}: the run at {:#x} fails its checksum",
                file.display(),
                run.start
            );
        }
    }
    Ok(data)
}

/// Writes a checkpoint into `dir` (created if missing) the way every msh output is
/// written ([`msh_files::StagedDir`]): into a temporary directory, read back and
/// checked, then renamed to its final name, never over an existing one. On error
/// nothing is left, not even a `dir` this call created. Returns the final path.
pub fn write(dir: &Path, index: &Index, data: &[u8]) -> Result<PathBuf> {
    let target = dir.join(format!("{:06}", index.seq));
    if target.exists() {
        bail!(
            "{} already exists (another checkpoint in progress?)",
            target.display()
        );
    }
    let staged = msh_files::StagedDir::create(&target, "-o")?;
    let write_file = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = staged.path().join(name);
        let mut file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write_file("pages.bin", data)?;
    write_file("index.json", &serde_json::to_vec_pretty(index)?)?;
    // Read back what is on disk: a checkpoint is complete and verified, or absent.
    read_pages(staged.path(), index)?;
    staged
        .commit()
        .with_context(|| format!("{} (another checkpoint in progress?)", target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(seq: u64, runs: Vec<RunEntry>) -> Index {
        Index {
            format: FORMAT.into(),
            pid: 1,
            session: "ab".into(),
            seq,
            epoch: seq + 1,
            full: seq == 0,
            backend: "uffd-async".into(),
            page_size: 4096,
            created_unix_s: 0.0,
            stopped_ms: 0.0,
            regions: vec![RegionEntry {
                start: 0x1000,
                end: 0x3000,
                tracked: true,
            }],
            runs,
        }
    }

    #[test]
    fn written_checkpoints_read_back_and_corruption_is_caught() {
        let dir = std::env::temp_dir().join(format!("msh-image-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 251) as u8).collect();
        let runs = checksums(&[(0x1000, 2)], 4096, &data);
        let path = write(&dir, &index(0, runs.clone()), &data).unwrap();
        let listed = list(&dir).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(read_pages(&path, &listed[0].1).unwrap(), data);
        // The same sequence number again is refused, and leaves no temporary behind.
        assert!(write(&dir, &index(0, runs), &data).is_err());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        // A flipped byte fails its checksum.
        let mut bytes = fs::read(path.join("pages.bin")).unwrap();
        bytes[5000] ^= 1;
        fs::write(path.join("pages.bin"), &bytes).unwrap();
        let err = read_pages(&path, &listed[0].1).unwrap_err().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
        // A stray file makes the directory not a checkpoint directory.
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        assert!(list(&dir)
            .unwrap_err()
            .to_string()
            .contains("not a checkpoint"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checkpoint_that_fails_its_check_leaves_nothing_not_even_its_directory() {
        let base = std::env::temp_dir().join(format!("msh-image-fail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        let data = vec![7u8; 4096];
        let mut runs = checksums(&[(0x1000, 1)], 4096, &data);
        runs[0].crc32 ^= 1; // as if the disk returned other bytes
        let dir = base.join("ck/nested");
        let err = write(&dir, &index(0, runs), &data).unwrap_err();
        assert!(err.to_string().contains("fails its checksum"), "{err}");
        assert_eq!(fs::read_dir(&base).unwrap().count(), 0, "nothing left");
        // A DIR that is a file is refused in one line.
        fs::write(base.join("file"), b"x").unwrap();
        let runs = checksums(&[(0x1000, 1)], 4096, &data);
        let err = write(&base.join("file"), &index(0, runs), &data).unwrap_err();
        assert!(format!("{err:#}").contains("is not a directory"), "{err:#}");
        let _ = fs::remove_dir_all(&base);
    }
}
