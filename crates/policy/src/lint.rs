//! `policy lint`: what a set of valid policies does that its author may
//! not mean.
//!
//! Without a cluster only what the text says can be judged: allows broader
//! than they look ([`Check::BroadAllow`]). With one (the engine holding its
//! namespaces and pods), each rule is also resolved on every pod it selects
//! — peers to identities and pod addresses, ports to numbers, exactly as
//! the datapath's entries are made ([`Engine::resolve_direction`]) — and
//! compared with the others there:
//!
//! - [`Check::SelectsNoPod`]: an endpoint selector that selects no pod;
//! - [`Check::PeerSelectsNothing`]: an endpoint peer that matches nobody;
//! - [`Check::Shadowed`]: an allow another single rule already allows in
//!   whole, on every pod it selects (when two rules allow the same, the
//!   later is reported);
//! - [`Check::DeadAllow`]: an allow a deny takes back in whole;
//! - [`Check::L7Bypassed`]: L7 rules on a port where another rule allows
//!   some of the same peers every request;
//! - [`Check::NoDefaultDeny`]: a namespace whose pods take traffic no
//!   policy allows.
//!
//! A rule whose peers resolve to no identity here (`toFQDNs`, whose
//! addresses are learnt at run time) is not compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::api::{
    Direction, Entity, Guardrails, LabelSelector, NetworkPolicyPeer, NetworkPolicyRule, NetworkPolicySpec, PeerRule,
    Policy, PolicyBody, PolicyKind, Rule,
};
use crate::engine::Engine;
use crate::identity::NumericIdentity;
use crate::repository::{PeerSel, Proto, RuleRef, compile};
use crate::resolve::Resolved;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// An allow broader than it looks: every peer, the whole cluster, the
    /// whole internet, or an empty selector.
    BroadAllow,
    /// A rule whose endpoint selector selects no pod.
    SelectsNoPod,
    /// An endpoint peer selector that matches no pod or identity.
    PeerSelectsNothing,
    /// An allow another allow already covers.
    Shadowed,
    /// An allow a deny takes back.
    DeadAllow,
    /// L7 rules on a port another rule allows whole.
    L7Bypassed,
    /// A namespace with pods that take traffic no policy allows.
    NoDefaultDeny,
    /// A rule of the organisation's [`crate::api::Guardrails`] broken.
    Guardrail,
}

impl Check {
    /// As the output names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BroadAllow => "broad-allow",
            Self::SelectsNoPod => "selects-no-pod",
            Self::PeerSelectsNothing => "peer-selects-nothing",
            Self::Shadowed => "shadowed",
            Self::DeadAllow => "dead-allow",
            Self::L7Bypassed => "l7-bypassed",
            Self::NoDefaultDeny => "no-default-deny",
            Self::Guardrail => "guardrail",
        }
    }
}

/// A rule and where its policy was read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Place {
    /// The file.
    pub file: String,
    /// The policy's first line.
    pub line: usize,
    /// The rule.
    #[serde(flatten)]
    pub rule: RuleRef,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.rule)
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub check: Check,
    /// The rule found (none for a namespace's finding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Place>,
    /// The other rule: the one that covers, takes back or bypasses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other: Option<Place>,
    /// The namespace (a namespace's finding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The guardrail broken: `Guardrails NAME spec.FIELD (file:line)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, &self.namespace) {
            (Some(r), _) => write!(f, "{r}: {}: {}", self.check.as_str(), self.message)?,
            (None, Some(ns)) => write!(f, "namespace {ns}: {}: {}", self.check.as_str(), self.message)?,
            (None, None) => write!(f, "{}: {}", self.check.as_str(), self.message)?,
        }
        if let Some(g) = &self.guardrail {
            write!(f, "\n    guardrail: {g}")?;
        }
        if let Some(o) = &self.other {
            write!(f, "\n    {}: {o}", if self.check == Check::DeadAllow { "denied by" } else { "by" })?;
        }
        write!(f, "\n    fix: {}", self.fix)
    }
}

