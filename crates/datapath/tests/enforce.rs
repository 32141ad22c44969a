//! The kernel enforces what the engine resolved, on real packets between
//! pods in network namespaces (root; see tests/support).

mod support;

use std::time::Duration;

use bulkhead_datapath::abi::Reason;
use bulkhead_policy::engine::Change;
use bulkhead_policy::repository::{PolicyId, Proto};
use support::{Lab, privileged};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {env: prod}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: dev, labels: {env: dev}}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
  status: {podIP: 198.18.10.1, podIPs: [{ip: 198.18.10.1}, {ip: "fd00:b::10:1"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: shop, labels: {app: db}}
  spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
  status: {podIP: 198.18.10.2, podIPs: [{ip: 198.18.10.2}, {ip: "fd00:b::10:2"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  spec: {containers: [{name: c}]}
  status: {podIP: 198.18.10.3, podIPs: [{ip: 198.18.10.3}, {ip: "fd00:b::10:3"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: dev, labels: {app: debug}}
  spec: {containers: [{name: c}]}
  status: {podIP: 198.18.20.1, podIPs: [{ip: 198.18.20.1}, {ip: "fd00:b::20:1"}]}
"#;

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http, protocol: TCP}, {port: "53", protocol: UDP}]}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
  ingressDeny:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: 198.18.10.0/24, except: [198.18.10.1/32]}}]
    ports: [{port: 5432}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
  - toCIDR: [198.18.10.2/32]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "5000", endPort: 5500, protocol: TCP}]}]
"#;

const PORTS: &[(Proto, u16)] = &[
    (Proto::Tcp, 80),
    (Proto::Tcp, 5432),
    (Proto::Tcp, 5433),
    (Proto::Tcp, 9000),
    (Proto::Udp, 53),
    (Proto::Udp, 54),
    (Proto::Icmp, 0),
];

#[test]
fn kernel_verdicts_match_the_engine_on_every_pair_port_and_family() {
    if !privileged("kernel_verdicts_match_the_engine") {
        return;
    }
    let mut lab = Lab::up("m", CLUSTER, POLICIES);
    let (diffs, [pass, drop]) = lab.differences(PORTS, Duration::from_millis(300));
    assert!(diffs.is_empty(), "{} of {} probes differ:\n{}", diffs.len(), pass + drop, diffs.join("\n"));
    // Both outcomes are exercised, on both families.
    assert!(pass >= 20 && drop >= 20, "{pass} passing and {drop} dropping probes");

    // The drops were counted by reason.
    let counters = lab.dp().view().counters().expect("counters");
    assert!(counters.packets(Reason::PolicyDenied) > 0);
    assert!(counters.packets(Reason::PolicyDeny) > 0);

    // Removing a policy opens what it closed, and the kernel follows.
    let id = lab.engine.policies().find(|p| p.name == "client-egress").map(PolicyId::of).expect("policy");
    lab.change([Change::DeletePolicy(id)]);
    let (diffs, [pass2, drop2]) = lab.differences(PORTS, Duration::from_millis(300));
    assert!(
        diffs.is_empty(),
        "after delete, {} of {} probes differ:\n{}",
        diffs.len(),
        pass2 + drop2,
        diffs.join("\n")
    );
    assert!(pass2 > pass, "deleting an egress policy opened nothing ({pass} -> {pass2})");
}

#[test]
fn audit_mode_passes_would_be_drops() {
    if !privileged("audit_mode_passes_would_be_drops") {
        return;
    }
    let mut lab = Lab::up("a", CLUSTER, POLICIES);
    lab.audit = true;
    lab.load();
    let debug = lab.pods["dev/debug"].clone();
    let web = lab.pods["shop/web"].ips[0];
    let probe = bulkhead_lab::probe::Probe { dst: web, proto: Proto::Tcp, port: 80, l7: false };
    let got = bulkhead_lab::probe::probe_from(
        &bulkhead_datapath::netns::named(&debug.netns),
        &[probe],
        Duration::from_millis(300),
        1,
    )
    .expect("probe");
    assert_eq!(got, vec![bulkhead_lab::probe::Outcome::Reached]);
    assert!(!lab.expected("dev/debug", "shop/web", debug.ips[0], web, Proto::Tcp, 80));
}
