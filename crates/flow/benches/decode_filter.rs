//! Decode + filter throughput (BENCHMARKS.md): flows read back from the
//! signed flow log's segments (the binary encoding) and, for comparison,
//! from JSON lines as `observe --input-file` reads Hubble's exports; each
//! passed through the filter `--verdict DROPPED --to-pod production/`.
//!
//! The workload: `support/workload.rs`, 100,000 flows.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use bulkhead_flow::log::read_flows;
use bulkhead_flow::model::decode_json;
use bulkhead_flow::{Filters, FlowFilter, Verdict};

#[path = "support/workload.rs"]
mod workload;

const N: usize = 100_000;

fn bench(c: &mut Criterion) {
    let flows = workload::flows(N);
    let (seg, _) = workload::segment(&flows);
    let json: Vec<Vec<u8>> = flows.iter().map(|f| serde_json::to_vec(f).expect("json")).collect();
    let m = Filters {
        allow: vec![FlowFilter {
            verdict: vec![Verdict::Dropped],
            destination_pod: vec!["production/".into()],
            ..FlowFilter::default()
        }],
        ..Filters::default()
    }
    .compile()
    .expect("filters compile");
    let matched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    eprintln!(
        "workload: {N} flows; segment {} bytes ({:.0} per flow); JSON {} bytes ({:.0} per flow)",
        seg.len(),
        seg.len() as f64 / N as f64,
        json.iter().map(Vec::len).sum::<usize>(),
        json.iter().map(Vec::len).sum::<usize>() as f64 / N as f64
    );
    let mut g = c.benchmark_group("decode_filter");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function("flow_log", |b| {
        b.iter(|| {
            let mut n = 0;
            read_flows(&seg, |f| n += usize::from(f.is_ok_and(|f| m.matches(&f))));
            matched.store(n, std::sync::atomic::Ordering::Relaxed);
            n
        })
    });
    g.bench_function("json_lines", |b| {
        b.iter(|| json.iter().filter(|l| decode_json(l).is_ok_and(|f| m.matches(&f))).count())
    });
    g.finish();
    eprintln!("matching flows: {}", matched.load(std::sync::atomic::Ordering::Relaxed));
}

criterion_group!(benches, bench);
criterion_main!(benches);
