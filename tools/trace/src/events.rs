//! Reading the interposer's file: allocation events on the run's clock, and the
//! process's memory map for symbolizing call sites.
#[path = "../interposer/src/wire.rs"]
#[allow(dead_code)] // the writing half is the interposer's
pub(crate) mod wire;

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;
pub use wire::Kind;

/// One allocation event, at ns since the run's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocEvent {
    /// ns since the run's start (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The thread that made the call (kernel thread id).
    pub thread: u32,
    /// What the call was.
    pub kind: Kind,
    /// See [`Kind`] for the meaning of the four fields.
    pub addr: u64,
    /// See [`Kind`].
    pub size: u64,
    /// See [`Kind`].
    pub old: u64,
    /// See [`Kind`].
    pub old_size: u64,
    /// Return addresses, innermost (the call site) first.
    pub stack: Vec<u64>,
}

/// What the interposer wrote for one process.
#[derive(Debug, Default)]
pub struct InterposerLog {
    /// Events of the traced process, in time order.
    pub events: Vec<AllocEvent>,
    /// Its `/proc/self/maps` at exit.
    pub maps: String,
    /// Events the interposer could not record.
    pub dropped: u64,
    /// Events of other processes (children) that were ignored.
    pub other_processes: u64,
    /// Bytes at the end that did not form a whole chunk (the process was killed).
    pub truncated_bytes: u64,
}

/// Reads the interposer's file, keeping process `pid`'s events (None: the process
/// whose first event came first, i.e. the started one); `start_ns` is the run's start
/// on CLOCK_MONOTONIC.
pub fn read(path: &Path, pid: Option<u32>, start_ns: u64) -> Result<InterposerLog> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read the allocation log {}", path.display()))?;
    let pid = pid.unwrap_or_else(|| first_process(&bytes));
    Ok(parse(&bytes, pid, start_ns))
}

/// The process of the events chunk whose first event is the earliest.
fn first_process(bytes: &[u8]) -> u32 {
    let mut at = 0;
    let mut best = (u64::MAX, 0);
    while let Some(h) = bytes.get(at..).and_then(wire::ChunkHeader::parse) {
        if h.kind == wire::CHUNK_EVENTS && h.first_ns < best.0 {
            best = (h.first_ns, h.pid);
        }
        at += wire::HEADER_BYTES + h.payload_len as usize;
    }
    best.1
}

/// Parses the interposer's chunks (see [`read`]).
pub fn parse(bytes: &[u8], pid: u32, start_ns: u64) -> InterposerLog {
    let mut log = InterposerLog::default();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = wire::ChunkHeader::parse(&bytes[at..]) else {
            break;
        };
        let body_at = at + wire::HEADER_BYTES;
        let Some(payload) = bytes.get(body_at..body_at + header.payload_len as usize) else {
            break;
        };
        at = body_at + payload.len();
        if header.pid != pid || header.version != wire::VERSION {
            log.other_processes += count_records(payload) as u64;
            continue;
        }
        match header.kind {
            wire::CHUNK_EVENTS => {
                log.dropped += header.dropped;
                decode_events(&header, payload, start_ns, &mut log.events);
            }
            wire::CHUNK_MAPS => log.maps.push_str(&String::from_utf8_lossy(payload)),
            _ => {}
        }
    }
    log.truncated_bytes = (bytes.len() - at) as u64;
    // Each thread's events are in order; merging threads by time keeps that order.
    log.events.sort_by_key(|e| e.time_ns);
    log
}

fn count_records(payload: &[u8]) -> usize {
    let mut n = 0;
    let mut at = 0;
    while let Some((_, _, used)) = wire::Record::decode(&payload[at..]) {
        at += used;
        n += 1;
    }
    n
}

fn decode_events(
    header: &wire::ChunkHeader,
    payload: &[u8],
    start_ns: u64,
    out: &mut Vec<AllocEvent>,
) {
    // TSC to CLOCK_MONOTONIC: linear between the chunk's two readings.
    let tsc_span = header.flush_tsc.saturating_sub(header.first_tsc);
    let ns_span = header.flush_ns.saturating_sub(header.first_ns);
    let to_ns = |tsc: u64| -> u64 {
        let dt = tsc.saturating_sub(header.first_tsc);
        let scaled = if tsc_span == 0 {
            0
        } else {
            (dt as u128 * ns_span as u128 / tsc_span as u128) as u64
        };
        (header.first_ns + scaled.min(ns_span)).saturating_sub(start_ns)
    };
    let mut at = 0;
    while let Some((record, stack, used)) = wire::Record::decode(&payload[at..]) {
        at += used;
        let Some(kind) = Kind::from_u8(record.kind) else {
            continue;
        };
        out.push(AllocEvent {
            time_ns: to_ns(record.tsc),
            thread: header.tid,
            kind,
            addr: record.addr,
            size: record.size,
            old: record.old,
            old_size: record.old_size,
            stack,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(pid: u32, tid: u32, records: &[(wire::Record, Vec<u64>)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (r, stack) in records {
            let mut b = vec![0; wire::Record::encoded_len(stack.len())];
            r.encode(&mut b, stack);
            payload.extend(b);
        }
        let header = wire::ChunkHeader {
            magic: wire::MAGIC,
            version: wire::VERSION,
            kind: wire::CHUNK_EVENTS,
            pid,
            tid,
            payload_len: payload.len() as u64,
            first_tsc: 1000,
            first_ns: 5000,
            flush_tsc: 3000,
            flush_ns: 6000,
            dropped: 0,
        };
        let mut out = header.as_bytes().to_vec();
        out.extend(payload);
        out
    }

    fn rec(kind: Kind, tsc: u64, addr: u64) -> wire::Record {
        wire::Record {
            kind: kind as u8,
            depth: 1,
            tsc,
            addr,
            size: 16,
            old: 0,
            old_size: 0,
        }
    }

    #[test]
    fn converts_times_keeps_one_process_and_stops_at_a_torn_chunk() {
        let mut bytes = chunk(
            7,
            8,
            &[
                (rec(Kind::Malloc, 1000, 0x10), vec![1]),
                (rec(Kind::Free, 3000, 0x10), vec![2]),
            ],
        );
        bytes.extend(chunk(9, 9, &[(rec(Kind::Malloc, 2000, 0x20), vec![3])]));
        let mut torn = chunk(7, 8, &[(rec(Kind::Malloc, 2000, 0x30), vec![3])]);
        torn.truncate(torn.len() - 4);
        bytes.extend(torn);
        let log = parse(&bytes, 7, 4000);
        assert_eq!(log.events.len(), 2);
        assert_eq!(log.events[0].time_ns, 1000); // 5000 - 4000
        assert_eq!(log.events[1].time_ns, 2000); // 5000 + 1000*(2000/2000) - 4000
        assert_eq!(log.events[1].kind, Kind::Free);
        assert_eq!(log.events[1].stack, vec![2]);
        assert_eq!(log.other_processes, 1);
        assert!(log.truncated_bytes > 0);
    }
}
