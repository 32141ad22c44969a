use super::*;
use crate::reach::Reach;
use crate::repository::Proto;
use crate::testutil::{cell, engine, objects, pod};

fn cluster() -> String {
    [
        pod("a", "web", "app: web", "198.18.0.1"),
        pod("a", "db", "app: db", "198.18.0.2"),
        pod("b", "client", "app: client", "198.18.0.3"),
        pod("b", "other", "app: other", "198.18.0.4"),
    ]
    .concat()
}

const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n";

#[test]
fn unselected_pods_are_reachable() {
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: web}}}}]}}]\n"
        ),
    );
    assert_eq!(cell(&e, "b/client", "a/web", 80), Reach::Allowed);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::Allowed);
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Denied);
}

#[test]
fn cnp_peers_default_to_the_policy_namespace() {
    // `app: client` lives in b; the CNP in a only sees peers in a.
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: client}}}}]}}]\n"
        ),
    );
    assert_eq!(cell(&e, "b/client", "a/web", 80), Reach::Denied);
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: client, k8s:io.kubernetes.pod.namespace: b}}}}]}}]\n"
        ),
    );
    assert_eq!(cell(&e, "b/client", "a/web", 80), Reach::Allowed);
}

#[test]
fn deny_wins_over_allow() {
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{fromEntities: [all]}}]\n  ingressDeny: [{{fromEndpoints: [{{matchLabels: {{app: web}}}}], toPorts: [{{ports: [{{port: \"5432\", protocol: TCP}}]}}]}}]\n"
        ),
    );
    assert_eq!(cell(&e, "a/web", "a/db", 5432), Reach::Denied);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::Allowed);
    assert_eq!(cell(&e, "b/client", "a/db", 5432), Reach::Allowed);
}

#[test]
fn empty_egress_rule_is_default_deny() {
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress: [{{}}]\n"
        ),
    );
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::Denied);
    assert_eq!(cell(&e, "a/db", "a/web", 80), Reach::Allowed);
}

#[test]
fn enable_default_deny_false_only_adds() {
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  enableDefaultDeny: {{ingress: false}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: web}}}}]}}]\n"
        ),
    );
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Allowed);
}

#[test]
fn network_policy_ipblock_matches_pod_addresses() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{ipBlock: {cidr: 198.18.0.0/30, except: [198.18.0.1/32]}}]\n";
    let e = engine(&cluster(), np);
    // .3 is in the block; .1 (web) is excepted; .4 is outside.
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Allowed);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::Denied);
    assert_eq!(cell(&e, "b/other", "a/db", 80), Reach::Denied);
}

#[test]
fn network_policy_namespace_selector() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}, podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 80}]\n";
    let e = engine(&cluster(), np);
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Allowed);
    assert_eq!(cell(&e, "b/client", "a/db", 81), Reach::Denied);
    assert_eq!(cell(&e, "b/other", "a/db", 80), Reach::Denied);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::Denied);
}

#[test]
fn ccnp_wildcard_peers_are_all_pods() {
    let ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{}]}]\n";
    let mut e = engine(&cluster(), ccnp);
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Allowed);
    let world = e.identity_of_ip("203.0.113.9".parse().expect("ip")).0;
    let pol = e.endpoint_policy("a/db").expect("endpoint").ingress.clone();
    assert!(!pol.lookup(None, world, Proto::Tcp, 80).passes(), "world is not a pod");
    let _ = e.fqdn_identity("example.com");
}

#[test]
fn l7_redirect_only_for_covered_peers() {
    let p = format!(
        "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}], rules: {{http: [{{method: GET}}]}}}}]\n  - fromEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: b}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
    );
    let e = engine(&cluster(), &p);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::L7);
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Allowed);
}

