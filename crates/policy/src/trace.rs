//! `bulkhead policy trace`: one connection, its verdict, and why.
//!
//! The verdict comes from the same policy-map lookups the kernel does. The
//! explanation then goes back to the rules: which rules decided, or, when
//! nothing allowed the connection, the rules that came closest and what did
//! not match (wrong port, a selector label the peer lacks, ...).

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::api::{Direction, L7Rules};
use crate::engine::{Engine, peer_matches};
use crate::identity::NumericIdentity;
use crate::l7::http::{HttpPolicy, HttpRequest};
use crate::l7::path::{EscapedSlashes, normalize_target};
use crate::reach::ProbePort;
use crate::repository::{PeerSel, PortItem, Proto, RuleRef};
use crate::resolve::{Decision, DirectionPolicy, Peer, Verdict};

/// Where the connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A pod, `namespace/name`.
    Pod(String),
    /// An address (a pod's, or outside the cluster).
    Ip(IpAddr),
    /// A DNS name outside the cluster.
    Fqdn(String),
}

/// An HTTP request to check against L7 rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpProbe {
    /// Method (default GET).
    pub method: String,
    /// Path (default `/`).
    pub path: String,
    /// Host header (default: the destination's name).
    pub host: String,
    /// Other headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// Source pod, `namespace/name`.
    pub from: String,
    /// Destination.
    pub to: Target,
    /// Protocol and port.
    pub port: ProbePort,
    /// An HTTP request, for L7 rules.
    pub http: Option<HttpProbe>,
}

/// A rule that did not match, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NearMiss {
    /// The rule.
    pub rule: Arc<RuleRef>,
    /// What did not match.
    pub why: String,
}

/// One direction's part of the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectionTrace {
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// The endpoint whose policy this is.
    pub endpoint: String,
    /// `allowed`, `denied`, or `redirected` (to an L7 proxy).
    pub verdict: String,
    /// Why, in words.
    pub reason: String,
    /// The rules that decided (deny rules for a deny).
    pub decided_by: Vec<Arc<RuleRef>>,
    /// When nothing allowed it: the closest rules and what did not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub near_misses: Vec<NearMiss>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceResult {
    /// `allowed` or `denied`.
    pub verdict: String,
    /// Source `namespace/pod` and identity.
    pub from: String,
    /// Source identity.
    pub from_identity: NumericIdentity,
    /// Destination, as given.
    pub to: String,
    /// Destination identity.
    pub to_identity: NumericIdentity,
    /// `80/TCP`.
    pub port: String,
    /// The source's egress.
    pub egress: DirectionTrace,
    /// The destination's ingress (pods only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<DirectionTrace>,
    /// The L7 decision, when a proxy decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<String>,
    /// Anything else worth knowing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Why a trace could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The source or destination pod is not in the cluster state.
    #[error("no pod `{0}` in the cluster state (pods are given as namespace/name)")]
    NoSuchPod(String),
}

