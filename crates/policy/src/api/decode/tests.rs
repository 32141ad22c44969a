use super::*;
use crate::diag::Sink;

fn decode(src: &str) -> (Vec<Object>, Vec<String>) {
    let mut sink = Sink::new("t.yaml");
    let objs = decode_str(src, &DecodeOptions::default(), &mut sink);
    (objs, sink.diagnostics.iter().map(ToString::to_string).collect())
}

#[test]
fn minimal_cnp() {
    let (objs, diags) = decode(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(objs.len(), 1);
}

#[test]
fn kubectl_get_output_reads_unchanged() {
    let src = include_str!("../../../tests/fixtures/kubectl-get-ns-pods.yaml");
    let (objs, diags) = decode(src);
    assert!(diags.is_empty(), "{diags:?}");
    let pod = objs.iter().find_map(|o| if let Object::Pod(p) = o { Some(p) } else { None }).expect("a pod");
    assert_eq!(pod.key(), "shop/api-7c9d8b6f5d-x2k8p");
    assert_eq!(pod.service_account, "api");
    assert_eq!(pod.ips.len(), 2);
    assert_eq!(
        pod.ports.iter().map(|p| (p.name.as_str(), p.port)).collect::<Vec<_>>(),
        vec![("http", 8080), ("metrics", 9102)]
    );
    let labels = crate::labels::pod_identity_labels(pod, None);
    assert!(labels.get("pod-template-hash").is_none(), "bookkeeping label filtered");
    assert!(labels.get("app.kubernetes.io/version").is_some());
}

#[test]
fn every_error_in_a_file_is_reported() {
    let src = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {matchLabels: {app: x}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: y}}]\n    fromCIDR: [10.0.0.0/8]\n    toPorts: [{ports: [{port: 80, protocol: tcp}]}]\n  egress:\n  - toEntities: [wrld]\n    toPorts: [{ports: [{port: \"53\", protocol: UDP}], rules: {dns: [{matchPattern: \"*\"}]}}]\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n  - toPorts: [{ports: [{port: \"80\", protocol: ANY}], rules: {http: [{method: \"(\"}]}}]\n";
    let (objs, diags) = decode(src);
    assert!(objs.is_empty());
    let joined = diags.join("\n");
    for want in [
        "spec.ingress[0].fromCIDR: combining fromEndpoints and fromCIDR in one rule is not supported",
        "spec.ingress[0].toPorts[0].ports[0].port: port must be a string",
        "spec.ingress[0].toPorts[0].ports[0].protocol: unknown protocol `tcp`: protocols are case-sensitive (fix: `TCP`)",
        "spec.egress[0].toEntities[0]: unknown entity `wrld` (fix: did you mean `world`?)",
        "spec.egress[1].toCIDRSet[0].except[0]: except 192.168.0.0/16 is not inside 10.0.0.0/8",
        "spec.egress[2].toPorts[0].ports[0].protocol: L7 rules only apply to TCP, not ANY",
        "spec.egress[2].toPorts[0].rules.http[0].method:",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
}

#[test]
fn dns_rules_are_egress_only_and_need_a_port() {
    let (_, diags) = decode(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"53\", protocol: UDP}], rules: {dns: [{matchName: a.com}]}}]\n  egress:\n  - toPorts: [{ports: [{port: \"0\", protocol: UDP}], rules: {dns: [{matchName: a.com}]}}]\n",
    );
    let joined = diags.join("\n");
    assert!(joined.contains("DNS rules are only allowed in egress rules"), "{joined}");
    assert!(joined.contains("DNS rules need an explicit port"), "{joined}");
}

#[test]
fn too_many_ports() {
    let ports: Vec<String> = (1..=41).map(|p| format!("{{port: \"{p}\"}}")).collect();
    let (_, diags) = decode(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: a}}\nspec:\n  endpointSelector: {{}}\n  egress: [{{toPorts: [{{ports: [{}]}}]}}]\n",
        ports.join(", ")
    ));
    assert!(diags.iter().any(|d| d.contains("41 ports in one port rule; Cilium allows at most 40")), "{diags:?}");
}

#[test]
fn empty_rule_is_rejected() {
    let (_, diags) = decode(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n",
    );
    assert!(diags.iter().any(|d| d.contains("at least one of ingress")), "{diags:?}");
}

#[test]
fn regex_size_limit() {
    let (_, diags) = decode(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"(a{1000}){1000}\"}]}}]}]\n",
    );
    assert!(diags.iter().any(|d| d.contains("spec.ingress[0].toPorts[0].rules.http[0].path")), "{diags:?}");
}

#[test]
fn regex_nest_limit() {
    let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
    let (_, diags) = decode(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: a}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}], rules: {{http: [{{path: \"{deep}\"}}]}}}}]}}]\n"
    ));
    assert!(
        diags.iter().any(|d| d.contains("spec.ingress[0].toPorts[0].rules.http[0].path") && d.contains("nest")),
        "{diags:?}"
    );
}

#[test]
fn json_list_and_bare_rules() {
    let (objs, diags) = decode(
        r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "x"}, "spec": {"podSelector": {}}}]}"#,
    );
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(objs.len(), 1);
    let (objs, diags) =
        decode(r#"[{"endpointSelector": {}, "ingress": [{}], "labels": [{"key": "name", "value": "r"}]}]"#);
    assert!(diags.is_empty(), "{diags:?}");
    let Object::Policy(p) = &objs[0] else { panic!("policy") };
    assert_eq!(p.name, "r");
}

