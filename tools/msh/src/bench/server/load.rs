//! The load generator: one thread, non-blocking sockets and `ppoll`, so it can drive
//! a server on one CPU from one other CPU.
//!
//! Open loop: requests are due on a Poisson schedule fixed in advance, whatever the
//! server does; each one's latency runs from its *scheduled* time to its checked
//! answer, so a server that falls behind is charged for the queue it builds
//! (no coordinated omission). Requests due together on a connection go out in one
//! write (pipelined). Closed loop (for capacity) keeps a fixed number of requests
//! outstanding per connection; fill SETs every key once.

use super::keys::{KeySampler, Rng};
use super::protocol::{Op, Protocol};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A request later than this behind its schedule was sent late: the generator
/// could not keep up (reported, never hidden).
const LATE_NS: u64 = 1_000_000;
/// How long answers may take after the last request before the server is declared
/// stuck.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Longest latency the histogram holds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// The server under load.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub protocol: Protocol,
    pub port: u16,
    pub value_bytes: usize,
}

/// The mix of requests.
#[derive(Debug, Clone)]
pub struct Mix {
    pub keys: KeySampler,
    /// Share of SETs; the rest are GETs.
    pub set_fraction: f64,
    pub seed: u64,
}

/// When requests are sent.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Poisson arrivals at `rate` requests/s; latencies of requests due in the window
    /// after `warmup` are recorded.
    Open {
        rate: f64,
        warmup: Duration,
        window: Duration,
        mix: Mix,
    },
    /// `depth` requests outstanding per connection; answers in the window are counted.
    Closed {
        depth: usize,
        warmup: Duration,
        window: Duration,
        mix: Mix,
    },
    /// One SET of each key in `0..keys`, `depth` outstanding per connection.
    Fill { keys: u64, depth: usize },
}

/// What a load run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Answers to requests due in the window.
    pub answered: u64,
    pub window: Duration,
    /// Latency (ns) from scheduled time to answer, requests due in the window.
    pub latency: Histogram<u64>,
    /// Requests sent more than 1 ms behind schedule (open loop).
    pub late: u64,
    /// Requests due in the window.
    pub due: u64,
}

impl LoadResult {
    pub fn answered_per_s(&self) -> f64 {
        self.answered as f64 / self.window.as_secs_f64()
    }

    /// The latency at `quantile`, in µs.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e3
    }
}

struct Outstanding {
    op: Op,
    key: u64,
    due_ns: u64,
}

struct Connection {
    stream: TcpStream,
    unsent: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    outstanding: VecDeque<Outstanding>,
}

impl Connection {
    fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            unsent: Vec::new(),
            sent: 0,
            received: Vec::new(),
            outstanding: VecDeque::new(),
        })
    }

    fn flush(&mut self) -> Result<()> {
        while self.sent < self.unsent.len() {
            match self.stream.write(&self.unsent[self.sent..]) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot send to the server"),
            }
        }
        self.unsent.clear();
        self.sent = 0;
        Ok(())
    }

    /// Reads what has arrived; false when nothing more is waiting.
    fn read_available(&mut self) -> Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot read from the server"),
            }
        }
    }
}

/// The generator's state while a schedule runs.
struct Run<'a> {
    target: Target,
    schedule: &'a Schedule,
    connections: Vec<Connection>,
    next_connection: usize,
    rng: Rng,
    /// Open loop: when the next request is due; fill: the next key.
    next_due_ns: u64,
    next_key: u64,
    window_start_ns: u64,
    window_end_ns: u64,
    result: LoadResult,
}

/// Runs `schedule` against `target` over `connections` connections.
pub fn run(target: Target, connections: usize, schedule: &Schedule) -> Result<LoadResult> {
    let (warmup, window, seed) = match schedule {
        Schedule::Open {
            warmup,
            window,
            mix,
            ..
        }
        | Schedule::Closed {
            warmup,
            window,
            mix,
            ..
        } => (*warmup, *window, mix.seed),
        Schedule::Fill { .. } => (Duration::ZERO, Duration::ZERO, 1),
    };
    let connections = (0..connections.max(1))
        .map(|_| Connection::open(target.port))
        .collect::<Result<Vec<_>>>()?;
    let mut run = Run {
        target,
        schedule,
        connections,
        next_connection: 0,
        rng: Rng::new(seed),
        next_due_ns: 0,
        next_key: 0,
        window_start_ns: warmup.as_nanos() as u64,
        window_end_ns: (warmup + window).as_nanos() as u64,
        result: LoadResult {
            answered: 0,
            window,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("valid histogram bounds"),
            late: 0,
            due: 0,
        },
    };
    run.go()?;
    Ok(run.result)
}