/// Traces one connection.
pub fn trace(engine: &mut Engine, req: &TraceRequest) -> Result<TraceResult, TraceError> {
    let (src, src_id) =
        engine.pod(&req.from).map(|(p, id)| (p.clone(), id)).ok_or_else(|| TraceError::NoSuchPod(req.from.clone()))?;
    let mut notes = Vec::new();
    let (dst_key, dst_addr, dst_id, to_text) = match &req.to {
        Target::Pod(k) => {
            let (p, id) = engine.pod(k).ok_or_else(|| TraceError::NoSuchPod(k.clone()))?;
            (Some(k.clone()), p.ips.first().copied(), id, k.clone())
        }
        Target::Ip(ip) => {
            let (id, key) = engine.identity_of_ip(*ip);
            (key, Some(*ip), id, ip.to_string())
        }
        Target::Fqdn(name) => (None, None, engine.fqdn_identity(name), name.clone()),
    };
    let (proto, port) = (req.port.proto, req.port.port);
    let empty = DirectionPolicy::default();
    let src_pol = engine.endpoint_policy(&req.from).map(|p| p.egress.clone()).unwrap_or_else(|| empty.clone());
    let mut egress = explain(engine, &req.from, src_id, Direction::Egress, &src_pol, dst_addr, dst_id, proto, port);
    if let Target::Fqdn(name) = &req.to
        && !dns_allows(&src_pol, name)
    {
        // An allow learned from the name (rather than world or any peer)
        // needs the lookup to pass the DNS proxy first.
        let by_name = matches!(src_pol.lookup(None, dst_id, proto, port), Decision::Entry(k, _) if k.peer == Peer::Identity(dst_id));
        if by_name && egress.verdict != "denied" {
            egress.verdict = "denied".into();
            egress.reason = format!(
                "toFQDNs can allow {name} only after its lookup passes the DNS proxy, and no DNS rule of {} allows it",
                req.from
            );
        }
        notes.push(format!("toFQDNs sees only names resolved through the DNS proxy: {} needs an egress DNS rule (rules.dns) that allows `{name}`", req.from));
    }
    let ingress = match &dst_key {
        Some(k) => {
            let pol = engine.endpoint_policy(k).map(|p| p.ingress.clone()).unwrap_or_default();
            Some(explain(engine, k, dst_id, Direction::Ingress, &pol, src.ips.first().copied(), src_id, proto, port))
        }
        None => None,
    };
    if dst_key.as_deref() == Some(req.from.as_str()) {
        notes.push("a pod reaching itself is always allowed".into());
    }
    let mut verdict = if egress.verdict == "denied" || ingress.as_ref().is_some_and(|i| i.verdict == "denied") {
        "denied"
    } else {
        "allowed"
    };
    let mut l7 = None;
    let redirect = [Some(&egress), ingress.as_ref()]
        .into_iter()
        .flatten()
        .find(|d| d.verdict == "redirected")
        .map(|d| d.direction);
    if verdict == "allowed"
        && let Some(dir) = redirect
    {
        let pol = match dir {
            Direction::Egress => Some(src_pol.clone()),
            Direction::Ingress => dst_key.as_ref().and_then(|k| engine.endpoint_policy(k)).map(|p| p.ingress.clone()),
        };
        let (addr, id) = if dir == Direction::Egress { (dst_addr, dst_id) } else { (src.ips.first().copied(), src_id) };
        if let Some(Decision::Entry(_, e)) = pol.as_ref().map(|p| p.lookup(addr, id, proto, port))
            && let Verdict::Redirect(l7p) = &e.verdict
        {
            let (ok, mut text) = l7_decision(&l7p.rules, l7p.allow_all, req.http.as_ref(), &to_text);
            if !ok {
                verdict = "denied";
            }
            for l in &l7p.limits {
                text.push_str(&format!("; limited by {} {} ({})", l.by.policy_name(), l.by.rule, l.limit));
            }
            l7 = Some(text);
        }
    }
    if dst_key.as_deref() == Some(req.from.as_str()) {
        verdict = "allowed";
    }
    Ok(TraceResult {
        verdict: verdict.into(),
        from: req.from.clone(),
        from_identity: src_id,
        to: to_text,
        to_identity: dst_id,
        port: req.port.label(),
        egress,
        ingress,
        l7,
        notes,
    })
}

fn dns_allows(pol: &DirectionPolicy, name: &str) -> bool {
    pol.entries.values().any(|e| match &e.verdict {
        Verdict::Redirect(p) => match &p.rules {
            L7Rules::Dns(sels) => p.allow_all || sels.iter().any(|s| crate::l7::dns::selector_matches(s, name)),
            _ => false,
        },
        _ => false,
    })
}

/// What a `headerMatches` mismatch action does to the request, in words.
fn describe_action(a: &crate::l7::HeaderAction) -> String {
    use crate::api::l7::MismatchAction;
    let found = a.found.as_deref().map_or_else(|| "absent".to_owned(), |v| format!("{v:?}"));
    let what = match a.action {
        MismatchAction::Log => "logged".to_owned(),
        MismatchAction::Add => format!("{:?} added", a.expected),
        MismatchAction::Delete => "deleted".to_owned(),
        MismatchAction::Replace => format!("replaced with {:?}", a.expected),
    };
    format!("{} ({found}) {what}", a.name)
}

