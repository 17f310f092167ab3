//! The msh trace file: batches of accesses as [`crate::trace`] delivered them, for tools
//! that replay a trace (`msh pagewalk --trace`, `msh trace`).
//!
//! Format, version 1 (all integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `MSHTRACE` |
//! | 4 | version (1) |
//! | 4 | header length `H` |
//! | H | header: JSON [`FileHeader`] (the command and the trace options) |
//! | … | records, each starting with a one-byte tag |
//!
//! Tag 1, a batch: `u32` thread, `u64` CLOCK_MONOTONIC ns, `u32` count `N`
//! (1 ≤ N ≤ 2^24), then N accesses of 18 bytes: `u64` ip, `u64` address, `u8` size,
//! `u8` flags (bit 0: write).
//!
//! Tag 2, the end: `u32` length `T`, `T` bytes of JSON [`FileTrailer`] (what the run
//! produced: counts, exit, and the program's memory areas), then `u64` the offset of this
//! tag byte and the magic `MSHTREND`. The trailer sits at the end because the memory map
//! is complete only when the program has exited; a reader finds it through the last 16
//! bytes before streaming the batches, so replay can place memory areas first.
//!
//! Writing follows the rules of every msh output ([`msh_files::Stream`]): a temporary
//! file renamed into place by [`Writer::finish`], so a trace that was not finished
//! never appears under its name and an existing file is replaced only by a complete
//! one; a path that is not a regular file is written in place. Reading streams one batch at a time in bounded memory; a file
//! that is not a trace, of another version, truncated or corrupt is a one-line error.
use crate::{Access, Batch, Sampling, StopReason, TraceSummary, Vma};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// First bytes of a trace file.
pub const MAGIC: &[u8; 8] = b"MSHTRACE";
/// Last bytes of a finished trace file.
pub const END_MAGIC: &[u8; 8] = b"MSHTREND";
/// The format version this module writes and reads.
pub const VERSION: u32 = 1;
/// Largest batch a reader accepts.
pub const MAX_BATCH: u32 = 1 << 24;
const TAG_BATCH: u8 = 1;
const TAG_END: u8 = 2;
const ACCESS_BYTES: usize = 18;
/// Largest header or trailer a reader accepts.
const MAX_JSON: u32 = 64 << 20;

/// What was traced, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The traced command line.
    pub command: Vec<String>,
    /// The sampling used.
    pub sampling: Sampling,
    /// Instructions run untraced first.
    pub fast_forward_insns: u64,
    /// The address filter, `[start, end)`.
    pub addr_filter: Option<(u64, u64)>,
}

/// What the run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTrailer {
    /// Accesses made while tracing, before filter and sampling.
    pub accesses_seen: u64,
    /// Accesses recorded (the file holds exactly these).
    pub accesses_delivered: u64,
    /// Batches in the file.
    pub batches: u64,
    /// Guest instructions executed (approximate with several threads).
    pub instructions: u64,
    /// Threads of the program.
    pub threads: u32,
    /// The program's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Guest forks (their children were not traced).
    pub forks: u32,
    /// The first `execve` path and whether it succeeded.
    pub exec: Option<(String, bool)>,
    /// Why tracing stopped early, if it did.
    pub stopped: Option<StopReason>,
    /// The program's memory areas (see [`Vma`]).
    pub vmas: Vec<Vma>,
}

impl FileTrailer {
    /// The trailer for a finished trace.
    pub fn from_summary(summary: &TraceSummary, batches_written: u64) -> FileTrailer {
        FileTrailer {
            accesses_seen: summary.accesses_seen,
            accesses_delivered: summary.accesses_delivered,
            batches: batches_written,
            instructions: summary.instructions,
            threads: summary.threads,
            exit_code: summary.exit.code(),
            signal: summary.exit.signal(),
            forks: summary.forks,
            exec: summary.exec.clone(),
            stopped: summary.stopped,
            vmas: summary.vmas.clone(),
        }
    }
}

