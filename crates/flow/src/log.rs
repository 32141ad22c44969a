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

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::codec::{CodecError, Decoder, Encoder};
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

/// The writer's side of the chain: it turns flows into record bytes and
/// knows where the chain stands. The caller writes the bytes, in order.
pub struct Writer {
    key: SigningKey,
    encoder: Encoder,
    /// Scratch buffers for one flow's definitions and record.
    defs: Vec<Vec<u8>>,
    rec: Vec<u8>,
    prev: Hash,
    next_seq: u64,
    segment: u64,
    oldest_segment: u64,
    since_checkpoint: u64,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").field("next_seq", &self.next_seq).field("segment", &self.segment).finish()
    }
}

/// Where an existing log stands, for a writer to continue it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The chain hash of the last whole record.
    pub prev: Hash,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// The last segment's index (0: none yet).
    pub segment: u64,
    /// The oldest segment kept.
    pub oldest_segment: u64,
}

impl Position {
    /// An empty log.
    pub fn empty() -> Self {
        Self { prev: GENESIS, next_seq: 1, segment: 0, oldest_segment: 1 }
    }

    /// Where the log stands after its last segment (`bytes`, index
    /// `segment`): after the last whole record; a record cut off by a
    /// crash is left behind and its sequence number is reused.
    pub fn after(segment: u64, oldest_segment: u64, bytes: &[u8]) -> Option<Self> {
        let (records, _) = decode_segment(bytes);
        let last = records.last()?;
        Some(Self { prev: last.hash, next_seq: last.seq.checked_add(1)?, segment, oldest_segment })
    }
}

impl Writer {
    /// A writer continuing from `pos`, signing with `key`.
    pub fn new(key: SigningKey, pos: Position) -> Self {
        Self {
            key,
            encoder: Encoder::new(),
            defs: Vec::new(),
            rec: Vec::new(),
            prev: pos.prev,
            next_seq: pos.next_seq,
            segment: pos.segment,
            oldest_segment: pos.oldest_segment,
            since_checkpoint: 0,
        }
    }

    /// The public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The current segment's index.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Records written since the last checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    fn record(&mut self, out: &mut Vec<u8>, kind: Kind, time: u64, payload: &[u8]) -> Hash {
        let len = HEADER_BYTES + payload.len();
        let start = out.len();
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        out.push(kind as u8);
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(payload);
        let h = chain(&self.prev, &out[start + LEN_BYTES..]);
        out.extend_from_slice(&h);
        self.prev = h;
        self.next_seq += 1;
        self.since_checkpoint += 1;
        h
    }

    /// Opens segment `segment + 1`: the bytes that start its file.
    pub fn start_segment(&mut self, time: u64, out: &mut Vec<u8>) -> u64 {
        self.segment += 1;
        self.encoder.reset();
        let payload = [&self.segment.to_le_bytes()[..], self.key.verifying_key().as_bytes(), &self.prev].concat();
        self.record(out, Kind::Segment, time, &payload);
        self.segment
    }

    /// Appends a flow: the definitions it needs that this segment does not
    /// hold yet, then the flow's record.
    pub fn append(&mut self, f: &Flow, out: &mut Vec<u8>) {
        let (mut defs, mut rec) = (std::mem::take(&mut self.defs), std::mem::take(&mut self.rec));
        defs.clear();
        rec.clear();
        self.encoder.encode(f, &mut defs, &mut rec);
        let time = f.time.as_nanos();
        for d in &defs {
            self.record(out, Kind::Define, time, d);
        }
        self.record(out, Kind::Flow, time, &rec);
        (self.defs, self.rec) = (defs, rec);
    }

    /// Signs the chain so far: the checkpoint record's bytes, and the
    /// head that names it (for the `HEAD` file, written after the bytes).
    pub fn checkpoint(&mut self, time: u64, out: &mut Vec<u8>) -> Head {
        self.sign(time, false, out)
    }

    /// The last checkpoint of a clean stop: its head says the log is
    /// closed, so a record appended after it is seen.
    pub fn close(&mut self, time: u64, out: &mut Vec<u8>) -> Head {
        self.sign(time, true, out)
    }

    fn sign(&mut self, time: u64, closed: bool, out: &mut Vec<u8>) -> Head {
        let sig = self.key.sign(&checkpoint_message(self.next_seq, &self.prev));
        let seq = self.next_seq;
        let h = self.record(out, Kind::Checkpoint, time, &sig.to_bytes());
        self.since_checkpoint = 0;
        let mut head = Head {
            oldest_segment: self.oldest_segment,
            segment: self.segment,
            seq,
            hash: to_hex(&h),
            time,
            closed,
            signature: String::new(),
        };
        head.signature = to_hex(&self.key.sign(&head.message()).to_bytes());
        head
    }

    /// Retention removed segments before `oldest`; the next head says so.
    pub fn set_oldest_segment(&mut self, oldest: u64) {
        self.oldest_segment = oldest;
    }
}

