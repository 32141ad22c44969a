use super::*;
use bulkhead_policy::api::{HttpRule, PolicyKind};
use bulkhead_policy::resolve::Peer;

const CLIENT: &str = "198.18.1.10";
const SERVER: &str = "198.18.1.20";
const OTHER: &str = "198.18.1.30";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn key(peer: Peer, lo: u16, hi: u16) -> PolicyKey {
    PolicyKey { peer, proto: Proto::Tcp, lo, hi }
}

fn rule_ref(name: &str, rule: &str) -> Arc<RuleRef> {
    Arc::new(RuleRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        namespace: Some("production".into()),
        name: name.into(),
        rule: rule.into(),
    })
}

fn redirect(policy: &str, method: &str, path: &str) -> PolicyEntry {
    let rules =
        L7Rules::Http(vec![HttpRule { method: Some(method.into()), path: Some(path.into()), ..HttpRule::default() }]);
    PolicyEntry {
        verdict: Verdict::Redirect(Arc::new(L7Policy { rules, allow_all: false, limits: Vec::new() })),
        refs: vec![rule_ref(policy, "spec.ingress[0]")],
    }
}

fn allow(policy: &str) -> PolicyEntry {
    PolicyEntry { verdict: Verdict::Allow, refs: vec![rule_ref(policy, "spec.ingress[1]")] }
}

fn endpoint(id: u32, addr: &str, identity: u32) -> Endpoint {
    Endpoint { id, name: format!("production/ep{id}"), identity, addrs: vec![ip(addr)], ingress: None, egress: None }
}

/// `by` as `side policy rule` strings.
fn by(v: &Verdicts) -> Vec<String> {
    v.by.iter().map(|(s, r)| format!("{s} {} {}", r.policy_name(), r.rule)).collect()
}

fn get(path: &str) -> HttpRequest<'_> {
    HttpRequest { method: "GET", path, host: "backend", headers: &[] }
}

fn post(path: &str) -> HttpRequest<'_> {
    HttpRequest { method: "POST", path, host: "backend", headers: &[] }
}

/// The seed: the backend (identity 2000) lets the frontend (1000) call
/// `GET /api/v1/products.*` on 8080, and lets identity 3000 in on 8080
/// without L7 rules.
fn seed() -> Rules {
    let mut server = endpoint(2, SERVER, 2000);
    server.ingress = Some(Direction {
        default_deny: true,
        entries: vec![
            (key(Peer::Identity(NumericIdentity(1000)), 8080, 8080), redirect("api", "GET", "/api/v1/products.*")),
            (key(Peer::Identity(NumericIdentity(3000)), 8080, 8080), allow("other")),
        ],
    });
    let update = Update {
        generation: 1,
        full: true,
        endpoints: vec![endpoint(1, CLIENT, 1000), server, endpoint(3, OTHER, 3000)],
        ..Update::default()
    };
    Rules::default().apply(&update).expect("compiles")
}

#[test]
fn the_servers_rules_decide_each_request() {
    let rules = seed();
    let conn = rules.connection(ip(CLIENT), ip(SERVER), 8080).expect("a connection");
    assert!(conn.has_rules());
    assert_eq!(conn.client.as_deref(), Some("production/ep1"));
    let v = conn.decide(&get("/api/v1/products?id=1"));
    assert!(v.allowed, "{v:?}");
    assert_eq!(by(&v), ["ingress production/api spec.ingress[0]"]);
    assert!(!conn.decide(&post("/api/v1/products")).allowed);
    assert!(!conn.decide(&get("/admin")).allowed);
}

#[test]
fn a_peer_allowed_without_l7_rules_has_no_checks() {
    let rules = seed();
    let conn = rules.connection(ip(OTHER), ip(SERVER), 8080).expect("a connection");
    assert!(!conn.has_rules());
    assert!(conn.decide(&post("/anything")).allowed);
}

#[test]
fn a_connection_the_policy_now_denies_is_refused() {
    let rules = seed();
    // Port 9090: nothing allows it, the ingress is default-deny.
    assert_eq!(
        rules.connection(ip(CLIENT), ip(SERVER), 9090).expect_err("refused"),
        Refused::Denied { side: Side::Ingress, endpoint: "production/ep2".into() }
    );
}

#[test]
fn nothing_passes_before_the_first_update_or_between_strangers() {
    assert_eq!(Rules::default().connection(ip(CLIENT), ip(SERVER), 8080).expect_err("refused"), Refused::NotSynced);
    let rules = seed();
    assert!(matches!(rules.connection(ip("198.18.9.1"), ip("198.18.9.2"), 80), Err(Refused::NotLocal { .. })));
}

