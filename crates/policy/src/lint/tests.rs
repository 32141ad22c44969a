use super::*;
use crate::testutil::{engine, pod};

/// A CiliumNetworkPolicy `name` in namespace `a` with `spec` (flow YAML).
fn cnp(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: a}}\nspec: {spec}\n"
    )
}

/// Each finding as `check name rule-path [other-name other-path]`.
fn summary(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .map(|f| {
            let mut s = match (&f.rule, &f.namespace) {
                (Some(r), _) => format!("{} {} {}", f.check.as_str(), r.rule.name, r.rule.rule),
                (None, ns) => format!("{} namespace {}", f.check.as_str(), ns.as_deref().unwrap_or("")),
            };
            if let Some(o) = &f.other {
                s.push_str(&format!(" <- {} {}", o.rule.name, o.rule.rule));
            }
            s
        })
        .collect()
}

#[test]
fn allows_broader_than_they_look_are_found_from_the_text_alone() {
    let policies = [
        cnp(
            "wide",
            "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEntities: [world]}, {toPorts: [{ports: [{port: '80', protocol: TCP}]}]}, {fromEndpoints: [{}]}], egress: [{toEntities: [all]}, {toCIDR: [0.0.0.0/0]}, {toEntities: [kube-apiserver]}]}",
        ),
        cnp(
            "narrow",
            "{endpointSelector: {matchLabels: {app: db}}, ingress: [{fromEndpoints: [{matchLabels: {app: web}}], toPorts: [{ports: [{port: '5432', protocol: TCP}]}]}], egressDeny: [{toEntities: [all]}]}",
        ),
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{ports: [{port: 80}]}, {from: [{namespaceSelector: {}}, {podSelector: {}}]}]\n  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]\n".to_string(),
    ]
    .concat();
    let mut e = engine("", &policies);
    let f = lint(&mut e, false, &[]);
    assert_eq!(
        summary(&f),
        [
            "broad-allow wide spec.egress[0].toEntities",
            "broad-allow wide spec.egress[1].toCIDR",
            "broad-allow wide spec.ingress[0].fromEntities",
            "broad-allow wide spec.ingress[1]",
            "broad-allow wide spec.ingress[2].fromEndpoints",
            "broad-allow np spec.egress[0].to[0]",
            "broad-allow np spec.ingress[0]",
            "broad-allow np spec.ingress[1].from[0]",
            "broad-allow np spec.ingress[1].from[1]",
        ],
        "{f:#?}"
    );
    let world =
        f.iter().find(|f| f.rule.as_ref().is_some_and(|r| r.rule.rule.ends_with("fromEntities"))).expect("world");
    assert!(world.message.contains("from any address outside the cluster"), "{world}");
    assert!(world.fix.contains("fromCIDRSet"), "{world}");
    let block = f.iter().find(|f| f.rule.as_ref().is_some_and(|r| r.rule.rule.ends_with("to[0]"))).expect("ipBlock");
    assert!(block.message.contains("pods of every namespace too"), "{block}");
    // Where the policy was read, and the JSON scripts get.
    assert_eq!(
        (world.rule.as_ref().expect("rule").file.as_str(), world.rule.as_ref().expect("rule").line),
        ("test.yaml", 2)
    );
    let json = serde_json::to_value(world).expect("json");
    assert_eq!(json["check"], "broad-allow");
    assert_eq!(json["rule"]["name"], "wide");
    assert_eq!(json["rule"]["kind"], "CiliumNetworkPolicy");
}

