//! Flow filters with Hubble's semantics: a [`FlowFilter`] matches when
//! every field it sets matches (a field matches when any of its values
//! does); [`Filters`] matches when any allow filter matches (or there are
//! none) and no deny filter does, inside an optional time window.
//!
//! The filter travels as JSON (the CLI builds it, the agent or the offline
//! reader applies it) in the shape of Hubble's `FlowFilter`; [`Filters::compile`]
//! checks and compiles it once (regexes, CIDRs, label selectors), so that
//! matching a flow does no parsing and no allocation.

use std::net::IpAddr;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::{
    DropReason, Flow, IpVersion, Layer4, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict, event_types,
};
use crate::selector::{LabelSelector, SelectorError};
use crate::time::Timestamp;

/// An event type to match, as Hubble's `EventTypeFilter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventTypeFilter {
    /// The monitor message type ([`event_types`]).
    #[serde(rename = "type")]
    pub kind: i32,
    /// Whether `sub_type` must match too.
    pub match_sub_type: bool,
    /// The sub-type (a trace observation point, a drop reason).
    pub sub_type: i32,
}

impl EventTypeFilter {
    /// `drop`, `trace`, `policy-verdict`, `l7`, or `trace:to-endpoint`
    /// style sub-types.
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::Field {
            field: "type",
            value: s.to_string(),
            why: "expected drop, trace, policy-verdict, l7, capture, debug or agent, optionally trace:to-endpoint…"
                .into(),
        };
        let (kind, sub) = match s.split_once(':') {
            Some((k, sub)) => (k, Some(sub)),
            None => (s, None),
        };
        let kind = event_types::from_name(&kind.to_ascii_lowercase()).ok_or_else(bad)?;
        let sub_type = match sub {
            None => None,
            Some(sub) if kind == event_types::TRACE => {
                let point = TraceObservationPoint::from_name(&sub.replace('-', "_"));
                Some(point.and_then(TraceObservationPoint::monitor_sub_type).ok_or_else(bad)?)
            }
            Some(sub) if kind == event_types::DROP => {
                Some(i32::try_from(DropReason::from_name(sub).ok_or_else(bad)?.0).map_err(|_| bad())?)
            }
            Some(sub) => Some(sub.parse().map_err(|_| bad())?),
        };
        Ok(Self { kind, match_sub_type: sub_type.is_some(), sub_type: sub_type.unwrap_or(0) })
    }
}

/// One filter: every field set must match; within a field, any value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowFilter {
    /// Flow ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uuid: Vec<String>,
    /// Source addresses or CIDRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ip: Vec<String>,
    /// Source pods: `namespace/`, `namespace/name-prefix`, or `name-prefix`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_pod: Vec<String>,
    /// Source DNS names (`*` matches within a label).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_fqdn: Vec<String>,
    /// Source label selectors (`app=x,env in (a,b)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_label: Vec<String>,
    /// Destination addresses or CIDRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ip: Vec<String>,
    /// Destination pods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_pod: Vec<String>,
    /// Destination DNS names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_fqdn: Vec<String>,
    /// Destination label selectors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_label: Vec<String>,
    /// Traffic directions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic_direction: Vec<TrafficDirection>,
    /// Verdicts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict: Vec<Verdict>,
    /// Drop reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop_reason_desc: Vec<DropReason>,
    /// Event types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub event_type: Vec<EventTypeFilter>,
    /// HTTP status codes: `404`, or `4+` for a class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_status_code: Vec<String>,
    /// Protocols: `tcp`, `udp`, `sctp`, `icmp`, `icmpv4`, `icmpv6`, `http`, `dns`, `kafka`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocol: Vec<String>,
    /// Source ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_port: Vec<String>,
    /// Destination ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_port: Vec<String>,
    /// Replies (true) or not (false).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reply: Vec<bool>,
    /// DNS query regexes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_query: Vec<String>,
    /// Source identities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_identity: Vec<u32>,
    /// Destination identities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_identity: Vec<u32>,
    /// HTTP methods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_method: Vec<String>,
    /// HTTP path regexes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_path: Vec<String>,
    /// TCP flag sets: a flow matches one when it has all of its flags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_flags: Vec<TcpFlags>,
    /// Node name patterns (`*` wildcards).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_name: Vec<String>,
    /// IP versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_version: Vec<IpVersion>,
}

