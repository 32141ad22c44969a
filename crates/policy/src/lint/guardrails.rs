//! Guardrails: an organisation's rules for policies, checked with one code
//! path wherever a policy can enter — `policy lint --guardrails`, the
//! agent's `apply` (which refuses what would add a finding) and `bulkhead
//! webhook` (which judges one object, so only what its text says).
//!
//! Each rule of [`GuardrailsSpec`] is read off the policies' text, except
//! `requireDefaultDeny`, which needs the cluster's pods (the same reckoning
//! as [`Check::NoDefaultDeny`]).

use super::{Check, Finding, Places, base_ref, default_deny, finding, side};
use crate::api::{
    Direction, Entity, Guardrails, GuardrailsSpec, NetworkPolicyPeer, PeerRule, Policy, PolicyBody, PolicyKind,
    PortProtocol, PortSpec, Protocol,
};
use crate::cidr::Cidr;
use crate::engine::Engine;

/// The findings of guardrails `g` on every policy `engine` holds (with
/// `cluster`: its pods are the cluster's, and `requireDefaultDeny` is
/// checked too).
pub fn check(g: &Guardrails, engine: &Engine, cluster: bool) -> Vec<Finding> {
    let policies: Vec<Policy> = engine.policies().cloned().collect();
    let places = Places::of(&policies);
    let mut out = Vec::new();
    for p in &policies {
        check_policy(&g.spec, p, &places, &mut out);
    }
    if cluster && g.spec.require_default_deny {
        let mut open = Vec::new();
        default_deny(engine, &mut open);
        out.extend(open.into_iter().map(|f| Finding { guardrail: Some("requireDefaultDeny".into()), ..f }));
    }
    for f in &mut out {
        f.check = Check::Guardrail;
        f.guardrail = f
            .guardrail
            .take()
            .map(|field| format!("Guardrails {} spec.{field} ({}:{})", g.name, g.origin.file, g.origin.line));
    }
    super::sort(&mut out);
    out
}

fn guarded(f: Finding, field: &str) -> Finding {
    Finding { guardrail: Some(field.into()), ..f }
}

fn check_policy(g: &GuardrailsSpec, p: &Policy, places: &Places, out: &mut Vec<Finding>) {
    let base = base_ref(p);
    let world_ok = |p: &Policy| {
        g.forbid_ingress_from_world
            .as_ref()
            .is_none_or(|except| p.namespace.as_ref().is_some_and(|ns| except.contains(ns)))
    };
    match &p.body {
        PolicyBody::Cilium(rules) => {
            for (d, pr) in super::cilium_allows(rules) {
                let field = |f: &str| places.field(&base, &format!("{}.{}{f}", pr.path, side(d)));
                let entities = pr.entities.iter().flatten();
                if g.forbid_entity_all && pr.entities.iter().flatten().any(|e| *e == Entity::All) {
                    out.push(guarded(
                        finding(
                            Check::Guardrail,
                            field("Entities"),
                            format!("allows `{}Entities: [all]`", side(d)),
                            format!("name the peers: {0}Endpoints for pods, {0}CIDRSet for addresses", side(d)),
                        ),
                        "forbidEntityAll",
                    ));
                }
                if d == Direction::Ingress && !world_ok(p) {
                    let world = entities
                        .clone()
                        .find(|e| matches!(e, Entity::All | Entity::World | Entity::WorldIpv4 | Entity::WorldIpv6));
                    let what = match (world, &pr.cidrs) {
                        (Some(e), _) => Some((field("Entities"), format!("`fromEntities: [{}]`", e.as_str()))),
                        (None, Some(c)) if !c.is_empty() => {
                            Some((field("CIDR"), format!("fromCIDR `{}` (addresses outside the cluster)", c[0].cidr)))
                        }
                        _ if pr.has_no_l3() && !(pr.to_ports.is_empty() && pr.icmps.is_empty()) => {
                            Some((places.field(&base, &pr.path), "a rule naming no peer (every peer)".into()))
                        }
                        _ => None,
                    };
                    if let Some((at, what)) = what {
                        out.push(guarded(world_finding(p, at, what), "forbidIngressFromWorld"));
                    }
                }
                for c in pr.cidrs.iter().flatten() {
                    if let Some(min) = too_broad(g, &c.cidr) {
                        out.push(guarded(cidr_finding(field("CIDR"), &c.cidr, min), "minCIDRPrefixLength"));
                    }
                }
                cilium_l7(g, d, pr, &base, places, out);
            }
        }
        PolicyBody::Kubernetes(spec) => {
            for (d, r) in super::np_allows(spec) {
                let at = |suffix: &str| places.field(&base, &format!("{}{suffix}", r.path));
                if d == Direction::Ingress && !world_ok(p) {
                    let block = r.peers.iter().position(|x| matches!(x, NetworkPolicyPeer::IpBlock(_)));
                    let what = match block {
                        _ if r.peers.is_empty() => Some((at(""), "a rule with no `from` (every source)".to_string())),
                        Some(i) => {
                            Some((at(&format!(".from[{i}]")), "an ipBlock (addresses outside the cluster)".into()))
                        }
                        None => None,
                    };
                    if let Some((at, what)) = what {
                        out.push(guarded(world_finding(p, at, what), "forbidIngressFromWorld"));
                    }
                }
                for (i, peer) in r.peers.iter().enumerate() {
                    if let NetworkPolicyPeer::IpBlock(b) = peer
                        && let Some(min) = too_broad(g, &b.cidr)
                    {
                        let at = at(&format!(".{}[{i}].ipBlock", side(d)));
                        out.push(guarded(cidr_finding(at, &b.cidr, min), "minCIDRPrefixLength"));
                    }
                }
                if let Some(port) = unguarded(g, r.ports.is_empty(), &numbered(&r.ports)) {
                    out.push(guarded(
                        finding(
                            Check::Guardrail,
                            at(""),
                            format!("allows {port} without L7 rules (a NetworkPolicy cannot carry them)"),
                            format!("allow {port} with a CiliumNetworkPolicy whose toPorts carry `rules` (http, grpc, dns, kafka)"),
                        ),
                        "requireL7",
                    ));
                }
            }
        }
        PolicyBody::RateLimit(_) => {}
    }
}

