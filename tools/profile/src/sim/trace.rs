//! Parsing lackey's `--trace-mem=yes` stream and replaying it through the cache model.
//!
//! The format is one event per line: `I  ADDR,SIZE` for an instruction, then ` L`,
//! ` S` or ` M` (load, store, modify) `ADDR,SIZE` for each of its data accesses; hex
//! without `0x`. Valgrind's own messages start with `==` and are skipped.
use super::cache::Hierarchy;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::time::{Duration, Instant};

/// Per load instruction: how often it ran and how often it missed the LLC.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    pub executions: u64,
    pub llc_misses: u64,
    /// The IP-stride prefetcher's state for this load.
    last_address: u64,
    last_stride: i64,
}

/// The modelled hardware prefetcher follows strides up to this many bytes (as Intel's
/// L1 IP-stride prefetcher does, within a 4 KiB page's reach)…
const PREFETCH_MAX_STRIDE: i64 = 2048;
/// …and fetches this many bytes ahead of the access, so a stream's lines arrive before
/// its loads do.
const PREFETCH_AHEAD: i64 = 512;

impl LoadStats {
    /// Models an IP-stride prefetcher: once a load repeats the same stride twice, the
    /// line `PREFETCH_AHEAD` bytes further along is brought into the caches. Without
    /// it, a sequential scan would "miss" once per line, which real hardware hides.
    #[inline]
    fn prefetch(&mut self, address: u64, hierarchy: &mut Hierarchy) {
        let stride = address.wrapping_sub(self.last_address) as i64;
        if stride != 0 && stride == self.last_stride && stride.abs() <= PREFETCH_MAX_STRIDE {
            let distance = stride.signum() * PREFETCH_AHEAD.max(stride.abs());
            hierarchy.access(address.wrapping_add(distance as u64), 1);
        }
        self.last_stride = stride;
        self.last_address = address;
    }
}

#[derive(Debug, Default)]
pub struct TraceStats {
    pub instructions: u64,
    /// Loads, stores and modifies.
    pub accesses: u64,
    pub load_accesses: u64,
    pub llc_load_misses: u64,
    /// By guest instruction address.
    pub loads: HashMap<u64, LoadStats, BuildHasherDefault<AddressHasher>>,
    /// Time spent in the cache model and the per-load bookkeeping only.
    pub model_time: Duration,
}

/// Instruction addresses are already well spread: one multiply is enough.
#[derive(Default)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9e3779b97f4a7c15).rotate_left(29);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Load,
    Store,
    Modify,
}

/// One parsed data access.
#[derive(Clone, Copy, Debug)]
struct Access {
    ip: u64,
    address: u64,
    size: u64,
    kind: Kind,
}

const BATCH: usize = 1 << 16;

/// Reads shorter than this make the reader pause before the next one.
const SMALL_READ: usize = 64 << 10;

/// Reads the whole trace from `input`, simulating as it goes.
pub fn simulate(mut input: impl Read, hierarchy: &mut Hierarchy) -> std::io::Result<TraceStats> {
    let mut stats = TraceStats::default();
    let mut parser = Parser::default();
    let mut batch: Vec<Access> = Vec::with_capacity(BATCH);
    let mut buffer = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if n < SMALL_READ {
                    // Valgrind writes a few hundred bytes at a time; waking for each
                    // write costs more than the simulation. Let the pipe fill a little.
                    std::thread::sleep(Duration::from_micros(500));
                }
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buffer[..n];
        // Complete the line split across reads.
        if !carry.is_empty() {
            match chunk.iter().position(|&c| c == b'\n') {
                Some(end) => {
                    carry.extend_from_slice(&chunk[..end]);
                    parser.line(&carry, &mut stats, &mut batch);
                    carry.clear();
                    chunk = &chunk[end + 1..];
                }
                None => {
                    carry.extend_from_slice(chunk);
                    continue;
                }
            }
        }
        let complete = match chunk.iter().rposition(|&c| c == b'\n') {
            Some(end) => end + 1,
            None => 0,
        };
        for line in chunk[..complete].split(|&c| c == b'\n') {
            parser.line(line, &mut stats, &mut batch);
            if batch.len() >= BATCH {
                replay(&mut batch, hierarchy, &mut stats);
            }
        }
        carry.extend_from_slice(&chunk[complete..]);
    }
    if !carry.is_empty() {
        parser.line(&carry, &mut stats, &mut batch);
    }
    replay(&mut batch, hierarchy, &mut stats);
    Ok(stats)
}

#[derive(Default)]
struct Parser {
    ip: u64,
}

impl Parser {
    #[inline]
    fn line(&mut self, line: &[u8], stats: &mut TraceStats, batch: &mut Vec<Access>) {
        if line.len() < 4 {
            return;
        }
        let kind = match (line[0], line[1]) {
            (b'I', _) => {
                if let Some((address, _)) = parse_pair(&line[1..]) {
                    self.ip = address;
                    stats.instructions += 1;
                }
                return;
            }
            (b' ', b'L') => Kind::Load,
            (b' ', b'S') => Kind::Store,
            (b' ', b'M') => Kind::Modify,
            _ => return,
        };
        if let Some((address, size)) = parse_pair(&line[2..]) {
            batch.push(Access {
                ip: self.ip,
                address,
                size,
                kind,
            });
        }
    }
}