const RATE_LIMIT: &str = "apiVersion: bulkhead.io/v1alpha1\nkind: RateLimit\nmetadata: {name: rl, namespace: production}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\"}, {port: http, protocol: TCP}]}]\n    requestsPerSecond: 50\n    burst: 100\n  - fromEntities: [world]\n    toPorts: [{ports: [{port: \"8080\"}]}]\n    maxConcurrentRequests: 4\n";

#[test]
fn a_rate_limit_reads_as_its_own_kind() {
    let (objs, diags) = decode(RATE_LIMIT);
    assert!(diags.is_empty(), "{diags:?}");
    let [Object::Policy(p)] = objs.as_slice() else { panic!("{objs:?}") };
    assert_eq!((p.kind, p.display_name().as_str()), (crate::api::PolicyKind::RateLimit, "production/rl"));
    let crate::api::PolicyBody::RateLimit(spec) = &p.body else { panic!("{p:?}") };
    assert_eq!(spec.ingress.len(), 2);
    let first = &spec.ingress[0];
    assert_eq!(first.peers.path, "spec.ingress[0]");
    assert_eq!(
        (first.limit.requests_per_second, first.limit.burst, first.limit.max_concurrent_requests),
        (Some(50), Some(100), None)
    );
    let ports = &first.peers.to_ports[0].ports;
    assert!(ports.iter().all(|p| p.protocol == crate::api::Protocol::Tcp), "omitted protocol reads as TCP");
    assert_eq!(spec.ingress[1].peers.entities.as_deref(), Some(&[crate::api::Entity::World][..]));
    assert_eq!(spec.ingress[1].limit.max_concurrent_requests, Some(4));
}

#[test]
fn a_rate_limit_that_could_be_read_two_ways_is_refused_naming_the_field() {
    let cases = [
        (
            "    requestsPerSecond: 50\n",
            "    requestsPerSecond: 0\n",
            "spec.ingress[0].requestsPerSecond: 0 is out of range 1..1000000",
        ),
        (
            "    requestsPerSecond: 50\n",
            "    requestPerSecond: 50\n",
            "spec.ingress[0].requestPerSecond: unknown field `requestPerSecond` (fix: did you mean `requestsPerSecond`?)",
        ),
        (
            "    requestsPerSecond: 50\n",
            "    requestsPerSecond: \"50\"\n",
            "spec.ingress[0].requestsPerSecond: expected an integer",
        ),
        (
            "    requestsPerSecond: 50\n    burst: 100\n",
            "    maxConcurrentRequests: 3\n    burst: 100\n",
            "spec.ingress[0].burst: `burst` needs `requestsPerSecond`",
        ),
        ("    requestsPerSecond: 50\n    burst: 100\n", "", "spec.ingress[0]: the entry sets no limit"),
        (
            "{port: \"8080\"}, {port: http, protocol: TCP}",
            "{port: \"53\", protocol: UDP}",
            "spec.ingress[0].toPorts[0].ports[0].protocol: rate limits apply to HTTP over TCP, not UDP",
        ),
        (
            "{port: \"8080\"}, {port: http, protocol: TCP}",
            "{port: \"0\"}",
            "spec.ingress[0].toPorts[0].ports[0].port: a rate limit needs an explicit port",
        ),
        (
            "[{ports: [{port: \"8080\"}, {port: http, protocol: TCP}]}]",
            "[{ports: [{port: \"8080\"}], rules: {http: [{}]}}]",
            "spec.ingress[0].toPorts[0].rules: a RateLimit limits requests; it does not allow or deny them",
        ),
        (
            "  - fromEndpoints: [{matchLabels: {app: frontend}}]\n",
            "  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    fromEntities: [world]\n",
            "spec.ingress[0].fromEntities: combining fromEndpoints and fromEntities",
        ),
        (
            "  endpointSelector: {matchLabels: {app: backend}}\n",
            "",
            "spec.endpointSelector: missing field `endpointSelector`",
        ),
        ("apiVersion: bulkhead.io/v1alpha1", "apiVersion: cilium.io/v2", "apiVersion: wrong apiVersion for RateLimit"),
    ];
    for (from, to, want) in cases {
        assert!(RATE_LIMIT.contains(from), "{from}");
        let (objs, diags) = decode(&RATE_LIMIT.replacen(from, to, 1));
        assert!(objs.is_empty(), "{to}: {objs:?}");
        assert!(diags.iter().any(|d| d.contains(want)), "{to}: want {want}\n{diags:#?}");
    }
}