#[test]
fn both_ends_rules_are_enforced() {
    let mut client = endpoint(1, CLIENT, 1000);
    client.egress = Some(Direction {
        default_deny: true,
        entries: vec![(key(Peer::Any, 0, u16::MAX), redirect("egress", "GET|POST", "/api/.*"))],
    });
    let mut rules = seed();
    rules = rules.apply(&Update { generation: 2, endpoints: vec![client], ..Update::default() }).expect("compiles");
    let conn = rules.connection(ip(CLIENT), ip(SERVER), 8080).expect("a connection");
    // Both allow it.
    let v = conn.decide(&get("/api/v1/products"));
    assert!(v.allowed);
    assert_eq!(v.by.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [Side::Egress, Side::Ingress]);
    // The client's egress allows POST, the server's ingress does not.
    let v = conn.decide(&post("/api/v1/products"));
    assert!(!v.allowed);
    assert_eq!(by(&v), ["ingress production/api spec.ingress[0]"]);
    // The server's ingress would allow it, the client's egress does not.
    let v = conn.decide(&get("/other"));
    assert_eq!(by(&v), ["egress production/egress spec.ingress[0]"]);
}

#[test]
fn the_servers_rules_see_the_headers_the_clients_rules_fixed() {
    use bulkhead_policy::api::{HeaderMatch, MismatchAction};
    let l7 = |rule: HttpRule, name: &str| PolicyEntry {
        verdict: Verdict::Redirect(Arc::new(L7Policy {
            rules: L7Rules::Http(vec![rule]),
            allow_all: false,
            limits: Vec::new(),
        })),
        refs: vec![rule_ref(name, "spec.ingress[0]")],
    };
    let fix = |name: &str, value: &str, action| HeaderMatch {
        name: name.into(),
        value: value.into(),
        mismatch: Some(action),
        secret: None,
    };
    let mut client = endpoint(1, CLIENT, 1000);
    let egress =
        HttpRule { header_matches: vec![fix("X-Team", "blue", MismatchAction::Replace)], ..HttpRule::default() };
    client.egress =
        Some(Direction { default_deny: true, entries: vec![(key(Peer::Any, 0, u16::MAX), l7(egress, "egress"))] });
    let mut server = endpoint(2, SERVER, 2000);
    let ingress = HttpRule {
        headers: vec!["X-Team: blue".into()],
        header_matches: vec![fix("X-Seen", "1", MismatchAction::Add)],
        ..HttpRule::default()
    };
    server.ingress = Some(Direction {
        default_deny: true,
        entries: vec![(key(Peer::Identity(NumericIdentity(1000)), 8080, 8080), l7(ingress, "ingress"))],
    });
    let update = Update { generation: 1, full: true, endpoints: vec![client, server], ..Update::default() };
    let rules = Rules::default().apply(&update).expect("compiles");
    let conn = rules.connection(ip(CLIENT), ip(SERVER), 8080).expect("a connection");
    let v = conn.decide(&HttpRequest { headers: &[("x-team", "red")], ..get("/") });
    assert!(v.allowed, "the server's rules saw X-Team as the client's rules left it");
    let got: Vec<_> = v.actions.iter().map(|a| (a.action, a.name.as_str(), a.found.as_deref())).collect();
    assert_eq!(got, [(MismatchAction::Replace, "X-Team", Some("red")), (MismatchAction::Add, "X-Seen", None)]);
    // REPLACE also sets a header that was absent.
    let v = conn.decide(&get("/"));
    assert_eq!((v.allowed, v.actions.len()), (true, 2));
}

#[test]
fn updates_change_and_remove_endpoints_and_keep_the_rest() {
    let rules = seed();
    let u = Update { generation: 2, removed: vec![2], ..Update::default() };
    let after = rules.apply(&u).expect("applies");
    assert_eq!((after.generation(), after.endpoints()), (2, 2));
    // The server's rules went with it; the client alone is local and has
    // none: nothing to check.
    assert!(!after.connection(ip(CLIENT), ip(SERVER), 8080).expect("a connection").has_rules());
    let full = Update { generation: 3, full: true, endpoints: vec![endpoint(9, OTHER, 3000)], ..Update::default() };
    assert_eq!(after.apply(&full).expect("applies").endpoints(), 1);
}

