use super::*;

#[test]
fn port_prefixes_cover_the_range_exactly() {
    let k = |lo, hi| PolicyKey { peer: Peer::Any, proto: Proto::Tcp, lo, hi };
    assert_eq!(k(80, 80).port_prefixes(), vec![(80, 16)]);
    assert_eq!(k(0, 65535).port_prefixes(), vec![(0, 0)]);
    assert_eq!(k(80, 444).port_prefixes().len(), 9);
    for (lo, hi) in [(1u16, 1000u16), (80, 444), (1024, 65535), (7, 7), (0, 1)] {
        let mut covered = 0u32;
        for (p, len) in k(lo, hi).port_prefixes() {
            let size = 1u32 << (16 - len);
            assert_eq!(u32::from(p) % size, 0, "aligned");
            covered += size;
        }
        assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1);
    }
}

fn rr(name: &str) -> Arc<RuleRef> {
    Arc::new(RuleRef {
        kind: crate::api::PolicyKind::CiliumNetworkPolicy,
        namespace: None,
        name: name.into(),
        rule: "spec".into(),
    })
}

fn c(all: bool, ids: &[u32], ports: &[(Proto, u16, u16)], deny: bool, name: &str) -> Resolved<'static> {
    Resolved {
        all,
        ids: vec![Arc::new(ids.iter().map(|i| NumericIdentity(*i)).collect())],
        addrs: vec![],
        ports: ports.to_vec(),
        deny,
        l7: None,
        limit: None,
        rule_ref: rr(name),
    }
}

#[test]
fn any_peer_deny_overrides_identity_l3_allow() {
    let cs = vec![
        c(false, &[300], &[(Proto::Any, 0, 65535)], false, "allow"),
        c(true, &[], &[(Proto::Tcp, 22, 22)], true, "deny"),
    ];
    let (entries, errors) = flatten(&cs, true);
    assert!(errors.is_empty());
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors: vec![] };
    let id = NumericIdentity(300);
    assert!(!dp.lookup(None, id, Proto::Tcp, 22).passes());
    assert!(dp.lookup(None, id, Proto::Tcp, 23).passes());
    assert!(dp.lookup(None, id, Proto::Udp, 22).passes());
    assert!(!dp.lookup(None, NumericIdentity(301), Proto::Tcp, 22).passes());
    assert!(!dp.lookup(None, NumericIdentity(301), Proto::Tcp, 23).passes());
}

#[test]
fn identity_deny_all_ports_overrides_port_allow() {
    let cs = vec![
        c(false, &[300], &[(Proto::Tcp, 80, 80)], false, "allow"),
        c(false, &[300], &[(Proto::Any, 0, 65535)], true, "deny"),
    ];
    let (entries, _) = flatten(&cs, true);
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors: vec![] };
    match dp.lookup(None, NumericIdentity(300), Proto::Tcp, 80) {
        Decision::Entry(_, e) => {
            assert_eq!(e.verdict, Verdict::Deny);
            assert_eq!(e.refs[0].name, "deny");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn ranges_split_and_coalesce() {
    let cs =
        vec![c(true, &[], &[(Proto::Tcp, 80, 444)], false, "a"), c(true, &[], &[(Proto::Tcp, 100, 200)], true, "d")];
    let (entries, _) = flatten(&cs, true);
    let keys: Vec<(u16, u16, &str)> = entries.iter().map(|(k, e)| (k.lo, k.hi, e.verdict.as_str())).collect();
    assert_eq!(keys, vec![(80, 99, "allow"), (100, 200, "deny"), (201, 444, "allow")]);
}

#[test]
fn conflicting_l7_parsers_fail_closed() {
    let http = L7Rules::Http(vec![crate::api::HttpRule { method: Some("GET".into()), ..Default::default() }]);
    let kafka = L7Rules::Kafka(vec![crate::api::KafkaRule { topic: Some("t".into()), ..Default::default() }]);
    let mut a = c(true, &[], &[(Proto::Tcp, 80, 80)], false, "h");
    a.l7 = Some(&http);
    let mut b = c(false, &[300], &[(Proto::Tcp, 80, 80)], false, "k");
    b.l7 = Some(&kafka);
    let (entries, errors) = flatten(&[a, b], true);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors };
    assert!(!dp.lookup(None, NumericIdentity(300), Proto::Tcp, 80).passes());
}

fn limited(all: bool, ids: &[u32], port: u16, rps: u32, name: &str) -> Resolved<'static> {
    let mut r = c(all, ids, &[(Proto::Tcp, port, port)], false, name);
    r.limit = Some(RequestLimit { requests_per_second: Some(rps), burst: None, max_concurrent_requests: None });
    r
}

