//! The interposer's output format, shared with the reader in `msh-trace`.
//!
//! The file is a sequence of chunks, each a [`ChunkHeader`] then `payload_len` bytes.
//! An events chunk holds one thread's [`Record`]s in order; a maps chunk holds a piece
//! of the process's `/proc/self/maps` text, written at exit. All integers are
//! little-endian.

/// "MSHT".
pub const MAGIC: u32 = 0x5448_534d;
/// Bumped when the layout changes.
pub const VERSION: u16 = 1;
/// A chunk of one thread's event records.
pub const CHUNK_EVENTS: u16 = 1;
/// A chunk of `/proc/self/maps` text.
pub const CHUNK_MAPS: u16 = 2;
/// Bytes of records a thread buffers before it flushes.
pub const BUFFER_BYTES: usize = 64 * 1024;
/// Frames of call stack kept per event.
pub const MAX_DEPTH: usize = 4;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// malloc: a new block at `addr` of `size` bytes.
    Malloc = 1,
    /// calloc: as malloc.
    Calloc = 2,
    /// realloc: block `old` (0: none) ends; block `addr` (0: none) of `size` starts.
    Realloc = 3,
    /// posix_memalign, aligned_alloc, memalign, valloc: a block; `old_size` = alignment.
    Aligned = 4,
    /// free of the block at `addr`.
    Free = 5,
    /// mmap: `size` bytes at `addr`; `old` = flags << 32 | prot.
    Mmap = 6,
    /// munmap of `size` bytes at `addr`.
    Munmap = 7,
    /// mremap of `old_size` bytes at `old` to `size` bytes at `addr`.
    Mremap = 8,
    /// The heap break moved from `addr` by `size` (two's complement: negative shrinks).
    Brk = 9,
}

impl Kind {
    /// The kind with this wire value.
    pub fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Malloc,
            2 => Kind::Calloc,
            3 => Kind::Realloc,
            4 => Kind::Aligned,
            5 => Kind::Free,
            6 => Kind::Mmap,
            7 => Kind::Munmap,
            8 => Kind::Mremap,
            9 => Kind::Brk,
            _ => return None,
        })
    }

    /// The name used in the database.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Malloc => "malloc",
            Kind::Calloc => "calloc",
            Kind::Realloc => "realloc",
            Kind::Aligned => "aligned",
            Kind::Free => "free",
            Kind::Mmap => "mmap",
            Kind::Munmap => "munmap",
            Kind::Mremap => "mremap",
            Kind::Brk => "brk",
        }
    }
}

/// The header of every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ChunkHeader {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// [`CHUNK_EVENTS`] or [`CHUNK_MAPS`].
    pub kind: u16,
    /// The writing process.
    pub pid: u32,
    /// The writing thread (events chunks).
    pub tid: u32,
    /// Bytes after the header.
    pub payload_len: u64,
    /// TSC and CLOCK_MONOTONIC at the chunk's first event.
    pub first_tsc: u64,
    /// See `first_tsc`.
    pub first_ns: u64,
    /// TSC and CLOCK_MONOTONIC when the chunk was written.
    pub flush_tsc: u64,
    /// See `flush_tsc`.
    pub flush_ns: u64,
    /// Events this thread could not record (its buffer was being flushed at exit).
    pub dropped: u64,
}

/// Size of [`ChunkHeader`] on the wire.
pub const HEADER_BYTES: usize = 64;
const _: () = assert!(core::mem::size_of::<ChunkHeader>() == HEADER_BYTES);

impl ChunkHeader {
    /// The header's bytes (it is `repr(C)` with no padding; x86-64 is little-endian).
    pub fn as_bytes(&self) -> &[u8; HEADER_BYTES] {
        // SAFETY: repr(C), 64 bytes of plain integers with no padding (asserted above).
        unsafe { &*(self as *const ChunkHeader as *const [u8; HEADER_BYTES]) }
    }

    /// Parses a header; None when the bytes are not one.
    pub fn parse(bytes: &[u8]) -> Option<ChunkHeader> {
        let b = bytes.get(..HEADER_BYTES)?;
        let header = ChunkHeader {
            magic: u32_at(b, 0),
            version: u16::from_le_bytes([b[4], b[5]]),
            kind: u16::from_le_bytes([b[6], b[7]]),
            pid: u32_at(b, 8),
            tid: u32_at(b, 12),
            payload_len: u64_at(b, 16),
            first_tsc: u64_at(b, 24),
            first_ns: u64_at(b, 32),
            flush_tsc: u64_at(b, 40),
            flush_ns: u64_at(b, 48),
            dropped: u64_at(b, 56),
        };
        (header.magic == MAGIC).then_some(header)
    }
}

/// One event, followed on the wire by `depth` return addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// A [`Kind`] value.
    pub kind: u8,
    /// Frames that follow.
    pub depth: u8,
    /// TSC when the call returned.
    pub tsc: u64,
    /// See [`Kind`].
    pub addr: u64,
    /// See [`Kind`].
    pub size: u64,
    /// See [`Kind`].
    pub old: u64,
    /// See [`Kind`].
    pub old_size: u64,
}

const FIXED: usize = 48;

impl Record {
    /// Bytes of a record with `depth` frames.
    pub const fn encoded_len(depth: usize) -> usize {
        FIXED + 8 * depth
    }

    /// Writes the record and its frames into `out` (exactly `encoded_len` bytes).
    pub fn encode(&self, out: &mut [u8], frames: &[u64]) {
        out[0] = self.kind;
        out[1] = frames.len() as u8;
        out[2..8].fill(0);
        for (i, v) in [self.tsc, self.addr, self.size, self.old, self.old_size]
            .into_iter()
            .chain(frames.iter().copied())
            .enumerate()
        {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Decodes one record at the start of `bytes`: (record, frames, bytes used).
    pub fn decode(bytes: &[u8]) -> Option<(Record, Vec<u64>, usize)> {
        let fixed = bytes.get(..FIXED)?;
        let depth = fixed[1] as usize;
        let len = Self::encoded_len(depth);
        let all = bytes.get(..len)?;
        let record = Record {
            kind: fixed[0],
            depth: fixed[1],
            tsc: u64_at(fixed, 8),
            addr: u64_at(fixed, 16),
            size: u64_at(fixed, 24),
            old: u64_at(fixed, 32),
            old_size: u64_at(fixed, 40),
        };
        let frames = (0..depth).map(|i| u64_at(all, FIXED + 8 * i)).collect();
        Some((record, frames, len))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_wire_format() {
        let stack = [0x401000u64, 0x402000];
        let rec = Record {
            kind: Kind::Realloc as u8,
            depth: 2,
            tsc: 7,
            addr: 0x5000,
            size: 64,
            old: 0x4000,
            old_size: 0,
        };
        let mut bytes = vec![0u8; Record::encoded_len(2)];
        rec.encode(&mut bytes, &stack);
        let (decoded, frames, used) = Record::decode(&bytes).unwrap();
        assert_eq!(decoded, rec);
        assert_eq!(frames, stack);
        assert_eq!(used, bytes.len());
        assert!(Record::decode(&bytes[..used - 1]).is_none());
    }
}