/// What is wrong with a log: the first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// A record's bytes do not hash to what is stored (edited).
    Edited {
        /// Its sequence number.
        seq: u64,
        /// Its segment.
        segment: u64,
        /// Byte offset of its frame.
        offset: usize,
    },
    /// Records are missing before this one.
    Deleted {
        /// The first missing sequence number.
        first_missing: u64,
        /// Its segment.
        segment: u64,
    },
    /// A record appears out of order.
    Reordered {
        /// The sequence number expected here.
        expected: u64,
        /// The one found.
        found: u64,
        /// Its segment.
        segment: u64,
    },
    /// A record that does not belong (a repeated or foreign sequence number).
    Inserted {
        /// The sequence number expected here.
        expected: u64,
        /// The one found.
        found: u64,
        /// Its segment.
        segment: u64,
    },
    /// A checkpoint whose signature does not verify: something between the
    /// previous checkpoint and it was changed and the chain recomputed, or
    /// the checkpoint was forged.
    BadCheckpoint {
        /// The checkpoint's sequence number.
        seq: u64,
        /// The first record it covers that the previous checkpoint did not.
        since: u64,
        /// Its segment.
        segment: u64,
    },
    /// Bytes that are no record (a corrupt frame length) in the middle of the log.
    Corrupt {
        /// The sequence number expected there.
        seq: u64,
        /// Its segment.
        segment: u64,
        /// Byte offset.
        offset: usize,
    },
    /// Records follow the checkpoint that closed the log.
    Appended {
        /// The first record after the close.
        first: u64,
        /// The closing checkpoint.
        closed_at: u64,
    },
    /// Records at the end are gone: the signed head names a later one.
    Truncated {
        /// The first record missing.
        first_missing: u64,
        /// The last record the head vouches for.
        head_seq: u64,
    },
    /// Whole segments are gone or out of place.
    Segments {
        /// What is wrong.
        detail: String,
    },
    /// The head file is missing, unreadable, or not signed by the key.
    Head {
        /// What is wrong.
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Edited { seq, segment, offset } => {
                write!(f, "record {seq} (segment {segment}, byte {offset}) was edited: its bytes do not match its hash")
            }
            Self::Deleted { first_missing, segment } => {
                write!(f, "records were deleted: record {first_missing} is missing (segment {segment})")
            }
            Self::Reordered { expected, found, segment } => {
                write!(
                    f,
                    "records were reordered: record {found} stands where record {expected} belongs (segment {segment})"
                )
            }
            Self::Inserted { expected, found, segment } => write!(
                f,
                "a record was inserted: a record numbered {found} stands where record {expected} belongs (segment {segment})"
            ),
            Self::BadCheckpoint { seq, since, segment } => write!(
                f,
                "checkpoint {seq} (segment {segment}) does not verify: a record from {since} to {} was changed and the chain recomputed, or the checkpoint was forged",
                seq.saturating_sub(1)
            ),
            Self::Corrupt { seq, segment, offset } => {
                write!(f, "record {seq} (segment {segment}, byte {offset}) is corrupt: its length is impossible")
            }
            Self::Appended { first, closed_at } => write!(
                f,
                "records were appended after the log was closed: record {first} follows the closing checkpoint {closed_at}"
            ),
            Self::Truncated { first_missing, head_seq } => write!(
                f,
                "the log was truncated: it ends before record {first_missing}, but the signed head vouches for records up to {head_seq}"
            ),
            Self::Segments { detail } | Self::Head { detail } => f.write_str(detail),
        }
    }
}

/// The verifier's account of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Segments read.
    pub segments: u64,
    /// Whole records read and verified up to the first problem.
    pub records: u64,
    /// Flow records among them.
    pub flows: u64,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// First and last sequence numbers verified.
    pub first_seq: u64,
    /// Last sequence number verified.
    pub last_seq: u64,
    /// The public key the log was verified with (hex).
    pub key: String,
    /// Whether that key came from the caller (otherwise from the log itself).
    pub key_given: bool,
    /// Records after the last checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    /// Records cut off by a writer that stopped mid-record (crashes), with
    /// their sequence numbers: lost, but not tampering.
    pub incomplete: Vec<u64>,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

