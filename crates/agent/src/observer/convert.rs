//! Datapath events into flows: names, labels and the deciding policies
//! attached, and for a default-deny drop the rules that came closest.
//!
//! Names come from the newest published snapshot of the agent's state at
//! conversion time (read without a lock: a change in progress never holds
//! up the event path), so a flow keeps the pod it was about even after the
//! pod is gone. What is looked up per
//! event is cached: endpoints by (address, identity) and policies by the
//! datapath's rule reference, until the agent's state changes; the near
//! misses of a default-deny drop need a policy walk, so they are cached per
//! (endpoint, direction, peer, port) and computed for at most
//! [`NEAR_MISS_BUDGET`] new keys a second, so that a scan of many ports
//! cannot slow the event path (flows beyond it carry none).

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_datapath::abi::{
    EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, LEVEL_ANY, MATCH_ALL_PROTOCOLS, MATCH_PROTOCOL, REPLY_NO, REPLY_YES,
    RawEvent, Reason,
};
use bulkhead_datapath::sync::RuleTable;
use bulkhead_flow::Timestamp;
use bulkhead_flow::model::{
    Dns, DropReason, Endpoint, EventType, Flow, FlowType, Http, HttpHeader, Icmp, Ip, IpVersion, L7FlowType, Layer4,
    Layer7, NearMiss, NetworkInterface, Policy, Ports, Tcp, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict,
    event_types,
};
use bulkhead_policy::api::Direction;
use bulkhead_policy::identity::NumericIdentity;
use bulkhead_policy::reach::ProbePort;
use bulkhead_policy::repository::{Proto, RuleRef};
use bulkhead_proxy::events::L7Event;
use bulkhead_proxy::rules::Side;

use crate::snapshot::Snapshot;

/// New near-miss explanations computed per second at most.
pub const NEAR_MISS_BUDGET: u32 = 500;

/// Entries a cache holds before it starts over: a scan of many addresses
/// or ports must not grow the agent without bound.
const CACHE_MAX: usize = 1 << 16;

/// The local endpoints as flows name them, rebuilt when they change.
#[derive(Debug, Default)]
pub struct Local {
    /// Host-side interface names by index.
    interfaces: HashMap<u32, String>,
    /// Pods (`namespace/name`) by endpoint id.
    pods: HashMap<u32, String>,
    /// Endpoint ids by pod.
    ids: HashMap<String, u32>,
}

impl Local {
    /// From (endpoint id, host interface index, its name, `namespace/pod`).
    pub fn new(endpoints: impl IntoIterator<Item = (u32, u32, String, String)>) -> Self {
        let mut l = Self::default();
        for (id, ifindex, host_if, pod) in endpoints {
            l.interfaces.insert(ifindex, host_if);
            l.ids.insert(pod.clone(), id);
            l.pods.insert(id, pod);
        }
        l
    }
}

type NearKey = (String, u8, IpAddr, u32, u8, u16);

/// Turns events into flows; one per event reader.
pub struct Converter {
    node_name: String,
    generation: u64,
    endpoints: HashMap<(IpAddr, u32, u32), Arc<Endpoint>>,
    policies: HashMap<u32, Arc<[Policy]>>,
    near: HashMap<NearKey, Arc<[NearMiss]>>,
    budget: (Instant, u32),
    uuids: Uuids,
}

impl Converter {
    /// A converter naming flows with `node_name`.
    pub fn new(node_name: String) -> Self {
        Self {
            node_name,
            generation: u64::MAX,
            endpoints: HashMap::new(),
            policies: HashMap::new(),
            near: HashMap::new(),
            budget: (Instant::now(), 0),
            uuids: Uuids::new(),
        }
    }

    /// Forgets what was cached from an older snapshot.
    fn refresh(&mut self, n: &Snapshot) {
        if n.generation != self.generation {
            self.generation = n.generation;
            self.endpoints.clear();
            self.near.clear();
        }
    }