/// Lints every policy `engine` holds, against `guardrails` too; `cluster`:
/// its pods and namespaces are the cluster's (the checks that need them
/// run).
pub fn lint(engine: &mut Engine, cluster: bool, guardrails: &[Guardrails]) -> Vec<Finding> {
    let policies: Vec<Policy> = engine.policies().cloned().collect();
    let places = Places::of(&policies);
    let mut out = Vec::new();
    for p in &policies {
        broad_allows(p, &places, &mut out);
    }
    if cluster {
        selects_nothing(engine, &policies, &places, &mut out);
        compare_rules(engine, &places, &mut out);
        default_deny(engine, &mut out);
    }
    let guarded: Vec<Finding> = guardrails.iter().flat_map(|g| guardrails::check(g, engine, cluster)).collect();
    // A namespace a guardrail reports needs no second, plain finding.
    out.retain(|f| !(f.check == Check::NoDefaultDeny && guarded.iter().any(|g| g.namespace == f.namespace)));
    out.extend(guarded);
    sort(&mut out);
    out
}

/// In file order, a namespace's findings after the rules'; no repeats.
fn sort(out: &mut Vec<Finding>) {
    out.sort_by(|a, b| {
        (a.rule.is_none(), &a.rule, &a.namespace, a.check, &a.guardrail).cmp(&(
            b.rule.is_none(),
            &b.rule,
            &b.namespace,
            b.check,
            &b.guardrail,
        ))
    });
    out.dedup();
}

/// Where each policy was read.
struct Places(BTreeMap<(PolicyKind, Option<String>, String), (String, usize)>);

impl Places {
    fn of(policies: &[Policy]) -> Self {
        Self(
            policies
                .iter()
                .map(|p| ((p.kind, p.namespace.clone(), p.name.clone()), (p.origin.file.clone(), p.origin.line)))
                .collect(),
        )
    }

    fn place(&self, rule: &RuleRef) -> Place {
        let (file, line) =
            self.0.get(&(rule.kind, rule.namespace.clone(), rule.name.clone())).cloned().unwrap_or_default();
        Place { file, line, rule: rule.clone() }
    }

    /// `rule` with `field` appended to its path.
    fn field(&self, base: &RuleRef, path: &str) -> Place {
        self.place(&RuleRef { rule: path.to_owned(), ..base.clone() })
    }
}

fn finding(check: Check, rule: Place, message: String, fix: String) -> Finding {
    Finding { check, rule: Some(rule), other: None, namespace: None, guardrail: None, message, fix }
}

fn base_ref(p: &Policy) -> RuleRef {
    RuleRef { kind: p.kind, namespace: p.namespace.clone(), name: p.name.clone(), rule: String::new() }
}

