//! Test helpers: engines from YAML snippets.

use crate::api::Object;
use crate::api::decode::{DecodeOptions, decode_str};
use crate::diag::Sink;
use crate::engine::Engine;
use crate::reach::{ProbePort, Reach, reach};
use crate::repository::Proto;

/// Decodes YAML, panicking on any error.
pub fn objects(src: &str) -> Vec<Object> {
    let mut sink = Sink::new("test.yaml");
    let objs = decode_str(src, &DecodeOptions::default(), &mut sink);
    assert_eq!(sink.error_count(), 0, "{:#?}", sink.diagnostics);
    objs
}

/// An engine from cluster and policy YAML.
pub fn engine(cluster: &str, policies: &str) -> Engine {
    let mut o = objects(cluster);
    o.extend(objects(policies));
    Engine::from_objects(o)
}

/// A pod document with labels, IP and optional named ports.
pub fn pod(ns: &str, name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nstatus: {{podIP: {ip}}}\n"
    )
}

/// The reach cell from one pod to another on a TCP port.
pub fn cell(e: &Engine, from: &str, to: &str, port: u16) -> Reach {
    let m = reach(e, &[ProbePort { proto: Proto::Tcp, port }]);
    m.verdicts[from][to][&format!("{port}/TCP")]
}
