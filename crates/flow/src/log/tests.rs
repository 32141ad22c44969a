use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::mutate::mutate;
use super::*;
use crate::model::{Endpoint, Flow, Verdict};
use crate::time::Timestamp;

/// xorshift64*: deterministic, so a failure names a replayable case.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn flow(i: u64) -> Flow {
    Flow {
        time: Timestamp::from_nanos(1_796_000_000_000_000_000 + i),
        verdict: if i.is_multiple_of(3) { Verdict::Dropped } else { Verdict::Forwarded },
        source: Arc::new(Endpoint {
            identity: 256 + (i % 7) as u32,
            namespace: "production".into(),
            pod_name: format!("pod-{i}"),
            ..Endpoint::default()
        }),
        ..Flow::default()
    }
}

/// A log of `n` flows, a segment every `per_segment` records, a checkpoint
/// every `every`, closed at the end when `close`.
fn build(n: u64, per_segment: u64, every: u64, close: bool) -> LogImage {
    let mut w = Writer::new(key(), Position::empty());
    let mut segments: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut head = None;
    for i in 0..n {
        if i % per_segment == 0 {
            let mut out = Vec::new();
            let idx = w.start_segment(i, &mut out);
            head = Some(w.checkpoint(i, &mut out));
            segments.push((idx, out));
        }
        let out = &mut segments.last_mut().expect("a segment").1;
        w.append(&flow(i), out);
        if w.since_checkpoint() >= every {
            head = Some(w.checkpoint(i, out));
        }
    }
    if close {
        head = Some(w.close(n, &mut segments.last_mut().expect("a segment").1));
    }
    LogImage { segments, head: head.map(|h| h.encode()) }
}

fn check(img: &LogImage, key: Option<&VerifyingKey>) -> Report {
    img.verify(key)
}

#[test]
fn flows_read_back_from_every_segment() {
    let img = build(300, 70, 16, true);
    let mut n = 0;
    for (_, seg) in &img.segments {
        read_flows(seg, |f| {
            let f = f.expect("a flow decodes");
            assert_eq!(f, flow(f.time.as_nanos() - 1_796_000_000_000_000_000));
            n += 1;
        });
    }
    assert_eq!(n, 300);
}

#[test]
fn an_untouched_log_verifies() {
    let img = build(500, 120, 32, true);
    let pk = key().verifying_key();
    let r = check(&img, Some(&pk));
    assert!(r.ok(), "{:?}", r.problem);
    assert_eq!(r.flows, 500);
    assert_eq!(r.segments, 5);
    assert_eq!(r.unsigned_tail, 0);
    assert!(r.key_given);
    assert_eq!(r.key, to_hex(pk.as_bytes()));
    // Without a key the log's own key is used, and the report says so.
    let r = check(&img, None);
    assert!(r.ok() && !r.key_given);
}

#[test]
fn another_key_fails() {
    let img = build(50, 100, 10, true);
    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    let r = check(&img, Some(&other));
    assert!(matches!(r.problem, Some(Problem::BadCheckpoint { .. })), "{:?}", r.problem);
}

#[test]
fn simple_tampering_names_the_record() {
    let img = build(100, 1000, 10, true);
    let (records, _) = decode_segment(&img.segments[0].1);
    // Edit record 40's payload without touching its hash.
    let victim = records.iter().find(|r| r.seq == 40).expect("record 40");
    let mut edited = img.clone();
    edited.segments[0].1[victim.offset + 4 + 17 + 3] ^= 1;
    assert_eq!(check(&edited, None).problem, Some(Problem::Edited { seq: 40, segment: 1, offset: victim.offset }));
    // Delete record 40.
    let end = records.iter().find(|r| r.seq == 41).expect("41").offset;
    let mut deleted = img.clone();
    deleted.segments[0].1.drain(victim.offset..end);
    assert_eq!(check(&deleted, None).problem, Some(Problem::Deleted { first_missing: 40, segment: 1 }));
    // Truncate the end (a whole number of records).
    let mut cut = img.clone();
    cut.segments[0].1.truncate(victim.offset);
    assert_eq!(
        check(&cut, None).problem,
        Some(Problem::Truncated { first_missing: 40, head_seq: records.last().expect("last").seq })
    );
}