#[test]
fn rules_are_compared_on_the_pods_they_select() {
    let cluster = [
        pod("a", "web", "app: web", "198.18.0.1"),
        pod("a", "db", "app: db", "198.18.0.2"),
        pod("a", "api", "app: api", "198.18.0.3"),
        pod("b", "lone", "app: lone", "198.18.0.4"),
    ]
    .concat();
    let from = |app: &str, ports: &str| format!("{{fromEndpoints: [{{matchLabels: {{app: {app}}}}}]{ports}}}");
    let tcp = |p: &str| format!(", toPorts: [{{ports: [{{port: '{p}', protocol: TCP}}]}}]");
    let policies = [
        cnp("typo", "{endpointSelector: {matchLabels: {app: dbb}}, ingress: [{}]}"),
        // db: 5432 from web, inside a wider range from web; a copy of the range.
        cnp("db-5432", &format!("{{endpointSelector: {{matchLabels: {{app: db}}}}, ingress: [{}]}}", from("web", &tcp("5432")))),
        cnp(
            "db-range",
            &format!("{{endpointSelector: {{matchLabels: {{app: db}}}}, ingress: [{}]}}", from("web", ", toPorts: [{ports: [{port: '5000', endPort: 6000, protocol: TCP}]}]")),
        ),
        cnp(
            "db-range-copy",
            &format!("{{endpointSelector: {{matchLabels: {{app: db}}}}, ingress: [{}]}}", from("web", ", toPorts: [{ports: [{port: '5000', endPort: 6000, protocol: TCP}]}]")),
        ),
        // api may not reach db at all; an allow for it is dead.
        cnp(
            "db-deny-api",
            &format!("{{endpointSelector: {{matchLabels: {{app: db}}}}, ingressDeny: [{}], ingress: [{}]}}", from("api", ""), from("api", &tcp("5432"))),
        ),
        // api: L7 on 80 from web, and web allowed everything anyway.
        cnp(
            "api-l7",
            &format!(
                "{{endpointSelector: {{matchLabels: {{app: api}}}}, ingress: [{}]}}",
                from("web", ", toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]")
            ),
        ),
        cnp("api-web", &format!("{{endpointSelector: {{matchLabels: {{app: api}}}}, ingress: [{}, {}]}}", from("web", ""), from("wbe", ""))),
        // toFQDNs resolve to nobody offline: never compared.
        cnp(
            "api-out",
            "{endpointSelector: {matchLabels: {app: api}}, egress: [{toFQDNs: [{matchName: a.example.com}], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}, {toFQDNs: [{matchName: b.example.com}]}]}",
        ),
    ]
    .concat();
    let mut e = engine(&cluster, &policies);
    let f = lint(&mut e, true, &[]);
    assert_eq!(
        summary(&f),
        [
            "selects-no-pod typo spec.endpointSelector",
            "shadowed db-5432 spec.ingress[0] <- db-range spec.ingress[0]",
            "shadowed db-range-copy spec.ingress[0] <- db-range spec.ingress[0]",
            "dead-allow db-deny-api spec.ingress[0] <- db-deny-api spec.ingressDeny[0]",
            "shadowed api-l7 spec.ingress[0] <- api-web spec.ingress[0]",
            "l7-bypassed api-l7 spec.ingress[0] <- api-web spec.ingress[0]",
            "peer-selects-nothing api-web spec.ingress[1].fromEndpoints",
            "no-default-deny namespace a",
            "no-default-deny namespace b",
        ],
        "{f:#?}"
    );
    let bypass = f.iter().find(|f| f.check == Check::L7Bypassed).expect("bypass");
    assert!(bypass.message.contains("on pod a/api, port 80/TCP"), "{bypass}");
    let ns_a = f.iter().find(|f| f.namespace.as_deref() == Some("a")).expect("namespace a");
    // api and db are isolated on ingress; web on neither side, nobody on egress but api.
    assert!(ns_a.message.contains("of its 3 pod(s), 1 accept connections no policy allows (web)"), "{ns_a}");
    assert!(ns_a.message.contains("2 may connect where no policy allows (db, web)"), "{ns_a}");
    assert!(ns_a.fix.contains("namespace: a"), "{ns_a}");
    let text = f[1].to_string();
    assert!(text.starts_with("test.yaml:"), "{text}");
    assert!(text.contains("\n    by: test.yaml:") && text.contains("\n    fix: "), "{text}");
}

#[test]
fn a_clean_set_has_no_findings() {
    let cluster = [pod("a", "web", "app: web", "198.18.0.1"), pod("a", "db", "app: db", "198.18.0.2")].concat();
    let policies = [
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n".to_string(),
        cnp(
            "db",
            "{endpointSelector: {matchLabels: {app: db}}, ingress: [{fromEndpoints: [{matchLabels: {app: web}}], toPorts: [{ports: [{port: '5432', protocol: TCP}]}]}]}",
        ),
        cnp(
            "web",
            "{endpointSelector: {matchLabels: {app: web}}, egress: [{toEndpoints: [{matchLabels: {app: db}}], toPorts: [{ports: [{port: '5432', protocol: TCP}]}]}]}",
        ),
    ]
    .concat();
    let mut e = engine(&cluster, &policies);
    assert_eq!(lint(&mut e, true, &[]), Vec::new());
}

/// Guardrails from YAML, panicking on any error.
fn guardrails(src: &str) -> Vec<Guardrails> {
    let mut sink = crate::diag::Sink::new("guardrails.yaml");
    let g = crate::api::decode::decode_guardrails(src, &mut sink);
    assert_eq!(sink.error_count(), 0, "{:#?}", sink.diagnostics);
    g
}

const ORG: &str = "apiVersion: bulkhead.io/v1alpha1\nkind: Guardrails\nmetadata: {name: org}\nspec:\n  forbidIngressFromWorld: {exceptNamespaces: [edge]}\n  requireDefaultDeny: true\n  forbidEntityAll: true\n  minCIDRPrefixLength: {ipv4: 16, ipv6: 48}\n  requireL7: [{port: 8080}]\n";