impl Run<'_> {
    fn go(&mut self) -> Result<()> {
        let start = Instant::now();
        let mut polls: Vec<libc::pollfd> = Vec::with_capacity(self.connections.len());
        // When the last request was issued: the drain limit counts from then (a fill
        // of a large dataset issues for longer than the limit).
        let mut issued_all: Option<Instant> = None;
        loop {
            let now_ns = start.elapsed().as_nanos() as u64;
            let issuing = self.issue(now_ns);
            for connection in &mut self.connections {
                connection.flush()?;
            }
            let outstanding: usize = self.connections.iter().map(|c| c.outstanding.len()).sum();
            if !issuing && outstanding == 0 {
                return Ok(());
            }
            if !issuing && issued_all.get_or_insert_with(Instant::now).elapsed() > DRAIN_LIMIT {
                bail!("the server stopped answering: {outstanding} requests unanswered after {DRAIN_LIMIT:?}");
            }
            let wait_ns = match self.schedule {
                Schedule::Open { .. } if issuing => self.next_due_ns.saturating_sub(now_ns),
                _ => 10_000_000,
            }
            .min(10_000_000);
            polls.clear();
            polls.extend(self.connections.iter().map(|c| libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: libc::POLLIN
                    | if c.unsent.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    },
                revents: 0,
            }));
            let timeout = libc::timespec {
                tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `polls` holds one valid pollfd per connection; timeout is valid.
            let ready = unsafe {
                libc::ppoll(
                    polls.as_mut_ptr(),
                    polls.len() as libc::nfds_t,
                    &timeout,
                    std::ptr::null(),
                )
            };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != ErrorKind::Interrupted {
                    return Err(err).context("ppoll");
                }
                continue;
            }
            let answered_ns = start.elapsed().as_nanos() as u64;
            for (index, poll) in polls.iter().enumerate() {
                if poll.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                    self.connections[index].read_available()?;
                    self.take_answers(index, answered_ns)?;
                }
            }
        }
    }

    /// Queues the requests due by `now_ns`; false once the schedule has no more.
    fn issue(&mut self, now_ns: u64) -> bool {
        match self.schedule {
            Schedule::Open { rate, mix, .. } => {
                let mean_gap_ns = 1e9 / rate;
                while self.next_due_ns <= now_ns && self.next_due_ns < self.window_end_ns {
                    let due = self.next_due_ns;
                    if now_ns - due > LATE_NS {
                        self.result.late += 1;
                    }
                    if due >= self.window_start_ns {
                        self.result.due += 1;
                    }
                    let (op, key) = self.draw(mix);
                    let index = self.next_connection;
                    self.next_connection = (index + 1) % self.connections.len();
                    self.send(index, op, key, due);
                    self.next_due_ns += self.rng.exponential(mean_gap_ns).max(1.0) as u64;
                }
                self.next_due_ns < self.window_end_ns
            }
            Schedule::Closed { depth, mix, .. } => {
                if now_ns >= self.window_end_ns {
                    return false;
                }
                for index in 0..self.connections.len() {
                    while self.connections[index].outstanding.len() < *depth {
                        let (op, key) = self.draw(mix);
                        self.send(index, op, key, now_ns);
                    }
                }
                true
            }
            Schedule::Fill { keys, depth } => {
                for index in 0..self.connections.len() {
                    while self.next_key < *keys
                        && self.connections[index].outstanding.len() < *depth
                    {
                        let key = self.next_key;
                        self.next_key += 1;
                        self.send(index, Op::Set, key, now_ns);
                    }
                }
                self.next_key < *keys
            }
        }
    }

    fn draw(&mut self, mix: &Mix) -> (Op, u64) {
        let op = if self.rng.unit() < mix.set_fraction {
            Op::Set
        } else {
            Op::Get
        };
        (op, mix.keys.sample(&mut self.rng))
    }

    fn send(&mut self, index: usize, op: Op, key: u64, due_ns: u64) {
        let connection = &mut self.connections[index];
        self.target
            .protocol
            .encode(&mut connection.unsent, op, key, self.target.value_bytes);
        connection
            .outstanding
            .push_back(Outstanding { op, key, due_ns });
    }

    /// Checks and records every complete answer connection `index` has received.
    fn take_answers(&mut self, index: usize, answered_ns: u64) -> Result<()> {
        let connection = &mut self.connections[index];
        let mut consumed = 0;
        while let Some(request) = connection.outstanding.front() {
            let parsed = self.target.protocol.parse(
                &connection.received[consumed..],
                request.op,
                request.key,
                self.target.value_bytes,
            )?;
            let Some(length) = parsed else { break };
            consumed += length;
            if (self.window_start_ns..self.window_end_ns).contains(&request.due_ns) {
                self.result.answered += 1;
                let latency = answered_ns
                    .saturating_sub(request.due_ns)
                    .clamp(1, MAX_LATENCY_NS);
                self.result
                    .latency
                    .record(latency)
                    .expect("latency within the histogram's bounds");
            }
            connection.outstanding.pop_front();
        }
        if consumed > 0 {
            connection.received.drain(..consumed);
        }
        if connection.outstanding.is_empty() && !connection.received.is_empty() {
            bail!(
                "the server sent {} bytes nobody asked for",
                connection.received.len()
            );
        }
        Ok(())
    }
}