    /// The L7 flow for one of the proxy's events: a request (from the
    /// client) or a response (from the server, `is_reply`), `FORWARDED`
    /// when the rules allowed the request and `DROPPED` (`POLICY_DENIED`)
    /// when they did not, with the rules that allowed it, or those that came
    /// closest as near misses.
    pub fn convert_l7(&mut self, n: &Snapshot, e: &L7Event) -> Flow {
        self.refresh(n);
        let endpoint = |this: &mut Self, a: std::net::SocketAddr| {
            let (id, _) = n.policy.identity_of_ip(a.ip());
            this.endpoint(n, a.ip(), id.0, 0)
        };
        let (client, server) = (endpoint(self, e.client), endpoint(self, e.server));
        let (from, to) = if e.response { (e.server, e.client) } else { (e.client, e.server) };
        let (source, destination) = if e.response { (server, client) } else { (client, server) };
        // The side that decided: the first check's (the client's egress
        // when it has L7 rules); a server's own rules otherwise.
        let direction = match e.by.first() {
            Some((Side::Egress, _)) if e.limited_by.is_none() => TrafficDirection::Egress,
            _ => TrafficDirection::Ingress,
        };
        let rules =
            |side: Side| -> Arc<[Policy]> { e.by.iter().filter(|(s, _)| *s == side).map(|(_, r)| policy(r)).collect() };
        // Over a RateLimit: dropped by that policy, as a deny rule drops.
        let drop = match (e.allowed, &e.limited_by) {
            (true, _) => DropReason::UNKNOWN,
            (false, Some(_)) => DropReason::POLICY_DENY,
            (false, None) => DropReason::POLICY_DENIED,
        };
        let mut f = Flow {
            time: Timestamp::from_nanos(e.time_ns),
            uuid: self.uuids.next(),
            verdict: if e.allowed { Verdict::Forwarded } else { Verdict::Dropped },
            drop_reason: drop.0,
            drop_reason_desc: drop,
            ip: Some(Ip {
                source: from.ip(),
                destination: to.ip(),
                ip_version: if from.is_ipv4() { IpVersion::V4 } else { IpVersion::V6 },
                encrypted: false,
            }),
            l4: Some(match &e.dns {
                Some(d) if d.udp => {
                    Layer4::Udp(Ports { source_port: from.port().into(), destination_port: to.port().into() })
                }
                _ => Layer4::Tcp(Tcp {
                    source_port: from.port().into(),
                    destination_port: to.port().into(),
                    flags: None,
                }),
            }),
            source,
            destination,
            flow_type: FlowType::L7,
            node_name: self.node_name.clone(),
            event_type: Some(EventType { kind: event_types::L7, sub_type: 0 }),
            traffic_direction: direction,
            is_reply: Some(e.response),
            l7: Some(Layer7 {
                kind: if e.response { L7FlowType::Response } else { L7FlowType::Request },
                latency_ns: e.latency_ns,
                http: e.dns.is_none().then(|| Http {
                    code: e.code.into(),
                    method: e.method.to_string(),
                    url: e.url.to_string(),
                    protocol: e.protocol.to_string(),
                    headers: e.headers.iter().map(|(k, v)| HttpHeader { key: k.clone(), value: v.clone() }).collect(),
                }),
                dns: e.dns.as_ref().map(|d| Dns {
                    query: d.query.clone(),
                    ips: d.ips.iter().map(ToString::to_string).collect(),
                    ttl: d.ttl,
                    cnames: d.cnames.clone(),
                    observation_source: "proxy".into(),
                    rcode: d.rcode.into(),
                    qtypes: d.qtypes.clone(),
                    rrtypes: d.rrtypes.clone(),
                }),
                ..Layer7::default()
            }),
            ..Flow::default()
        };
        f.source_names = n.names_of(from.ip());
        f.destination_names = n.names_of(to.ip());
        if let Some(limit) = &e.limited_by {
            f.ingress_denied_by = Arc::from([policy(limit)]);
        } else if e.allowed {
            f.egress_allowed_by = rules(Side::Egress);
            f.ingress_allowed_by = rules(Side::Ingress);
        } else {
            f.near_misses =
                e.by.iter()
                    .map(|(_, r)| NearMiss {
                        policy: policy(r),
                        reason: if e.dns.is_some() {
                            "the query's name matches none of its DNS rules (matchName, matchPattern)".into()
                        } else {
                            "the request matches none of its HTTP rules (method, path, host, headers)".into()
                        },
                    })
                    .collect();
        }
        f
    }

