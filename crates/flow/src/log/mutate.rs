//! Tampering with a flow log the ways an attacker or an accident would, for
//! the mutation tests (here and in the agent's end-to-end test) and the
//! fuzz target: every mutation must make [`super::verify`] fail.
//!
//! Mutations work on whole frames where they can (delete, insert, reorder,
//! rewrite a record and recompute the chain after it) and on bytes where
//! that is the point (a flipped bit, a cut file). The random source is a
//! caller-supplied function, so the crate needs no random-number library.

use super::{Hash, Head, Kind, LogImage, chain, decode_segment};

/// What a mutation did, for the failure message.
pub type Described = String;

/// Frames (start, end) of a segment's whole records.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let (records, _) = decode_segment(bytes);
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let end = records.get(i + 1).map_or(4 + r.body.len() + 32 + r.offset, |n| n.offset);
        out.push((r.offset, end));
    }
    out
}

fn rehash_from(bytes: &mut [u8], first_frame: usize, mut prev: Hash) {
    for (start, end) in frames(bytes).into_iter().skip(first_frame) {
        let h = chain(&prev, &bytes[start + 4..end - 32]);
        bytes[end - 32..end].copy_from_slice(&h);
        prev = h;
    }
}

/// A flow record numbered `seq` that chains correctly after `prev`, as a
/// forger who knows the format (and SHA-256) would write it.
fn forge(prev: &Hash, seq: u64, time: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![Kind::Flow as u8];
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&time.to_le_bytes());
    body.extend_from_slice(payload);
    let mut frame = u32::try_from(body.len()).unwrap_or(0).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(&chain(prev, &body));
    frame
}

fn hash_before(bytes: &[u8], frame: usize) -> Option<Hash> {
    let (records, _) = decode_segment(bytes);
    if frame == 0 {
        return records.first().and_then(|r| r.payload.get(40..72)).and_then(|p| p.try_into().ok());
    }
    records.get(frame - 1).map(|r| r.hash)
}

