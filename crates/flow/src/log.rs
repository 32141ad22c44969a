//! The tamper-evident flow log: its record codec, the writer's chain state,
//! and the verifier. Sans-I/O: the agent owns the files and hands bytes in
//! and out; `flows verify` reads a directory and hands its bytes to
//! [`verify`].
//!
//! A log is a directory of segment files (`flows-0000000001.log`, …) and a
//! signed `HEAD`. Every record is framed as
//!
//! ```text
//! u32 LE  body length
//! body    u8 kind | u64 LE seq | u64 LE time (ns) | payload
//! [32]    SHA-256(previous record's hash || body)
//! ```
//!
//! so each record commits to everything before it. Kinds: a segment record
//! opens every segment (its index, the signing key, and the chain hash it
//! continues from), flow records carry a flow as JSON, and checkpoint
//! records carry an ed25519 signature over their own sequence number and
//! the chain hash before them. `HEAD` is signed too and names the newest
//! checkpoint and the oldest segment retention kept, so removing records
//! from the end, or whole segments from either end, is seen.
//!
//! The trade-off: hashing is per record but signing is per checkpoint, so
//! an attacker who rewrites a record *and* recomputes the chain after it is
//! caught at the next checkpoint, which names the range, not the record.
//! Records after the newest checkpoint are protected by the chain only; the
//! writer checkpoints on a timer, on rotation and on a clean stop.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::codec::{CodecError, Decoder};
use crate::model::Flow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A chain hash.
pub type Hash = [u8; 32];

/// Bytes before the body: its length.
const LEN_BYTES: usize = 4;
/// Body bytes before the payload: kind, seq, time.
const HEADER_BYTES: usize = 1 + 8 + 8;
/// The largest body a writer produces; longer lengths are corruption.
pub const MAX_BODY: usize = 1 << 20;
/// What a checkpoint signature covers, after this prefix: seq, hash.
const CHECKPOINT_CONTEXT: &[u8] = b"bulkhead flow log checkpoint v1";
/// What a head signature covers, after this prefix.
const HEAD_CONTEXT: &[u8] = b"bulkhead flow log head v1";
/// The chain hash before the very first record.
pub const GENESIS: Hash = [0; 32];

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opens a segment: index (u64 LE), public key (32), previous hash (32).
    Segment = 1,
    /// A flow, in the binary encoding of [`crate::codec`].
    Flow = 2,
    /// A signature (64) over the sequence number and the hash before it.
    Checkpoint = 3,
    /// A definition later flow records of the segment refer to ([`crate::codec`]).
    Define = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Segment),
            2 => Some(Self::Flow),
            3 => Some(Self::Checkpoint),
            4 => Some(Self::Define),
            _ => None,
        }
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its kind byte (may be unknown in a corrupt log).
    pub kind: u8,
    /// Its sequence number.
    pub seq: u64,
    /// When it was written (ns since the epoch).
    pub time: u64,
    /// Its payload.
    pub payload: &'a [u8],
    /// The body the hash covers.
    pub body: &'a [u8],
    /// The hash stored with it.
    pub hash: Hash,
    /// Byte offset of its frame in the segment.
    pub offset: usize,
}

/// Why the frames of a segment stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// At the end of the bytes, after a whole record.
    Clean,
    /// Inside a record whose bytes are not all there (a writer stopped
    /// mid-record, or the file was cut).
    Incomplete {
        /// Where that record starts.
        offset: usize,
    },
    /// At a length that no writer produces (corruption).
    BadLength {
        /// Where the bad frame starts.
        offset: usize,
    },
}

/// Splits a segment into records; never panics on any input.
pub fn decode_segment(bytes: &[u8]) -> (Vec<Record<'_>>, Tail) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + LEN_BYTES).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        else {
            return (out, Tail::Incomplete { offset: at });
        };
        if !(HEADER_BYTES..=MAX_BODY).contains(&len) {
            return (out, Tail::BadLength { offset: at });
        }
        let body_at = at + LEN_BYTES;
        let Some(frame) = bytes.get(body_at..body_at + len + 32) else {
            return (out, Tail::Incomplete { offset: at });
        };
        let (body, hash) = frame.split_at(len);
        let mut h = [0u8; 32];
        h.copy_from_slice(hash);
        out.push(Record {
            kind: body[0],
            seq: u64::from_le_bytes(body[1..9].try_into().unwrap_or_default()),
            time: u64::from_le_bytes(body[9..17].try_into().unwrap_or_default()),
            payload: &body[HEADER_BYTES..],
            body,
            hash: h,
            offset: at,
        });
        at = body_at + len + 32;
    }
    (out, Tail::Clean)
}

