//! The flow: one observed verdict, with Hubble's field names and enum
//! values, so that `hubble observe -o json` output and ours read alike and
//! either can be filtered by the same code.
//!
//! JSON is the protobuf JSON mapping Hubble prints (original snake_case
//! field names, enums by name, `{"TCP": {…}}` for the L4 oneof). Reading is
//! lenient where protobuf JSON is: enums may be names or numbers, unknown
//! fields are ignored, absent fields take their zero value. Writing leaves
//! out zero values, as Hubble does.
//!
//! Fields that are ours and not Hubble's: [`Flow::near_misses`] (for a
//! default-deny drop, the closest rules and why they did not match),
//! [`Flow::count`] (how many packets an aggregated record stands for) and
//! [`Policy::rule`] (which rule of the policy).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

mod drop_reason;
mod enums;
mod l4;
mod l7;

pub use drop_reason::DropReason;
pub use enums::{
    FlowType, IpVersion, L7FlowType, TraceObservationPoint, TrafficDirection, Verdict, event_types, policy_match_name,
};
pub use l4::{EventType, Icmp, Ip, Layer4, Ports, Tcp, TcpFlags};
pub use l7::{Dns, Http, HttpHeader, Kafka, Layer7};

/// A workload that owns an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// Its name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its kind (`Deployment`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// One end of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    /// The agent's endpoint id (local endpoints only).
    #[serde(rename = "ID", skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    /// The security identity.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub identity: u32,
    /// The cluster.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    /// The pod's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The identity's labels, `source:key=value`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The pod.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Owners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
}

impl Endpoint {
    /// `namespace/pod`, or empty for an endpoint outside the cluster.
    pub fn pod(&self) -> String {
        match (self.namespace.is_empty(), self.pod_name.is_empty()) {
            (_, true) => String::new(),
            (true, false) => self.pod_name.clone(),
            (false, false) => format!("{}/{}", self.namespace, self.pod_name),
        }
    }
}