/// Applies one random mutation; `rand(n)` returns a number below `n`.
/// Returns what it did, or `None` when the image offered nothing to do it
/// on (the caller draws again).
pub fn mutate(img: &mut LogImage, rand: &mut impl FnMut(usize) -> usize) -> Option<Described> {
    let nseg = img.segments.len();
    if nseg == 0 {
        return None;
    }
    let s = rand(nseg);
    let frames_of = |img: &LogImage, s: usize| frames(&img.segments[s].1);
    match rand(13) {
        0 => {
            // Flip bits of one byte anywhere.
            let seg = &mut img.segments[s].1;
            if seg.is_empty() {
                return None;
            }
            let at = rand(seg.len());
            let x = u8::try_from(1 + rand(255)).unwrap_or(1);
            seg[at] ^= x;
            Some(format!("flipped byte {at} of segment {} with {x:#04x}", img.segments[s].0))
        }
        1 => {
            // Edit a record's payload, then recompute the chain to the end of
            // the segment (the attacker knows SHA-256 too).
            let f = frames_of(img, s);
            let i = rand(f.len().max(1));
            let (start, end) = *f.get(i)?;
            let payload = start + 4 + 17..end - 32;
            if payload.is_empty() {
                return None;
            }
            let at = payload.start + rand(payload.len());
            let prev = hash_before(&img.segments[s].1, i)?;
            img.segments[s].1[at] ^= 0x20;
            rehash_from(&mut img.segments[s].1, i, prev);
            Some(format!(
                "edited byte {at} of record frame {i} in segment {} and rehashed the chain",
                img.segments[s].0
            ))
        }
        2 => {
            // Delete a record.
            let f = frames_of(img, s);
            let (start, end) = *f.get(rand(f.len().max(1)))?;
            img.segments[s].1.drain(start..end);
            Some(format!("deleted the record at byte {start} of segment {}", img.segments[s].0))
        }
        3 => {
            // Delete a record, renumber the rest and recompute the chain.
            let f = frames_of(img, s);
            let i = rand(f.len().max(1));
            let (start, end) = *f.get(i)?;
            let prev = hash_before(&img.segments[s].1, i)?;
            img.segments[s].1.drain(start..end);
            for (a, _) in frames(&img.segments[s].1).into_iter().skip(i) {
                let seq = &mut img.segments[s].1[a + 5..a + 13];
                let n = u64::from_le_bytes((&*seq).try_into().unwrap_or_default()).wrapping_sub(1);
                seq.copy_from_slice(&n.to_le_bytes());
            }
            rehash_from(&mut img.segments[s].1, i, prev);
            Some(format!("deleted record frame {i} of segment {}, renumbered and rehashed", img.segments[s].0))
        }
        4 => {
            // Insert a copy of a record somewhere in the same segment.
            let f = frames_of(img, s);
            let (start, end) = *f.get(rand(f.len().max(1)))?;
            let copy = img.segments[s].1[start..end].to_vec();
            let (at, _) = *f.get(rand(f.len()))?;
            let at = if rand(2) == 0 { at } else { img.segments[s].1.len() };
            img.segments[s].1.splice(at..at, copy);
            Some(format!("inserted a copy of the record at byte {start} at byte {at} of segment {}", img.segments[s].0))
        }
        5 => {
            // Insert a forged record that chains correctly from the one before it.
            let f = frames_of(img, s);
            let i = rand(f.len() + 1);
            let prev = if i == f.len() {
                decode_segment(&img.segments[s].1).0.last()?.hash
            } else {
                hash_before(&img.segments[s].1, i)?
            };
            let seq = {
                let (records, _) = decode_segment(&img.segments[s].1);
                records.get(i).map_or_else(|| records.last().map_or(1, |r| r.seq.saturating_add(1)), |r| r.seq)
            };
            let frame = forge(&prev, seq, 0, br#"{"verdict":"FORWARDED"}"#);
            let at = f.get(i).map_or(img.segments[s].1.len(), |(a, _)| *a);
            img.segments[s].1.splice(at..at, frame);
            Some(format!("inserted a forged record numbered {seq} at byte {at} of segment {}", img.segments[s].0))
        }
        6 => {
            // Swap two records.
            let f = frames_of(img, s);
            if f.len() < 2 {
                return None;
            }
            let i = rand(f.len() - 1);
            let j = if rand(2) == 0 { i + 1 } else { i + 1 + rand(f.len() - i - 1) };
            let (a, b) = (f[i], f[j]);
            let seg = &img.segments[s].1;
            let rebuilt = [&seg[..a.0], &seg[b.0..b.1], &seg[a.1..b.0], &seg[a.0..a.1], &seg[b.1..]].concat();
            img.segments[s].1 = rebuilt;
            Some(format!("swapped record frames {i} and {j} of segment {}", img.segments[s].0))
        }
        7 => {
            // Cut a segment short.
            let seg = &mut img.segments[s].1;
            if seg.is_empty() {
                return None;
            }
            let at = rand(seg.len());
            seg.truncate(at);
            Some(format!("truncated segment {} to {at} bytes", img.segments[s].0))
        }
        8 => {
            // Delete a whole segment file.
            let (idx, _) = img.segments.remove(s);
            Some(format!("deleted segment file {idx}"))
        }
        9 => {
            // Swap the contents of two segment files.
            if nseg < 2 {
                return None;
            }
            let t = (s + 1 + rand(nseg - 1)) % nseg;
            let a = std::mem::take(&mut img.segments[s].1);
            img.segments[s].1 = std::mem::replace(&mut img.segments[t].1, a);
            Some(format!("swapped the contents of segment files {} and {}", img.segments[s].0, img.segments[t].0))
        }
        10 => {
            // Delete or edit HEAD.
            let head = img.head.take()?;
            if rand(2) == 0 {
                Some("deleted HEAD".into())
            } else {
                let Ok(mut h) = Head::decode(&head) else {
                    img.head = Some(head);
                    return None;
                };
                match rand(3) {
                    0 => h.seq = h.seq.saturating_sub(1 + rand(3) as u64),
                    1 => h.oldest_segment += 1,
                    _ => h.closed = !h.closed,
                }
                img.head = Some(h.encode());
                Some(format!("edited HEAD to {h:?}"))
            }
        }
        11 => {
            // Append a forged record to the last segment, chained correctly.
            let last = img.segments.last_mut()?;
            let (records, _) = decode_segment(&last.1);
            let r = records.last()?;
            let seq = r.seq.saturating_add(1);
            let frame = forge(&r.hash, seq, r.time, b"{}");
            last.1.extend_from_slice(&frame);
            Some(format!("appended a forged record {seq} to segment {}", last.0))
        }
        _ => {
            // Move a record to another segment's end.
            if nseg < 2 {
                return None;
            }
            let f = frames_of(img, s);
            let (start, end) = *f.get(rand(f.len().max(1)))?;
            let frame: Vec<u8> = img.segments[s].1.drain(start..end).collect();
            let t = (s + 1 + rand(nseg - 1)) % nseg;
            img.segments[t].1.extend_from_slice(&frame);
            Some(format!(
                "moved the record at byte {start} of segment {} to the end of segment {}",
                img.segments[s].0, img.segments[t].0
            ))
        }
    }
}
