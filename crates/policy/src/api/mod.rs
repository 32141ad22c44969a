//! Typed, validated policy and cluster objects.
//!
//! The shapes follow Cilium's `api.Rule` and Kubernetes' `NetworkPolicy`, but
//! already normalised: ports are numbers or names, protocols are enums,
//! prefixes are parsed. [`decode`] builds them from documents and reports every
//! problem it finds; an object with errors is not returned.

pub mod decode;
pub mod l7;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
pub use l7::{FqdnSelector, HeaderMatch, HttpRule, KafkaRole, KafkaRule, L7Rules, MismatchAction};

/// The kinds of policy object bulkhead reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `cilium.io/v2` CiliumNetworkPolicy (namespaced).
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// A bare list of Cilium rules (the `cilium policy import` JSON form).
    CiliumRules,
    /// `bulkhead.io/v1alpha1` RateLimit (namespaced): request rate and
    /// concurrency limits the L7 proxy enforces.
    RateLimit,
}

impl PolicyKind {
    /// Short name used in flows and tables (Hubble's `kind` values).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::CiliumRules => "CiliumRules",
            Self::RateLimit => "RateLimit",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an object came from: file and position of its first line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line of the object's start.
    pub line: usize,
}

/// A policy object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Which kind.
    pub kind: PolicyKind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (after defaulting for namespaced kinds); `None`
    /// for clusterwide kinds.
    pub namespace: Option<String>,
    /// Where it was read from.
    pub origin: Origin,
    /// The rules.
    pub body: PolicyBody,
}

impl Policy {
    /// `namespace/name` or `name`.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What a policy says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PolicyBody {
    /// Cilium rules (`spec` first, then `specs[]`).
    Cilium(Vec<Rule>),
    /// A Kubernetes NetworkPolicy spec.
    Kubernetes(NetworkPolicySpec),
    /// A RateLimit spec.
    RateLimit(RateLimitSpec),
}

/// A RateLimit's `spec`: limits on the requests the selected endpoints
/// accept, per source identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// `endpointSelector`: the endpoints whose ingress is limited.
    pub endpoint_selector: LabelSelector,
    /// `ingress`: one limit per entry.
    pub ingress: Vec<RateLimitRule>,
}

/// One `ingress[]` entry of a RateLimit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitRule {
    /// The peers (`fromEndpoints` / `fromEntities`; neither: every peer)
    /// and the ports (`toPorts`, TCP) it limits, as in a Cilium rule; no
    /// L7 rules. `path` is the entry's field path.
    pub peers: PeerRule,
    /// The limit.
    pub limit: RequestLimit,
}

/// How many requests a source identity may send one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLimit {
    /// `requestsPerSecond`: the sustained rate (a token bucket's refill).
    pub requests_per_second: Option<u32>,
    /// `burst`: requests that may arrive at once (the bucket's size);
    /// defaults to `requestsPerSecond`.
    pub burst: Option<u32>,
    /// `maxConcurrentRequests`: requests in flight at once (sent to the
    /// server, response not yet complete).
    pub max_concurrent_requests: Option<u32>,
}

impl RequestLimit {
    /// The bucket size: `burst`, else one second's worth.
    pub fn bucket(&self) -> Option<u32> {
        self.requests_per_second.map(|r| self.burst.unwrap_or(r))
    }
}