impl Report {
    /// True when nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// One segment file: its index (from the file name) and bytes.
#[derive(Debug, Clone)]
pub struct SegmentFile<'a> {
    /// The index the file name gives.
    pub index: u64,
    /// Its bytes.
    pub bytes: &'a [u8],
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

/// Verifies a log: segments (any order), the head file's bytes, and the
/// public key to trust (otherwise the one the log names, which proves
/// integrity only against accidents, and the report says so).
pub fn verify(segments: &[SegmentFile<'_>], head: Option<&[u8]>, key: Option<&VerifyingKey>) -> Report {
    let mut segs: Vec<&SegmentFile<'_>> = segments.iter().collect();
    segs.sort_by_key(|s| s.index);
    let mut r = Report {
        segments: segs.len() as u64,
        records: 0,
        flows: 0,
        checkpoints: 0,
        first_seq: 0,
        last_seq: 0,
        key: String::new(),
        key_given: key.is_some(),
        unsigned_tail: 0,
        incomplete: Vec::new(),
        problem: None,
    };
    let mut v =
        Walk { key: key.copied(), prev: None, expected: None, last_checkpoint: 0, checkpoint_hashes: Vec::new() };
    for (i, seg) in segs.iter().enumerate() {
        if let Err(p) = v.segment(seg, i + 1 == segs.len(), &mut r) {
            r.problem = Some(p);
            break;
        }
    }
    if let Some(k) = v.key {
        r.key = to_hex(k.as_bytes());
    }
    if r.problem.is_none() {
        r.problem = v.check_head(head, &segs, &r).err();
    }
    r
}

struct Walk {
    key: Option<VerifyingKey>,
    /// The chain hash before the next record (None before the first).
    prev: Option<Hash>,
    /// The sequence number the next record must have.
    expected: Option<u64>,
    /// The sequence number after the last verified checkpoint.
    last_checkpoint: u64,
    /// (seq, hash) of every verified checkpoint, for the head.
    checkpoint_hashes: Vec<(u64, Hash)>,
}

impl Walk {
    fn segment(&mut self, seg: &SegmentFile<'_>, last: bool, r: &mut Report) -> Result<(), Problem> {
        let (records, tail) = decode_segment(seg.bytes);
        let Some(first) = records.first() else {
            return match tail {
                // A segment cut before its first record was whole: a crash right
                // after the file was created. Only the last segment may be so.
                Tail::Clean | Tail::Incomplete { .. } if last => Ok(()),
                _ => Err(Problem::Segments { detail: format!("segment {} holds no whole record", seg.index) }),
            };
        };
        // The segment record: its index, key, and where the chain stood.
        if first.kind != Kind::Segment as u8 || first.payload.len() != 8 + 32 + 32 {
            return Err(match self.expected {
                Some(e) => Problem::Corrupt { seq: e, segment: seg.index, offset: 0 },
                None => {
                    Problem::Segments { detail: format!("segment {} does not start with a segment record", seg.index) }
                }
            });
        }
        let index = u64::from_le_bytes(first.payload[..8].try_into().unwrap_or_default());
        let declared_prev: Hash = first.payload[40..72].try_into().unwrap_or_default();
        if index != seg.index {
            return Err(Problem::Segments {
                detail: format!(
                    "the file of segment {} holds segment {index} (segment files were renamed or swapped)",
                    seg.index
                ),
            });
        }
        let key_bytes: [u8; 32] = first.payload[8..40].try_into().unwrap_or_default();
        if self.key.is_none() {
            self.key = VerifyingKey::from_bytes(&key_bytes).ok();
        }
        match (self.prev, self.expected) {
            (None, _) => {
                self.prev = Some(declared_prev);
                self.expected = Some(first.seq);
                r.first_seq = first.seq;
                self.last_checkpoint = first.seq;
            }
            (Some(prev), Some(expected)) => {
                // Numbering continues across segments; a writer that crashed
                // mid-record reuses that record's number in the next segment.
                if first.seq != expected {
                    return Err(self.misplaced(expected, first.seq, &records, seg.index));
                }
                if declared_prev != prev {
                    return Err(Problem::Edited { seq: first.seq, segment: seg.index, offset: 0 });
                }
            }
            (Some(_), None) => {}
        }
        for rec in &records {
            self.record(rec, seg.index, &records, r)?;
        }
        match tail {
            Tail::Clean => {}
            // A writer stopped mid-record. Elsewhere than at the end, the next
            // segment must go on from the record before it (checked there).
            Tail::Incomplete { .. } => r.incomplete.push(self.expected.unwrap_or(0)),
            Tail::BadLength { offset } => {
                return Err(Problem::Corrupt { seq: self.expected.unwrap_or(0), segment: seg.index, offset });
            }
        }
        Ok(())
    }

    /// Classifies a record whose number is not the expected one.
    fn misplaced(&self, expected: u64, found: u64, records: &[Record<'_>], segment: u64) -> Problem {
        if found > expected {
            if records.iter().any(|x| x.seq == expected) {
                Problem::Reordered { expected, found, segment }
            } else {
                Problem::Deleted { first_missing: expected, segment }
            }
        } else if records.iter().filter(|x| x.seq == found).count() > 1 || found.saturating_add(1) == expected {
            Problem::Inserted { expected, found, segment }
        } else {
            Problem::Reordered { expected, found, segment }
        }
    }

    fn record(&mut self, rec: &Record<'_>, segment: u64, all: &[Record<'_>], r: &mut Report) -> Result<(), Problem> {
        let expected = self.expected.unwrap_or(rec.seq);
        if rec.seq != expected {
            return Err(self.misplaced(expected, rec.seq, all, segment));
        }
        let prev = self.prev.unwrap_or(GENESIS);
        if chain(&prev, rec.body) != rec.hash {
            // A record whose own hash holds but that chains from elsewhere was
            // moved or inserted; one whose bytes changed was edited.
            return Err(Problem::Edited { seq: rec.seq, segment, offset: rec.offset });
        }
        match Kind::from_u8(rec.kind) {
            Some(Kind::Flow) => r.flows += 1,
            Some(Kind::Define) => {}
            Some(Kind::Checkpoint) => {
                let ok = self.key.as_ref().is_some_and(|k| {
                    Signature::from_slice(rec.payload)
                        .is_ok_and(|s| k.verify(&checkpoint_message(rec.seq, &prev), &s).is_ok())
                });
                if !ok {
                    return Err(Problem::BadCheckpoint { seq: rec.seq, since: self.last_checkpoint, segment });
                }
                r.checkpoints += 1;
                self.last_checkpoint = rec.seq.saturating_add(1);
                self.checkpoint_hashes.push((rec.seq, rec.hash));
            }
            Some(Kind::Segment) if rec.offset == 0 => {}
            _ => return Err(Problem::Edited { seq: rec.seq, segment, offset: rec.offset }),
        }
        self.prev = Some(rec.hash);
        self.expected = Some(rec.seq.saturating_add(1));
        r.records += 1;
        r.last_seq = rec.seq;
        r.unsigned_tail = rec.seq.saturating_add(1).saturating_sub(self.last_checkpoint);
        Ok(())
    }

    fn check_head(&self, head: Option<&[u8]>, segs: &[&SegmentFile<'_>], r: &Report) -> Result<(), Problem> {
        let head = head.ok_or_else(|| Problem::Head {
            detail: "no HEAD file: the end of the log cannot be vouched for (was it deleted?)".into(),
        })?;
        let head =
            Head::decode(head).map_err(|e| Problem::Head { detail: format!("the HEAD file does not read: {e}") })?;
        let key = self.key.ok_or_else(|| Problem::Head { detail: "no key to verify the HEAD file with".into() })?;
        if !head.verify(&key) {
            return Err(Problem::Head { detail: "the HEAD file's signature does not verify with the key".into() });
        }
        let first_index = segs.first().map_or(0, |s| s.index);
        if first_index > head.oldest_segment {
            return Err(Problem::Segments {
                detail: format!(
                    "segments {} to {} were deleted: the signed head says retention kept segment {} and later",
                    head.oldest_segment,
                    first_index.saturating_sub(1),
                    head.oldest_segment
                ),
            });
        }
        if let Some(gap) = segs.windows(2).find(|w| w[1].index != w[0].index.saturating_add(1)) {
            return Err(Problem::Segments {
                detail: format!(
                    "segment {} is missing (segments {} and {} are present)",
                    gap[0].index.saturating_add(1),
                    gap[0].index,
                    gap[1].index
                ),
            });
        }
        if head.seq > r.last_seq || r.records == 0 {
            return Err(Problem::Truncated { first_missing: r.last_seq.saturating_add(1), head_seq: head.seq });
        }
        match self.checkpoint_hashes.iter().find(|(s, _)| *s == head.seq) {
            Some((_, h)) if to_hex(h) == head.hash => {}
            _ => {
                return Err(Problem::Head {
                    detail: format!(
                        "the signed head names checkpoint {}, which the log does not hold as signed",
                        head.seq
                    ),
                });
            }
        }
        // After a clean stop nothing follows the closing checkpoint, not even
        // the remains of a record (no writer was running to leave them).
        let incomplete_after = r.incomplete.iter().copied().find(|s| *s > head.seq);
        if head.closed && (r.last_seq > head.seq || incomplete_after.is_some()) {
            return Err(Problem::Appended { first: head.seq.saturating_add(1), closed_at: head.seq });
        }
        Ok(())
    }
}

/// Log tampering for tests and the fuzz target; not in a normal build.
#[cfg(any(test, feature = "tamper"))]
pub mod mutate;

#[cfg(test)]
mod tests;
