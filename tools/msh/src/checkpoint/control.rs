//! The client side of the control protocol (`msh_core::dirty::control`): talks to the
//! control thread of a process started with `msh run --track-dirty`.

use anyhow::{bail, Context, Result};
use msh_core::dirty::control::{self, CollectKind, Collected, Hello, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

/// A connection to one tracked process.
pub(crate) struct Control {
    pid: u32,
    reader: BufReader<UnixStream>,
}

/// The process id at the other end of `stream`.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `len` bytes on our socket.
    let ok = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    } == 0;
    ok.then_some(cred.pid as u32)
}

impl Control {
    /// Connects to process `pid`'s control socket.
    pub fn connect(pid: u32) -> Result<Control> {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process {pid}");
        }
        let name = control::socket_name(pid);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .context("cannot make the control socket address")?;
        let stream = match UnixStream::connect_addr(&addr) {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
                "process {pid} was not started with dirty tracking (no control socket @{name}): start it with `msh run --track-dirty -- CMD`"
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot connect to @{name}")),
        };
        match peer_pid(&stream) {
            Some(peer) if peer == pid => {}
            Some(peer) => bail!("the control socket @{name} belongs to process {peer}, not {pid}"),
            None => bail!("cannot identify the process behind @{name}"),
        }
        // A collect on 1 GiB takes milliseconds; a silent peer is a hung or dying one.
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(Control {
            pid,
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, request: Request) -> Result<()> {
        self.reader
            .get_mut()
            .write_all(request.encode().as_bytes())
            .with_context(|| format!("process {} closed its control socket", self.pid))
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("no answer from process {}'s control thread", self.pid))?;
        if n == 0 {
            bail!(
                "process {} closed its control socket (did it exit?)",
                self.pid
            );
        }
        Ok(line)
    }

    /// Who the process is, and whether it can track.
    pub fn hello(&mut self) -> Result<Hello> {
        self.send(Request::Hello)?;
        let first = self.line()?;
        if first.starts_with("err") {
            return Hello::parse(&first, "").map_err(anyhow::Error::msg);
        }
        let second = self.line()?;
        Hello::parse(&first, &second).map_err(anyhow::Error::msg)
    }

    /// Collects the pages to save (every other thread of the process must be stopped).
    /// The runs are as sent: in copy order, possibly overlapping.
    pub fn collect(&mut self, kind: CollectKind) -> Result<Collected> {
        self.send(Request::Collect(kind))?;
        let (regions, epoch) =
            Collected::parse_header(&self.line()?).map_err(anyhow::Error::msg)?;
        let mut collected = Collected {
            epoch,
            ..Collected::default()
        };
        for _ in 0..regions {
            let line = self.line()?;
            collected.regions.push(
                Collected::parse_region(&line)
                    .with_context(|| format!("malformed region line: {}", line.trim()))?,
            );
        }
        loop {
            let line = self.line()?;
            if let Some(copied) = Collected::parse_end(&line) {
                collected.copied = copied;
                break;
            }
            collected.runs.push(
                Collected::parse_run(&line)
                    .with_context(|| format!("malformed run line: {}", line.trim()))?,
            );
        }
        Ok(collected)
    }
}