impl fmt::Display for RequestLimit {
    /// `50 requests/s, burst 100, 4 concurrent`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let (Some(r), Some(b)) = (self.requests_per_second, self.bucket()) {
            parts.push(format!("{r} requests/s, burst {b}"));
        }
        if let Some(c) = self.max_concurrent_requests {
            parts.push(format!("{c} concurrent"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// `bulkhead.io/v1alpha1 Guardrails` (cluster-wide): an organisation's
/// rules for the policies themselves, checked by `policy lint
/// --guardrails`, the agent's `apply` and `bulkhead webhook` with one code
/// path ([`crate::lint::guardrails`]). Not a policy: it is read from its own
/// file, never applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guardrails {
    /// `metadata.name`.
    pub name: String,
    /// Where it was read from.
    pub origin: Origin,
    /// The rules.
    pub spec: GuardrailsSpec,
}

/// What a [`Guardrails`] requires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailsSpec {
    /// `forbidIngressFromWorld.exceptNamespaces`: no ingress allow from
    /// outside the cluster (`world`, `all`, a CIDR, a rule naming no peer)
    /// except in these namespaces. `None`: not required.
    pub forbid_ingress_from_world: Option<Vec<String>>,
    /// `requireDefaultDeny`: every namespace with pods isolates each of
    /// them both ways.
    pub require_default_deny: bool,
    /// `forbidEntityAll`: no allow names the entity `all`.
    pub forbid_entity_all: bool,
    /// `minCIDRPrefixLength.ipv4`: allowed IPv4 prefixes are at least this long.
    pub min_prefix_ipv4: Option<u8>,
    /// `minCIDRPrefixLength.ipv6`: the same for IPv6.
    pub min_prefix_ipv6: Option<u8>,
    /// `requireL7`: an allow on one of these ports carries L7 rules.
    pub require_l7: Vec<(Protocol, u16)>,
}

/// A label selector as written (`matchLabels` + `matchExpressions`). Keys keep
/// their optional source prefix (`k8s:app`); [`crate::selector`] interprets them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// `matchLabels`, in key order.
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`.
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    /// The label key (with optional source prefix).
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// Values for In/NotIn.
    pub values: Vec<String>,
}

/// Selector operators (case-sensitive, as Kubernetes defines them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is not one of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Traffic direction, from the selected endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic arriving at the endpoint.
    Ingress,
    /// Traffic leaving the endpoint.
    Egress,
}

impl Direction {
    /// Both directions, ingress first.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// `ingress` / `egress`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Cilium rule (an element of `specs`, or `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Field path of this rule in its object (`spec`, `specs[1]`, `[0]`).
    pub path: String,
    /// `endpointSelector`.
    pub endpoint_selector: Option<LabelSelector>,
    /// `nodeSelector` (host policies; CCNP only).
    pub node_selector: Option<LabelSelector>,
    /// `ingress`; `None` when absent.
    pub ingress: Option<Vec<PeerRule>>,
    /// `ingressDeny`.
    pub ingress_deny: Option<Vec<PeerRule>>,
    /// `egress`.
    pub egress: Option<Vec<PeerRule>>,
    /// `egressDeny`.
    pub egress_deny: Option<Vec<PeerRule>>,
    /// `enableDefaultDeny.ingress`.
    pub default_deny_ingress: Option<bool>,
    /// `enableDefaultDeny.egress`.
    pub default_deny_egress: Option<bool>,
    /// `description`.
    pub description: Option<String>,
}

impl Rule {
    /// The allow or deny sections of one direction.
    pub fn section(&self, dir: Direction, deny: bool) -> Option<&Vec<PeerRule>> {
        match (dir, deny) {
            (Direction::Ingress, false) => self.ingress.as_ref(),
            (Direction::Ingress, true) => self.ingress_deny.as_ref(),
            (Direction::Egress, false) => self.egress.as_ref(),
            (Direction::Egress, true) => self.egress_deny.as_ref(),
        }
    }
}

/// Reserved entities (`fromEntities` / `toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything.
    All,
    /// Outside the cluster.
    World,
    /// IPv4 outside the cluster.
    WorldIpv4,
    /// IPv6 outside the cluster.
    WorldIpv6,
    /// Everything in the cluster.
    Cluster,
    /// The local node.
    Host,
    /// Other nodes.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// Cilium's health endpoints.
    Health,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// The ingress proxy.
    Ingress,
    /// Pods not managed by the agent.
    Unmanaged,
    /// Nothing.
    None,
}

impl Entity {
    /// Every entity with its YAML name.
    pub const ALL: [(Entity, &'static str); 13] = [
        (Entity::All, "all"),
        (Entity::World, "world"),
        (Entity::WorldIpv4, "world-ipv4"),
        (Entity::WorldIpv6, "world-ipv6"),
        (Entity::Cluster, "cluster"),
        (Entity::Host, "host"),
        (Entity::RemoteNode, "remote-node"),
        (Entity::KubeApiserver, "kube-apiserver"),
        (Entity::Health, "health"),
        (Entity::Init, "init"),
        (Entity::Ingress, "ingress"),
        (Entity::Unmanaged, "unmanaged"),
        (Entity::None, "none"),
    ];

    /// The YAML name.
    pub fn as_str(&self) -> &'static str {
        Self::ALL.iter().find(|(e, _)| e == self).map(|(_, n)| *n).unwrap_or("none")
    }
}

/// A CIDR with exceptions (`toCIDRSet[]`, NetworkPolicy `ipBlock`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CidrRule {
    /// The block.
    pub cidr: Cidr,
    /// Sub-blocks excluded from it.
    pub except: Vec<Cidr>,
}

impl CidrRule {
    /// Whether `ip` is in the block and in none of the exceptions.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.cidr.contains_ip(ip) && !self.except.iter().any(|e| e.contains_ip(ip))
    }
}