/// Parses `  ADDR,SIZE` (hex address, decimal size).
#[inline]
fn parse_pair(text: &[u8]) -> Option<(u64, u64)> {
    let mut i = 0;
    while i < text.len() && text[i] == b' ' {
        i += 1;
    }
    let mut address: u64 = 0;
    let start = i;
    while i < text.len() && text[i] != b',' {
        let digit = match text[i] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        address = address.checked_mul(16)? | digit as u64;
        i += 1;
    }
    if i == start || i + 1 >= text.len() {
        return None;
    }
    let mut size: u64 = 0;
    for &c in text[i + 1..]
        .iter()
        .take_while(|&&c| c != b' ' && c != b'\r')
    {
        if !c.is_ascii_digit() {
            return None;
        }
        size = size.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some((address, size))
}

fn replay(batch: &mut Vec<Access>, hierarchy: &mut Hierarchy, stats: &mut TraceStats) {
    let started = Instant::now();
    let memory = hierarchy.memory_level();
    for access in batch.iter() {
        let served = hierarchy.access(access.address, access.size);
        stats.accesses += 1;
        if access.kind != Kind::Store {
            stats.load_accesses += 1;
            let load = stats.loads.entry(access.ip).or_default();
            load.executions += 1;
            if served == memory {
                load.llc_misses += 1;
                stats.llc_load_misses += 1;
            }
            load.prefetch(access.address, hierarchy);
        }
    }
    stats.model_time += started.elapsed();
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::super::cache::HierarchyConfig;
    use super::*;

    #[test]
    fn parses_lackey_output_across_reads() {
        let trace = "==123== Lackey, an example Valgrind tool\n\
I  04012d0,3\n L 1ffefff8a8,8\n\
I  04012d3,4\n S 1ffefff8b0,8\n\
I  04012d7,3\n M 0aaa000,4\n L 0bbb000,8\n\
I  04012da,2\n\
==123== done\n";
        // A reader that returns 5 bytes at a time exercises the line carry-over.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(5).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut cache = Hierarchy::new(&HierarchyConfig::parse("L1=1K:2,L2=4K:4").unwrap());
        let stats = simulate(Trickle(trace.as_bytes()), &mut cache).unwrap();
        assert_eq!(stats.instructions, 4);
        assert_eq!(stats.accesses, 4);
        assert_eq!(stats.load_accesses, 3);
        let counts = |ip| (stats.loads[&ip].executions, stats.loads[&ip].llc_misses);
        assert_eq!(counts(0x4012d0), (1, 1));
        assert_eq!(counts(0x4012d7), (2, 2));
        assert!(!stats.loads.contains_key(&0x4012d3), "stores are not loads");
    }

    #[test]
    fn the_stride_prefetcher_hides_a_scan_but_not_random_probes() {
        let config = HierarchyConfig::parse("L1=32K:8,L2=256K:8,L3=2M:16").unwrap();
        let mut scan = String::new();
        for i in 0..100_000u64 {
            scan += &format!("I  401000,3\n L {:x},8\n", 0x1000_0000 + i * 8);
        }
        let mut probes = String::new();
        let mut state = 88172645463325252u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            probes += &format!(
                "I  402000,4\n L {:x},8\n",
                0x2000_0000 + (state % (64 << 20)) / 8 * 8
            );
        }
        let ratio = |trace: &str, ip: u64| {
            let stats = simulate(trace.as_bytes(), &mut Hierarchy::new(&config)).unwrap();
            stats.loads[&ip].llc_misses as f64 / stats.loads[&ip].executions as f64
        };
        assert!(
            ratio(&scan, 0x401000) < 0.01,
            "scan {}",
            ratio(&scan, 0x401000)
        );
        assert!(
            ratio(&probes, 0x402000) > 0.9,
            "probes {}",
            ratio(&probes, 0x402000)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_trace_reader() {
        let mut cache = Hierarchy::new(&HierarchyConfig::parse("L1=1K:2").unwrap());
        let alphabet = b"IiLSM ,0123456789abcdefxyz\n=";
        let mut state = 88172645463325252u64;
        let bytes: Vec<u8> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(7) {
                    state as u8
                } else {
                    alphabet[(state >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        simulate(&bytes[..], &mut cache).unwrap();
    }

    #[test]
    fn garbage_lines_are_ignored() {
        let mut cache = Hierarchy::new(&HierarchyConfig::parse("L1=1K:2").unwrap());
        let stats = simulate(
            &b"I  zz,3\n L ,8\n L 10\n M 10,x\n\xff\xfe\n"[..],
            &mut cache,
        )
        .unwrap();
        assert_eq!((stats.instructions, stats.accesses), (0, 0));
    }
}
