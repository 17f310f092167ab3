//! The processes a server benchmark starts: Debian's server on a loopback port,
//! pinned to one CPU (plain, or through `msh run`), and the compute program beside
//! it as an ordinary or a `SCHED_IDLE` thread. Every child dies with msh
//! (`PR_SET_PDEATHSIG`) and is stopped on drop.

use super::protocol::Protocol;
use anyhow::{bail, Context, Result};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A child process, stopped (SIGTERM, then SIGKILL after 5 s) on drop.
pub struct Process {
    child: Child,
}

impl Process {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops the process and waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
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

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// How a child runs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// Run it as `SCHED_IDLE`: only when nothing else wants the CPU.
    pub sched_idle: bool,
}

/// Spawns `command` placed as asked, dying with this process.
pub fn spawn(command: &mut Command, placement: &Placement) -> Result<Process> {
    let placement = placement.clone();
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(cpu) = placement.cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if placement.sched_idle {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    Ok(Process { child })
}

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot pin the load generator");
        }
    }
    Ok(())
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A running server.
pub struct Server {
    /// The server's process.
    pub process: Process,
    /// The loopback port it listens on.
    pub port: u16,
    log: PathBuf,
}

impl Server {
    /// Stops the server; returns what it wrote on stdout and stderr.
    pub fn stop(self) -> String {
        self.process.stop();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// What a server is started with.
pub struct ServerLaunch<'a> {
    /// Which server, for its command line.
    pub protocol: Protocol,
    /// The server executable (Debian's, or a rewritten copy of it).
    pub binary: &'a Path,
    /// A command it runs through (e.g. `msh run --pool … --`), may be empty.
    pub prefix: &'a [String],
    /// Extra environment variables.
    pub env: &'a [(String, String)],
    /// Memory for items (memcached's -m), MiB.
    pub memory_mib: u64,
    /// Worker threads (memcached's -t).
    pub threads: u32,
    /// CPU pinning and scheduling class.
    pub placement: Placement,
    /// Where its stdout and stderr go (a pipe nobody reads could fill and stall it).
    pub log: &'a Path,
}

/// Starts a server on a free loopback port and waits until it listens.
pub fn start_server(launch: &ServerLaunch) -> Result<Server> {
    if !launch.binary.exists() {
        bail!(
            "{} is missing: install Debian's {} (apt-get install {})",
            launch.binary.display(),
            launch.protocol.package(),
            launch.protocol.package()
        );
    }
    let port = free_port()?;
    let mut argv: Vec<String> = launch.prefix.to_vec();
    argv.push(launch.binary.display().to_string());
    match launch.protocol {
        Protocol::Redis => argv.extend(
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ]
            .map(String::from),
        ),
        Protocol::Memcached => {
            argv.extend(
                [
                    "-l",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "0",
                    "-t",
                    &launch.threads.to_string(),
                    "-m",
                    &launch.memory_mib.to_string(),
                ]
                .map(String::from),
            );
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                argv.extend(["-u".into(), "root".into()]);
            }
        }
    }
    let log = std::fs::File::create(launch.log)
        .with_context(|| format!("cannot create {}", launch.log.display()))?;
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut process = spawn(&mut command, &launch.placement)?;
    let deadline = Instant::now() + START_LIMIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = process.child.try_wait()? {
            let log = std::fs::read_to_string(launch.log).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").trim().to_string();
            bail!(
                "{} exited at start ({status}): {last}",
                launch.binary.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on port {port} within {START_LIMIT:?}",
                launch.binary.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Server {
        process,
        port,
        log: launch.log.to_path_buf(),
    })
}