fn world_finding(p: &Policy, at: super::Place, what: String) -> Finding {
    let scope = match (&p.kind, &p.namespace) {
        (PolicyKind::CiliumClusterwideNetworkPolicy, _) | (_, None) => "a clusterwide policy".to_string(),
        (_, Some(ns)) => format!("namespace {ns}, which is not excepted"),
    };
    finding(
        Check::Guardrail,
        at,
        format!("admits ingress from outside the cluster through {what}, in {scope}"),
        "name the clients inside the cluster, or move the workload to an excepted namespace".into(),
    )
}

fn cidr_finding(at: super::Place, cidr: &Cidr, min: u8) -> Finding {
    finding(
        Check::Guardrail,
        at,
        format!("allows `{cidr}`, broader than /{min}"),
        format!("split it into prefixes of /{min} or longer that name what is meant"),
    )
}

/// The minimum prefix length `cidr` falls short of, if any.
fn too_broad(g: &GuardrailsSpec, cidr: &Cidr) -> Option<u8> {
    let min = if cidr.is_ipv4() { g.min_prefix_ipv4 } else { g.min_prefix_ipv6 }?;
    (cidr.len() < min).then_some(min)
}

/// Numbered ports as ranges (0: every port); named ports, which only a
/// pod can resolve, are left out.
fn numbered(ports: &[PortProtocol]) -> Vec<(Protocol, u16, u16)> {
    ports
        .iter()
        .filter_map(|pp| match pp.port {
            PortSpec::Number(0) => Some((pp.protocol, 0, u16::MAX)),
            PortSpec::Number(n) => Some((pp.protocol, n, pp.end_port.unwrap_or(n))),
            PortSpec::Name(_) => None,
        })
        .collect()
}

/// The first guarded port (`8080/TCP`) an allow of these ports (`all`:
/// every port) without L7 rules opens, if any.
fn unguarded(g: &GuardrailsSpec, all: bool, ports: &[(Protocol, u16, u16)]) -> Option<String> {
    g.require_l7
        .iter()
        .find(|(proto, port)| {
            all || ports.iter().any(|(p, lo, hi)| (*p == *proto || *p == Protocol::Any) && (*lo..=*hi).contains(port))
        })
        .map(|(proto, port)| format!("{port}/{}", proto.as_str()))
}

fn cilium_l7(
    g: &GuardrailsSpec,
    d: Direction,
    pr: &PeerRule,
    base: &crate::repository::RuleRef,
    places: &Places,
    out: &mut Vec<Finding>,
) {
    if g.require_l7.is_empty() || (pr.has_no_l3() && pr.to_ports.is_empty() && pr.icmps.is_empty()) {
        return;
    }
    let mut found = Vec::new();
    if pr.to_ports.is_empty() && pr.icmps.is_empty() {
        found.extend(unguarded(g, true, &[]).map(|p| (pr.path.clone(), p)));
    }
    for (i, rule) in pr.to_ports.iter().enumerate().filter(|(_, r)| r.rules.is_none()) {
        found.extend(unguarded(g, false, &numbered(&rule.ports)).map(|p| (format!("{}.toPorts[{i}]", pr.path), p)));
    }
    for (path, port) in found {
        out.push(guarded(
            finding(
                Check::Guardrail,
                places.field(base, &path),
                format!("allows {port} {} its peers without L7 rules", side(d)),
                format!("give the port `rules` (http, grpc, dns or kafka) in toPorts, so the proxy decides each request on {port}"),
            ),
            "requireL7",
        ));
    }
}
