//! The service map: workloads as nodes grouped by namespace, connections
//! between them as edges with counts by verdict, built from the flows in
//! the observer's ring.
//!
//! A workload is a pod's `app.kubernetes.io/name`, `app` or `k8s-app` label (so the
//! replicas of a deployment are one node), else its name; endpoints
//! outside the cluster are `world`, the node is `host`. Each connection
//! attempt is counted once, where its fate was decided: at the
//! destination's ingress when the destination is a local endpoint, else at
//! the source's egress (which is also where an egress drop happens).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bulkhead_flow::model::{Endpoint, Flow, TrafficDirection, Verdict, event_types};
use serde::Serialize;

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapNode {
    /// `namespace/workload`, `world`, `host`, or `identity:N`.
    pub id: String,
    /// The namespace (empty outside the cluster).
    pub namespace: String,
    /// The workload's name.
    pub name: String,
    /// `workload`, `world`, `host` or `identity`.
    pub kind: String,
    /// Pods seen for it.
    pub pods: BTreeSet<String>,
}

/// An edge: connections from one node to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MapEdge {
    /// Source node id.
    pub from: String,
    /// Destination node id.
    pub to: String,
    /// Connections forwarded.
    pub forwarded: u64,
    /// Connections (or packets, for repeated drops) dropped.
    pub dropped: u64,
    /// Audited (would have been dropped).
    pub audit: u64,
    /// Redirected to an L7 proxy.
    pub redirected: u64,
    /// Ports seen (`8080/TCP`).
    pub ports: BTreeSet<String>,
    /// Policies that decided, by name.
    pub policies: BTreeSet<String>,
    /// The newest flow's time (RFC 3339).
    pub last: String,
}

/// The whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceMap {
    /// Nodes, by id.
    pub nodes: Vec<MapNode>,
    /// Edges.
    pub edges: Vec<MapEdge>,
    /// Flows the map was built from.
    pub flows: usize,
}

/// The node an endpoint belongs to.
pub fn node_of(e: &Endpoint) -> MapNode {
    let has = |l: &str| e.labels.iter().any(|x| x == l);
    if !e.pod_name.is_empty() {
        let label = |key: &str| {
            e.labels.iter().find_map(|l| {
                let (_, kv) = l.split_once(':').unwrap_or(("", l));
                kv.strip_prefix(key).and_then(|v| v.strip_prefix('='))
            })
        };
        let name = label("app.kubernetes.io/name")
            .or_else(|| label("app"))
            .or_else(|| label("k8s-app"))
            .unwrap_or(&e.pod_name)
            .to_string();
        return MapNode {
            id: format!("{}/{name}", e.namespace),
            namespace: e.namespace.clone(),
            name,
            kind: "workload".into(),
            pods: BTreeSet::from([e.pod()]),
        };
    }
    let (id, kind) = if has("reserved:host") {
        ("host".to_string(), "host")
    } else if has("reserved:world") || has("reserved:world-ipv4") || has("reserved:world-ipv6") || e.identity == 2 {
        ("world".to_string(), "world")
    } else {
        (format!("identity:{}", e.identity), "identity")
    };
    MapNode { id: id.clone(), namespace: String::new(), name: id, kind: kind.into(), pods: BTreeSet::new() }
}

/// Whether a flow is where its connection's fate was decided (see the
/// module documentation).
pub fn decides(f: &Flow) -> bool {
    let kind = f.event_kind();
    if kind != event_types::POLICY_VERDICT && kind != event_types::DROP {
        return false;
    }
    match f.traffic_direction {
        TrafficDirection::Ingress => true,
        _ => f.destination.id == 0 || f.verdict == Verdict::Dropped,
    }
}

/// Builds the map from flows (oldest first).
pub fn build(flows: &[Arc<Flow>]) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), MapEdge> = BTreeMap::new();
    let mut used = 0;
    for f in flows.iter().filter(|f| decides(f)) {
        used += 1;
        let (src, dst) = (node_of(&f.source), node_of(&f.destination));
        let e = edges.entry((src.id.clone(), dst.id.clone())).or_insert_with(|| MapEdge {
            from: src.id.clone(),
            to: dst.id.clone(),
            ..MapEdge::default()
        });
        let n = f.count.max(1);
        match f.verdict {
            Verdict::Dropped => e.dropped += n,
            Verdict::Audit => e.audit += n,
            Verdict::Redirected => e.redirected += n,
            _ => e.forwarded += n,
        }
        if let (Some(l4), Some((_, port))) = (&f.l4, f.ports()) {
            e.ports.insert(format!("{port}/{}", l4.name()));
        }
        e.policies.extend(f.deciding_policies().map(|p| format!("{} {}", p.kind, p.name)));
        e.last = f.time.to_string();
        for n in [src, dst] {
            match nodes.get_mut(&n.id) {
                Some(have) => have.pods.extend(n.pods),
                None => {
                    nodes.insert(n.id.clone(), n);
                }
            }
        }
    }
    ServiceMap { nodes: nodes.into_values().collect(), edges: edges.into_values().collect(), flows: used }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_flow::model::EventType;

    fn ep(id: u32, ns: &str, pod: &str, app: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            id,
            identity: 300,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: vec![format!("k8s:app={app}")],
            ..Endpoint::default()
        })
    }

    fn flow(src: Arc<Endpoint>, dst: Arc<Endpoint>, dir: TrafficDirection, v: Verdict, kind: i32) -> Arc<Flow> {
        Arc::new(Flow {
            source: src,
            destination: dst,
            traffic_direction: dir,
            verdict: v,
            event_type: Some(EventType { kind, sub_type: 0 }),
            ..Flow::default()
        })
    }

    #[test]
    fn each_connection_counts_once_where_it_was_decided() {
        let (a1, a2, b) = (ep(1, "prod", "web-1", "web"), ep(2, "prod", "web-2", "web"), ep(3, "prod", "api-0", "api"));
        let world = Arc::new(Endpoint { identity: 2, labels: vec!["reserved:world".into()], ..Endpoint::default() });
        let pv = event_types::POLICY_VERDICT;
        let flows = vec![
            // web-1 → api: allowed at egress (skipped), allowed at ingress (counted).
            flow(a1.clone(), b.clone(), TrafficDirection::Egress, Verdict::Forwarded, pv),
            flow(a1.clone(), b.clone(), TrafficDirection::Ingress, Verdict::Forwarded, pv),
            // web-2 → api: allowed at egress, dropped at ingress.
            flow(a2.clone(), b.clone(), TrafficDirection::Egress, Verdict::Forwarded, pv),
            flow(a2.clone(), b.clone(), TrafficDirection::Ingress, Verdict::Dropped, event_types::DROP),
            // api → world: allowed at egress (counted: the destination is not local).
            flow(b.clone(), world.clone(), TrafficDirection::Egress, Verdict::Forwarded, pv),
            // A trace event is not a decision.
            flow(a1.clone(), b.clone(), TrafficDirection::Ingress, Verdict::Forwarded, event_types::TRACE),
        ];
        let m = build(&flows);
        assert_eq!(m.flows, 3);
        assert_eq!(m.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["prod/api", "prod/web", "world"]);
        let web = m.nodes.iter().find(|n| n.id == "prod/web").expect("web");
        assert_eq!(web.pods.len(), 2, "two replicas, one node");
        let e = m.edges.iter().find(|e| e.from == "prod/web" && e.to == "prod/api").expect("edge");
        assert_eq!((e.forwarded, e.dropped), (1, 1));
        assert!(m.edges.iter().any(|e| e.from == "prod/api" && e.to == "world" && e.forwarded == 1));
    }
}