#[test]
fn a_thousand_random_mutations_are_all_detected() {
    let base = build(400, 90, 16, true);
    let pk = key().verifying_key();
    assert!(check(&base, Some(&pk)).ok());
    let mut rng = Rng(0x5EED_F10E);
    let mut kinds = std::collections::BTreeMap::new();
    let mut done = 0;
    while done < 1_500 {
        let mut img = base.clone();
        let Some(what) = mutate(&mut img, &mut |n| rng.below(n)) else { continue };
        if img == base {
            continue;
        }
        done += 1;
        *kinds.entry(what.split_whitespace().next().unwrap_or("").to_string()).or_insert(0) += 1;
        let r = check(&img, Some(&pk));
        assert!(!r.ok(), "mutation {done} not detected: {what}");
    }
    assert!(kinds.len() >= 8, "too few kinds of mutation: {kinds:?}");
}

#[test]
fn a_crash_mid_record_loses_only_that_record() {
    // The writer was running (not closed): the last record is cut short at
    // every possible byte.
    let img = build(60, 1000, 16, false);
    let (records, _) = decode_segment(&img.segments[0].1);
    let last = records.last().expect("a record");
    let total = img.segments[0].1.len();
    for cut in last.offset + 1..total {
        let mut crashed = img.clone();
        crashed.segments[0].1.truncate(cut);
        let r = check(&crashed, None);
        assert!(r.ok(), "cut at {cut}: {:?}", r.problem);
        assert_eq!(r.incomplete, vec![last.seq], "cut at {cut}");
        assert_eq!(r.last_seq, last.seq - 1);
    }
    // A new writer continues after the last whole record, in a new segment.
    let mut crashed = img.clone();
    crashed.segments[0].1.truncate(last.offset + 10);
    let pos = Position::after(1, 1, &crashed.segments[0].1).expect("a position");
    assert_eq!(pos.next_seq, last.seq);
    let mut w = Writer::new(key(), pos);
    let mut out = Vec::new();
    let idx = w.start_segment(99, &mut out);
    w.checkpoint(99, &mut out);
    w.append(&flow(100), &mut out);
    let head = w.close(101, &mut out);
    crashed.segments.push((idx, out));
    crashed.head = Some(head.encode());
    let r = check(&crashed, Some(&key().verifying_key()));
    assert!(r.ok(), "{:?}", r.problem);
    assert_eq!(r.incomplete, vec![last.seq]);
}

#[test]
fn records_after_a_close_are_seen() {
    let img = build(30, 1000, 8, true);
    let mut w = Writer::new(key(), Position::after(1, 1, &img.segments[0].1).expect("pos"));
    let mut appended = img.clone();
    w.append(&flow(5), &mut appended.segments[0].1);
    assert!(matches!(check(&appended, None).problem, Some(Problem::Appended { .. })));
}

#[test]
fn head_round_trips_and_hex() {
    let mut w = Writer::new(key(), Position::empty());
    let mut out = Vec::new();
    w.start_segment(1, &mut out);
    let h = w.checkpoint(2, &mut out);
    assert_eq!(Head::decode(&h.encode()).expect("decodes"), h);
    assert!(h.verify(&key().verifying_key()));
    assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
    assert_eq!(from_hex("abc"), None);
    assert_eq!(parse_public_key(&to_hex(key().verifying_key().as_bytes())), Some(key().verifying_key()));
}

#[test]
fn decoding_never_panics_on_garbage() {
    let mut rng = Rng(42);
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        let _ = decode_segment(&bytes);
        let _ = verify(&[SegmentFile { index: 1, bytes: &bytes }], Some(&bytes), None);
    }
}
