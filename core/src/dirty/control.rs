//! The control protocol between `msh checkpoint` and a process started with
//! `msh run --track-dirty` (libmsh preloaded with `MSH_TRACK_DIRTY=1`).
//!
//! The tracked process listens on the abstract unix socket `msh-track-<pid>`, served by
//! one thread of libmsh (the *control thread*, which owns the userfaultfd trackers:
//! `PAGEMAP_SCAN` on another process's uffd-registered memory would need them). One
//! request per line, answered by lines:
//!
//! ```text
//! > hello
//! < ok <pid> <control tid> <session hex> <epoch> <backend>      or: err <message>
//! < stack <start hex> <end hex>                                   (the control thread's)
//! > collect full|incremental|retry
//! < ok <regions> <epoch>
//! < region <start hex> <end hex> tracked|untracked               (× regions)
//! < run <start hex> <pages>                                      (any number, any order)
//! < end [copied <fd> <bytes>]
//! ```
//!
//! `collect` is sent while every other thread of the process is stopped: it rescans the
//! address space, starts tracking new private anonymous writable mappings (their pages
//! are all reported), reports untracked writable private mappings (file-backed data,
//! mappings userfaultfd refuses) whole, collects and re-arms the tracked ones, and
//! increments the epoch. `retry` is an incremental collect that also reports what the
//! previous collect reported: the checkpoint that consumed it was never written.
//! When the pages fit its copy buffer (a memfd), the control thread copies them itself
//! while the process is stopped (`end copied`): the checkpointer resumes the process at
//! once and reads them from `/proc/PID/fd/FD`. Otherwise (`end`) the checkpointer reads
//! them with `process_vm_readv`. After the reply the control thread touches only its own
//! stack until the next request, so a checkpointer that stops it reads a consistent
//! image.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The abstract socket name (without the leading NUL) of process `pid`.
pub fn socket_name(pid: u32) -> String {
    format!("msh-track-{pid}")
}

/// The `sockaddr_un` of [`socket_name`] in the abstract namespace (a leading NUL; no
/// file, gone with the process) and its length.
pub fn socket_address(pid: u32) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = socket_name(pid);
    let n = name.len().min(addr.sun_path.len() - 1);
    for (dst, &src) in addr.sun_path[1..=n].iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    let len = core::mem::size_of::<libc::sa_family_t>() + 1 + n;
    (addr, len as libc::socklen_t)
}

/// What `collect` should report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectKind {
    /// Every page of every region.
    Full,
    /// The pages written since the previous collect.
    Incremental,
    /// As `Incremental`, plus what the previous collect reported.
    Retry,
}

/// A request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Who are you, and can you track?
    Hello,
    /// Collect pages (the process's other threads are stopped).
    Collect(CollectKind),
}

impl Request {
    /// The request as a line (with its newline).
    pub fn encode(self) -> &'static str {
        match self {
            Request::Hello => "hello\n",
            Request::Collect(CollectKind::Full) => "collect full\n",
            Request::Collect(CollectKind::Incremental) => "collect incremental\n",
            Request::Collect(CollectKind::Retry) => "collect retry\n",
        }
    }

    /// Parses a request line (without its newline).
    pub fn parse(line: &str) -> Option<Request> {
        Some(match line.trim() {
            "hello" => Request::Hello,
            "collect full" => Request::Collect(CollectKind::Full),
            "collect incremental" => Request::Collect(CollectKind::Incremental),
            "collect retry" => Request::Collect(CollectKind::Retry),
            _ => return None,
        })
    }
}

/// The answer to `hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The tracked process.
    pub pid: u32,
    /// The control thread (the checkpointer must not stop it before collecting).
    pub control_tid: u32,
    /// Random, fixed for the life of the process: ties images to it.
    pub session: u64,
    /// Collects so far.
    pub epoch: u64,
    /// The dirty-tracking backend.
    pub backend: String,
    /// The control thread's stack mapping `[start, end)`: never in an image.
    pub stack: (usize, usize),
}