    /// The flow for one event that happened at `wall_ns`.
    pub fn convert(&mut self, n: &Snapshot, ev: &RawEvent, wall_ns: u64) -> Flow {
        self.refresh(n);
        let reason = Reason::from_u8(ev.reason).unwrap_or(Reason::InvalidPacket);
        let (src_ip, dst_ip) = (IpAddr::from(ev.saddr), IpAddr::from(ev.daddr));
        let dir = if ev.dir == 0 { Direction::Ingress } else { Direction::Egress };
        // The endpoint at the enforcement point sent the packet when it left
        // the pod: egress for a connection's own packets, ingress for replies.
        let ep_is_src = (dir == Direction::Egress) != (ev.is_reply == REPLY_YES);
        let has_endpoint = ev.endpoint != 0;
        let src_id = if has_endpoint && ep_is_src { ev.endpoint } else { 0 };
        let dst_id = if has_endpoint && !ep_is_src { ev.endpoint } else { 0 };
        let source = self.endpoint(n, src_ip, ev.src_identity, src_id);
        let destination = self.endpoint(n, dst_ip, ev.dst_identity, dst_id);
        let verdict = match ev.verdict {
            1 => Verdict::Forwarded,
            2 => Verdict::Dropped,
            3 => Verdict::Audit,
            4 => Verdict::Redirected,
            _ => Verdict::Unknown,
        };
        let drop_reason = reason.drop_reason();
        let (kind, sub_type, point) = match ev.kind {
            EVENT_DROP => {
                (event_types::DROP, i32::try_from(drop_reason.0).unwrap_or(0), TraceObservationPoint::Unknown)
            }
            EVENT_POLICY_VERDICT => (event_types::POLICY_VERDICT, 0, TraceObservationPoint::Unknown),
            EVENT_TRACE => {
                let point =
                    if ep_is_src { TraceObservationPoint::FromEndpoint } else { TraceObservationPoint::ToEndpoint };
                (event_types::TRACE, point.monitor_sub_type().unwrap_or(0), point)
            }
            _ => (0, 0, TraceObservationPoint::Unknown),
        };
        let mut f = Flow {
            time: Timestamp::from_nanos(wall_ns),
            uuid: self.uuids.next(),
            verdict,
            drop_reason: if verdict == Verdict::Dropped { drop_reason.0 } else { 0 },
            ip: Some(Ip {
                source: src_ip,
                destination: dst_ip,
                ip_version: if src_ip.is_ipv4() { IpVersion::V4 } else { IpVersion::V6 },
                encrypted: false,
            }),
            l4: layer4(ev),
            source,
            destination,
            flow_type: FlowType::L3L4,
            node_name: self.node_name.clone(),
            event_type: Some(EventType { kind, sub_type }),
            traffic_direction: if dir == Direction::Ingress {
                TrafficDirection::Ingress
            } else {
                TrafficDirection::Egress
            },
            policy_match_type: if ev.kind == EVENT_POLICY_VERDICT { match_type(ev.level, ev.r#match) } else { 0 },
            trace_observation_point: point,
            drop_reason_desc: if matches!(verdict, Verdict::Dropped | Verdict::Audit) {
                drop_reason
            } else {
                DropReason::UNKNOWN
            },
            is_reply: match ev.is_reply {
                REPLY_NO => Some(false),
                REPLY_YES => Some(true),
                _ => None,
            },
            interface: n
                .local
                .interfaces
                .get(&ev.ifindex)
                .map(|name| NetworkInterface { index: ev.ifindex, name: name.clone() }),
            count: if ev.count > 1 { u64::from(ev.count) } else { 0 },
            ..Flow::default()
        };
        f.source_names = n.names_of(src_ip);
        f.destination_names = n.names_of(dst_ip);
        if ev.kind != EVENT_TRACE {
            let rules = self.policies(&n.rules, ev.rule);
            let (allowed, denied) = match dir {
                Direction::Ingress => (&mut f.ingress_allowed_by, &mut f.ingress_denied_by),
                Direction::Egress => (&mut f.egress_allowed_by, &mut f.egress_denied_by),
            };
            match reason {
                Reason::PolicyDeny => *denied = rules,
                Reason::PolicyDenied => {}
                _ => *allowed = rules,
            }
        }
        if reason == Reason::PolicyDenied {
            let (local, peer_ip, peer_id) = if ep_is_src {
                (&f.source, dst_ip, ev.dst_identity)
            } else {
                (&f.destination, src_ip, ev.src_identity)
            };
            let local = local.pod();
            f.near_misses = self.near_misses(n, local, dir, peer_ip, peer_id, ev);
        }
        f
    }

    fn endpoint(&mut self, n: &Snapshot, ip: IpAddr, identity: u32, id: u32) -> Arc<Endpoint> {
        if self.endpoints.len() >= CACHE_MAX && !self.endpoints.contains_key(&(ip, identity, id)) {
            self.endpoints.clear();
        }
        Arc::clone(self.endpoints.entry((ip, identity, id)).or_insert_with(|| {
            // The local endpoint is known by its id (its packets may come from
            // an address no pod record holds, like a link-local one); the far
            // end by its address.
            let pod = n.local.pods.get(&id).cloned().or_else(|| n.policy.identity_of_ip(ip).1);
            // The far end may be a local endpoint too (as Hubble, name its id).
            let id = if id == 0 { pod.as_ref().and_then(|p| n.local.ids.get(p).copied()).unwrap_or(0) } else { id };
            let (namespace, pod_name) = pod
                .as_deref()
                .and_then(|k| k.split_once('/'))
                .map(|(ns, p)| (ns.to_string(), p.to_string()))
                .unwrap_or_default();
            let labels = n.labels(NumericIdentity(identity));
            Arc::new(Endpoint { id, identity, namespace, pod_name, labels, ..Endpoint::default() })
        }))
    }

    fn policies(&mut self, rules: &RuleTable, rule: u32) -> Arc<[Policy]> {
        if rule == 0 {
            return Arc::from([]);
        }
        Arc::clone(self.policies.entry(rule).or_insert_with(|| rules.get(rule).iter().map(|r| policy(r)).collect()))
    }

    fn near_misses(
        &mut self,
        n: &Snapshot,
        endpoint: String,
        dir: Direction,
        peer_ip: IpAddr,
        peer_id: u32,
        ev: &RawEvent,
    ) -> Arc<[NearMiss]> {
        let Some(proto) = Proto::from_number(ev.proto) else { return Arc::from([]) };
        if endpoint.is_empty() {
            return Arc::from([]);
        }
        let port = match proto {
            Proto::Icmp | Proto::Icmpv6 => u16::from(ev.icmp_type),
            _ => u16::from_be_bytes(ev.dport),
        };
        let key: NearKey = (endpoint, ev.dir, peer_ip, peer_id, ev.proto, port);
        if let Some(v) = self.near.get(&key) {
            return Arc::clone(v);
        }
        let now = Instant::now();
        if now.duration_since(self.budget.0) >= Duration::from_secs(1) {
            self.budget = (now, 0);
        }
        if self.budget.1 >= NEAR_MISS_BUDGET {
            return Arc::from([]);
        }
        self.budget.1 += 1;
        if self.near.len() >= CACHE_MAX {
            self.near.clear();
        }
        let misses: Arc<[NearMiss]> = n
            .policy
            .explain_packet(&key.0, dir, peer_ip, NumericIdentity(peer_id), ProbePort { proto, port })
            .map(|t| {
                t.near_misses.iter().map(|m| NearMiss { policy: policy(&m.rule), reason: m.why.clone() }).collect()
            })
            .unwrap_or_else(|| Arc::from([]));
        self.near.insert(key, Arc::clone(&misses));
        misses
    }
}

/// A rule reference as a flow's policy, with the labels Cilium derives for
/// a policy's rules.
pub fn policy(r: &RuleRef) -> Policy {
    let kind = r.kind.as_str().to_string();
    let namespace = r.namespace.clone().unwrap_or_default();
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={kind}"),
        format!("k8s:io.cilium.k8s.policy.name={}", r.name),
    ];
    if !namespace.is_empty() {
        labels.push(format!("k8s:io.cilium.k8s.policy.namespace={namespace}"));
    }
    Policy { name: r.name.clone(), namespace, labels, revision: 0, kind, rule: r.rule.clone() }
}

fn layer4(ev: &RawEvent) -> Option<Layer4> {
    let ports = Ports {
        source_port: u16::from_be_bytes(ev.sport).into(),
        destination_port: u16::from_be_bytes(ev.dport).into(),
    };
    let icmp = Icmp { kind: ev.icmp_type.into(), code: ev.icmp_code.into() };
    match ev.proto {
        6 => Some(Layer4::Tcp(Tcp {
            source_port: ports.source_port,
            destination_port: ports.destination_port,
            flags: Some(TcpFlags::from_byte(ev.tcp_flags)),
        })),
        17 => Some(Layer4::Udp(ports)),
        132 => Some(Layer4::Sctp(ports)),
        1 => Some(Layer4::IcmpV4(icmp)),
        58 => Some(Layer4::IcmpV6(icmp)),
        _ => None,
    }
}

/// Cilium's policy match type from the level and the entry's coverage:
/// 1 L3 only, 2 L3+L4, 3 L4 only, 4 all, 5 L3+protocol, 6 protocol only.
fn match_type(level: u8, m: u8) -> u32 {
    let l3 = level < LEVEL_ANY;
    match (level, l3, m) {
        (255, _, _) => 0,
        (_, true, MATCH_ALL_PROTOCOLS) => 1,
        (_, true, MATCH_PROTOCOL) => 5,
        (_, true, _) => 2,
        (_, false, MATCH_ALL_PROTOCOLS) => 4,
        (_, false, MATCH_PROTOCOL) => 6,
        (_, false, _) => 3,
    }
}

/// Random (version 4) UUIDs from a generator seeded once from the kernel:
/// one `getrandom` per flow would be a system call per event.
struct Uuids([u64; 2]);

impl Uuids {
    fn new() -> Self {
        let mut seed = [0u8; 16];
        if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
            seed = (t ^ u128::from(std::process::id())).to_le_bytes();
        }
        let a = u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()) | 1;
        let b = u64::from_le_bytes(seed[8..].try_into().unwrap_or_default()) | 1;
        Self([a, b])
    }

    /// xorshift128+.
    fn word(&mut self) -> u64 {
        let (mut s1, s0) = (self.0[0], self.0[1]);
        self.0[0] = s0;
        s1 ^= s1 << 23;
        self.0[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
        self.0[1].wrapping_add(s0)
    }

    fn next(&mut self) -> String {
        let hi = (self.word() & !0xF000) | 0x4000; // version 4
        let lo = (self.word() & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xFFFF,
            hi & 0xFFFF,
            lo >> 48,
            lo & 0xFFFF_FFFF_FFFF
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let mut u = Uuids::new();
        let a = u.next();
        let b = u.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn match_types_follow_cilium() {
        use bulkhead_datapath::abi::{LEVEL_ADDRESS, LEVEL_IDENTITY, MATCH_PORT};
        assert_eq!(match_type(LEVEL_IDENTITY, MATCH_PORT), 2);
        assert_eq!(match_type(LEVEL_ADDRESS, MATCH_ALL_PROTOCOLS), 1);
        assert_eq!(match_type(LEVEL_IDENTITY, MATCH_PROTOCOL), 5);
        assert_eq!(match_type(LEVEL_ANY, MATCH_PORT), 3);
        assert_eq!(match_type(LEVEL_ANY, MATCH_ALL_PROTOCOLS), 4);
        assert_eq!(match_type(LEVEL_ANY, MATCH_PROTOCOL), 6);
        assert_eq!(match_type(255, MATCH_PORT), 0);
    }
}