#[test]
fn incremental_equals_full() {
    let policies = objects(&format!(
        "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: web}}}}], toPorts: [{{ports: [{{port: \"5432\"}}]}}]}}]\n---\n{CNP}metadata: {{name: q, namespace: b}}\nspec:\n  endpointSelector: {{}}\n  egress: [{{toEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: a}}}}]}}]\n  egressDeny: [{{toCIDR: [198.18.0.0/16]}}]\n"
    ));
    let pods = objects(&cluster());
    let full = Engine::from_objects(pods.iter().cloned().chain(policies.iter().cloned()));
    let mut inc = Engine::default();
    for o in policies.iter().chain(&pods) {
        let c = match o.clone() {
            Object::Pod(p) => Change::UpsertPod(p),
            Object::Policy(p) => Change::UpsertPolicy(p),
            Object::Namespace(n) => Change::UpsertNamespace(n),
        };
        inc.apply(c);
    }
    for k in full.pod_keys() {
        assert_eq!(full.endpoint_policy(&k), inc.endpoint_policy(&k), "{k}");
    }
    // Removing the pod that defined an identity removes its entries elsewhere.
    let diffs = inc.apply(Change::DeletePod("a/web".into()));
    assert!(diffs.iter().any(|d| d.endpoint == "a/db" && !d.removed.is_empty()), "{diffs:#?}");
}

#[test]
fn l7_still_restricts_when_default_deny_is_off() {
    let p = format!(
        "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  enableDefaultDeny: {{ingress: false}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}], rules: {{http: [{{method: GET}}]}}}}]\n"
    );
    let e = engine(&cluster(), &p);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::L7);
    assert_eq!(cell(&e, "b/client", "a/db", 80), Reach::Allowed);
    assert_eq!(cell(&e, "a/web", "a/db", 81), Reach::Allowed);
}

#[test]
fn local_host_is_allowed_unless_denied() {
    let host = Reserved::Host.id();
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{}}]\n"
        ),
    );
    assert!(e.endpoint_policy("a/db").expect("endpoint").ingress.lookup(None, host, Proto::Tcp, 22).passes());
    let e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingressDeny: [{{fromEntities: [host]}}]\n"
        ),
    );
    assert!(!e.endpoint_policy("a/db").expect("endpoint").ingress.lookup(None, host, Proto::Tcp, 22).passes());
}

#[test]
fn requires_constrain_endpoint_peers_and_follow_new_pods() {
    // db allows web and client-from-anywhere, but requires env=prod of every endpoint peer.
    let p = format!(
        "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n  - fromRequires: [{{matchLabels: {{env: prod}}}}]\n"
    );
    let mut e = engine(&cluster(), &p);
    assert_eq!(cell(&e, "a/web", "a/db", 80), Reach::Denied, "web lacks env=prod");
    let diffs =
        e.apply(Change::UpsertPod(match objects(&pod("a", "web2", "app: web, env: prod", "198.18.0.9")).remove(0) {
            Object::Pod(p) => p,
            o => panic!("{o:?}"),
        }));
    assert!(diffs.iter().any(|d| d.endpoint == "a/db" && !d.upserted.is_empty()), "{diffs:#?}");
    assert_eq!(cell(&e, "a/web2", "a/db", 80), Reach::Allowed);
}

#[test]
fn ipblock_straddling_identity_after_namespace_relabel() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress:\n  - to: [{ipBlock: {cidr: 198.18.0.0/30}}]\n";
    let ns = |n: &str| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
    let steps = [
        pod("b", "p3", "app: y", "198.18.0.4"),
        np.to_string(),
        pod("b", "p1", "app: y", "198.18.0.2"),
        pod("b", "p0", "app: z", "198.18.0.1"),
        pod("a", "p2", "app: x", "198.18.0.3"),
        ns("b"),
    ];
    let mut inc = Engine::default();
    let mut all = Vec::new();
    for s in &steps {
        for o in objects(s) {
            all.push(o.clone());
            inc.apply(match o {
                Object::Pod(p) => Change::UpsertPod(p),
                Object::Policy(p) => Change::UpsertPolicy(p),
                Object::Namespace(n) => Change::UpsertNamespace(n),
            });
        }
    }
    // b/y straddles the block: its address inside keeps an address entry.
    let addr: IpAddr = "198.18.0.2".parse().expect("ip");
    let has = |e: &Engine| {
        e.endpoint_policy("a/p2")
            .is_some_and(|p| p.egress.entries.keys().any(|k| k.peer == crate::resolve::Peer::Address(addr)))
    };
    assert!(has(&inc));
    let full = Engine::from_objects(all);
    assert!(has(&full));
    assert_eq!(
        full.endpoint_policy("a/p2").map(|p| p.egress.entries.len()),
        inc.endpoint_policy("a/p2").map(|p| p.egress.entries.len())
    );
}