#[test]
fn guardrails_find_each_rule_broken_and_only_those() {
    let cluster = [pod("a", "web", "app: web", "198.18.0.1"), pod("edge", "lb", "app: lb", "198.18.0.2")].concat();
    let edge = |name: &str, spec: &str| cnp(name, spec).replace("namespace: a", "namespace: edge");
    let policies = [
        cnp(
            "bad",
            "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEntities: [world]}, {fromCIDR: [10.0.0.0/8]}, {fromEndpoints: [{matchLabels: {app: lb}}], toPorts: [{ports: [{port: '8080', protocol: TCP}]}]}], egress: [{toEntities: [all]}]}",
        ),
        // In the excepted namespace, from the world on 443 with a narrow prefix: fine.
        edge("lb", "{endpointSelector: {matchLabels: {app: lb}}, ingress: [{fromCIDR: [198.51.100.0/24], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}]}"),
        // 8080 with L7 rules: fine.
        cnp(
            "good",
            "{endpointSelector: {matchLabels: {app: web}}, ingress: [{fromEndpoints: [{matchLabels: {app: web}}], toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: GET}]}}]}]}",
        ),
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{ports: [{port: 8080}]}]\n".to_string(),
    ]
    .concat();
    let mut e = engine(&cluster, &policies);
    let g = guardrails(ORG);
    let f: Vec<Finding> = lint(&mut e, true, &g).into_iter().filter(|f| f.check == Check::Guardrail).collect();
    let got: Vec<String> = f
        .iter()
        .map(|f| {
            let at = f.rule.as_ref().map_or(format!("namespace {}", f.namespace.as_deref().unwrap_or("")), |r| {
                format!("{} {}", r.rule.name, r.rule.rule)
            });
            let field = f.guardrail.as_deref().unwrap_or("").split_whitespace().nth(2).unwrap_or("").to_string();
            format!("{field} {at}")
        })
        .collect();
    assert_eq!(
        got,
        [
            // Every port, so 8080 too, without L7 rules.
            "spec.requireL7 bad spec.egress[0]",
            "spec.forbidEntityAll bad spec.egress[0].toEntities",
            "spec.requireL7 bad spec.ingress[0]",
            "spec.forbidIngressFromWorld bad spec.ingress[0].fromEntities",
            "spec.requireL7 bad spec.ingress[1]",
            "spec.forbidIngressFromWorld bad spec.ingress[1].fromCIDR",
            "spec.minCIDRPrefixLength bad spec.ingress[1].fromCIDR",
            "spec.requireL7 bad spec.ingress[2].toPorts[0]",
            "spec.forbidIngressFromWorld np spec.ingress[0]",
            "spec.requireL7 np spec.ingress[0]",
            // Namespace a's one pod is isolated both ways; edge's lb takes any egress.
            "spec.requireDefaultDeny namespace edge",
        ],
        "{f:#?}"
    );
    assert!(f[1].guardrail.as_deref().is_some_and(|g| g.ends_with("(guardrails.yaml:1)")), "{}", f[1]);
    assert!(f[1].to_string().contains("\n    guardrail: Guardrails org spec.forbidEntityAll"), "{}", f[1]);
    // The guardrail's namespace finding stands in for the plain one.
    let all = lint(&mut e, true, &g);
    assert!(!all.iter().any(|f| f.check == Check::NoDefaultDeny && f.namespace.as_deref() == Some("edge")), "{all:#?}");
    assert!(
        lint(&mut e, true, &[])
            .iter()
            .any(|f| f.check == Check::NoDefaultDeny && f.namespace.as_deref() == Some("edge"))
    );
    // Without the cluster, what the text says only.
    assert!(lint(&mut e, false, &g).iter().all(|f| f.namespace.is_none()));
}

#[test]
fn a_guardrails_file_is_checked_field_by_field() {
    let bad = |spec: &str| {
        let mut sink = crate::diag::Sink::new("g.yaml");
        let g = crate::api::decode::decode_guardrails(
            &format!("apiVersion: bulkhead.io/v1alpha1\nkind: Guardrails\nmetadata: {{name: org}}\nspec: {spec}\n"),
            &mut sink,
        );
        assert!(g.is_empty());
        sink.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    };
    assert!(
        bad("{forbidEntityAl: true}").contains("did you mean `forbidEntityAll`"),
        "{}",
        bad("{forbidEntityAl: true}")
    );
    assert!(bad("{}").contains("names no guardrail"));
    assert!(bad("{minCIDRPrefixLength: {ipv4: 33}}").contains("spec.minCIDRPrefixLength.ipv4"));
    assert!(bad("{requireL7: [{port: 0}]}").contains("spec.requireL7[0].port"));
    assert!(bad("{requireDefaultDeny: yes}").contains("spec.requireDefaultDeny"));
    // A policy in a guardrails file is an error; a Guardrails among policies is skipped.
    let mut sink = crate::diag::Sink::new("g.yaml");
    let _ = crate::api::decode::decode_guardrails(&cnp("p", "{endpointSelector: {}, ingress: [{}]}"), &mut sink);
    assert!(sink.diagnostics[0].message.contains("holds Guardrails only"), "{:?}", sink.diagnostics);
    let mut sink = crate::diag::Sink::new("p.yaml");
    let objs = crate::api::decode::decode_str(ORG, &Default::default(), &mut sink);
    assert!(objs.is_empty() && sink.error_count() == 0);
    assert!(sink.diagnostics[0].message.contains("--guardrails FILE"), "{:?}", sink.diagnostics);
}
