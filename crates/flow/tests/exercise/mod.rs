//! What the `flowlog` fuzz target does with one input, shared with the
//! corpus-replay test: untrusted flow-log bytes through the verifier and
//! the binary flow decoder, and untrusted flow JSON through the decoder and the
//! filters. No input may panic.
//!
//! Layout of an input: parts separated by `SEP`; every part but the last is
//! a segment file (indices 1, 2, …), the last is the HEAD file. Each part,
//! and the whole input as JSON lines, also goes through the flow decoder.

use bulkhead_flow::log::{Head, Position, SegmentFile, read_flows, verify};
use bulkhead_flow::model::decode_json;
use bulkhead_flow::{Filters, FlowFilter, Verdict};

/// Separates the parts of an input.
pub const SEP: &[u8] = b"\xffSEGMENT\xff";

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest);
    parts
}

fn flow_json(bytes: &[u8], filters: &bulkhead_flow::Matcher) {
    if let Ok(f) = decode_json(bytes) {
        let _ = filters.matches(&f);
        let text = serde_json::to_vec(&f).expect("a decoded flow serialises");
        let again = decode_json(&text).expect("what we write we read");
        assert_eq!(again, f, "a flow survives its own JSON");
    }
}

pub fn exercise(data: &[u8]) {
    let filters = Filters {
        allow: vec![
            FlowFilter {
                verdict: vec![Verdict::Dropped],
                source_label: vec!["app=x,env in (a,b)".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                destination_ip: vec!["198.18.0.0/15".into()],
                http_path: vec!["^/api".into()],
                ..FlowFilter::default()
            },
        ],
        deny: vec![FlowFilter { destination_port: vec!["53".into()], ..FlowFilter::default() }],
        ..Filters::default()
    }
    .compile()
    .expect("the filters compile");
    let parts = split(data);
    let (head, segs) = parts.split_last().expect("split yields at least one part");
    let files: Vec<SegmentFile<'_>> =
        segs.iter().enumerate().map(|(i, b)| SegmentFile { index: i as u64 + 1, bytes: b }).collect();
    for f in &files {
        read_flows(f.bytes, |flow| {
            if let Ok(flow) = flow {
                let _ = filters.matches(&flow);
                let _ = serde_json::to_vec(&flow);
            }
        });
        let _ = Position::after(f.index, 1, f.bytes);
    }
    let report = verify(&files, Some(head), None);
    if let Some(p) = &report.problem {
        let _ = p.to_string();
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let _ = verify(&files, None, Some(&key));
    let _ = Head::decode(head);
    for line in data.split(|b| *b == b'\n').take(64) {
        flow_json(line, &filters);
    }
}
