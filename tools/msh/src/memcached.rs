//! A memcached server nobody here wrote (Debian's), started plain or under `msh run`,
//! and a small loopback client that checks every response. Used by the attach test
//! and `msh bench attach`.

use crate::bench::server::process::{self, Placement, ServerLaunch};
use crate::bench::server::Protocol;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A running memcached on 127.0.0.1; stopped on drop.
pub type Server = crate::bench::server::process::Server;

/// Starts Debian's memcached with `threads` workers; its stderr goes to `log`.
/// `prefix` runs it through another command (e.g. `msh run --pool … --`).
pub fn start(prefix: &[String], threads: u32, log: &Path) -> Result<Server> {
    process::start_server(&ServerLaunch {
        protocol: Protocol::Memcached,
        binary: Path::new(Protocol::Memcached.binary()),
        prefix,
        env: &[],
        memory_mib: 64,
        threads,
        placement: Placement::default(),
        log,
    })
}

/// What a load run did.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests answered (a set or a get each).
    pub requests: u64,
    /// Wall time of the load.
    pub elapsed: Duration,
}

/// `connections` clients, each doing `pairs` set+get pairs with checked responses,
/// stopping at `limit`. Any wrong response is an error.
pub fn load(port: u16, connections: u32, pairs: u32, limit: Duration) -> Result<Load> {
    let start = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|conn| std::thread::spawn(move || client(port, conn, pairs, start + limit)))
        .collect();
    let mut requests = 0;
    for handle in handles {
        requests += handle
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(Load {
        requests,
        elapsed: start.elapsed(),
    })
}

fn client(port: u16, conn: u32, pairs: u32, deadline: Instant) -> Result<u64> {
    let stream = TcpStream::connect(("127.0.0.1", port)).context("cannot connect to memcached")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut requests = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(conn);
    for i in 0..pairs {
        if Instant::now() > deadline {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = format!("msh-{conn}-{}", i % 512);
        let len = 16 + (rng % 240) as usize;
        let value: String = (0..len)
            .map(|j| (b'a' + ((rng >> (j % 56)) as u8 + j as u8) % 26) as char)
            .collect();
        write!(writer, "set {key} 0 0 {len}\r\n{value}\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if line != "STORED\r\n" {
            bail!("set {key}: expected STORED, got {line:?}");
        }
        write!(writer, "get {key}\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if line != format!("VALUE {key} 0 {len}\r\n") {
            bail!("get {key}: unexpected header {line:?}");
        }
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim_end_matches("\r\n") != value {
            bail!("get {key}: wrong value");
        }
        line.clear();
        reader.read_line(&mut line)?;
        if line != "END\r\n" {
            bail!("get {key}: expected END, got {line:?}");
        }
        requests += 2;
    }
    Ok(requests)
}
