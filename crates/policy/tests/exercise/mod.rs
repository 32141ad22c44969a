//! The whole pure pipeline on untrusted input: decode, engine build
//! (identities, selectors, resolution), reach matrix and trace, plus every
//! diagnostic's Display. Shared by the fuzz target (`fuzz/`) and the test
//! that replays its corpus in CI, so both exercise exactly the same code.

use std::hint::black_box;

use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::diag::Sink;
use bulkhead_policy::engine::Engine;
use bulkhead_policy::reach::{ProbePort, default_ports, reach};
use bulkhead_policy::repository::Proto;
use bulkhead_policy::trace::{Target, TraceRequest, trace};

/// Above these, skip the pods × pods × ports matrix to keep iterations fast.
const MAX_REACH_PODS: usize = 20;
const MAX_REACH_PORTS: usize = 8;

/// Runs every stage on `data`; panics are the bugs this looks for.
pub fn exercise(data: &[u8]) {
    // Policy files are text. Lossy, so that no mutated input is wasted: a
    // stray invalid byte becomes U+FFFD and still reaches the parser.
    let text = String::from_utf8_lossy(data);

    let mut sink = Sink::new("fuzz");
    let objects = decode_str(&text, &DecodeOptions::default(), &mut sink);
    for d in &sink.diagnostics {
        black_box(d.to_string());
    }
    if objects.is_empty() {
        return;
    }

    let mut engine = Engine::from_objects(objects);
    let pods = engine.pod_keys();
    let ports = default_ports(&engine);
    if pods.len() <= MAX_REACH_PODS && ports.len() <= MAX_REACH_PORTS {
        black_box(reach(&engine, &ports));
    }

    let Some(from) = pods.first().cloned() else { return };
    let second = pods.get(1).cloned().unwrap_or_else(|| from.clone());
    let port = ProbePort { proto: Proto::Tcp, port: 80 };
    let targets = [
        Target::Pod(second),
        Target::Fqdn("a.example.com".into()),
        Target::Ip("198.18.0.1".parse().expect("valid IP literal")),
    ];
    for to in targets {
        let req = TraceRequest { from: from.clone(), to, port, http: None };
        match trace(&mut engine, &req) {
            Ok(r) => {
                black_box(r);
            }
            Err(e) => {
                black_box(e.to_string());
            }
        }
    }
}
