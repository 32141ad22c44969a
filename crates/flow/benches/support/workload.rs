//! The flow benchmarks' workload, shared by the criterion bench and the
//! `workload` example (which writes it to files for the CLI and jq): the
//! golden fixture's flows (real lab flows plus L7 ones), `n` of them with
//! distinct times, ids and ports, sharing endpoints and policies as the
//! agent's flows do.

use ed25519_dalek::SigningKey;

use bulkhead_flow::log::{Head, Position, Writer};
use bulkhead_flow::model::{Layer4, decode_json};
use bulkhead_flow::{Flow, Timestamp};

const FIXTURE: &str = include_str!("../../../cli/tests/golden/flows.jsonl");

/// `n` flows cycling through the fixture's.
pub fn flows(n: usize) -> Vec<Flow> {
    let base: Vec<Flow> = FIXTURE.lines().map(|l| decode_json(l.as_bytes()).expect("fixture")).collect();
    (0..n)
        .map(|i| {
            let mut f = base[i % base.len()].clone();
            f.time = Timestamp::from_nanos(1_796_300_000_000_000_000 + i as u64 * 10_000);
            f.uuid = format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7);
            if let Some(Layer4::Tcp(t)) = &mut f.l4 {
                t.source_port = 30_000 + (i % 30_000) as u32;
            }
            f
        })
        .collect()
}

/// The flows as one closed segment of a signed log (a checkpoint every
/// 1,024 flows), and its head.
pub fn segment(flows: &[Flow]) -> (Vec<u8>, Head) {
    let mut w = Writer::new(SigningKey::from_bytes(&[7; 32]), Position::empty());
    let mut out = Vec::new();
    w.start_segment(0, &mut out);
    for (i, f) in flows.iter().enumerate() {
        w.append(f, &mut out);
        if i % 1024 == 1023 {
            w.checkpoint(0, &mut out);
        }
    }
    let head = w.close(0, &mut out);
    (out, head)
}