/// Allow and deny filters and a time window: what `observe` asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filters {
    /// A flow must match one of these (none: every flow does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<FlowFilter>,
    /// A flow must match none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<FlowFilter>,
    /// Flows at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Flows before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

/// A filter that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A value that does not parse for its field.
    #[error("{field} `{value}`: {why}")]
    Field {
        /// The filter field (`source_ip`, `http_path`, …).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and what would be right.
        why: String,
    },
    /// A label selector that does not parse.
    #[error("label selector: {0}")]
    Selector(#[from] SelectorError),
}

#[derive(Debug, Clone)]
enum IpMatch {
    Exact(IpAddr),
    Cidr(IpAddr, u8),
}

impl IpMatch {
    fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let bad = |why: &str| FilterError::Field { field, value: s.to_string(), why: why.into() };
        match s.split_once('/') {
            None => s.parse().map(Self::Exact).map_err(|_| bad("not an IP address or CIDR (198.18.0.0/15)")),
            Some((a, len)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address or CIDR (198.18.0.0/15)"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let len: u8 =
                    len.parse().ok().filter(|l| *l <= max).ok_or_else(|| bad("the prefix length is out of range"))?;
                Ok(Self::Cidr(addr, len))
            }
        }
    }

    fn matches(&self, ip: IpAddr) -> bool {
        match *self {
            Self::Exact(a) => a == ip,
            Self::Cidr(net, len) => match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(i)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    u32::from(n) & mask == u32::from(i) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(i)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    u128::from(n) & mask == u128::from(i) & mask
                }
                _ => false,
            },
        }
    }
}

#[derive(Debug, Clone)]
struct PodMatch {
    namespace: Option<String>,
    prefix: String,
}

impl PodMatch {
    fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((ns, p)) => Self { namespace: Some(ns.to_string()), prefix: p.to_string() },
            None => Self { namespace: None, prefix: s.to_string() },
        }
    }

    fn matches(&self, namespace: &str, pod: &str) -> bool {
        if pod.is_empty() && !self.prefix.is_empty() {
            return false;
        }
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && pod.starts_with(&self.prefix)
    }
}

