//! The two servers' wire protocols, as far as the benchmark speaks them: GET and SET
//! of fixed-size values whose bytes follow from the key, so every answer is checked.
//!
//! Keys are `key:NNNNNNNNNN`; the value of key `i` is its index in hex followed by a
//! filler letter that depends on `i`:
//!
//! ```text
//! key:0000000042  ->  "000000000000002a" "qqqq…q"   (value_bytes in all)
//! ```

use anyhow::{bail, Result};
use std::io::Write;

/// Which server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Redis's RESP.
    Redis,
    /// memcached's text protocol.
    Memcached,
}

/// A request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
}

/// Shortest value: the hex index.
pub const MIN_VALUE_BYTES: usize = 16;
const KEY_LEN: usize = 14;

fn filler(key: u64) -> u8 {
    b'a' + (key % 26) as u8
}

/// Appends key `i`'s name.
fn put_key(out: &mut Vec<u8>, key: u64) {
    write!(out, "key:{key:010}").expect("writing to a Vec cannot fail");
}

/// Appends key `i`'s value.
pub fn put_value(out: &mut Vec<u8>, key: u64, value_bytes: usize) {
    write!(out, "{key:016x}").expect("writing to a Vec cannot fail");
    out.resize(out.len() + value_bytes - MIN_VALUE_BYTES, filler(key));
}

/// Whether `bytes` is key `i`'s value.
fn is_value(bytes: &[u8], key: u64, value_bytes: usize) -> bool {
    if bytes.len() != value_bytes {
        return false;
    }
    let mut head = Vec::with_capacity(MIN_VALUE_BYTES);
    write!(head, "{key:016x}").expect("writing to a Vec cannot fail");
    let fill = filler(key);
    bytes[..MIN_VALUE_BYTES] == head[..] && bytes[MIN_VALUE_BYTES..].iter().all(|&b| b == fill)
}