fn chain(prev: &Hash, body: &[u8]) -> Hash {
    let mut d = Sha256::new();
    d.update(prev);
    d.update(body);
    d.finalize().into()
}

fn checkpoint_message(seq: u64, prev: &Hash) -> Vec<u8> {
    [CHECKPOINT_CONTEXT, &seq.to_le_bytes(), prev].concat()
}

/// The signed head: the newest checkpoint and the oldest kept segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The oldest segment retention kept.
    pub oldest_segment: u64,
    /// The segment holding the checkpoint.
    pub segment: u64,
    /// The checkpoint's sequence number.
    pub seq: u64,
    /// The checkpoint record's hash (hex).
    pub hash: String,
    /// When (ns since the epoch).
    pub time: u64,
    /// Whether the writer closed the log with this checkpoint (a clean
    /// stop): nothing may follow it until a writer opens a new segment.
    #[serde(default)]
    pub closed: bool,
    /// ed25519 signature over all of the above (hex).
    pub signature: String,
}

impl Head {
    fn message(&self) -> Vec<u8> {
        [
            HEAD_CONTEXT,
            &self.oldest_segment.to_le_bytes(),
            &self.segment.to_le_bytes(),
            &self.seq.to_le_bytes(),
            self.hash.as_bytes(),
            &self.time.to_le_bytes(),
            &[u8::from(self.closed)],
        ]
        .concat()
    }

    /// The head as its file holds it (one JSON line).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads a head file.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn verify(&self, key: &VerifyingKey) -> bool {
        let Some(sig) = from_hex(&self.signature).and_then(|b| Signature::from_slice(&b).ok()) else {
            return false;
        };
        key.verify(&self.message(), &sig).is_ok()
    }
}

/// Lower-case hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses hex (any case); `None` unless every pair is hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A public key from its hex form (as `bulkhead flows key` prints it).
pub fn parse_public_key(s: &str) -> Option<VerifyingKey> {
    let b: [u8; 32] = from_hex(s)?.try_into().ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Decodes the flows of one segment, in order, giving each (or the reason
/// it does not decode) to `f`. Records are read up to the first that does
/// not frame; hashes are not checked here (that is [`verify`]'s work).
pub fn read_flows(segment: &[u8], mut f: impl FnMut(Result<Flow, CodecError>)) {
    let mut dec = Decoder::new();
    let (records, _) = decode_segment(segment);
    for r in &records {
        match Kind::from_u8(r.kind) {
            Some(Kind::Define) => {
                if let Err(e) = dec.define(r.payload) {
                    f(Err(e));
                }
            }
            Some(Kind::Flow) => f(dec.flow(r.payload)),
            _ => {}
        }
    }
}

/// A log in memory: segment files (index, bytes) and the HEAD file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogImage {
    /// Segment files, in index order.
    pub segments: Vec<(u64, Vec<u8>)>,
    /// The HEAD file, if present.
    pub head: Option<Vec<u8>>,
}

impl LogImage {
    /// [`verify`]s it.
    pub fn verify(&self, key: Option<&VerifyingKey>) -> Report {
        let segs: Vec<SegmentFile<'_>> =
            self.segments.iter().map(|(i, b)| SegmentFile { index: *i, bytes: b }).collect();
        verify(&segs, self.head.as_deref(), key)
    }
}

mod verify;
mod writer;

pub use verify::{Problem, Report, SegmentFile, verify};
pub use writer::{Position, Writer};

/// Log tampering for tests and the fuzz target; not in a normal build.
#[cfg(any(test, feature = "tamper"))]
pub mod mutate;

#[cfg(test)]
mod tests;