#[derive(Debug, Clone, Copy)]
enum StatusMatch {
    Exact(u32),
    Class(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    IcmpV4,
    IcmpV6,
    Http,
    Dns,
    Kafka,
}

/// A [`FlowFilter`] ready to match.
#[derive(Debug, Clone, Default)]
struct Compiled {
    uuid: Vec<String>,
    source_ip: Vec<IpMatch>,
    destination_ip: Vec<IpMatch>,
    source_pod: Vec<PodMatch>,
    destination_pod: Vec<PodMatch>,
    source_fqdn: Vec<Regex>,
    destination_fqdn: Vec<Regex>,
    source_label: Vec<LabelSelector>,
    destination_label: Vec<LabelSelector>,
    traffic_direction: Vec<TrafficDirection>,
    verdict: Vec<Verdict>,
    drop_reason: Vec<DropReason>,
    event_type: Vec<EventTypeFilter>,
    http_status: Vec<StatusMatch>,
    protocol: Vec<Protocol>,
    source_port: Vec<u32>,
    destination_port: Vec<u32>,
    reply: Vec<bool>,
    dns_query: Vec<Regex>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    http_method: Vec<String>,
    http_path: Vec<Regex>,
    tcp_flags: Vec<TcpFlags>,
    node_name: Vec<Regex>,
    ip_version: Vec<IpVersion>,
}

/// `*` matches within one DNS label (or one node-name part); the rest is literal.
fn glob(field: &'static str, pattern: &str, sep: char) -> Result<Regex, FilterError> {
    let mut re = String::from("(?i)^");
    for (i, part) in pattern.split('*').enumerate() {
        if i > 0 {
            re.push_str(&format!("[^{}]*", regex::escape(&sep.to_string())));
        }
        re.push_str(&regex::escape(part));
    }
    re.push('$');
    Regex::new(&re).map_err(|e| FilterError::Field { field, value: pattern.into(), why: e.to_string() })
}

fn regex(field: &'static str, s: &str) -> Result<Regex, FilterError> {
    regex::RegexBuilder::new(s).size_limit(1 << 20).build().map_err(|e| FilterError::Field {
        field,
        value: s.into(),
        why: format!("not a regular expression: {e}"),
    })
}

fn port(field: &'static str, s: &str) -> Result<u32, FilterError> {
    s.parse::<u16>().map(u32::from).map_err(|_| FilterError::Field {
        field,
        value: s.into(),
        why: "a port is a number from 0 to 65535".into(),
    })
}

fn all<T, U>(v: &[T], f: impl Fn(&T) -> Result<U, FilterError>) -> Result<Vec<U>, FilterError> {
    v.iter().map(f).collect()
}

impl FlowFilter {
    fn compile(&self) -> Result<Compiled, FilterError> {
        Ok(Compiled {
            uuid: self.uuid.clone(),
            source_ip: all(&self.source_ip, |s| IpMatch::parse("source_ip", s))?,
            destination_ip: all(&self.destination_ip, |s| IpMatch::parse("destination_ip", s))?,
            source_pod: self.source_pod.iter().map(|s| PodMatch::parse(s)).collect(),
            destination_pod: self.destination_pod.iter().map(|s| PodMatch::parse(s)).collect(),
            source_fqdn: all(&self.source_fqdn, |s| glob("source_fqdn", s.trim_end_matches('.'), '.'))?,
            destination_fqdn: all(&self.destination_fqdn, |s| glob("destination_fqdn", s.trim_end_matches('.'), '.'))?,
            source_label: all(&self.source_label, |s| Ok(LabelSelector::parse(s)?))?,
            destination_label: all(&self.destination_label, |s| Ok(LabelSelector::parse(s)?))?,
            traffic_direction: self.traffic_direction.clone(),
            verdict: self.verdict.clone(),
            drop_reason: self.drop_reason_desc.clone(),
            event_type: self.event_type.clone(),
            http_status: all(&self.http_status_code, |s| {
                let bad = || FilterError::Field {
                    field: "http_status_code",
                    value: s.clone(),
                    why: "expected a code (404) or a class (4+)".into(),
                };
                match s.strip_suffix('+') {
                    Some(c) if c.len() == 1 => c.parse().map(StatusMatch::Class).map_err(|_| bad()),
                    Some(_) => Err(bad()),
                    None => s.parse().ok().filter(|c| (100..600).contains(c)).map(StatusMatch::Exact).ok_or_else(bad),
                }
            })?,
            protocol: all(&self.protocol, |s| {
                Ok(match s.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "sctp" => Protocol::Sctp,
                    "icmp" => Protocol::Icmp,
                    "icmpv4" => Protocol::IcmpV4,
                    "icmpv6" => Protocol::IcmpV6,
                    "http" => Protocol::Http,
                    "dns" => Protocol::Dns,
                    "kafka" => Protocol::Kafka,
                    _ => {
                        return Err(FilterError::Field {
                            field: "protocol",
                            value: s.clone(),
                            why: "expected tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns or kafka".into(),
                        });
                    }
                })
            })?,
            source_port: all(&self.source_port, |s| port("source_port", s))?,
            destination_port: all(&self.destination_port, |s| port("destination_port", s))?,
            reply: self.reply.clone(),
            dns_query: all(&self.dns_query, |s| regex("dns_query", s))?,
            source_identity: self.source_identity.clone(),
            destination_identity: self.destination_identity.clone(),
            http_method: self.http_method.iter().map(|m| m.to_ascii_uppercase()).collect(),
            http_path: all(&self.http_path, |s| regex("http_path", s))?,
            tcp_flags: self.tcp_flags.clone(),
            node_name: all(&self.node_name, |s| glob("node_name", s, '/'))?,
            ip_version: self.ip_version.clone(),
        })
    }
}