fn l7_decision(rules: &L7Rules, allow_all: bool, http: Option<&HttpProbe>, host: &str) -> (bool, String) {
    if allow_all {
        return (true, "proxied; every request allowed (a rule allows this peer on this port without L7 rules)".into());
    }
    match (rules, http) {
        (L7Rules::Http(r), Some(h)) => {
            let Ok(p) = HttpPolicy::compile(r) else { return (false, "HTTP rules failed to compile; denied".into()) };
            let hostv = if h.host.is_empty() { host } else { &h.host };
            // Rules see the path the proxy would forward (l7::path).
            let path = match normalize_target(&h.path, EscapedSlashes::default()) {
                Ok(p) => p,
                Err(e) => {
                    return (
                        false,
                        format!("HTTP {} {} refused before any rule: 400 Bad Request: {e}", h.method, h.path),
                    );
                }
            };
            let shown = if path == h.path { path.clone() } else { format!("{} (normalized to {path})", h.path) };
            let headers: Vec<(&str, &str)> = h.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let d = p.decide(&HttpRequest { method: &h.method, path: &path, host: hostv, headers: &headers });
            match d.matched_rule {
                Some(i) if d.allowed => {
                    let rule = serde_json::to_string(&r[i]).unwrap_or_default();
                    let actions: Vec<String> = d.header_actions.iter().map(describe_action).collect();
                    let actions = if actions.is_empty() {
                        String::new()
                    } else {
                        format!("; headerMatches: {}", actions.join(", "))
                    };
                    (true, format!("HTTP {} {shown} allowed by the rule {rule}{actions}", h.method))
                }
                _ => (
                    false,
                    format!("HTTP {} {shown} matches none of the {} HTTP rule(s): 403 Forbidden", h.method, r.len()),
                ),
            }
        }
        (L7Rules::Http(r), None) => (
            true,
            format!("decided per request by {} HTTP rule(s); pass --http-method and --http-path to check one", r.len()),
        ),
        (L7Rules::Dns(r), _) => (true, format!("DNS queries checked against {} name rule(s)", r.len())),
        (L7Rules::Kafka(r), _) => (true, format!("Kafka requests checked against {} rule(s)", r.len())),
        (L7Rules::Tls(n), _) => (true, format!("TLS server name must be one of: {}", n.join(", "))),
        (L7Rules::Generic { proto, .. }, _) => (true, format!("decided per request by the {proto} parser")),
    }
}

/// What an explanation reads besides the policy itself: the engine, or a
/// published [`crate::engine::PolicyView`] of it.
pub trait Facts {
    /// An identity.
    fn identity(&self, id: NumericIdentity) -> Option<&crate::identity::Identity>;
    /// The rules whose subject selects the identity `id`.
    fn rules_selecting(&self, id: NumericIdentity) -> Vec<Arc<crate::repository::CompiledRule>>;
}

impl Facts for Engine {
    fn identity(&self, id: NumericIdentity) -> Option<&crate::identity::Identity> {
        Engine::identity(self, id)
    }

    fn rules_selecting(&self, id: NumericIdentity) -> Vec<Arc<crate::repository::CompiledRule>> {
        Engine::rules_selecting(self, id)
    }
}

/// Why `endpoint`'s (identity `id`, policy `pol`) policy in `dir` decides
/// as it does for one packet the datapath saw, given its peer's address and
/// identity: the verdict, the deciding rules and, when nothing allowed it,
/// the rules that came closest.
#[expect(clippy::too_many_arguments, reason = "one packet's full key, kept flat for clarity")]
pub fn explain_packet(
    facts: &impl Facts,
    endpoint: &str,
    id: NumericIdentity,
    pol: &crate::resolve::EndpointPolicy,
    dir: Direction,
    peer_addr: IpAddr,
    peer_id: NumericIdentity,
    port: ProbePort,
) -> DirectionTrace {
    let pol = match dir {
        Direction::Ingress => &pol.ingress,
        Direction::Egress => &pol.egress,
    };
    explain(facts, endpoint, id, dir, pol, Some(peer_addr), peer_id, port.proto, port.port)
}

