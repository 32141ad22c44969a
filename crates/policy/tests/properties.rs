//! Property tests of the policy algebra over random clusters and policies:
//! order independence, incremental = full, batches = one change at a time,
//! deny wins, adding an allow never
//! removes reachability, unselected pods are reachable, a RateLimit
//! changes no reachability and puts exactly the cells it covers through
//! the proxy, and what `policy lint` calls shadowed or dead is: taking
//! it out changes no verdict.

use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::api::{Object, PeerRule, PolicyBody};
use bulkhead_policy::diag::Sink;
use std::collections::BTreeMap;
use std::sync::Arc;

use bulkhead_policy::api::Direction;
use bulkhead_policy::engine::{Change, EndpointDiff, Engine};
use bulkhead_policy::lint::{Check, lint};
use bulkhead_policy::reach::{ProbePort, Reach, ReachMatrix, reach};
use bulkhead_policy::repository::{PolicyId, Proto, RuleRef};
use bulkhead_policy::resolve::{Peer as MapPeer, PolicyEntry, PolicyKey};
use proptest::prelude::*;

const NS: [&str; 3] = ["a", "b", "c"];
const APPS: [&str; 3] = ["x", "y", "z"];
const PORTS: [u16; 3] = [80, 443, 8080];

#[derive(Debug, Clone)]
struct PodSpec {
    ns: usize,
    app: usize,
}

#[derive(Debug, Clone)]
enum Peer {
    App(usize, Option<usize>),
    AllInNs,
    Entity(&'static str),
    Cidr,
    Anyone,
}

#[derive(Debug, Clone)]
struct Elem {
    peer: Peer,
    port: Option<usize>,
    deny: bool,
}

#[derive(Debug, Clone)]
struct PolicySpec {
    /// 0 CNP, 1 CCNP, 2 NetworkPolicy.
    kind: u8,
    ns: usize,
    subject: Option<usize>,
    ingress: Vec<Elem>,
    egress: Vec<Elem>,
    /// enableDefaultDeny: false for both directions (CNP/CCNP only).
    no_default_deny: bool,
}

impl PolicySpec {
    fn selects(&self, pod: &PodSpec) -> bool {
        let ns_ok = self.kind == 1 || self.ns == pod.ns;
        ns_ok && self.subject.is_none_or(|a| a == pod.app)
    }
}

fn pod_yaml(i: usize, p: &PodSpec) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {}, labels: {{app: {}}}}}\nstatus: {{podIP: 198.18.0.{}}}\n",
        NS[p.ns],
        APPS[p.app],
        i + 1
    )
}

fn cilium_peer(p: &Peer, dir_from: bool) -> String {
    let pre = if dir_from { "from" } else { "to" };
    match p {
        Peer::App(a, None) => format!("{pre}Endpoints: [{{matchLabels: {{app: {}}}}}]", APPS[*a]),
        Peer::App(a, Some(n)) => {
            format!(
                "{pre}Endpoints: [{{matchLabels: {{app: {}, k8s:io.kubernetes.pod.namespace: {}}}}}]",
                APPS[*a], NS[*n]
            )
        }
        Peer::AllInNs => format!("{pre}Endpoints: [{{}}]"),
        Peer::Entity(e) => format!("{pre}Entities: [{e}]"),
        Peer::Cidr => format!("{pre}CIDR: [198.18.0.0/30]"),
        Peer::Anyone => String::new(),
    }
}

fn np_peer(p: &Peer) -> String {
    match p {
        Peer::App(a, None) => format!("[{{podSelector: {{matchLabels: {{app: {}}}}}}}]", APPS[*a]),
        Peer::App(a, Some(n)) => format!(
            "[{{podSelector: {{matchLabels: {{app: {}}}}}, namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}}}]",
            APPS[*a], NS[*n]
        ),
        Peer::AllInNs => "[{podSelector: {}}]".into(),
        Peer::Cidr => "[{ipBlock: {cidr: 198.18.0.0/30}}]".into(),
        Peer::Entity(_) | Peer::Anyone => "[]".into(),
    }
}