impl Hello {
    /// The reply lines.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = self.write_to(&mut out);
        out
    }

    /// Writes the reply lines to `out` without allocating (the control thread answers
    /// `hello` from a buffer on its stack).
    pub fn write_to<W: Write>(&self, out: &mut W) -> core::fmt::Result {
        write_hello(
            out,
            self.pid,
            self.control_tid,
            self.session,
            self.epoch,
            &self.backend,
            self.stack,
        )
    }

    /// Parses the two reply lines; `Err` carries the server's message or says what is
    /// malformed.
    pub fn parse(first: &str, second: &str) -> Result<Hello, String> {
        let words: Vec<&str> = first.split_whitespace().collect();
        match words.as_slice() {
            ["err", ..] => Err(String::from(first.trim_start_matches("err").trim())),
            ["ok", pid, tid, session, epoch, backend] => {
                let bad = || String::from("malformed hello reply");
                let stack: Vec<&str> = second.split_whitespace().collect();
                let stack = match stack.as_slice() {
                    ["stack", start, end] => {
                        (hex(start).ok_or_else(bad)?, hex(end).ok_or_else(bad)?)
                    }
                    _ => return Err(bad()),
                };
                Ok(Hello {
                    pid: pid.parse().map_err(|_| bad())?,
                    control_tid: tid.parse().map_err(|_| bad())?,
                    session: u64::from_str_radix(session, 16).map_err(|_| bad())?,
                    epoch: epoch.parse().map_err(|_| bad())?,
                    backend: String::from(*backend),
                    stack,
                })
            }
            _ => Err(String::from("malformed hello reply")),
        }
    }
}

/// A writable private mapping reported by `collect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Whether its writes are tracked (untracked regions are reported whole each time).
    pub tracked: bool,
}

/// The answer to `collect`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Every region of the image, sorted.
    pub regions: Vec<Region>,
    /// The pages to save: `(start, pages)`, as sent (the client normalizes them with
    /// [`normalize_runs`]: runs may overlap).
    pub runs: Vec<(usize, usize)>,
    /// The epoch after this collect.
    pub epoch: u64,
    /// Where the control thread copied the runs, if it did.
    pub copied: Option<Copied>,
}

impl Collected {
    /// The reply lines, appended to `out`.
    pub fn encode_into(&self, out: &mut String) {
        let _ = write_collect_header(out, self.regions.len(), self.epoch);
        for r in &self.regions {
            let _ = write_region(out, r);
        }
        for &(start, pages) in &self.runs {
            let _ = write_run(out, start, pages);
        }
        match self.copied {
            Some(copied) => {
                let _ = write_end_copied(out, copied);
            }
            None => out.push_str(END),
        }
    }

    /// The first reply line: `(regions, epoch)`, or the server's error message.
    pub fn parse_header(line: &str) -> Result<(usize, u64), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["err", ..] => Err(String::from(line.trim_start_matches("err").trim())),
            ["ok", regions, epoch] => {
                let bad = || String::from("malformed collect reply");
                Ok((
                    regions.parse().map_err(|_| bad())?,
                    epoch.parse().map_err(|_| bad())?,
                ))
            }
            _ => Err(String::from("malformed collect reply")),
        }
    }

    /// Parses one `region` line.
    pub fn parse_region(line: &str) -> Option<Region> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["region", start, end, kind] => Some(Region {
                start: hex(start)?,
                end: hex(end)?,
                tracked: match *kind {
                    "tracked" => true,
                    "untracked" => false,
                    _ => return None,
                },
            }),
            _ => None,
        }
    }

    /// Parses one `run` line.
    pub fn parse_run(line: &str) -> Option<(usize, usize)> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["run", start, pages] => Some((hex(start)?, pages.parse().ok()?)),
            _ => None,
        }
    }

    /// Whether `line` ends the reply, and if so whether the control thread copied the
    /// runs (in the order sent, later copies of a page superseding earlier ones) into
    /// the shared memory file it keeps open as descriptor `fd`: `Some(None)` means the
    /// reader copies them itself.
    pub fn parse_end(line: &str) -> Option<Option<Copied>> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["end"] => Some(None),
            ["end", "copied", fd, bytes] => Some(Some(Copied {
                fd: fd.parse().ok()?,
                bytes: bytes.parse().ok()?,
            })),
            _ => None,
        }
    }
}

/// Where the control thread copied a collect's pages: `bytes` bytes at the start of
/// its memory file, descriptor `fd` in the tracked process (`/proc/PID/fd/FD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The descriptor in the tracked process.
    pub fd: i32,
    /// Bytes written, from offset 0.
    pub bytes: u64,
}

/// The line that ends a `collect` reply when the reader copies the pages itself.
pub const END: &str = "end\n";

/// Writes the line that ends a `collect` reply whose pages were copied.
pub fn write_end_copied<W: Write>(out: &mut W, copied: Copied) -> core::fmt::Result {
    writeln!(out, "end copied {} {}", copied.fd, copied.bytes)
}

/// Writes the first line of a `collect` reply.
pub fn write_collect_header<W: Write>(
    out: &mut W,
    regions: usize,
    epoch: u64,
) -> core::fmt::Result {
    writeln!(out, "ok {regions} {epoch}")
}

/// Writes a `region` line.
pub fn write_region<W: Write>(out: &mut W, region: &Region) -> core::fmt::Result {
    let kind = if region.tracked {
        "tracked"
    } else {
        "untracked"
    };
    writeln!(out, "region {:x} {:x} {kind}", region.start, region.end)
}

