use super::*;
use crate::testutil::{engine, pod};

#[test]
fn near_misses_name_the_missing_label_and_port() {
    let cluster = [
        pod("a", "web", "app: web", "198.18.0.1"),
        pod("a", "db", "app: db", "198.18.0.2"),
        pod("a", "x", "app: x", "198.18.0.3"),
    ]
    .concat();
    let p = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: web}}], toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]}]\n";
    let mut e = engine(&cluster, p);
    let req = |from: &str, port| TraceRequest {
        from: from.into(),
        to: Target::Pod("a/db".into()),
        port: ProbePort { proto: Proto::Tcp, port },
        http: None,
    };
    let r = trace(&mut e, &req("a/web", 80)).expect("pods exist");
    assert_eq!(r.verdict, "denied");
    let ing = r.ingress.expect("pod target");
    assert!(ing.near_misses[0].why.contains("5432/TCP"), "{:?}", ing.near_misses);
    let r = trace(&mut e, &req("a/x", 5432)).expect("pods exist");
    assert!(r.ingress.expect("pod").near_misses[0].why.contains("needs app=web"));
    let r = trace(&mut e, &req("a/web", 5432)).expect("pods exist");
    assert_eq!(r.verdict, "allowed");
    assert_eq!(r.ingress.expect("pod").decided_by[0].name, "p");
    assert!(trace(&mut e, &req("a/nope", 1)).is_err());
}