fn policy_yaml(i: usize, p: &PolicySpec) -> String {
    let subject = match p.subject {
        Some(a) => format!("{{matchLabels: {{app: {}}}}}", APPS[a]),
        None => "{}".into(),
    };
    if p.kind == 2 {
        let rules = |elems: &[Elem], key: &str| {
            let mut s = String::new();
            for e in elems {
                let ports = e.port.map(|x| format!("\n    ports: [{{port: {}}}]", PORTS[x])).unwrap_or_default();
                s.push_str(&format!("  - {key}: {}{ports}\n", np_peer(&e.peer)));
            }
            s
        };
        let mut types = vec!["Ingress"];
        if !p.egress.is_empty() {
            types.push("Egress");
        }
        let ing = rules(&p.ingress, "from");
        let eg = rules(&p.egress, "to");
        return format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: {}}}\nspec:\n  podSelector: {subject}\n  policyTypes: [{}]\n{}{}",
            NS[p.ns],
            types.join(", "),
            if ing.is_empty() { "  ingress: []\n".to_string() } else { format!("  ingress:\n{ing}") },
            if eg.is_empty() { String::new() } else { format!("  egress:\n{eg}") },
        );
    }
    let section = |elems: &[Elem], deny: bool, from: bool| {
        let mut s = String::new();
        for e in elems.iter().filter(|e| e.deny == deny) {
            let peer = cilium_peer(&e.peer, from);
            let ports = e.port.map(|x| format!("toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]", PORTS[x]));
            let body = match (peer.is_empty(), ports) {
                (true, None) => "toPorts: [{ports: [{port: \"0\", protocol: ANY}]}]".to_string(),
                (true, Some(p)) => p,
                (false, None) => peer,
                (false, Some(p)) => format!("{peer}, {p}"),
            };
            s.push_str(&format!("  - {{{body}}}\n"));
        }
        s
    };
    let mut spec = format!("  endpointSelector: {subject}\n");
    for (name, elems, deny, from) in [
        ("ingress", &p.ingress, false, true),
        ("ingressDeny", &p.ingress, true, true),
        ("egress", &p.egress, false, false),
        ("egressDeny", &p.egress, true, false),
    ] {
        let s = section(elems, deny, from);
        if !s.is_empty() {
            spec.push_str(&format!("  {name}:\n{s}"));
        }
    }
    if p.no_default_deny {
        spec.push_str("  enableDefaultDeny: {ingress: false, egress: false}\n");
    }
    let (kind, meta) = if p.kind == 1 {
        ("CiliumClusterwideNetworkPolicy", format!("{{name: ccnp{i}}}"))
    } else {
        ("CiliumNetworkPolicy", format!("{{name: cnp{i}, namespace: {}}}", NS[p.ns]))
    };
    format!("---\napiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\nspec:\n{spec}")
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (0..3usize, prop::option::of(0..3usize)).prop_map(|(a, n)| Peer::App(a, n)),
        Just(Peer::AllInNs),
        prop::sample::select(vec!["all", "world", "cluster", "host"]).prop_map(Peer::Entity),
        Just(Peer::Cidr),
        Just(Peer::Anyone),
    ]
}

fn arb_elem(kind: u8) -> impl Strategy<Value = Elem> {
    (arb_peer(), prop::option::of(0..3usize), any::<bool>()).prop_map(move |(peer, port, deny)| {
        let deny = deny && kind != 2;
        // NetworkPolicy has no entities; Anyone is its empty peer list.
        let peer = if kind == 2 && matches!(peer, Peer::Entity(_)) { Peer::Anyone } else { peer };
        Elem { peer, port, deny }
    })
}