/// Writes a trace file.
pub struct Writer {
    out: BufWriter<msh_files::Stream>,
    path: PathBuf,
    offset: u64,
    batches: u64,
}

impl Writer {
    /// Starts `path`, checked and written as every msh output is ([`msh_files::Stream`]):
    /// refused if it is one of `inputs` (the traced program), streamed into a temporary
    /// file beside it until [`Writer::finish`], written in place if it exists and is not
    /// a regular file (`/dev/null`, a FIFO).
    pub fn create(path: &Path, header: &FileHeader, inputs: &[&Path]) -> Result<Writer> {
        let stream = msh_files::Stream::create(path, "trace", inputs)?;
        let mut writer = Writer {
            out: BufWriter::with_capacity(1 << 20, stream),
            path: path.to_path_buf(),
            offset: 0,
            batches: 0,
        };
        let json = serde_json::to_vec(header)?;
        writer.put(MAGIC)?;
        writer.put(&VERSION.to_le_bytes())?;
        writer.put(&(json.len() as u32).to_le_bytes())?;
        writer.put(&json)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .with_context(|| format!("cannot write trace {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends one batch (empty batches are skipped).
    pub fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        for chunk in batch.accesses.chunks(MAX_BATCH as usize) {
            let mut record = Vec::with_capacity(17 + chunk.len() * ACCESS_BYTES);
            record.push(TAG_BATCH);
            record.extend_from_slice(&batch.thread.to_le_bytes());
            record.extend_from_slice(&batch.time_ns.to_le_bytes());
            record.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for access in chunk {
                record.extend_from_slice(&access.ip.to_le_bytes());
                record.extend_from_slice(&access.addr.to_le_bytes());
                record.push(access.size);
                record.push(access.is_write as u8);
            }
            self.put(&record)?;
            self.batches += 1;
        }
        Ok(())
    }

    /// Batches written so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Writes the trailer and moves the file into place.
    pub fn finish(mut self, trailer: &FileTrailer) -> Result<()> {
        let end_offset = self.offset;
        let json = serde_json::to_vec(trailer)?;
        self.put(&[TAG_END])?;
        self.put(&(json.len() as u32).to_le_bytes())?;
        self.put(&json)?;
        self.put(&end_offset.to_le_bytes())?;
        self.put(END_MAGIC)?;
        let context = || format!("cannot write trace {}", self.path.display());
        let stream = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(context)?;
        stream.commit().with_context(context)
    }
}

/// Reads a trace file, one batch at a time.
pub struct Reader {
    input: BufReader<File>,
    path: PathBuf,
    header: FileHeader,
    trailer: FileTrailer,
    /// Offset of the end record: batches lie before it.
    end: u64,
    position: u64,
    bytes: Vec<u8>,
    accesses: Vec<Access>,
}

impl Reader {
    /// Opens `path`, checks it is a finished trace of this version, reads its header and
    /// trailer.
    pub fn open(path: &Path) -> Result<Reader> {
        let name = path.display();
        let mut file = msh_files::open_regular(path, "trace")?;
        let length = file.metadata()?.len();
        let mut fixed = [0u8; 16];
        if length < 16 || file.read_exact(&mut fixed).is_err() || &fixed[..8] != MAGIC {
            bail!("{name} is not an msh trace file (no MSHTRACE magic)");
        }
        let version = u32::from_le_bytes(fixed[8..12].try_into()?);
        if version != VERSION {
            bail!("{name} is an msh trace of format version {version}; this msh reads version {VERSION}");
        }
        let header_len = u32::from_le_bytes(fixed[12..16].try_into()?);
        if header_len > MAX_JSON || 16 + header_len as u64 > length {
            bail!("{name} is truncated or corrupt (header of {header_len} bytes)");
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact(&mut json)?;
        let header: FileHeader =
            serde_json::from_slice(&json).with_context(|| format!("{name}: corrupt header"))?;
        let batches_start = 16 + header_len as u64;
        // The footer: offset of the end record, then the end magic.
        let mut footer = [0u8; 16];
        file.seek(SeekFrom::Start(length.saturating_sub(16)))?;
        file.read_exact(&mut footer)?;
        if &footer[8..] != END_MAGIC || length < batches_start + 16 {
            bail!("{name} is truncated: it has no end record (was the trace interrupted?)");
        }
        let end = u64::from_le_bytes(footer[..8].try_into()?);
        if end < batches_start || end + 5 + 16 > length {
            bail!("{name} is corrupt: its end record is out of place");
        }
        file.seek(SeekFrom::Start(end))?;
        let mut tag_len = [0u8; 5];
        file.read_exact(&mut tag_len)?;
        let trailer_len = u32::from_le_bytes(tag_len[1..].try_into()?) as u64;
        if tag_len[0] != TAG_END || end + 5 + trailer_len + 16 != length {
            bail!("{name} is corrupt: bad end record");
        }
        let mut json = vec![0u8; trailer_len as usize];
        file.read_exact(&mut json)?;
        let trailer: FileTrailer =
            serde_json::from_slice(&json).with_context(|| format!("{name}: corrupt trailer"))?;
        file.seek(SeekFrom::Start(batches_start))?;
        Ok(Reader {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            header,
            trailer,
            end,
            position: batches_start,
            bytes: Vec::new(),
            accesses: Vec::new(),
        })
    }

    /// What was traced.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// What the run produced, memory areas included.
    pub fn trailer(&self) -> &FileTrailer {
        &self.trailer
    }

    /// The next batch, or `None` after the last one.
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>> {
        if self.position >= self.end {
            return Ok(None);
        }
        let name = self.path.display();
        let mut fixed = [0u8; 17];
        self.input
            .read_exact(&mut fixed)
            .with_context(|| format!("{name} is truncated inside a batch"))?;
        if fixed[0] != TAG_BATCH {
            bail!(
                "{name} is corrupt: unknown record tag {} at offset {}",
                fixed[0],
                self.position
            );
        }
        let thread = u32::from_le_bytes(fixed[1..5].try_into()?);
        let time_ns = u64::from_le_bytes(fixed[5..13].try_into()?);
        let count = u32::from_le_bytes(fixed[13..17].try_into()?);
        let size = count as u64 * ACCESS_BYTES as u64;
        if count == 0 || count > MAX_BATCH || self.position + 17 + size > self.end {
            bail!(
                "{name} is corrupt: a batch of {count} accesses at offset {}",
                self.position
            );
        }
        self.bytes.resize(size as usize, 0);
        self.input
            .read_exact(&mut self.bytes)
            .with_context(|| format!("{name} is truncated inside a batch"))?;
        self.position += 17 + size;
        self.accesses.clear();
        self.accesses
            .extend(self.bytes.chunks_exact(ACCESS_BYTES).map(|r| Access {
                ip: u64::from_le_bytes(r[0..8].try_into().expect("8 bytes")),
                addr: u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
                size: r[16],
                is_write: r[17] & 1 != 0,
            }));
        Ok(Some(Batch {
            thread,
            time_ns,
            accesses: &self.accesses,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FileHeader {
        FileHeader {
            command: vec!["prog".into(), "1".into()],
            sampling: Sampling::EveryNth(4),
            fast_forward_insns: 10,
            addr_filter: Some((0x1000, 0x2000)),
        }
    }

    fn trailer(batches: u64) -> FileTrailer {
        FileTrailer {
            accesses_seen: 100,
            accesses_delivered: 3,
            batches,
            instructions: 1000,
            threads: 2,
            exit_code: Some(0),
            signal: None,
            forks: 0,
            exec: None,
            stopped: None,
            vmas: Vma::parse_maps("4000000000-4000003000 r--p 00000000 fe:00 1 /bin/x\n"),
        }
    }

    fn access(i: u64) -> Access {
        Access {
            ip: 0x401000 + i,
            addr: 0x7000_0000 + 8 * i,
            size: 8,
            is_write: i % 2 == 1,
        }
    }

    fn write_sample(path: &Path) {
        let mut writer = Writer::create(path, &header(), &[]).unwrap();
        let first: Vec<Access> = (0..2).map(access).collect();
        let second = [access(7)];
        writer
            .write_batch(&Batch {
                thread: 0,
                time_ns: 5,
                accesses: &first,
            })
            .unwrap();
        writer
            .write_batch(&Batch {
                thread: 1,
                time_ns: 6,
                accesses: &second,
            })
            .unwrap();
        writer.finish(&trailer(2)).unwrap();
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        write_sample(&path);
        let mut reader = Reader::open(&path).unwrap();
        assert_eq!(reader.header(), &header());
        assert_eq!(reader.trailer(), &trailer(2));
        let b = reader.next_batch().unwrap().unwrap();
        assert_eq!(
            (b.thread, b.time_ns, b.accesses.to_vec()),
            (0, 5, vec![access(0), access(1)])
        );
        let b = reader.next_batch().unwrap().unwrap();
        assert_eq!((b.thread, b.accesses.to_vec()), (1, vec![access(7)]));
        assert!(reader.next_batch().unwrap().is_none());
        // Nothing but the trace is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A writer to `path` holding one batch, not finished.
    fn one_batch(path: &Path) -> Writer {
        let mut writer = Writer::create(path, &header(), &[]).unwrap();
        writer
            .write_batch(&Batch {
                thread: 0,
                time_ns: 1,
                accesses: &[access(0)],
            })
            .unwrap();
        writer
    }

    #[test]
    fn an_unfinished_writer_leaves_no_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        std::fs::write(&path, b"old").unwrap();
        drop(one_batch(&path));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn devices_are_written_in_place_and_an_input_is_never_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let null = Path::new("/dev/null");
        one_batch(null).finish(&trailer(1)).unwrap();
        assert!(!std::fs::symlink_metadata(null).unwrap().is_file());

        let program = dir.path().join("prog");
        std::fs::write(&program, b"ELF").unwrap();
        let err = Writer::create(&program, &header(), &[&program])
            .err()
            .expect("the traced program is refused as the output");
        let message = format!("{err:#}");
        assert!(message.contains("same file as the input"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert_eq!(std::fs::read(&program).unwrap(), b"ELF");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // Reading: a FIFO is refused without blocking.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = Reader::open(&fifo).err().expect("a FIFO is not a trace");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn foreign_truncated_and_corrupt_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.trace");
        write_sample(&good);
        let bytes = std::fs::read(&good).unwrap();
        let bad = dir.path().join("bad.trace");
        let error = |content: &[u8]| {
            std::fs::write(&bad, content).unwrap();
            let message = match Reader::open(&bad) {
                Err(e) => format!("{e:#}"),
                Ok(mut r) => loop {
                    match r.next_batch() {
                        Ok(Some(_)) => continue,
                        Ok(None) => break String::new(),
                        Err(e) => break format!("{e:#}"),
                    }
                },
            };
            assert!(!message.contains('\n'), "{message}");
            message
        };
        assert!(error(b"ELF whatever, not a trace").contains("not an msh trace"));
        assert!(error(b"").contains("not an msh trace"));
        let mut other_version = bytes.clone();
        other_version[8] = 9;
        assert!(error(&other_version).contains("format version 9"));
        for cut in [bytes.len() - 1, bytes.len() / 2, 40] {
            let message = error(&bytes[..cut]);
            assert!(
                message.contains("truncated") || message.contains("corrupt"),
                "{cut}: {message}"
            );
        }
        // A batch count that runs past the end record.
        let mut corrupt = bytes.clone();
        let first_batch = 16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        corrupt[first_batch + 13..first_batch + 17].copy_from_slice(&1000u32.to_le_bytes());
        assert!(error(&corrupt).contains("corrupt"));
    }
}
