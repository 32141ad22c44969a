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
        rule_ref: rr(name),
    }
}

#[test]
fn any_peer_deny_overrides_identity_l3_allow() {
    let cs = vec![
        c(false, &[300], &[(Proto::Any, 0, 65535)], false, "allow"),
        c(true, &[], &[(Proto::Tcp, 22, 22)], true, "deny"),
    ];
    let (entries, errors) = flatten(&cs);
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
    let (entries, _) = flatten(&cs);
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
    let (entries, _) = flatten(&cs);
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
    let (entries, errors) = flatten(&[a, b]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let dp = DirectionPolicy { enforced: true, default_deny: true, entries, errors };
    assert!(!dp.lookup(None, NumericIdentity(300), Proto::Tcp, 80).passes());
}