fn arb_policy() -> impl Strategy<Value = PolicySpec> {
    (0..3u8).prop_flat_map(|kind| {
        (
            Just(kind),
            0..3usize,
            prop::option::of(0..3usize),
            prop::collection::vec(arb_elem(kind), 0..3),
            prop::collection::vec(arb_elem(kind), 0..3),
            any::<bool>(),
        )
            .prop_map(|(kind, ns, subject, mut ingress, egress, ndd)| {
                if ingress.is_empty() && egress.is_empty() {
                    ingress.push(Elem { peer: Peer::AllInNs, port: None, deny: false });
                }
                PolicySpec { kind, ns, subject, ingress, egress, no_default_deny: ndd && kind != 2 }
            })
    })
}

fn arb_pods() -> impl Strategy<Value = Vec<PodSpec>> {
    prop::collection::vec((0..3usize, 0..3usize).prop_map(|(ns, app)| PodSpec { ns, app }), 2..7)
}

fn decode(src: &str) -> Vec<Object> {
    let mut sink = Sink::new("prop.yaml");
    let objs = decode_str(src, &DecodeOptions::default(), &mut sink);
    assert_eq!(sink.error_count(), 0, "{src}\n{:#?}", sink.diagnostics);
    objs
}

fn cluster(pods: &[PodSpec]) -> Vec<Object> {
    let mut s: String =
        NS.iter().map(|n| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n")).collect();
    for (i, p) in pods.iter().enumerate() {
        s.push_str(&pod_yaml(i, p));
    }
    decode(&s)
}

fn policies(ps: &[PolicySpec], offset: usize) -> Vec<Object> {
    ps.iter().enumerate().flat_map(|(i, p)| decode(&policy_yaml(i + offset, p))).collect()
}

fn matrix(objects: Vec<Object>) -> ReachMatrix {
    let e = Engine::from_objects(objects);
    let ports: Vec<ProbePort> = PORTS.iter().map(|p| ProbePort { proto: Proto::Tcp, port: *p }).collect();
    reach(&e, &ports)
}

fn cells(m: &ReachMatrix) -> impl Iterator<Item = (&String, &String, &String, Reach)> {
    m.verdicts.iter().flat_map(|(f, row)| row.iter().flat_map(move |(t, c)| c.iter().map(move |(p, v)| (f, t, p, *v))))
}

/// An endpoint's policy with identities replaced by their labels, so that
/// engines that allocated numbers in different orders compare equal.
fn normalised(e: &Engine, key: &str) -> Vec<String> {
    let Some(p) = e.endpoint_policy(key) else { return vec!["none".into()] };
    let mut out = Vec::new();
    for (dir, d) in [("ingress", &p.ingress), ("egress", &p.egress)] {
        out.push(format!("{dir} enforced={} default_deny={}", d.enforced, d.default_deny));
        for (k, v) in &d.entries {
            let peer = match k.peer {
                MapPeer::Identity(id) => {
                    e.identity(id).map(|i| i.labels.to_string()).unwrap_or_else(|| format!("?{id}"))
                }
                other => other.to_string(),
            };
            let refs: Vec<String> = v.refs.iter().map(ToString::to_string).collect();
            out.push(format!("{dir} {peer} {} {}-{} {:?} {}", k.proto, k.lo, k.hi, v.verdict, refs.join(";")));
        }
    }
    out.sort();
    out
}

/// A deterministic shuffle (xorshift from the seed).
fn shuffle(objs: &mut [Object], seed: u64) {
    let mut s = seed | 1;
    for i in (1..objs.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        objs.swap(i, (s % (i as u64 + 1)) as usize);
    }
}

/// The change that adds `o` to an engine.
fn upsert(o: Object) -> Change {
    match o {
        Object::Pod(p) => Change::UpsertPod(p),
        Object::Policy(p) => Change::UpsertPolicy(p),
        Object::Namespace(n) => Change::UpsertNamespace(n),
    }
}

/// The change that removes `o` from an engine again.
fn delete(o: &Object) -> Change {
    match o {
        Object::Pod(p) => Change::DeletePod(p.key()),
        Object::Policy(p) => Change::DeletePolicy(PolicyId::of(p)),
        Object::Namespace(n) => Change::DeleteNamespace(n.name.clone()),
    }
}

/// A stand-in for the kernel's maps, fed only by the engine's diffs.
#[derive(Default)]
struct Maps(BTreeMap<(String, Direction), BTreeMap<PolicyKey, Arc<PolicyEntry>>>);

impl Maps {
    fn feed(&mut self, diffs: Vec<EndpointDiff>) {
        for d in diffs {
            let m = self.0.entry((d.endpoint.clone(), d.direction)).or_default();
            for k in &d.removed {
                m.remove(k);
            }
            m.extend(d.upserted);
        }
    }

    /// The maps hold exactly what `engine` holds for every endpoint.
    fn check(&self, engine: &Engine) -> Result<(), TestCaseError> {
        for k in engine.pod_keys() {
            let pol = engine.endpoint_policy(&k).expect("every pod has a policy");
            for (d, dp) in [(Direction::Ingress, &pol.ingress), (Direction::Egress, &pol.egress)] {
                let fed = self.0.get(&(k.clone(), d)).cloned().unwrap_or_default();
                let held: BTreeMap<PolicyKey, Arc<PolicyEntry>> = dp.entries.clone().into_iter().collect();
                prop_assert_eq!(&fed, &held, "diff stream for {} {:?}", k, d);
            }
        }
        Ok(())
    }
}

/// `engine`, built change by change, equals one built at once from `objs`
/// without `removed`.
fn equals_full(engine: &Engine, objs: Vec<Object>, removed: &[Object], how: &str) -> Result<(), TestCaseError> {
    let kept: Vec<Object> = objs.into_iter().filter(|o| !removed.contains(o)).collect();
    let full = Engine::from_objects(kept);
    prop_assert_eq!(full.pod_keys(), engine.pod_keys());
    for k in full.pod_keys() {
        prop_assert_eq!(normalised(&full, &k), normalised(engine, &k), "endpoint {} {}", k, how);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn result_is_independent_of_order(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 1..5), seed in any::<u64>()) {
        let mut objs = cluster(&pods);
        objs.extend(policies(&ps, 0));
        let base = matrix(objs.clone());
        shuffle(&mut objs, seed);
        prop_assert_eq!(base, matrix(objs));
    }

    #[test]
    fn incremental_equals_full(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 1..5), seed in any::<u64>(), drop in 0..3usize) {
        let mut objs = policies(&ps, 0);
        objs.extend(cluster(&pods));
        shuffle(&mut objs, seed);
        let mut inc = Engine::default();
        // Apply everything in random order, then delete `drop` objects again.
        let removed: Vec<Object> = objs.iter().filter(|o| !matches!(o, Object::Namespace(_))).take(drop).cloned().collect();
        let mut order: Vec<String> = Vec::new();
        let mut maps = Maps::default();
        for o in objs.clone() {
            order.push(match &o {
                Object::Pod(p) => format!("pod {} {:?}", p.key(), p.ips),
                Object::Policy(p) => format!("policy {}", p.name),
                Object::Namespace(n) => format!("ns {}", n.name),
            });
            maps.feed(inc.apply(upsert(o)));
        }
        for o in &removed {
            maps.feed(inc.apply(delete(o)));
        }
        maps.check(&inc)?;
        equals_full(&inc, objs, &removed, &format!("after {order:?}"))?;
    }

    #[test]
    fn batches_equal_one_change_at_a_time(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 1..6), seed in any::<u64>(), chunk in 1..6usize, drop in 0..4usize) {
        let mut objs = policies(&ps, 0);
        objs.extend(cluster(&pods));
        shuffle(&mut objs, seed);
        let removed: Vec<Object> = objs.iter().filter(|o| !matches!(o, Object::Namespace(_))).take(drop).cloned().collect();
        let mut batched = Engine::default();
        let mut maps = Maps::default();
        // Batches of `chunk` changes; the deletes in one batch with the last upserts.
        let all: Vec<Change> = objs.iter().cloned().map(upsert).chain(removed.iter().map(delete)).collect();
        for batch in all.chunks(chunk) {
            maps.feed(batched.apply_batch(batch.to_vec()));
        }
        maps.check(&batched)?;
        equals_full(&batched, objs, &removed, &format!("in batches of {chunk}"))?;
    }

    #[test]
    fn deny_always_wins(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 0..4), ns in 0..3usize, app in 0..3usize) {
        let mut objs = cluster(&pods);
        objs.extend(policies(&ps, 0));
        let deny = PolicySpec { kind: 0, ns, subject: Some(app), ingress: vec![Elem { peer: Peer::Entity("all"), port: None, deny: true }], egress: vec![], no_default_deny: false };
        objs.extend(policies(&[deny], 100));
        let m = matrix(objs);
        for (from, to, port, v) in cells(&m) {
            let target = pods.iter().enumerate().any(|(i, p)| format!("{}/p{i}", NS[p.ns]) == *to && p.ns == ns && p.app == app);
            if target && from != to {
                prop_assert_eq!(v, Reach::Denied, "{} -> {} {}", from, to, port);
            }
        }
    }

    #[test]
    fn adding_an_allow_never_removes_reachability(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 0..4), extra in arb_policy()) {
        let mut objs = cluster(&pods);
        objs.extend(policies(&ps, 0));
        let before = matrix(objs.clone());
        // An allow-only policy that does not turn on default deny.
        let mut extra = extra;
        extra.kind = if extra.kind == 2 { 0 } else { extra.kind };
        extra.no_default_deny = true;
        for e in extra.ingress.iter_mut().chain(extra.egress.iter_mut()) { e.deny = false; }
        objs.extend(policies(&[extra], 100));
        let after = matrix(objs);
        for (from, to, port, v) in cells(&before) {
            if v != Reach::Denied {
                prop_assert_ne!(after.verdicts[from][to][port], Reach::Denied, "{} -> {} {}", from, to, port);
            }
        }
    }

    #[test]
    fn unselected_pods_are_reachable(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 0..4)) {
        let mut objs = cluster(&pods);
        objs.extend(policies(&ps, 0));
        let m = matrix(objs);
        for (i, src) in pods.iter().enumerate() {
            for (j, dst) in pods.iter().enumerate() {
                let egress_sel = ps.iter().any(|p| !p.egress.is_empty() && p.selects(src));
                let ingress_sel = ps.iter().any(|p| (!p.ingress.is_empty() || p.kind == 2) && p.selects(dst));
                if !egress_sel && !ingress_sel {
                    let (f, t) = (format!("{}/p{i}", NS[src.ns]), format!("{}/p{j}", NS[dst.ns]));
                    for port in &m.ports {
                        prop_assert_eq!(m.verdicts[&f][&t][port], Reach::Allowed, "{} -> {} {}", f, t, port);
                    }
                }
            }
        }
    }

    #[test]
    fn a_rate_limit_changes_no_reachability_and_proxies_exactly_what_it_covers(
        pods in arb_pods(),
        ps in prop::collection::vec(arb_policy(), 0..4),
        ns in 0..3usize,
        subject in prop::option::of(0..3usize),
        peer in prop::option::of((0..3usize, prop::option::of(0..3usize))),
        port in 0..3usize,
    ) {
        let mut objs = cluster(&pods);
        objs.extend(policies(&ps, 0));
        let before = matrix(objs.clone());
        let sel = subject.map_or("{}".to_string(), |a| format!("{{matchLabels: {{app: {}}}}}", APPS[a]));
        let from = match peer {
            Some((a, n)) => format!("{}, ", cilium_peer(&Peer::App(a, n), true)),
            None => String::new(),
        };
        objs.extend(decode(&format!(
            "apiVersion: bulkhead.io/v1alpha1\nkind: RateLimit\nmetadata: {{name: rl, namespace: {}}}\nspec:\n  endpointSelector: {sel}\n  ingress:\n  - {{{from}toPorts: [{{ports: [{{port: \"{}\"}}]}}], requestsPerSecond: 10}}\n",
            NS[ns], PORTS[port]
        )));
        let after = matrix(objs);
        let key = |i: usize, p: &PodSpec| format!("{}/p{i}", NS[p.ns]);
        for (i, src) in pods.iter().enumerate() {
            for (j, dst) in pods.iter().enumerate() {
                let (f, t) = (key(i, src), key(j, dst));
                let limited_dst = dst.ns == ns && subject.is_none_or(|a| a == dst.app);
                let limited_src = match peer {
                    None => true,
                    Some((a, n)) => src.app == a && src.ns == n.unwrap_or(ns),
                };
                for (k, pl) in before.ports.iter().enumerate() {
                    let (b, a) = (before.verdicts[&f][&t][pl], after.verdicts[&f][&t][pl]);
                    prop_assert_eq!(b == Reach::Denied, a == Reach::Denied, "{} -> {} {}: {:?} then {:?}", f, t, pl, b, a);
                    let covered = i != j && limited_dst && limited_src && k == port && b != Reach::Denied;
                    let want = if covered { Reach::L7 } else { b };
                    prop_assert_eq!(a, want, "{} -> {} {} (covered: {})", f, t, pl, covered);
                }
            }
        }
    }

    #[test]
    fn what_lint_calls_shadowed_or_dead_changes_no_verdict(pods in arb_pods(), ps in prop::collection::vec(arb_policy(), 1..6)) {
        let mut objs = cluster(&pods);
        objs.extend(policies(&ps, 0));
        let base = matrix(objs.clone());
        let findings = lint(&mut Engine::from_objects(objs.clone()), true, &[]);
        for f in findings.iter().filter(|f| matches!(f.check, Check::Shadowed | Check::DeadAllow)) {
            let rule = &f.rule.as_ref().expect("a rule's finding").rule;
            let mut without = objs.clone();
            take_out(&mut without, rule);
            prop_assert_eq!(&base, &matrix(without), "{}", f);
        }
    }
}

