//! The writer's side of the chain: flows in, record bytes out, and where
//! the chain stands (to continue a log after a restart).

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use super::{GENESIS, HEADER_BYTES, Hash, Head, Kind, LEN_BYTES, chain, checkpoint_message, decode_segment, to_hex};
use crate::codec::Encoder;
use crate::model::Flow;

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