#[expect(clippy::too_many_arguments, reason = "one lookup's full key, kept flat for clarity")]
fn explain(
    engine: &impl Facts,
    endpoint: &str,
    endpoint_id: NumericIdentity,
    dir: Direction,
    pol: &DirectionPolicy,
    peer_addr: Option<IpAddr>,
    peer_id: NumericIdentity,
    proto: Proto,
    port: u16,
) -> DirectionTrace {
    let mut t = DirectionTrace {
        direction: dir,
        endpoint: endpoint.to_string(),
        verdict: String::new(),
        reason: String::new(),
        decided_by: Vec::new(),
        near_misses: Vec::new(),
    };
    if !pol.enforced {
        t.verdict = "allowed".into();
        t.reason = format!("no policy selecting {endpoint} has {dir} rules: {dir} is not enforced");
        return t;
    }
    match pol.lookup(peer_addr, peer_id, proto, port) {
        Decision::Entry(k, e) => {
            t.decided_by = e.refs.clone();
            let level = match k.peer {
                Peer::Any => "any peer".to_string(),
                Peer::Identity(id) => format!("identity {id}"),
                Peer::Address(a) => format!("address {a}"),
            };
            match &e.verdict {
                Verdict::Deny => {
                    t.verdict = "denied".into();
                    t.reason = format!("explicitly denied (POLICY_DENY) for {level}; deny rules win over allows");
                }
                Verdict::Allow => {
                    t.verdict = "allowed".into();
                    t.reason = format!("allowed for {level}");
                }
                Verdict::Redirect(_) => {
                    t.verdict = "redirected".into();
                    t.reason = format!("allowed at L3/L4 for {level}; redirected to the L7 proxy");
                }
            }
        }
        Decision::Default { deny } => {
            if deny {
                t.verdict = "denied".into();
                t.reason = format!("no rule allows it and {dir} is default-deny (POLICY_DENIED)");
                t.near_misses = near_misses(engine, endpoint_id, dir, peer_id, proto, port);
            } else {
                t.verdict = "allowed".into();
                t.reason = format!("no rule matches and no policy selecting {endpoint} makes {dir} default-deny");
            }
        }
    }
    t
}

/// The allow rules of a direction that did not match, closest first.
fn near_misses(
    engine: &impl Facts,
    subject: NumericIdentity,
    dir: Direction,
    peer_id: NumericIdentity,
    proto: Proto,
    port: u16,
) -> Vec<NearMiss> {
    let Some(peer) = engine.identity(peer_id) else { return Vec::new() };
    let mut out: Vec<(u8, NearMiss)> = Vec::new();
    for rule in engine.rules_selecting(subject) {
        for c in &rule.dir(dir).contributions {
            if c.deny {
                continue;
            }
            let peer_ok = c.peers.iter().any(|p| peer_matches(p, peer));
            let port_ok = c.ports.iter().any(|p| match p {
                PortItem::All => true,
                PortItem::Range { proto: pp, lo, hi } => *pp == proto && *lo <= port && port <= *hi,
                PortItem::Named { .. } => false,
            });
            let ports: Vec<String> = c.ports.iter().map(ToString::to_string).collect();
            let (rank, why) = match (peer_ok, port_ok) {
                (true, false) => {
                    (0, format!("peer matches, but the rule allows {} and not {port}/{proto}", ports.join(", ")))
                }
                (false, true) => {
                    (1, format!("port matches, but the peer is not selected: {}", peer_mismatch(&c.peers, peer)))
                }
                (false, false) => (
                    2,
                    format!(
                        "peer not selected ({}) and port {port}/{proto} not in {}",
                        peer_mismatch(&c.peers, peer),
                        ports.join(", ")
                    ),
                ),
                (true, true) => {
                    (3, "matches, but requirements (fromRequires/toRequires) or an L7 conflict exclude it".to_string())
                }
            };
            out.push((rank, NearMiss { rule: c.rule_ref.clone(), why }));
        }
    }
    out.sort_by_key(|(r, _)| *r);
    out.into_iter().take(5).map(|(_, m)| m).collect()
}

fn peer_mismatch(peers: &[PeerSel], peer: &crate::identity::Identity) -> String {
    if peers.is_empty() {
        return "the rule names no peer (an empty rule allows nothing)".into();
    }
    let mut parts = Vec::new();
    for p in peers.iter().take(3) {
        let s = match p {
            PeerSel::Endpoints(_) if peer.is_world() => {
                "the peer is outside the cluster, and endpoint selectors match only pods".to_string()
            }
            PeerSel::Endpoints(sel) | PeerSel::Labels(sel) => match sel.first_failure(&peer.labels) {
                Some(req) => {
                    let have = peer.labels.get(&req.key).map(|(s, v)| format!("{}:{}={v}", s.as_str(), req.key));
                    match have {
                        Some(h) => format!("needs {req}, peer has {h}"),
                        None => format!("needs {req}, peer has no `{}` label", req.key),
                    }
                }
                None => format!("{p}"),
            },
            PeerSel::Fqdn(_) => match &peer.kind {
                crate::identity::IdentityKind::Fqdn { names, .. } => {
                    format!("`{}` does not match {p}", names.join("`, `"))
                }
                _ => format!("{p} matches only addresses learned from DNS"),
            },
            PeerSel::Cidr { .. } => format!("{p} does not cover the peer"),
            PeerSel::All => "all".into(),
        };
        parts.push(s);
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