/// Takes `rule` (a peer rule: `spec.ingress[1]`) out of its policy: a
/// NetworkPolicy rule is removed; a Cilium one becomes `{}`, which allows
/// nothing and keeps its section (and so the direction's enforcement).
fn take_out(objs: &mut [Object], rule: &RuleRef) {
    let (section, index) =
        rule.rule.trim_start_matches("spec.").trim_end_matches(']').split_once('[').expect("a peer rule's path");
    let index: usize = index.parse().expect("index");
    let policy = objs
        .iter_mut()
        .find_map(|o| match o {
            Object::Policy(p) if p.kind == rule.kind && p.name == rule.name && p.namespace == rule.namespace => Some(p),
            _ => None,
        })
        .expect("the rule's policy");
    match &mut policy.body {
        PolicyBody::Cilium(rules) => {
            let r = &mut rules[0];
            let list = match section {
                "ingress" => r.ingress.as_mut(),
                "ingressDeny" => r.ingress_deny.as_mut(),
                "egress" => r.egress.as_mut(),
                "egressDeny" => r.egress_deny.as_mut(),
                other => panic!("section {other}"),
            };
            let pr = &mut list.expect("the section")[index];
            *pr = PeerRule { path: pr.path.clone(), ..PeerRule::default() };
        }
        PolicyBody::Kubernetes(spec) => {
            match section {
                "ingress" => spec.ingress.remove(index),
                "egress" => spec.egress.remove(index),
                other => panic!("section {other}"),
            };
        }
        PolicyBody::RateLimit(_) => panic!("a RateLimit allows nothing"),
    }
}