/// Whether any of `wanted` holds; an empty list holds.
fn any<T>(wanted: &[T], f: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(f)
}

fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r.find('/').map_or("", |i| &r[i..]));
    rest.split(['?', '#']).next().unwrap_or(rest)
}

fn flags_contain(have: TcpFlags, want: &TcpFlags) -> bool {
    (!want.fin || have.fin)
        && (!want.syn || have.syn)
        && (!want.rst || have.rst)
        && (!want.psh || have.psh)
        && (!want.ack || have.ack)
        && (!want.urg || have.urg)
        && (!want.ece || have.ece)
        && (!want.cwr || have.cwr)
        && (!want.ns || have.ns)
}

impl Compiled {
    fn matches(&self, f: &Flow) -> bool {
        let ip = f.ip.as_ref();
        let http = f.l7.as_ref().and_then(|l| l.http.as_ref());
        let dns = f.l7.as_ref().and_then(|l| l.dns.as_ref());
        let ports = f.ports();
        any(&self.uuid, |u| *u == f.uuid)
            && any(&self.verdict, |v| *v == f.verdict)
            && any(&self.drop_reason, |r| *r == f.drop_reason_desc)
            && any(&self.traffic_direction, |d| *d == f.traffic_direction)
            && any(&self.event_type, |e| {
                e.kind == f.event_kind()
                    && (!e.match_sub_type || f.event_type.is_some_and(|t| t.sub_type == e.sub_type))
            })
            && any(&self.reply, |r| *r == f.is_reply.unwrap_or(false))
            && any(&self.ip_version, |v| ip.is_some_and(|i| i.ip_version == *v))
            && any(&self.source_ip, |m| ip.is_some_and(|i| m.matches(i.source)))
            && any(&self.destination_ip, |m| ip.is_some_and(|i| m.matches(i.destination)))
            && any(&self.source_identity, |i| *i == f.source.identity)
            && any(&self.destination_identity, |i| *i == f.destination.identity)
            && any(&self.source_pod, |m| m.matches(&f.source.namespace, &f.source.pod_name))
            && any(&self.destination_pod, |m| m.matches(&f.destination.namespace, &f.destination.pod_name))
            && any(&self.source_port, |p| ports.is_some_and(|(s, _)| s == *p))
            && any(&self.destination_port, |p| ports.is_some_and(|(_, d)| d == *p))
            && any(&self.protocol, |p| match p {
                Protocol::Tcp => matches!(f.l4, Some(Layer4::Tcp(_))),
                Protocol::Udp => matches!(f.l4, Some(Layer4::Udp(_))),
                Protocol::Sctp => matches!(f.l4, Some(Layer4::Sctp(_))),
                Protocol::Icmp => matches!(f.l4, Some(Layer4::IcmpV4(_) | Layer4::IcmpV6(_))),
                Protocol::IcmpV4 => matches!(f.l4, Some(Layer4::IcmpV4(_))),
                Protocol::IcmpV6 => matches!(f.l4, Some(Layer4::IcmpV6(_))),
                Protocol::Http => http.is_some(),
                Protocol::Dns => dns.is_some(),
                Protocol::Kafka => f.l7.as_ref().is_some_and(|l| l.kafka.is_some()),
            })
            && any(&self.tcp_flags, |want| match &f.l4 {
                Some(Layer4::Tcp(t)) => flags_contain(t.flags.unwrap_or_default(), want),
                _ => false,
            })
            && any(&self.source_label, |s| s.matches(&f.source.labels))
            && any(&self.destination_label, |s| s.matches(&f.destination.labels))
            && any(&self.source_fqdn, |re| f.source_names.iter().any(|n| re.is_match(n.trim_end_matches('.'))))
            && any(&self.destination_fqdn, |re| {
                f.destination_names.iter().any(|n| re.is_match(n.trim_end_matches('.')))
                    || dns.is_some_and(|d| re.is_match(d.query.trim_end_matches('.')))
            })
            && any(&self.dns_query, |re| dns.is_some_and(|d| re.is_match(&d.query)))
            && any(&self.http_status, |s| {
                http.is_some_and(|h| match *s {
                    StatusMatch::Exact(c) => h.code == c,
                    StatusMatch::Class(c) => h.code / 100 == c,
                })
            })
            && any(&self.http_method, |m| http.is_some_and(|h| h.method.eq_ignore_ascii_case(m)))
            && any(&self.http_path, |re| http.is_some_and(|h| re.is_match(url_path(&h.url))))
            && any(&self.node_name, |re| re.is_match(&f.node_name))
    }
}

