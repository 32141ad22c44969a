//! Policies compiled into one rule form, whatever kind they came from.
//!
//! CNP, CCNP, bare Cilium rules and Kubernetes NetworkPolicy all become
//! [`CompiledRule`]s: a scoped subject selector and, per direction, the
//! [`Contribution`]s it makes (peers × ports → allow/deny, with L7 rules and
//! the reference of the rule that said so). This is where namespace scoping,
//! entities, empty forms and NetworkPolicy translation are decided, once, so
//! that resolution is plain set algebra.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::{
    CidrRule, Direction, Entity, FqdnSelector, IcmpFamily, L7Rules, LabelSelector, NetworkPolicyPeer,
    NetworkPolicyRule, PeerRule, Policy, PolicyBody, PolicyKind, PortProtocol, PortSpec, Protocol, RateLimitSpec,
    RequestLimit, Rule,
};
use crate::labels::{CLUSTER_LABEL, CLUSTER_NAME, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, Source};
use crate::selector::{Req, Selector};

/// Names a rule: the policy and the field path of the rule inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleRef {
    /// The policy's kind.
    pub kind: PolicyKind,
    /// The policy's namespace (none for clusterwide kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The policy's name.
    pub name: String,
    /// The rule's path, e.g. `spec.ingress[0]` or `specs[1].egressDeny[0]`.
    pub rule: String,
}

impl RuleRef {
    /// The built-in rule that lets the local host reach its pods.
    pub fn allow_localhost() -> Self {
        Self {
            kind: PolicyKind::CiliumRules,
            namespace: None,
            name: "allow-localhost".into(),
            rule: "reserved:host ingress".into(),
        }
    }

    /// `namespace/name` (or `name`).
    pub fn policy_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.policy_name(), self.rule)
    }
}

/// Who a contribution is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PeerSel {
    /// Every peer, inside the cluster or not.
    All,
    /// `fromEndpoints`/`toEndpoints` (scoped); `fromRequires` apply to these.
    Endpoints(Selector),
    /// An entity or node rule, as a label selector over identities.
    Labels(Selector),
    /// A CIDR rule. `pods`: also matches pod addresses (NetworkPolicy ipBlock).
    Cidr {
        /// The block and its exceptions.
        rule: CidrRule,
        /// Whether pod addresses count (ipBlock) or only non-pod ones (Cilium CIDR).
        pods: bool,
    },
    /// A DNS name selector (`toFQDNs`).
    Fqdn(FqdnSelector),
}

impl fmt::Display for PeerSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all peers"),
            Self::Endpoints(s) => write!(f, "endpoints {s}"),
            Self::Labels(s) => write!(f, "{s}"),
            Self::Cidr { rule, .. } => {
                write!(f, "cidr {}", rule.cidr)?;
                if !rule.except.is_empty() {
                    let ex: Vec<String> = rule.except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", ex.join(","))?;
                }
                Ok(())
            }
            Self::Fqdn(FqdnSelector::MatchName(n)) => write!(f, "fqdn {n}"),
            Self::Fqdn(FqdnSelector::MatchPattern(p)) => write!(f, "fqdn pattern {p}"),
        }
    }
}

/// IP protocol numbers as the datapath keys them; `Any` (0) is every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Proto {
    /// Every protocol (L3-only rules); ports are not looked at.
    #[serde(rename = "ANY")]
    Any = 0,
    /// ICMP; the "port" is the ICMP type.
    #[serde(rename = "ICMP")]
    Icmp = 1,
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp = 6,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp = 17,
    /// ICMPv6; the "port" is the ICMPv6 type.
    #[serde(rename = "ICMPv6")]
    Icmpv6 = 58,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp = 132,
}