fn redirect_of(dp: &DirectionPolicy, id: u32, port: u16) -> Option<Arc<L7Policy>> {
    match dp.lookup(None, NumericIdentity(id), Proto::Tcp, port) {
        Decision::Entry(_, PolicyEntry { verdict: Verdict::Redirect(l7), .. }) => Some(l7.clone()),
        _ => None,
    }
}

#[test]
fn a_limit_redirects_the_limited_peer_wherever_it_passes_and_nothing_else() {
    // Any peer may reach every port (L3); identity 300 is limited on 80.
    let cs = vec![c(true, &[], &[(Proto::Any, 0, 65535)], false, "allow"), limited(false, &[300], 80, 5, "rl")];
    let (entries, errors) = flatten(&cs, true);
    assert!(errors.is_empty(), "{errors:?}");
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors };
    let l7 = redirect_of(&dp, 300, 80).expect("limited peer redirected");
    assert!(l7.allow_all, "a plain allow: every request passes the rules");
    assert_eq!(l7.limits.len(), 1);
    assert_eq!(l7.limits[0].by.name, "rl");
    assert_eq!(l7.limits[0].limit.requests_per_second, Some(5));
    match dp.lookup(None, NumericIdentity(300), Proto::Tcp, 80) {
        Decision::Entry(_, e) => assert_eq!(e.refs[0].name, "allow", "the allow is what allowed it"),
        d => panic!("{d:?}"),
    }
    // Not the other identities, not the other ports.
    for (id, port) in [(301, 80), (300, 81), (300, 79)] {
        assert!(redirect_of(&dp, id, port).is_none(), "{id} {port}");
        assert!(dp.lookup(None, NumericIdentity(id), Proto::Tcp, port).passes());
    }
}

#[test]
fn a_limit_alone_passes_nothing_where_a_miss_drops_and_everything_where_it_passes() {
    let cs = vec![limited(false, &[300], 80, 5, "rl")];
    let (entries, _) = flatten(&cs, true);
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors: vec![] };
    assert!(!dp.lookup(None, NumericIdentity(300), Proto::Tcp, 80).passes(), "a limit is not an allow");
    let (entries, _) = flatten(&cs, false);
    let dp = DirectionPolicy { enforced: true, default_deny: false, entries, errors: vec![] };
    let l7 = redirect_of(&dp, 300, 80).expect("default allow, limited");
    assert!(l7.allow_all && l7.limits.len() == 1);
    assert!(redirect_of(&dp, 301, 80).is_none() && dp.lookup(None, NumericIdentity(301), Proto::Tcp, 80).passes());
}

#[test]
fn a_deny_beats_a_limit_and_l7_rules_keep_their_rules_under_a_limit() {
    let cs = vec![limited(true, &[], 80, 5, "rl"), c(false, &[300], &[(Proto::Tcp, 80, 80)], true, "deny")];
    let (entries, _) = flatten(&cs, false);
    let dp = DirectionPolicy { enforced: true, default_deny: false, entries, errors: vec![] };
    assert!(!dp.lookup(None, NumericIdentity(300), Proto::Tcp, 80).passes());
    assert!(redirect_of(&dp, 301, 80).is_some_and(|l| l.limits.len() == 1));

    let http = L7Rules::Http(vec![crate::api::HttpRule { method: Some("GET".into()), ..Default::default() }]);
    let mut allow = c(false, &[300], &[(Proto::Tcp, 80, 80)], false, "http");
    allow.l7 = Some(&http);
    let cs = vec![allow, limited(true, &[], 80, 5, "rl"), limited(false, &[300], 80, 9, "rl2")];
    let (entries, _) = flatten(&cs, true);
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors: vec![] };
    let l7 = redirect_of(&dp, 300, 80).expect("redirected");
    assert!(!l7.allow_all && l7.rules == http, "{l7:?}");
    let by: Vec<&str> = l7.limits.iter().map(|l| l.by.name.as_str()).collect();
    assert_eq!(by, ["rl", "rl2"], "every limit that covers the peer applies");
}

#[test]
fn a_limit_on_a_port_with_another_parser_fails_closed() {
    let kafka = L7Rules::Kafka(vec![crate::api::KafkaRule { topic: Some("t".into()), ..Default::default() }]);
    let mut k = c(false, &[300], &[(Proto::Tcp, 9092, 9092)], false, "k");
    k.l7 = Some(&kafka);
    let (entries, errors) = flatten(&[k, limited(true, &[], 9092, 5, "rl")], true);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors };
    assert!(!dp.lookup(None, NumericIdentity(300), Proto::Tcp, 9092).passes());
}