/// One ingress or egress rule (allow or deny). `from*`/`to*` fields share one
/// shape; the direction is known from the section it sits in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRule {
    /// Field path (`spec.ingress[0]`), for references and explanations.
    pub path: String,
    /// `fromEndpoints`/`toEndpoints`; `Some(vec![])` selects nothing.
    pub endpoints: Option<Vec<LabelSelector>>,
    /// `fromRequires`/`toRequires`.
    pub requires: Option<Vec<LabelSelector>>,
    /// `fromCIDR`/`toCIDR` and `fromCIDRSet`/`toCIDRSet`, merged.
    pub cidrs: Option<Vec<CidrRule>>,
    /// `fromEntities`/`toEntities`.
    pub entities: Option<Vec<Entity>>,
    /// `fromNodes`/`toNodes`.
    pub nodes: Option<Vec<LabelSelector>>,
    /// `toFQDNs` (egress only).
    pub fqdns: Option<Vec<FqdnSelector>>,
    /// `toServices` (kept for display; needs Service objects to resolve).
    pub services: Option<Vec<String>>,
    /// `fromGroups`/`toGroups` (cloud provider groups; not resolvable here).
    pub groups: bool,
    /// `toPorts`.
    pub to_ports: Vec<PortRule>,
    /// `icmps`.
    pub icmps: Vec<IcmpField>,
}

impl PeerRule {
    /// True when the rule names no L3 peer at all (then it applies to every
    /// peer, provided it has ports or ICMP types).
    pub fn has_no_l3(&self) -> bool {
        self.endpoints.is_none()
            && self.cidrs.is_none()
            && self.entities.is_none()
            && self.nodes.is_none()
            && self.fqdns.is_none()
            && self.services.is_none()
            && !self.groups
    }
}

/// L4 protocols a port rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
    /// TCP, UDP and SCTP.
    #[serde(rename = "ANY")]
    Any,
}

impl Protocol {
    /// As policies spell it: `TCP`, `UDP`, `SCTP`, `ANY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Any => "ANY",
        }
    }
}

/// A port as written: a number (0 = all), or a container port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// A number; 0 means every port.
    Number(u16),
    /// A named container port (lowercased).
    Name(String),
}

/// One `ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    /// `port`.
    pub port: PortSpec,
    /// `endPort` (range end, inclusive).
    pub end_port: Option<u16>,
    /// `protocol`.
    pub protocol: Protocol,
}

/// One `toPorts[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// `ports`; empty means every port of every protocol.
    pub ports: Vec<PortProtocol>,
    /// `rules` (and `serverNames`, as [`L7Rules::Tls`]).
    pub rules: Option<L7Rules>,
}

/// ICMP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IcmpFamily {
    /// ICMP for IPv4.
    IPv4,
    /// ICMPv6.
    IPv6,
}

/// One `icmps[].fields[]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IcmpField {
    /// Address family.
    pub family: IcmpFamily,
    /// ICMP type number.
    pub icmp_type: u8,
}

/// A Kubernetes NetworkPolicy spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// `podSelector`.
    pub pod_selector: LabelSelector,
    /// `ingress`.
    pub ingress: Vec<NetworkPolicyRule>,
    /// `egress`.
    pub egress: Vec<NetworkPolicyRule>,
    /// Whether the policy isolates ingress (from `policyTypes` or its default).
    pub isolates_ingress: bool,
    /// Whether the policy isolates egress.
    pub isolates_egress: bool,
}

/// One NetworkPolicy ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkPolicyRule {
    /// Field path (`spec.ingress[0]`).
    pub path: String,
    /// `from`/`to`; `None` or empty means every peer.
    pub peers: Vec<NetworkPolicyPeer>,
    /// `ports`; empty means every port.
    pub ports: Vec<PortProtocol>,
}

/// One NetworkPolicy peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPolicyPeer {
    /// `podSelector` and/or `namespaceSelector`.
    Pods {
        /// `podSelector` (absent = every pod of the selected namespaces).
        pod_selector: Option<LabelSelector>,
        /// `namespaceSelector` (absent = the policy's namespace).
        namespace_selector: Option<LabelSelector>,
    },
    /// `ipBlock`.
    IpBlock(CidrRule),
}

/// A namespace of the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels` (with `kubernetes.io/metadata.name` added).
    pub labels: BTreeMap<String, String>,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    /// `name` (lowercase IANA service name).
    pub name: String,
    /// `containerPort`.
    pub port: u16,
    /// `protocol` (TCP when omitted).
    pub protocol: Protocol,
}

/// A pod of the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `metadata.namespace` (default `default`).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (default `default`).
    pub service_account: String,
    /// `status.podIPs` / `status.podIP`.
    pub ips: Vec<IpAddr>,
    /// Every container's `ports` (all ports, named or not).
    pub ports: Vec<NamedPort>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Anything a document can hold that bulkhead uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Object {
    /// A policy.
    Policy(Policy),
    /// A namespace.
    Namespace(Namespace),
    /// A pod.
    Pod(Pod),
}