/// Writes a `run` line.
pub fn write_run<W: Write>(out: &mut W, start: usize, pages: usize) -> core::fmt::Result {
    writeln!(out, "run {start:x} {pages}")
}

/// Writes a `hello` reply from its fields.
pub fn write_hello<W: Write>(
    out: &mut W,
    pid: u32,
    control_tid: u32,
    session: u64,
    epoch: u64,
    backend: &str,
    stack: (usize, usize),
) -> core::fmt::Result {
    write!(
        out,
        "ok {pid} {control_tid} {session:016x} {epoch} {backend}\nstack {:x} {:x}\n",
        stack.0, stack.1
    )
}

fn hex(text: &str) -> Option<usize> {
    usize::from_str_radix(text, 16).ok()
}

/// Sorts `runs` (`(start, pages)`) and merges overlapping or adjacent ones.
pub fn normalize_runs(runs: &mut Vec<(usize, usize)>, page: usize) {
    runs.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(runs.len());
    for &(start, pages) in runs.iter() {
        if pages == 0 {
            continue;
        }
        if let Some(last) = merged.last_mut() {
            let last_end = last.0 + last.1 * page;
            if start <= last_end {
                let end = (start + pages * page).max(last_end);
                last.1 = (end - last.0) / page;
                continue;
            }
        }
        merged.push((start, pages));
    }
    *runs = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Hello,
            Request::Collect(CollectKind::Full),
            Request::Collect(CollectKind::Incremental),
            Request::Collect(CollectKind::Retry),
        ] {
            assert_eq!(Request::parse(r.encode()), Some(r));
        }
        assert_eq!(Request::parse("collect everything"), None);
    }

    #[test]
    fn hello_round_trips_and_errors_carry_the_message() {
        let hello = Hello {
            pid: 42,
            control_tid: 43,
            session: 0xdead_beef,
            epoch: 7,
            backend: String::from("uffd-async"),
            stack: (0x7f00_0000_0000, 0x7f00_0080_0000),
        };
        let text = hello.encode();
        let mut lines = text.lines();
        let parsed = Hello::parse(lines.next().unwrap(), lines.next().unwrap());
        assert_eq!(parsed, Ok(hello));
        assert_eq!(
            Hello::parse("err no userfaultfd here", ""),
            Err(String::from("no userfaultfd here"))
        );
        assert!(Hello::parse("ok 1 2", "").is_err());
        assert!(Hello::parse("ok 1 2 zz 3 b", "stack 1 2").is_err());
    }

    #[test]
    fn collected_round_trips() {
        let c = Collected {
            regions: vec![
                Region {
                    start: 0x1000,
                    end: 0x5000,
                    tracked: true,
                },
                Region {
                    start: 0x9000,
                    end: 0xa000,
                    tracked: false,
                },
            ],
            runs: vec![(0x2000, 2), (0x9000, 1)],
            epoch: 3,
            copied: None,
        };
        let mut text = String::new();
        c.encode_into(&mut text);
        let mut lines = text.lines();
        let (regions, epoch) = Collected::parse_header(lines.next().unwrap()).unwrap();
        let mut back = Collected {
            epoch,
            ..Collected::default()
        };
        for _ in 0..regions {
            back.regions
                .push(Collected::parse_region(lines.next().unwrap()).unwrap());
        }
        for line in lines.by_ref() {
            if Collected::parse_end(line) == Some(None) {
                break;
            }
            back.runs.push(Collected::parse_run(line).unwrap());
        }
        assert_eq!(back, c);
        assert_eq!(lines.next(), None);
        let mut end = String::new();
        write_end_copied(&mut end, Copied { fd: 7, bytes: 8192 }).unwrap();
        assert_eq!(
            Collected::parse_end(&end),
            Some(Some(Copied { fd: 7, bytes: 8192 }))
        );
        assert_eq!(Collected::parse_end("end copied x 1"), None);
        assert_eq!(Collected::parse_region("region 1 2 maybe"), None);
        assert_eq!(Collected::parse_run("run x 2"), None);
    }

    #[test]
    fn socket_addresses_are_abstract() {
        let (addr, len) = socket_address(7);
        assert_eq!(addr.sun_path[0], 0);
        assert_eq!(addr.sun_path[1] as u8, b'm');
        assert_eq!(len as usize, 2 + 1 + "msh-track-7".len());
    }

    #[test]
    fn runs_merge() {
        let mut runs = vec![(0x5000, 1), (0x1000, 2), (0x2000, 2), (0x9000, 0)];
        normalize_runs(&mut runs, 0x1000);
        assert_eq!(runs, vec![(0x1000, 3), (0x5000, 1)]);
    }
}