impl Proto {
    /// Name as used in `--port 80/TCP`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Any => "ANY",
            Self::Icmp => "ICMP",
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Icmpv6 => "ICMPv6",
            Self::Sctp => "SCTP",
        }
    }

    /// The protocol with this IP protocol number (none for others).
    pub fn from_number(n: u8) -> Option<Self> {
        [Self::Icmp, Self::Tcp, Self::Udp, Self::Icmpv6, Self::Sctp].into_iter().find(|p| *p as u8 == n)
    }

    /// Parses `TCP`, `udp`, `ICMPv6`, ... (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            "ICMP" => Some(Self::Icmp),
            "ICMPV6" => Some(Self::Icmpv6),
            "ANY" => Some(Self::Any),
            _ => None,
        }
    }

    /// The concrete protocols an API protocol stands for (ANY: TCP, UDP, SCTP).
    pub fn expand(p: Protocol) -> &'static [Proto] {
        match p {
            Protocol::Tcp => &[Proto::Tcp],
            Protocol::Udp => &[Proto::Udp],
            Protocol::Sctp => &[Proto::Sctp],
            Protocol::Any => &[Proto::Tcp, Proto::Udp, Proto::Sctp],
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One L4 item of a contribution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PortItem {
    /// Every protocol and port.
    All,
    /// A protocol and an inclusive port (or ICMP type) range.
    Range {
        /// Protocol.
        proto: Proto,
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
    /// A named port, resolved per endpoint (ingress) or per peer (egress).
    Named {
        /// The name (lowercase).
        name: String,
        /// Protocols it applies to.
        proto: Protocol,
    },
}

impl fmt::Display for PortItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("any port"),
            Self::Range { proto, lo, hi } if lo == hi => write!(f, "{lo}/{proto}"),
            Self::Range { proto, lo: 0, hi: 65535 } => write!(f, "any/{proto}"),
            Self::Range { proto, lo, hi } => write!(f, "{lo}-{hi}/{proto}"),
            Self::Named { name, proto } => write!(f, "{name}/{proto:?}"),
        }
    }
}

/// What one rule says about one set of peers on one set of ports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    /// The peers (ORed). Empty: nobody.
    pub peers: Vec<PeerSel>,
    /// The ports (ORed).
    pub ports: Vec<PortItem>,
    /// Deny (true) or allow.
    pub deny: bool,
    /// L7 rules for these ports (allow only).
    pub l7: Option<L7Rules>,
    /// A RateLimit's limit: the contribution neither allows nor denies;
    /// wherever these peers pass on these ports, their requests go through
    /// the L7 proxy, which holds them to it.
    pub limit: Option<RequestLimit>,
    /// The rule that made it.
    pub rule_ref: Arc<RuleRef>,
}

/// The rules of one direction of a compiled rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DirectionRules {
    /// The rule has a non-empty section in this direction (allow or deny):
    /// the direction is enforced. A RateLimit's limits do not enforce it.
    pub present: bool,
    /// `enableDefaultDeny` for this direction, if set.
    pub default_deny: Option<bool>,
    /// Allow and deny contributions.
    pub contributions: Vec<Contribution>,
    /// `fromRequires`/`toRequires` of allow sections (scoped), applied to
    /// every endpoint peer of every allow rule selecting the same endpoint.
    pub requires: Vec<Req>,
    /// The same for deny sections, applied to deny rules' endpoint peers.
    pub deny_requires: Vec<Req>,
}

/// One rule in the engine's common form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledRule {
    /// Which endpoints it applies to (scoped). `None`: a host policy
    /// (nodeSelector), which selects no pod.
    pub subject: Option<Selector>,
    /// Ingress rules.
    pub ingress: DirectionRules,
    /// Egress rules.
    pub egress: DirectionRules,
    /// The policy this rule belongs to.
    pub policy: Arc<RuleRef>,
}

