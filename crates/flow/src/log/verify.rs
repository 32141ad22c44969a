//! The verifier: walks a log's segments and its signed HEAD and names the
//! first record that was edited, inserted, deleted, reordered or cut.

use std::fmt;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Serialize;

use super::{GENESIS, Hash, Head, Kind, Record, Tail, chain, checkpoint_message, decode_segment, to_hex};

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