/// `from` or `to`.
fn side(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

// ---- broad allows: the text alone ----

fn broad_allows(p: &Policy, places: &Places, out: &mut Vec<Finding>) {
    let base = base_ref(p);
    match &p.body {
        PolicyBody::Cilium(rules) => {
            for (d, pr) in cilium_allows(rules) {
                broad_cilium_peer(p, d, pr, &base, places, out);
            }
        }
        PolicyBody::Kubernetes(spec) => {
            for (d, r) in np_allows(spec) {
                broad_np_rule(p, d, r, &base, places, out);
            }
        }
        // A limit allows nothing.
        PolicyBody::RateLimit(_) => {}
    }
}

/// Every allow peer rule of Cilium rules, with its direction.
fn cilium_allows(rules: &[Rule]) -> impl Iterator<Item = (Direction, &PeerRule)> {
    rules.iter().flat_map(|r| {
        Direction::BOTH.into_iter().flat_map(move |d| r.section(d, false).into_iter().flatten().map(move |pr| (d, pr)))
    })
}

/// Every rule of a NetworkPolicy's isolated directions, with its direction.
fn np_allows(spec: &NetworkPolicySpec) -> impl Iterator<Item = (Direction, &NetworkPolicyRule)> {
    [
        (Direction::Ingress, spec.isolates_ingress, &spec.ingress),
        (Direction::Egress, spec.isolates_egress, &spec.egress),
    ]
    .into_iter()
    .filter(|(_, isolates, _)| *isolates)
    .flat_map(|(d, _, rules)| rules.iter().map(move |r| (d, r)))
}

/// What an empty endpoint selector means in `p`.
fn every_pod_of(p: &Policy) -> String {
    match (&p.kind, &p.namespace) {
        (PolicyKind::CiliumClusterwideNetworkPolicy, _) | (_, None) => "every pod in the cluster".into(),
        (_, Some(ns)) => format!("every pod in namespace {ns}"),
    }
}

fn broad_cilium_peer(p: &Policy, d: Direction, pr: &PeerRule, base: &RuleRef, places: &Places, out: &mut Vec<Finding>) {
    let s = side(d);
    let on = match (pr.to_ports.is_empty(), pr.icmps.is_empty()) {
        (true, true) => "on every port",
        (true, false) => "for its ICMP types",
        (false, _) => "on its ports",
    };
    if pr.has_no_l3() && !(pr.to_ports.is_empty() && pr.icmps.is_empty()) {
        out.push(finding(
            Check::BroadAllow,
            places.field(base, &pr.path),
            format!(
                "names no peer, so every peer — pods of every namespace, the node, every address outside the cluster — is allowed {on}"
            ),
            format!("name who is meant with {s}Endpoints, {s}Entities or {s}CIDR beside toPorts"),
        ));
    }
    let field = |f: &str| places.field(base, &format!("{}.{s}{f}", pr.path));
    for e in pr.entities.iter().flatten() {
        let what = match e {
            Entity::All => "every peer: every pod of every namespace, the node, and every address outside the cluster",
            Entity::World | Entity::WorldIpv4 | Entity::WorldIpv6 => match d {
                Direction::Ingress => "connections from any address outside the cluster (the internet)",
                Direction::Egress => "connections to any address outside the cluster (the internet)",
            },
            Entity::Cluster => "every pod of every namespace and every node of the cluster",
            _ => continue,
        };
        out.push(finding(
            Check::BroadAllow,
            field("Entities"),
            format!("`{s}Entities: [{}]` allows {what} {on}", e.as_str()),
            match e {
                Entity::World | Entity::WorldIpv4 | Entity::WorldIpv6 if d == Direction::Egress => {
                    format!("name the destinations: toFQDNs for named services, {s}CIDRSet for address ranges")
                }
                _ => format!("name the peers: {s}Endpoints for pods, {s}CIDRSet for addresses outside the cluster"),
            },
        ));
    }
    for c in pr.cidrs.iter().flatten().filter(|c| c.cidr.is_empty()) {
        out.push(finding(
            Check::BroadAllow,
            field("CIDR"),
            format!("`{}` is every address outside the cluster (the internet), allowed {on}", c.cidr),
            format!("narrow the prefix to the addresses meant; if the internet is meant, say so: {s}Entities: [world]"),
        ));
    }
    if pr.endpoints.iter().flatten().any(|sel| *sel == LabelSelector::default()) {
        out.push(finding(
            Check::BroadAllow,
            field("Endpoints"),
            format!("an empty selector `{{}}` in {s}Endpoints selects {} {on}", every_pod_of(p)),
            "give it matchLabels naming the pods meant".into(),
        ));
    }
}

fn broad_np_rule(
    p: &Policy,
    d: Direction,
    r: &NetworkPolicyRule,
    base: &RuleRef,
    places: &Places,
    out: &mut Vec<Finding>,
) {
    let s = side(d);
    let on = if r.ports.is_empty() { "on every port" } else { "on its ports" };
    let ns = p.namespace.as_deref().unwrap_or("default");
    if r.peers.is_empty() {
        out.push(finding(
            Check::BroadAllow,
            places.field(base, &r.path),
            format!(
                "has no `{s}`, so every peer — pods of every namespace and every address outside the cluster — is allowed {on}"
            ),
            format!("list who is meant under `{s}`: podSelector, namespaceSelector or ipBlock"),
        ));
    }
    for (i, peer) in r.peers.iter().enumerate() {
        let at = places.field(base, &format!("{}.{s}[{i}]", r.path));
        let empty = LabelSelector::default();
        let what = match peer {
            NetworkPolicyPeer::Pods { pod_selector: None, namespace_selector: Some(n) } if *n == empty => {
                "an empty namespaceSelector `{}` selects every pod of every namespace".to_string()
            }
            NetworkPolicyPeer::Pods { pod_selector: Some(ps), namespace_selector: None } if *ps == empty => {
                format!("an empty podSelector `{{}}` selects every pod in namespace {ns}")
            }
            NetworkPolicyPeer::IpBlock(b) if b.cidr.is_empty() => format!(
                "ipBlock `{}` is every address — pods of every namespace too (ipBlock matches pod addresses)",
                b.cidr
            ),
            _ => continue,
        };
        out.push(finding(
            Check::BroadAllow,
            at,
            format!("{what}, allowed {on}"),
            "name the peers meant: a podSelector with matchLabels, a namespaceSelector with labels, or a narrower ipBlock"
                .into(),
        ));
    }
}

// ---- against the cluster ----

fn selects_nothing(engine: &mut Engine, policies: &[Policy], places: &Places, out: &mut Vec<Finding>) {
    let mut selected: BTreeSet<RuleRef> = BTreeSet::new();
    for key in engine.pod_keys() {
        let Some((_, id)) = engine.pod(&key) else { continue };
        selected.extend(engine.rules_selecting(id).iter().map(|r| RuleRef::clone(&r.policy)));
    }
    let mut peers_seen = BTreeSet::new();
    for p in policies {
        for cr in compile(p) {
            if let Some(subject) = &cr.subject
                && !selected.contains(&cr.policy)
            {
                let field = match p.kind {
                    PolicyKind::NetworkPolicy => "podSelector",
                    _ => "endpointSelector",
                };
                out.push(finding(
                    Check::SelectsNoPod,
                    places.field(&cr.policy, &format!("{}.{field}", cr.policy.rule)),
                    format!("selects no pod ({subject}): it enforces nothing"),
                    "compare its labels with the pods' (kubectl get pods --show-labels); a misspelt label selects nothing, silently".into(),
                ));
            }
            for d in Direction::BOTH {
                for c in &cr.dir(d).contributions {
                    for peer in &c.peers {
                        let PeerSel::Endpoints(sel) = peer else { continue };
                        if !peers_seen.insert((c.rule_ref.clone(), peer.clone())) || !engine.select(peer).is_empty() {
                            continue;
                        }
                        out.push(finding(
                            Check::PeerSelectsNothing,
                            places.field(&c.rule_ref, &format!("{}.{}Endpoints", c.rule_ref.rule, side(d))),
                            format!("{}Endpoints ({sel}) matches no pod: this part of the rule allows nothing", side(d)),
                            "compare its labels with the pods'; a peer in another namespace needs `k8s:io.kubernetes.pod.namespace: NAME`".into(),
                        ));
                    }
                }
            }
        }
    }
}

/// Per rule, the rules that cover all of it on every pod seen so far.
type Covers = BTreeMap<Arc<RuleRef>, BTreeSet<Arc<RuleRef>>>;

fn compare_rules(engine: &mut Engine, places: &Places, out: &mut Vec<Finding>) {
    let mut shadowed: Covers = BTreeMap::new();
    let mut dead: Covers = BTreeMap::new();
    let mut pods_of: BTreeMap<Arc<RuleRef>, usize> = BTreeMap::new();
    let mut bypassed: BTreeMap<(Arc<RuleRef>, Arc<RuleRef>), String> = BTreeMap::new();
    for key in engine.pod_keys() {
        let Some((pod, id)) = engine.pod(&key) else { continue };
        let ports = pod.ports.clone();
        let selecting = engine.rules_selecting(id);
        for d in Direction::BOTH {
            let resolved = engine.resolve_direction(&selecting, &ports, d, None);
            let mut by_rule: BTreeMap<Arc<RuleRef>, Vec<&Resolved<'_>>> = BTreeMap::new();
            for r in resolved.iter().filter(|r| r.limit.is_none() && !selects_nobody(r)) {
                by_rule.entry(r.rule_ref.clone()).or_default().push(r);
            }
            for (rule, cs) in by_rule.iter().filter(|(_, cs)| !cs[0].deny) {
                *pods_of.entry(rule.clone()).or_default() += 1;
                let covering = |deny: bool| -> BTreeSet<Arc<RuleRef>> {
                    by_rule
                        .iter()
                        .filter(|(other, os)| *other != rule && os[0].deny == deny)
                        .filter(|(_, os)| cs.iter().all(|c| os.iter().any(|o| covers(o, c, !deny))))
                        .map(|(other, _)| other.clone())
                        .collect()
                };
                for (set, deny) in [(&mut shadowed, false), (&mut dead, true)] {
                    let now = covering(deny);
                    set.entry(rule.clone()).and_modify(|s| s.retain(|r| now.contains(r))).or_insert(now);
                }
                for c in cs.iter().filter(|c| c.l7.is_some()) {
                    for (other, os) in by_rule.iter().filter(|(_, os)| !os[0].deny) {
                        if let Some(o) = os.iter().find(|o| o.l7.is_none() && overlaps(o, c)) {
                            bypassed
                                .entry((rule.clone(), other.clone()))
                                .or_insert_with(|| format!("on pod {key}, {}", shared_ports(o, c)));
                        }
                    }
                }
            }
        }
    }
    let pods = |r: &Arc<RuleRef>| pods_of.get(r).copied().unwrap_or(0);
    for (rule, by) in &shadowed {
        // Two rules allowing the same: only the later is reported.
        let Some(other) = by
            .iter()
            .find(|o| !(shadowed.get(*o).is_some_and(|b| b.contains(rule)) && places.place(o) > places.place(rule)))
        else {
            continue;
        };
        out.push(Finding {
            other: Some(places.place(other)),
            ..finding(
                Check::Shadowed,
                places.place(rule),
                format!(
                    "another rule already allows everything this one allows, on each of the {} pod(s) it applies to",
                    pods(rule)
                ),
                "remove this rule, or narrow the other if this one says what was meant".into(),
            )
        });
    }
    for (rule, by) in &dead {
        let Some(other) = by.iter().next() else { continue };
        out.push(Finding {
            other: Some(places.place(other)),
            ..finding(
                Check::DeadAllow,
                places.place(rule),
                format!(
                    "a deny takes back everything this rule allows, on each of the {} pod(s) it applies to",
                    pods(rule)
                ),
                "remove the allow, or narrow the deny (deny wins over every allow)".into(),
            )
        });
    }
    for ((rule, other), example) in bypassed {
        out.push(Finding {
            other: Some(places.place(&other)),
            ..finding(
                Check::L7Bypassed,
                places.place(&rule),
                format!("its L7 rules do not apply where another rule allows the same peers every request ({example})"),
                "give the other rule the same L7 rules on that port, or leave the port out of it".into(),
            )
        });
    }
}

/// A contribution that resolves to no peer here (`toFQDNs` offline, a
/// selector matching nobody): not compared.
fn selects_nobody(r: &Resolved<'_>) -> bool {
    !r.all && r.addrs.is_empty() && r.ids.iter().all(|s| s.is_empty())
}

fn ids(r: &Resolved<'_>) -> BTreeSet<NumericIdentity> {
    r.ids.iter().flat_map(|s| s.iter().copied()).collect()
}

/// `o` allows (or denies) every peer and port `c` allows; with `l7`, every
/// request too.
fn covers(o: &Resolved<'_>, c: &Resolved<'_>, l7: bool) -> bool {
    let peers = o.all || {
        let theirs = ids(o);
        !c.all
            && c.ids.iter().all(|s| s.is_subset(&theirs))
            && c.addrs.iter().all(|a| theirs.contains(&a.1) || o.addrs.contains(a))
    };
    let ports = c.ports.iter().all(|&(p, lo, hi)| o.covers(p, u32::from(lo), u32::from(hi)));
    let requests = !l7 || o.l7.is_none() || o.l7 == c.l7;
    peers && ports && requests
}

/// Some peer on some port both allow.
fn overlaps(o: &Resolved<'_>, c: &Resolved<'_>) -> bool {
    let peers = o.all || c.all || {
        let theirs = ids(o);
        ids(c).iter().any(|i| theirs.contains(i)) || c.addrs.iter().any(|a| o.addrs.contains(a))
    };
    peers && c.ports.iter().any(|&c| o.ports.iter().any(|&o| port_overlap(o, c)))
}

fn port_overlap((p, a, b): (Proto, u16, u16), (q, c, d): (Proto, u16, u16)) -> bool {
    p == Proto::Any || q == Proto::Any || (p == q && a <= d && c <= b)
}

/// The ports of `c` that `o` allows whole, as text.
fn shared_ports(o: &Resolved<'_>, c: &Resolved<'_>) -> String {
    let ports: Vec<String> = c
        .ports
        .iter()
        .filter(|&&c| o.ports.iter().any(|&o| port_overlap(o, c)))
        .map(|&(p, lo, hi)| if lo == hi { format!("{lo}/{}", p.as_str()) } else { format!("{lo}-{hi}/{}", p.as_str()) })
        .collect();
    format!("port {}", ports.join(", "))
}

fn default_deny(engine: &Engine, out: &mut Vec<Finding>) {
    let mut open: BTreeMap<String, [Vec<String>; 2]> = BTreeMap::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for key in engine.pod_keys() {
        let Some((pod, _)) = engine.pod(&key) else { continue };
        let ns = pod.namespace.clone();
        *counts.entry(ns.clone()).or_default() += 1;
        let policy = engine.endpoint_policy(&key);
        let entry = open.entry(ns).or_default();
        for (i, d) in Direction::BOTH.into_iter().enumerate() {
            let closed = policy.is_some_and(|p| match d {
                Direction::Ingress => p.ingress.default_deny,
                Direction::Egress => p.egress.default_deny,
            });
            if !closed {
                entry[i].push(pod.name.clone());
            }
        }
    }
    for (ns, [ingress, egress]) in open {
        if ingress.is_empty() && egress.is_empty() {
            continue;
        }
        let list = |v: &[String]| {
            let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(" and {} more", v.len() - 5));
            }
            s
        };
        let mut parts = Vec::new();
        if !ingress.is_empty() {
            parts.push(format!("{} accept connections no policy allows ({})", ingress.len(), list(&ingress)));
        }
        if !egress.is_empty() {
            parts.push(format!("{} may connect where no policy allows ({})", egress.len(), list(&egress)));
        }
        let n = counts.get(&ns).copied().unwrap_or(0);
        out.push(Finding {
            check: Check::NoDefaultDeny,
            rule: None,
            other: None,
            namespace: Some(ns.clone()),
            guardrail: None,
            message: format!("of its {n} pod(s), {}", parts.join("; ")),
            fix: format!(
                "apply a default deny — NetworkPolicy {{metadata: {{name: default-deny, namespace: {ns}}}, spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}}} — then allow what each pod needs (DNS to kube-dns first)"
            ),
        });
    }
}

pub mod guardrails;

#[cfg(test)]
mod tests;
