//! A memcached server nobody here wrote (Debian's), started plain or under `msh run`,
//! and a small loopback client that checks every response. Used by the attach test
//! and `msh bench attach`.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MEMCACHED: &str = "/usr/bin/memcached";

/// A running memcached on 127.0.0.1; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts memcached with `threads` workers. `prefix` runs it through another command
/// (e.g. `msh run --pool … --`).
pub fn start(prefix: &[String], threads: u32) -> Result<Server> {
    if !std::path::Path::new(MEMCACHED).exists() {
        bail!("{MEMCACHED} is missing: install Debian's memcached (.ci/run does)");
    }
    let port = free_port()?;
    let mut args: Vec<String> = prefix.to_vec();
    args.extend([
        MEMCACHED.to_string(),
        "-l".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ]);
    args.extend([
        "-U".into(),
        "0".into(),
        "-t".into(),
        threads.to_string(),
        "-m".into(),
        "64".into(),
    ]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        args.extend(["-u".into(), "root".into()]);
    }
    let child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", args[0]))?;
    let mut server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = server.child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            bail!("memcached exited at start ({status}): {}", stderr.trim());
        }
        if Instant::now() > deadline {
            bail!("memcached did not listen on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(server)
}

impl Server {
    /// Stops the server (SIGTERM, then SIGKILL after 5 s); returns its stderr.
    pub fn stop(mut self) -> Result<String> {
        self.terminate();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        Ok(stderr)
    }

    fn terminate(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// What a load run did.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u64,
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