impl Protocol {
    /// The installed server binary.
    pub fn binary(self) -> &'static str {
        match self {
            Protocol::Redis => "/usr/bin/redis-server",
            Protocol::Memcached => "/usr/bin/memcached",
        }
    }

    /// The Debian package that installs it.
    pub fn package(self) -> &'static str {
        match self {
            Protocol::Redis => "redis-server",
            Protocol::Memcached => "memcached",
        }
    }

    /// Appends one request.
    pub fn encode(self, out: &mut Vec<u8>, op: Op, key: u64, value_bytes: usize) {
        match (self, op) {
            (Protocol::Redis, Op::Get) => {
                write!(out, "*2\r\n$3\r\nGET\r\n${KEY_LEN}\r\n").unwrap();
                put_key(out, key);
                out.extend_from_slice(b"\r\n");
            }
            (Protocol::Redis, Op::Set) => {
                write!(out, "*3\r\n$3\r\nSET\r\n${KEY_LEN}\r\n").unwrap();
                put_key(out, key);
                write!(out, "\r\n${value_bytes}\r\n").unwrap();
                put_value(out, key, value_bytes);
                out.extend_from_slice(b"\r\n");
            }
            (Protocol::Memcached, Op::Get) => {
                out.extend_from_slice(b"get ");
                put_key(out, key);
                out.extend_from_slice(b"\r\n");
            }
            (Protocol::Memcached, Op::Set) => {
                out.extend_from_slice(b"set ");
                put_key(out, key);
                write!(out, " 0 0 {value_bytes}\r\n").unwrap();
                put_value(out, key, value_bytes);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Parses the answer to `(op, key)` at the start of `input`: `Ok(Some(n))` when the
    /// first `n` bytes are a correct answer, `Ok(None)` when more bytes are needed, an
    /// error when the answer is wrong.
    pub fn parse(
        self,
        input: &[u8],
        op: Op,
        key: u64,
        value_bytes: usize,
    ) -> Result<Option<usize>> {
        let Some(line_end) = find_crlf(input) else {
            if input.len() > 256 {
                bail!("{} answered a line longer than 256 bytes", self.package());
            }
            return Ok(None);
        };
        let line = &input[..line_end];
        let after_line = line_end + 2;
        let shown = || String::from_utf8_lossy(line).into_owned();
        match (self, op) {
            (Protocol::Redis, Op::Set) | (Protocol::Memcached, Op::Set) => {
                let ok: &[u8] = if self == Protocol::Redis {
                    b"+OK"
                } else {
                    b"STORED"
                };
                if line != ok {
                    bail!(
                        "SET key:{key:010}: expected {}, got {:?}",
                        String::from_utf8_lossy(ok),
                        shown()
                    );
                }
                Ok(Some(after_line))
            }
            (Protocol::Redis, Op::Get) => {
                if line == b"$-1" {
                    bail!("GET key:{key:010}: the key is missing");
                }
                if line != format!("${value_bytes}").as_bytes() {
                    bail!(
                        "GET key:{key:010}: expected a {value_bytes}-byte bulk string, got {:?}",
                        shown()
                    );
                }
                let end = after_line + value_bytes + 2;
                if input.len() < end {
                    return Ok(None);
                }
                check_value(&input[after_line..end], key, value_bytes)?;
                Ok(Some(end))
            }
            (Protocol::Memcached, Op::Get) => {
                if line == b"END" {
                    bail!("get key:{key:010}: the key is missing");
                }
                let mut header = b"VALUE ".to_vec();
                put_key(&mut header, key);
                write!(header, " 0 {value_bytes}").unwrap();
                if line != header.as_slice() {
                    bail!("get key:{key:010}: unexpected header {:?}", shown());
                }
                let end = after_line + value_bytes + 2 + b"END\r\n".len();
                if input.len() < end {
                    return Ok(None);
                }
                check_value(&input[after_line..end - 5], key, value_bytes)?;
                if &input[end - 5..end] != b"END\r\n" {
                    bail!("get key:{key:010}: no END after the value");
                }
                Ok(Some(end))
            }
        }
    }
}

fn check_value(with_crlf: &[u8], key: u64, value_bytes: usize) -> Result<()> {
    let (value, crlf) = with_crlf.split_at(value_bytes);
    if crlf != b"\r\n" || !is_value(value, key, value_bytes) {
        bail!("GET key:{key:010}: wrong value");
    }
    Ok(())
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(protocol: Protocol, op: Op, key: u64, bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        match (protocol, op) {
            (Protocol::Redis, Op::Set) => out.extend_from_slice(b"+OK\r\n"),
            (Protocol::Memcached, Op::Set) => out.extend_from_slice(b"STORED\r\n"),
            (Protocol::Redis, Op::Get) => {
                write!(out, "${bytes}\r\n").unwrap();
                put_value(&mut out, key, bytes);
                out.extend_from_slice(b"\r\n");
            }
            (Protocol::Memcached, Op::Get) => {
                write!(out, "VALUE key:{key:010} 0 {bytes}\r\n").unwrap();
                put_value(&mut out, key, bytes);
                out.extend_from_slice(b"\r\nEND\r\n");
            }
        }
        out
    }

    #[test]
    fn correct_answers_parse_whole_and_only_when_complete() {
        for protocol in [Protocol::Redis, Protocol::Memcached] {
            for op in [Op::Get, Op::Set] {
                let full = answer(protocol, op, 42, 64);
                let mut stream = full.clone();
                stream.extend_from_slice(b"next");
                assert_eq!(
                    protocol.parse(&stream, op, 42, 64).unwrap(),
                    Some(full.len())
                );
                for cut in 0..full.len() {
                    assert_eq!(
                        protocol.parse(&full[..cut], op, 42, 64).unwrap(),
                        None,
                        "{protocol:?} {op:?} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_answers_are_errors() {
        for protocol in [Protocol::Redis, Protocol::Memcached] {
            // Another key's value, a flipped byte, a missing key.
            let other = answer(protocol, Op::Get, 43, 64);
            assert!(protocol.parse(&other, Op::Get, 42, 64).is_err());
            let mut flipped = answer(protocol, Op::Get, 42, 64);
            let last_value_byte = flipped.len() - if protocol == Protocol::Redis { 3 } else { 8 };
            flipped[last_value_byte] ^= 1;
            assert!(protocol.parse(&flipped, Op::Get, 42, 64).is_err());
            let missing: &[u8] = if protocol == Protocol::Redis {
                b"$-1\r\n"
            } else {
                b"END\r\n"
            };
            assert!(protocol.parse(missing, Op::Get, 42, 64).is_err());
            assert!(protocol.parse(b"-ERR oom\r\n", Op::Set, 42, 64).is_err());
        }
    }

    #[test]
    fn requests_carry_the_key_and_its_value() {
        let mut out = Vec::new();
        Protocol::Redis.encode(&mut out, Op::Set, 7, 20);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$14\r\nkey:0000000007\r\n$20\r\n0000000000000007hhhh\r\n"
        );
        out.clear();
        Protocol::Memcached.encode(&mut out, Op::Get, 7, 20);
        assert_eq!(out, b"get key:0000000007\r\n");
    }
}