/// A policy that decided a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Its name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its namespace (none for clusterwide policies).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Cilium's policy labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The policy repository's revision.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub revision: u64,
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`, `NetworkPolicy`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Ours: which rule (`spec.ingress[0]`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule: String,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        match self.namespace.is_empty() {
            true => write!(f, " {}", self.name)?,
            false => write!(f, " {}/{}", self.namespace, self.name)?,
        }
        if !self.rule.is_empty() {
            write!(f, " {}", self.rule)?;
        }
        Ok(())
    }
}

/// A rule that came close to allowing a dropped flow, and what did not match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NearMiss {
    /// The rule.
    pub policy: Policy,
    /// What did not match (`wrong port: allows 8080/TCP`, …).
    pub reason: String,
}

/// The interface a flow was observed on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    /// Index.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub index: u32,
    /// Name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// One flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Flow {
    /// When.
    #[serde(skip_serializing_if = "Timestamp::is_zero")]
    pub time: Timestamp,
    /// A unique id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    /// What happened.
    pub verdict: Verdict,
    /// The drop reason's number (Hubble keeps it beside the name).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub drop_reason: u32,
    /// Addresses.
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    /// Ports, flags, ICMP type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    /// Where it came from.
    pub source: Arc<Endpoint>,
    /// Where it went.
    pub destination: Arc<Endpoint>,
    /// L3/L4 or L7.
    #[serde(rename = "Type", skip_serializing_if = "FlowType::is_zero")]
    pub flow_type: FlowType,
    /// The node that observed it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// DNS names of the source address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_names: Vec<String>,
    /// DNS names of the destination address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_names: Vec<String>,
    /// What an L7 proxy saw (L7 flows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<Layer7>,
    /// The monitor event it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    /// Ingress or egress of the endpoint whose policy applied.
    #[serde(skip_serializing_if = "TrafficDirection::is_zero")]
    pub traffic_direction: TrafficDirection,
    /// Which kind of policy entry matched (Cilium's numbering: 1 L3 only,
    /// 2 L3+L4, 3 L4 only, 4 all, 5 L3+protocol, 6 protocol only).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub policy_match_type: u32,
    /// Where a trace event was observed.
    #[serde(skip_serializing_if = "TraceObservationPoint::is_zero")]
    pub trace_observation_point: TraceObservationPoint,
    /// Why it was dropped.
    #[serde(skip_serializing_if = "DropReason::is_zero")]
    pub drop_reason_desc: DropReason,
    /// A reply of a connection (unknown when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    /// The interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<NetworkInterface>,
    /// The L7 proxy's port, for redirected flows.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub proxy_port: u32,
    /// Policies that allowed it on egress.
    #[serde(skip_serializing_if = "is_empty")]
    pub egress_allowed_by: Arc<[Policy]>,
    /// Policies that allowed it on ingress.
    #[serde(skip_serializing_if = "is_empty")]
    pub ingress_allowed_by: Arc<[Policy]>,
    /// Deny policies that dropped it on egress.
    #[serde(skip_serializing_if = "is_empty")]
    pub egress_denied_by: Arc<[Policy]>,
    /// Deny policies that dropped it on ingress.
    #[serde(skip_serializing_if = "is_empty")]
    pub ingress_denied_by: Arc<[Policy]>,
    /// Ours: for a default-deny drop, the rules that came closest and why
    /// they did not match.
    #[serde(skip_serializing_if = "is_empty")]
    pub near_misses: Arc<[NearMiss]>,
    /// Ours: the packets this record stands for when more than one (the
    /// datapath aggregated repeats of a drop, or a closing connection's
    /// packets); 0 (absent) means one.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub count: u64,
    /// Ours: an agent record (`event_type` 130) of a change made to the
    /// datapath behind the agent's back, and its repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// A change made to the datapath behind the agent's back, put right.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drift {
    /// What changed: `map-pin`, `ipcache-changed`, `conntrack-unallowed`, …
    pub kind: String,
    /// Which pin, entry or program.
    pub what: String,
    /// Nanoseconds from the change being seen to its repair.
    pub repair_ns: u64,
}

impl Flow {
    /// The agent's record of a repaired drift, at `time`.
    pub fn drift(time: Timestamp, node_name: String, drift: Drift) -> Self {
        Self {
            time,
            node_name,
            event_type: Some(EventType { kind: event_types::AGENT, sub_type: 0 }),
            drift: Some(drift),
            ..Default::default()
        }
    }

    /// The monitor message type (`event_type.type`), 0 when absent.
    pub fn event_kind(&self) -> i32 {
        self.event_type.map_or(0, |e| e.kind)
    }

    /// `(source, destination)` ports, when the protocol has them.
    pub fn ports(&self) -> Option<(u32, u32)> {
        self.l4.as_ref().and_then(Layer4::ports)
    }

    /// The policies that decided it, in Hubble's four fields' order.
    pub fn deciding_policies(&self) -> impl Iterator<Item = &Policy> {
        self.egress_allowed_by
            .iter()
            .chain(self.ingress_allowed_by.iter())
            .chain(self.egress_denied_by.iter())
            .chain(self.ingress_denied_by.iter())
    }

    /// A rough size in memory, for byte-bounded buffers: the struct plus
    /// what its strings and lists hold (endpoints count in full even when
    /// shared, which errs on the safe side).
    pub fn approx_size(&self) -> usize {
        fn ep(e: &Endpoint) -> usize {
            std::mem::size_of::<Endpoint>()
                + e.namespace.len()
                + e.pod_name.len()
                + e.cluster_name.len()
                + e.labels.iter().map(|l| l.len() + 24).sum::<usize>()
        }
        fn pol(p: &[Policy]) -> usize {
            p.iter()
                .map(|p| std::mem::size_of::<Policy>() + p.name.len() + p.namespace.len() + p.kind.len() + p.rule.len())
                .sum()
        }
        std::mem::size_of::<Self>()
            + self.uuid.len()
            + self.node_name.len()
            + ep(&self.source)
            + ep(&self.destination)
            + pol(&self.egress_allowed_by)
            + pol(&self.ingress_allowed_by)
            + pol(&self.egress_denied_by)
            + pol(&self.ingress_denied_by)
            + self.near_misses.iter().map(|n| pol(std::slice::from_ref(&n.policy)) + n.reason.len()).sum::<usize>()
            + self.l7.as_ref().map_or(0, |_| 256)
            + self.drift.as_ref().map_or(0, |d| d.kind.len() + d.what.len())
    }
}

/// One line of `hubble observe -o json` (and of our `-o json`): the flow,
/// wrapped, as Hubble's `GetFlowsResponse` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRecord {
    /// The flow.
    pub flow: Flow,
    /// The node that observed it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// When.
    #[serde(skip_serializing_if = "Timestamp::is_zero")]
    pub time: Timestamp,
}

/// Decodes one JSON line: a `{"flow": …}` record as Hubble prints and
/// exports it, or a bare flow object.
pub fn decode_json(line: &[u8]) -> Result<Flow, serde_json::Error> {
    #[derive(Deserialize)]
    struct Wrapped {
        flow: Option<Flow>,
        #[serde(default)]
        node_name: String,
    }
    match serde_json::from_slice::<Wrapped>(line)? {
        Wrapped { flow: Some(mut flow), node_name } => {
            if flow.node_name.is_empty() {
                flow.node_name = node_name;
            }
            Ok(flow)
        }
        // No "flow" key: the line is a flow itself.
        Wrapped { flow: None, .. } => serde_json::from_slice(line),
    }
}

fn is_empty<T>(v: &Arc<[T]>) -> bool {
    v.is_empty()
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../testdata/corpus/hubble/export-sample-flows.jsonl");

    #[test]
    fn hubble_export_samples_read() {
        let flows: Vec<Flow> = SAMPLE.lines().map(|l| decode_json(l.as_bytes()).expect("sample decodes")).collect();
        assert_eq!(flows.len(), 2);
        let f = &flows[1];
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason_desc, DropReason::POLICY_DENIED);
        assert_eq!(f.source.pod_name, "xwing");
        assert_eq!(f.destination.pod(), "default/deathstar-7848d6c4d5-th9v2");
        assert_eq!(f.ports(), Some((44916, 80)));
        assert_eq!(f.node_name, "kind-kind/kind-worker");
        let Some(Layer4::Tcp(t)) = f.l4 else { panic!("TCP") };
        assert_eq!(t.flags.map(|f| f.names()), Some(vec!["SYN"]));
        assert_eq!(f.time.to_string(), "2023-08-21T12:12:18.510175415Z");
        let Some(Layer4::IcmpV6(i)) = flows[0].l4 else { panic!("ICMPv6") };
        assert_eq!(i.kind, 133);
        assert_eq!(flows[0].drop_reason_desc.name(), "INVALID_SOURCE_IP");
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let f = Flow {
            time: Timestamp::from_nanos(1_796_237_550_123_456_789),
            uuid: "8b0f4a2e-1b7a-4c55-9d6e-0a1b2c3d4e5f".into(),
            verdict: Verdict::Dropped,
            drop_reason: 133,
            ip: Some(Ip {
                source: "198.18.3.10".parse().expect("ip"),
                destination: "198.18.1.20".parse().expect("ip"),
                ip_version: IpVersion::V4,
                encrypted: false,
            }),
            l4: Some(Layer4::Tcp(Tcp {
                source_port: 40000,
                destination_port: 8080,
                flags: Some(TcpFlags::from_byte(0x02)),
            })),
            source: Arc::new(Endpoint {
                identity: 260,
                namespace: "staging".into(),
                pod_name: "debug-tools".into(),
                labels: vec!["k8s:app=debug-tools".into()],
                ..Endpoint::default()
            }),
            destination: Arc::new(Endpoint { id: 2, identity: 257, ..Endpoint::default() }),
            flow_type: FlowType::L3L4,
            event_type: Some(EventType { kind: event_types::DROP, sub_type: 133 }),
            traffic_direction: TrafficDirection::Ingress,
            drop_reason_desc: DropReason::POLICY_DENIED,
            is_reply: Some(false),
            near_misses: Arc::from([NearMiss {
                policy: Policy {
                    name: "restrict-backend-api".into(),
                    namespace: "production".into(),
                    kind: "CiliumNetworkPolicy".into(),
                    rule: "spec.ingress[0]".into(),
                    ..Policy::default()
                },
                reason: "peer lacks app=frontend".into(),
            }]),
            count: 3,
            ..Flow::default()
        };
        let text = serde_json::to_string(&FlowRecord { flow: f.clone(), ..FlowRecord::default() }).expect("json");
        assert!(text.contains(r#""drop_reason_desc":"POLICY_DENIED""#), "{text}");
        assert!(text.contains(r#""Type":"L3_L4""#), "{text}");
        assert!(text.contains(r#""IP":{"source":"198.18.3.10","destination":"198.18.1.20","ipVersion":"IPv4"}"#));
        assert!(text.contains(r#""l4":{"TCP":{"source_port":40000,"destination_port":8080,"flags":{"SYN":true}}}"#));
        assert!(text.contains(r#""event_type":{"type":1,"sub_type":133}"#), "{text}");
        assert_eq!(decode_json(text.as_bytes()).expect("decodes"), f);
    }

    #[test]
    fn enums_read_names_and_numbers_and_tolerate_unknown_values() {
        let f: Flow = serde_json::from_str(
            r#"{"verdict":2,"drop_reason_desc":181,"traffic_direction":"EGRESS","Type":"NOT_A_TYPE","extra":1}"#,
        )
        .expect("lenient");
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason_desc, DropReason::POLICY_DENY);
        assert_eq!(f.traffic_direction, TrafficDirection::Egress);
        assert_eq!(f.flow_type, FlowType::Unknown);
        assert_eq!(DropReason(999).to_string(), "999");
        assert_eq!(DropReason::from_name("policy_denied"), Some(DropReason::POLICY_DENIED));
        assert_eq!(Verdict::from_name("audit"), Some(Verdict::Audit));
    }
}