#[test]
fn an_update_whose_rules_do_not_compile_changes_nothing() {
    let rules = seed();
    let mut bad = endpoint(4, "198.18.1.40", 4000);
    bad.ingress = Some(Direction {
        default_deny: true,
        entries: vec![(key(Peer::Any, 80, 80), redirect("bad", "GET", "(unclosed"))],
    });
    let err = rules.apply(&Update { generation: 2, endpoints: vec![bad], ..Update::default() }).expect_err("refused");
    assert_eq!(err.endpoint, "production/ep4");
    assert_eq!(rules.generation(), 1);
}

#[test]
fn peers_get_the_kernels_identity() {
    let rules = seed()
        .apply(&Update {
            generation: 2,
            ipcache: Some(vec![
                ("10.0.0.0/8".parse().expect("cidr"), 16777217),
                ("10.1.0.0/16".parse().expect("cidr"), 16777218),
                ("fd00::/8".parse().expect("cidr"), 16777219),
            ]),
            ..Update::default()
        })
        .expect("applies");
    assert_eq!(rules.identity(ip("10.1.2.3")), NumericIdentity(16777218));
    assert_eq!(rules.identity(ip("10.2.2.3")), NumericIdentity(16777217));
    assert_eq!(rules.identity(ip("fd00::1")), NumericIdentity(16777219));
    assert_eq!(rules.identity(ip("::ffff:10.2.2.3")), NumericIdentity(16777217));
    assert_eq!(rules.identity(ip("192.0.2.1")), Reserved::WorldIpv4.id());
    assert_eq!(rules.identity(ip("2001:db8::1")), Reserved::WorldIpv6.id());
    assert_eq!(rules.identity(ip(CLIENT)), NumericIdentity(1000));
}

#[test]
fn an_update_survives_its_wire_form() {
    let mut server = endpoint(2, SERVER, 2000);
    server.ingress = Some(Direction {
        default_deny: true,
        entries: vec![(key(Peer::Identity(NumericIdentity(1000)), 8080, 8080), redirect("api", "GET", "/x"))],
    });
    let u = Update {
        generation: 7,
        full: true,
        endpoints: vec![server],
        removed: vec![3],
        ipcache: Some(vec![("10.0.0.0/8".parse().expect("cidr"), 5)]),
    };
    let line = serde_json::to_string(&u).expect("serializes");
    assert!(!line.contains('\n'));
    assert_eq!(serde_json::from_str::<Update>(&line).expect("parses"), u);
}

/// The client (identity 1000) may ask the resolver (2000) on UDP 53 for
/// `*.stripe.com` only: its egress DNS rule.
fn dns_client() -> Rules {
    use bulkhead_policy::api::FqdnSelector;
    let mut client = endpoint(1, CLIENT, 1000);
    let rules = L7Rules::Dns(vec![FqdnSelector::MatchPattern("*.stripe.com".into())]);
    client.egress = Some(Direction {
        default_deny: true,
        entries: vec![(
            PolicyKey { peer: Peer::Identity(NumericIdentity(2000)), proto: Proto::Udp, lo: 53, hi: 53 },
            PolicyEntry {
                verdict: Verdict::Redirect(Arc::new(L7Policy { rules, allow_all: false, limits: Vec::new() })),
                refs: vec![rule_ref("dns", "spec.egress[0]")],
            },
        )],
    });
    let update =
        Update { generation: 1, full: true, endpoints: vec![client, endpoint(2, SERVER, 2000)], ..Update::default() };
    Rules::default().apply(&update).expect("compiles")
}

#[test]
fn a_dns_rule_decides_each_query_by_name() {
    let rules = dns_client();
    let conn = rules.flow(ip(CLIENT), ip(SERVER), Proto::Udp, 53).expect("a flow");
    assert!(conn.has_rules());
    for allowed in ["api.stripe.com", "API.Stripe.COM.", "checkout.stripe.com."] {
        let v = conn.decide_dns(allowed);
        assert!(v.allowed, "{allowed}");
        assert_eq!(by(&v), ["egress production/dns spec.egress[0]"]);
    }
    for denied in ["stripe.com.", "evil.example.com.", "api.stripe.com.evil.example."] {
        let v = conn.decide_dns(denied);
        assert!(!v.allowed, "{denied}");
        assert_eq!(by(&v), ["egress production/dns spec.egress[0]"]);
    }
    // The same port over TCP is not covered: the lookup denies the flow.
    assert!(matches!(rules.flow(ip(CLIENT), ip(SERVER), Proto::Tcp, 53), Err(Refused::Denied { .. })));
    // HTTP rules deny every query; DNS rules every HTTP request.
    let http = seed().connection(ip(CLIENT), ip(SERVER), 8080).expect("a connection");
    assert!(!http.decide_dns("api.stripe.com.").allowed);
    assert!(!conn.decide(&get("/")).allowed);
}