/// Whether `from`'s egress policy lets it reach `ip` on TCP `port`, with
/// the identity the datapath gives `ip`.
fn egress_allows(e: &Engine, from: &str, ip: &str, port: u16) -> bool {
    let ip: IpAddr = ip.parse().expect("address");
    let (id, _) = e.identity_of_ip(ip);
    let policy = e.endpoint_policy(from).expect("policy");
    match policy.egress.lookup(Some(ip), id, Proto::Tcp, port) {
        crate::resolve::Decision::Entry(_, entry) => entry.verdict == crate::resolve::Verdict::Allow,
        crate::resolve::Decision::Default { deny } => !deny,
    }
}

#[test]
fn learnt_addresses_are_selected_by_matching_to_fqdns_and_still_by_cidr_rules() {
    let mut e = engine(
        &cluster(),
        &format!(
            "{CNP}metadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  \
             - toFQDNs: [{{matchPattern: \"*.stripe.com\"}}]\n    toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]\n  \
             - toCIDRSet: [{{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
        ),
    );
    let names = |n: &[&str]| n.iter().map(|s| (*s).to_string()).collect::<BTreeSet<String>>();
    // Unknown: world, nothing on 443; the CIDR rule on 80.
    assert!(!egress_allows(&e, "a/web", "203.0.113.7", 443));
    assert!(egress_allows(&e, "a/web", "203.0.113.7", 80));

    // Learnt under a matching name: 443 opens, 80 stays (the CIDR rule
    // still sees the address); the ipcache holds the address itself.
    e.apply(Change::SetLearnt("203.0.113.7".parse().expect("ip"), names(&["api.stripe.com."])));
    assert!(egress_allows(&e, "a/web", "203.0.113.7", 443));
    assert!(egress_allows(&e, "a/web", "203.0.113.7", 80));
    let (id, _) = e.identity_of_ip("203.0.113.7".parse().expect("ip"));
    assert!(e.ipcache().contains(&(Cidr::host("203.0.113.7".parse().expect("ip")), id)));
    // In the except range: 443 by name, not 80.
    e.apply(Change::SetLearnt("203.0.113.200".parse().expect("ip"), names(&["api.stripe.com."])));
    assert!(egress_allows(&e, "a/web", "203.0.113.200", 443));
    assert!(!egress_allows(&e, "a/web", "203.0.113.200", 80));
    // Learnt under a name no selector matches: nothing by name.
    e.apply(Change::SetLearnt("198.51.100.9".parse().expect("ip"), names(&["evil.example.com."])));
    assert!(!egress_allows(&e, "a/web", "198.51.100.9", 443));
    // ... and no identity of its own: no selector wants it.
    assert_eq!(e.identity_of_ip("198.51.100.9".parse().expect("ip")).0, Reserved::WorldIpv4.id());
    // An address shared by both names: selected for the matching one.
    e.apply(Change::SetLearnt("198.51.100.9".parse().expect("ip"), names(&["evil.example.com.", "js.stripe.com."])));
    assert!(egress_allows(&e, "a/web", "198.51.100.9", 443));

    // Forgotten: back to the prefix's identity, 443 closes.
    e.apply(Change::SetLearnt("203.0.113.7".parse().expect("ip"), BTreeSet::new()));
    assert!(!egress_allows(&e, "a/web", "203.0.113.7", 443));
    assert!(egress_allows(&e, "a/web", "203.0.113.7", 80));
    assert!(!e.ipcache().iter().any(|(c, _)| *c == Cidr::host("203.0.113.7".parse().expect("ip"))));

    // Another pod's policy is unaffected; the same address sets share an identity.
    assert!(egress_allows(&e, "b/client", "203.0.113.200", 443), "b/client has no policy");
    e.apply(Change::SetLearnt("203.0.113.201".parse().expect("ip"), names(&["api.stripe.com."])));
    assert_eq!(
        e.identity_of_ip("203.0.113.201".parse().expect("ip")).0,
        e.identity_of_ip("203.0.113.200".parse().expect("ip")).0
    );
}