/// [`Filters`], compiled.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    allow: Vec<Compiled>,
    deny: Vec<Compiled>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
}

impl Filters {
    /// Checks every value and compiles the filters.
    pub fn compile(&self) -> Result<Matcher, FilterError> {
        Ok(Matcher {
            allow: self.allow.iter().map(FlowFilter::compile).collect::<Result<_, _>>()?,
            deny: self.deny.iter().map(FlowFilter::compile).collect::<Result<_, _>>()?,
            since: self.since,
            until: self.until,
        })
    }
}

impl Matcher {
    /// Whether `f` passes.
    pub fn matches(&self, f: &Flow) -> bool {
        self.since.is_none_or(|t| f.time >= t)
            && self.until.is_none_or(|t| f.time < t)
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.matches(f)))
            && !self.deny.iter().any(|c| c.matches(f))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Endpoint, EventType, Http, Ip, Layer7, Ports, Tcp};

    fn flow() -> Flow {
        Flow {
            time: Timestamp::from_nanos(2_000),
            verdict: Verdict::Dropped,
            drop_reason_desc: DropReason::POLICY_DENIED,
            ip: Some(Ip {
                source: "198.18.3.10".parse().expect("ip"),
                destination: "fd00:b::1:20".parse().expect("ip"),
                ip_version: IpVersion::V6,
                encrypted: false,
            }),
            l4: Some(Layer4::Tcp(Tcp {
                source_port: 40000,
                destination_port: 8080,
                flags: Some(TcpFlags::from_byte(0x12)),
            })),
            source: Arc::new(Endpoint {
                identity: 260,
                namespace: "staging".into(),
                pod_name: "debug-tools".into(),
                labels: vec!["k8s:app=debug-tools".into(), "k8s:io.kubernetes.pod.namespace=staging".into()],
                ..Endpoint::default()
            }),
            destination: Arc::new(Endpoint {
                identity: 257,
                namespace: "production".into(),
                pod_name: "backend-7d4f".into(),
                labels: vec!["k8s:app=backend".into(), "k8s:tier=api".into()],
                ..Endpoint::default()
            }),
            event_type: Some(EventType { kind: event_types::DROP, sub_type: 133 }),
            traffic_direction: TrafficDirection::Ingress,
            node_name: "lab/node".into(),
            ..Flow::default()
        }
    }

    fn one(f: FlowFilter) -> Matcher {
        Filters { allow: vec![f], ..Filters::default() }.compile().expect("compiles")
    }

    #[test]
    fn each_field_matches_and_mismatches() {
        let f = flow();
        let cases: Vec<(FlowFilter, bool)> = vec![
            (FlowFilter { verdict: vec![Verdict::Dropped], ..Default::default() }, true),
            (FlowFilter { verdict: vec![Verdict::Forwarded], ..Default::default() }, false),
            (FlowFilter { verdict: vec![Verdict::Forwarded, Verdict::Dropped], ..Default::default() }, true),
            (FlowFilter { source_pod: vec!["staging/".into()], ..Default::default() }, true),
            (FlowFilter { source_pod: vec!["staging/debug".into()], ..Default::default() }, true),
            (FlowFilter { source_pod: vec!["debug".into()], ..Default::default() }, true),
            (FlowFilter { source_pod: vec!["production/".into()], ..Default::default() }, false),
            (FlowFilter { destination_pod: vec!["production/backend".into()], ..Default::default() }, true),
            (FlowFilter { source_ip: vec!["198.18.0.0/15".into()], ..Default::default() }, true),
            (FlowFilter { source_ip: vec!["198.18.3.11".into()], ..Default::default() }, false),
            (FlowFilter { destination_ip: vec!["fd00:b::/64".into()], ..Default::default() }, true),
            (
                FlowFilter { destination_label: vec!["app=backend,tier in (api,web)".into()], ..Default::default() },
                true,
            ),
            (FlowFilter { destination_label: vec!["k8s:app=backend,!tier".into()], ..Default::default() }, false),
            (FlowFilter { source_label: vec!["app!=backend".into()], ..Default::default() }, true),
            (FlowFilter { destination_port: vec!["8080".into()], ..Default::default() }, true),
            (FlowFilter { source_port: vec!["8080".into()], ..Default::default() }, false),
            (FlowFilter { protocol: vec!["TCP".into()], ..Default::default() }, true),
            (FlowFilter { protocol: vec!["udp".into(), "http".into()], ..Default::default() }, false),
            (FlowFilter { source_identity: vec![260], ..Default::default() }, true),
            (FlowFilter { destination_identity: vec![260], ..Default::default() }, false),
            (
                FlowFilter { event_type: vec![EventTypeFilter::parse("drop").expect("type")], ..Default::default() },
                true,
            ),
            (
                FlowFilter { event_type: vec![EventTypeFilter::parse("drop:133").expect("t")], ..Default::default() },
                true,
            ),
            (
                FlowFilter { event_type: vec![EventTypeFilter::parse("drop:181").expect("t")], ..Default::default() },
                false,
            ),
            (
                FlowFilter {
                    event_type: vec![EventTypeFilter::parse("policy-verdict").expect("t")],
                    ..Default::default()
                },
                false,
            ),
            (FlowFilter { traffic_direction: vec![TrafficDirection::Egress], ..Default::default() }, false),
            (FlowFilter { drop_reason_desc: vec![DropReason::POLICY_DENIED], ..Default::default() }, true),
            (FlowFilter { reply: vec![false], ..Default::default() }, true),
            (FlowFilter { reply: vec![true], ..Default::default() }, false),
            (FlowFilter { tcp_flags: vec![TcpFlags::from_byte(0x02)], ..Default::default() }, true),
            (FlowFilter { tcp_flags: vec![TcpFlags::from_byte(0x01)], ..Default::default() }, false),
            (FlowFilter { ip_version: vec![IpVersion::V4], ..Default::default() }, false),
            (FlowFilter { node_name: vec!["lab/*".into()], ..Default::default() }, true),
            (FlowFilter { http_method: vec!["GET".into()], ..Default::default() }, false),
            (
                FlowFilter {
                    verdict: vec![Verdict::Dropped],
                    destination_port: vec!["80".into()],
                    ..Default::default()
                },
                false,
            ),
        ];
        for (i, (filter, want)) in cases.into_iter().enumerate() {
            assert_eq!(one(filter.clone()).matches(&f), want, "case {i}: {filter:?}");
        }
    }

    #[test]
    fn l7_fields() {
        let mut f = flow();
        f.l4 = Some(Layer4::Udp(Ports { source_port: 1, destination_port: 2 }));
        f.l7 = Some(Layer7 {
            http: Some(Http {
                code: 403,
                method: "POST".into(),
                url: "http://backend/api/v1/x?y=1".into(),
                ..Http::default()
            }),
            ..Layer7::default()
        });
        f.destination_names = vec!["api.example.com.".into()];
        assert!(one(FlowFilter { http_status_code: vec!["4+".into()], ..Default::default() }).matches(&f));
        assert!(!one(FlowFilter { http_status_code: vec!["404".into()], ..Default::default() }).matches(&f));
        assert!(one(FlowFilter { http_method: vec!["post".into()], ..Default::default() }).matches(&f));
        assert!(one(FlowFilter { http_path: vec!["^/api/v1/".into()], ..Default::default() }).matches(&f));
        assert!(!one(FlowFilter { http_path: vec!["y=1".into()], ..Default::default() }).matches(&f));
        assert!(one(FlowFilter { protocol: vec!["http".into()], ..Default::default() }).matches(&f));
        assert!(one(FlowFilter { destination_fqdn: vec!["*.example.com".into()], ..Default::default() }).matches(&f));
        assert!(!one(FlowFilter { destination_fqdn: vec!["*.com".into()], ..Default::default() }).matches(&f));
    }

    #[test]
    fn trace_points_use_the_monitor_sub_types() {
        let mut f = flow();
        for (name, point) in
            [("to-endpoint", TraceObservationPoint::ToEndpoint), ("from-endpoint", TraceObservationPoint::FromEndpoint)]
        {
            f.event_type =
                Some(EventType { kind: event_types::TRACE, sub_type: point.monitor_sub_type().expect("known") });
            f.trace_observation_point = point;
            let want = EventTypeFilter::parse(&format!("trace:{name}")).expect("parses");
            assert!(one(FlowFilter { event_type: vec![want], ..Default::default() }).matches(&f), "{name}");
        }
        let other = EventTypeFilter::parse("trace:to-endpoint").expect("parses");
        assert!(!one(FlowFilter { event_type: vec![other], ..Default::default() }).matches(&f), "from ≠ to");
    }

    #[test]
    fn deny_and_time_window() {
        let f = flow();
        let m = Filters {
            deny: vec![FlowFilter { source_pod: vec!["staging/".into()], ..Default::default() }],
            ..Filters::default()
        }
        .compile()
        .expect("compiles");
        assert!(!m.matches(&f));
        let m = Filters {
            allow: vec![
                FlowFilter { source_pod: vec!["nope/".into()], ..Default::default() },
                FlowFilter { destination_pod: vec!["production/".into()], ..Default::default() },
            ],
            since: Some(Timestamp::from_nanos(1_000)),
            until: Some(Timestamp::from_nanos(3_000)),
            ..Filters::default()
        }
        .compile()
        .expect("compiles");
        assert!(m.matches(&f));
        let late = Filters { since: Some(Timestamp::from_nanos(2_001)), ..Filters::default() }.compile().expect("c");
        assert!(!late.matches(&f));
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = one_err(FlowFilter { source_ip: vec!["10.0.0.0/33".into()], ..Default::default() });
        assert!(e.contains("source_ip `10.0.0.0/33`"), "{e}");
        let e = one_err(FlowFilter { http_status_code: vec!["4x".into()], ..Default::default() });
        assert!(e.contains("expected a code (404) or a class (4+)"), "{e}");
        let e = one_err(FlowFilter { protocol: vec!["gre".into()], ..Default::default() });
        assert!(e.contains("protocol `gre`"), "{e}");
        let e = one_err(FlowFilter { http_path: vec!["(".into()], ..Default::default() });
        assert!(e.contains("http_path"), "{e}");
        assert!(EventTypeFilter::parse("drops").is_err());
        assert!(EventTypeFilter::parse("trace:to-nowhere").is_err());
        assert!(EventTypeFilter::parse("trace:unknown-point").is_err());
    }

    fn one_err(f: FlowFilter) -> String {
        Filters { allow: vec![f], ..Filters::default() }.compile().expect_err("must fail").to_string()
    }
}