impl CompiledRule {
    /// The rules of one direction.
    pub fn dir(&self, d: Direction) -> &DirectionRules {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Compiles a policy into rules.
pub fn compile(policy: &Policy) -> Vec<CompiledRule> {
    let base = RuleRef {
        kind: policy.kind,
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        rule: String::new(),
    };
    match &policy.body {
        PolicyBody::Cilium(rules) => rules.iter().map(|r| compile_cilium(r, &base)).collect(),
        PolicyBody::Kubernetes(spec) => {
            let ns = policy.namespace.as_deref();
            let subject = Selector::scope_subject(&spec.pod_selector, ns);
            let dir = |present: bool, rules: &[NetworkPolicyRule]| DirectionRules {
                present,
                default_deny: Some(true),
                contributions: if present {
                    rules.iter().map(|r| compile_np_rule(r, ns, &base)).collect()
                } else {
                    Vec::new()
                },
                requires: Vec::new(),
                deny_requires: Vec::new(),
            };
            vec![CompiledRule {
                subject: Some(subject),
                ingress: dir(spec.isolates_ingress, &spec.ingress),
                egress: dir(spec.isolates_egress, &spec.egress),
                policy: Arc::new(RuleRef { rule: "spec".into(), ..base }),
            }]
        }
        PolicyBody::RateLimit(spec) => vec![compile_rate_limit(spec, &base)],
    }
}

/// A RateLimit: limit-only ingress contributions; its endpoints' ingress
/// stays as enforced (or not) as their policies make it.
fn compile_rate_limit(spec: &RateLimitSpec, base: &RuleRef) -> CompiledRule {
    let ns = base.namespace.as_deref();
    let mut ingress = DirectionRules::default();
    for r in &spec.ingress {
        let rule_ref = Arc::new(RuleRef { rule: r.peers.path.clone(), ..base.clone() });
        for mut c in compile_peer_rule(&r.peers, false, ns, false, rule_ref) {
            c.limit = Some(r.limit);
            ingress.contributions.push(c);
        }
    }
    CompiledRule {
        subject: Some(Selector::scope_subject(&spec.endpoint_selector, ns)),
        ingress,
        egress: DirectionRules::default(),
        policy: Arc::new(RuleRef { rule: "spec".into(), ..base.clone() }),
    }
}

fn compile_cilium(rule: &Rule, base: &RuleRef) -> CompiledRule {
    let ns = base.namespace.as_deref();
    let subject = rule.endpoint_selector.as_ref().map(|s| Selector::scope_subject(s, ns));
    let subject_is_init = rule.endpoint_selector.as_ref().is_some_and(|s| {
        s.match_labels.contains_key("reserved:init") || s.match_expressions.iter().any(|e| e.key == "reserved:init")
    });
    let dir = |d: Direction, default_deny: Option<bool>| {
        let mut out = DirectionRules { default_deny, ..DirectionRules::default() };
        for deny in [false, true] {
            let Some(section) = rule.section(d, deny) else { continue };
            if !section.is_empty() {
                out.present = true;
            }
            for pr in section {
                let rule_ref = Arc::new(RuleRef { rule: pr.path.clone(), ..base.clone() });
                for r in pr.requires.iter().flatten() {
                    let reqs = Selector::scope_peer(r, ns, subject_is_init).reqs;
                    if deny { out.deny_requires.extend(reqs) } else { out.requires.extend(reqs) }
                }
                out.contributions.extend(compile_peer_rule(pr, deny, ns, subject_is_init, rule_ref));
            }
        }
        out.requires.sort();
        out.requires.dedup();
        out.deny_requires.sort();
        out.deny_requires.dedup();
        out
    };
    CompiledRule {
        subject,
        ingress: dir(Direction::Ingress, rule.default_deny_ingress),
        egress: dir(Direction::Egress, rule.default_deny_egress),
        policy: Arc::new(RuleRef { rule: rule.path.clone(), ..base.clone() }),
    }
}

/// The peers of a Cilium peer rule, per DESIGN.md §3's empty forms.
fn peers_of(pr: &PeerRule, ns: Option<&str>, subject_is_init: bool) -> Vec<PeerSel> {
    if pr.has_no_l3() {
        // toPorts/icmps alone: every peer. A rule with neither (`{}`, or only
        // fromRequires) allows nothing.
        return if pr.to_ports.is_empty() && pr.icmps.is_empty() { Vec::new() } else { vec![PeerSel::All] };
    }
    let mut peers = Vec::new();
    for s in pr.endpoints.iter().flatten() {
        peers.push(PeerSel::Endpoints(Selector::scope_peer(s, ns, subject_is_init)));
    }
    for e in pr.entities.iter().flatten() {
        peers.extend(entity_peers(*e));
    }
    for c in pr.cidrs.iter().flatten() {
        peers.push(PeerSel::Cidr { rule: c.clone(), pods: false });
    }
    for f in pr.fqdns.iter().flatten() {
        peers.push(PeerSel::Fqdn(f.clone()));
    }
    for s in pr.nodes.iter().flatten() {
        // Cilium adds `reserved:remote-node` to node selectors. No Node
        // objects (and so no node labels) are known here: an empty node
        // selector means every remote node; one with labels matches none.
        if *s == LabelSelector::default() {
            peers.push(PeerSel::Labels(Selector::reserved("remote-node")));
        }
    }
    peers.sort();
    peers.dedup();
    peers
}

/// What an entity selects (Cilium 1.17's `EntitySelectorMapping`).
pub fn entity_peers(e: Entity) -> Vec<PeerSel> {
    let r = |n: &str| PeerSel::Labels(Selector::reserved(n));
    match e {
        Entity::All => vec![PeerSel::All],
        Entity::World => vec![r("world")],
        Entity::WorldIpv4 => vec![r("world-ipv4")],
        Entity::WorldIpv6 => vec![r("world-ipv6")],
        Entity::Host => vec![r("host")],
        Entity::RemoteNode => vec![r("remote-node")],
        Entity::KubeApiserver => vec![r("kube-apiserver")],
        Entity::Health => vec![r("health")],
        Entity::Init => vec![r("init")],
        Entity::Ingress => vec![r("ingress")],
        Entity::Unmanaged => vec![r("unmanaged")],
        Entity::None => Vec::new(),
        Entity::Cluster => {
            let mut v: Vec<PeerSel> =
                ["host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"]
                    .into_iter()
                    .map(r)
                    .collect();
            v.push(PeerSel::Labels(Selector::default().with(Selector::k8s_eq(CLUSTER_LABEL, CLUSTER_NAME))));
            v
        }
    }
}

fn port_items(ports: &[PortProtocol]) -> Vec<PortItem> {
    let mut out = Vec::new();
    for p in ports {
        match &p.port {
            PortSpec::Name(name) => out.push(PortItem::Named { name: name.clone(), proto: p.protocol }),
            PortSpec::Number(n) => {
                let (lo, hi) = if *n == 0 { (0, 65535) } else { (*n, p.end_port.unwrap_or(*n)) };
                for proto in Proto::expand(p.protocol) {
                    out.push(PortItem::Range { proto: *proto, lo, hi });
                }
            }
        }
    }
    out
}

fn compile_peer_rule(
    pr: &PeerRule,
    deny: bool,
    ns: Option<&str>,
    subject_is_init: bool,
    rule_ref: Arc<RuleRef>,
) -> Vec<Contribution> {
    let peers = peers_of(pr, ns, subject_is_init);
    let mut out = Vec::new();
    if pr.to_ports.is_empty() && pr.icmps.is_empty() {
        out.push(Contribution { peers, ports: vec![PortItem::All], deny, l7: None, limit: None, rule_ref });
        return out;
    }
    for port_rule in &pr.to_ports {
        let ports = if port_rule.ports.is_empty() { vec![PortItem::All] } else { port_items(&port_rule.ports) };
        out.push(Contribution {
            peers: peers.clone(),
            ports,
            deny,
            l7: port_rule.rules.clone(),
            limit: None,
            rule_ref: rule_ref.clone(),
        });
    }
    if !pr.icmps.is_empty() {
        let ports = pr
            .icmps
            .iter()
            .map(|f| {
                let proto = if f.family == IcmpFamily::IPv4 { Proto::Icmp } else { Proto::Icmpv6 };
                PortItem::Range { proto, lo: u16::from(f.icmp_type), hi: u16::from(f.icmp_type) }
            })
            .collect();
        out.push(Contribution { peers, ports, deny, l7: None, limit: None, rule_ref });
    }
    out
}

/// A NetworkPolicy namespaceSelector as requirements on namespace labels.
fn namespace_reqs(sel: &LabelSelector) -> Vec<Req> {
    let s = Selector::from_api(sel);
    if s.reqs.is_empty() {
        return vec![Selector::k8s_exists(NAMESPACE_LABEL)];
    }
    s.reqs
        .into_iter()
        .map(|r| Req { source: Source::K8s, key: format!("{NAMESPACE_LABELS_PREFIX}{}", r.key), ..r })
        .collect()
}

fn compile_np_rule(r: &NetworkPolicyRule, ns: Option<&str>, base: &RuleRef) -> Contribution {
    let rule_ref = Arc::new(RuleRef { rule: r.path.clone(), ..base.clone() });
    let mut peers = Vec::new();
    if r.peers.is_empty() {
        peers.push(PeerSel::All);
    }
    for p in &r.peers {
        match p {
            NetworkPolicyPeer::IpBlock(block) => peers.push(PeerSel::Cidr { rule: block.clone(), pods: true }),
            NetworkPolicyPeer::Pods { pod_selector, namespace_selector } => {
                let mut s = pod_selector.as_ref().map(Selector::from_api).unwrap_or_default();
                // A pod selector's own namespace requirement is replaced: the
                // namespace comes from namespaceSelector or the policy.
                s.reqs.retain(|q| q.key != NAMESPACE_LABEL);
                match namespace_selector {
                    Some(nsel) => {
                        for q in namespace_reqs(nsel) {
                            s = s.with(q);
                        }
                    }
                    None => s = s.with(Selector::k8s_eq(NAMESPACE_LABEL, ns.unwrap_or("default"))),
                }
                peers.push(PeerSel::Endpoints(s));
            }
        }
    }
    let ports = if r.ports.is_empty() { vec![PortItem::All] } else { port_items(&r.ports) };
    Contribution { peers, ports, deny: false, l7: None, limit: None, rule_ref }
}

/// Compiled rules of all policies, keyed by policy.
#[derive(Debug, Clone, Default)]
pub struct Repository {
    /// Rules of each policy, by (kind, namespace, name).
    pub policies: BTreeMap<PolicyId, Vec<CompiledRule>>,
}

/// Identifies a policy object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyId {
    /// Kind.
    pub kind: PolicyKind,
    /// Namespace (None for clusterwide kinds).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl PolicyId {
    /// The id of a policy.
    pub fn of(p: &Policy) -> Self {
        Self { kind: p.kind, namespace: p.namespace.clone(), name: p.name.clone() }
    }
}

#[cfg(test)]
mod tests;
