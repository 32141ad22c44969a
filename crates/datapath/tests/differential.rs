//! The differential test: random clusters of policies (CNP, CCNP,
//! NetworkPolicy; allow and deny; endpoints, namespaces, entities, CIDRs
//! with exceptions, ipBlocks, ports, ranges, ICMP), real packets between
//! pods, and the kernel's verdict compared with the engine's for every
//! probe. At least 10,000 probes per run, zero differences.
//!
//! The seed is printed; `BULKHEAD_DIFF_SEED=N` replays a run and
//! `BULKHEAD_DIFF_PROBES=N` changes its size.

mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bulkhead_policy::repository::Proto;
use support::{Lab, privileged};

/// Six pods in two namespaces, each with a v4 and a v6 address.
const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: red, labels: {team: red}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: blue, labels: {team: blue}}}
- {apiVersion: v1, kind: Pod, metadata: {name: a1, namespace: red, labels: {app: a, tier: x}},
   spec: {containers: [{name: c, ports: [{name: web, containerPort: 80}]}]},
   status: {podIP: 198.18.30.1, podIPs: [{ip: 198.18.30.1}, {ip: "fd00:b::30:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: b1, namespace: red, labels: {app: b, tier: x}},
   spec: {containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]},
   status: {podIP: 198.18.30.2, podIPs: [{ip: 198.18.30.2}, {ip: "fd00:b::30:2"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: c1, namespace: red, labels: {app: c, tier: y}},
   spec: {containers: [{name: c}]},
   status: {podIP: 198.18.31.1, podIPs: [{ip: 198.18.31.1}, {ip: "fd00:b::31:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: a2, namespace: blue, labels: {app: a, tier: y}},
   spec: {containers: [{name: c, ports: [{name: web, containerPort: 80}]}]},
   status: {podIP: 198.18.40.1, podIPs: [{ip: 198.18.40.1}, {ip: "fd00:b::40:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: b2, namespace: blue, labels: {app: b, tier: x}},
   spec: {containers: [{name: c}]},
   status: {podIP: 198.18.40.2, podIPs: [{ip: 198.18.40.2}, {ip: "fd00:b::40:2"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: c2, namespace: blue, labels: {app: c, tier: x}},
   spec: {containers: [{name: c}]},
   status: {podIP: 198.18.41.1, podIPs: [{ip: 198.18.41.1}, {ip: "fd00:b::41:1"}]}}
"#;

const PORTS: &[(Proto, u16)] = &[
    (Proto::Tcp, 80),
    (Proto::Tcp, 443),
    (Proto::Tcp, 5432),
    (Proto::Tcp, 8080),
    (Proto::Tcp, 8081),
    (Proto::Udp, 53),
    (Proto::Udp, 5353),
    (Proto::Icmp, 0),
];

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn selector(r: &mut Rng) -> String {
    match r.below(5) {
        0 => "{}".into(),
        1 => format!("{{matchLabels: {{app: {}}}}}", r.pick(&["a", "b", "c"])),
        2 => format!("{{matchLabels: {{tier: {}}}}}", r.pick(&["x", "y"])),
        3 => format!(
            "{{matchExpressions: [{{key: app, operator: {}, values: [{}]}}]}}",
            r.pick(&["In", "NotIn"]),
            r.pick(&["a", "b", "a, c"])
        ),
        _ => format!("{{matchLabels: {{app: {}, tier: {}}}}}", r.pick(&["a", "b", "c"]), r.pick(&["x", "y"])),
    }
}

fn cidr(r: &mut Rng) -> (String, Option<String>) {
    let v6 = r.chance(30);
    match (v6, r.below(3)) {
        (false, 0) => ("198.18.30.0/24".into(), Some("198.18.30.2/32".into())),
        (false, 1) => ("198.18.0.0/16".into(), Some("198.18.40.0/24".into())),
        (false, _) => (format!("{}/32", r.pick(&["198.18.30.1", "198.18.41.1", "198.18.40.2"])), None),
        (true, 0) => ("fd00:b::30:0/112".into(), Some("fd00:b::30:1/128".into())),
        (true, _) => (format!("{}/128", r.pick(&["fd00:b::31:1", "fd00:b::40:1"])), None),
    }
}

fn cilium_ports(r: &mut Rng, out: &mut String, allow_icmp: bool) {
    match r.below(if allow_icmp { 5 } else { 4 }) {
        0 => {}
        1 => {
            let (port, proto) =
                r.pick(&[("80", "TCP"), ("443", "TCP"), ("53", "UDP"), ("5432", "ANY"), ("web", "TCP")]);
            let _ = write!(out, "\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: {proto}}}]}}]");
        }
        2 => {
            let (lo, hi) = r.pick(&[(443, 5432), (8000, 8080), (5000, 6000), (53, 80)]);
            let proto = r.pick(&["TCP", "UDP"]);
            let _ = write!(out, "\n    toPorts: [{{ports: [{{port: \"{lo}\", endPort: {hi}, protocol: {proto}}}]}}]");
        }
        3 => {
            let _ = write!(
                out,
                "\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}, {{port: \"5353\", protocol: UDP}}, {{port: \"8081\", protocol: TCP}}]}}]"
            );
        }
        _ => {
            let _ = write!(out, "\n    icmps: [{{fields: [{{type: 8}}, {{type: 128, family: IPv6}}]}}]");
        }
    }
}

fn cilium_rule(r: &mut Rng, section: &str, out: &mut String) {
    let ingress = section.starts_with("ingress");
    let deny = section.ends_with("Deny");
    let (ep, ent, cidr_key) = if ingress {
        ("fromEndpoints", "fromEntities", "fromCIDRSet")
    } else {
        ("toEndpoints", "toEntities", "toCIDRSet")
    };
    let _ = write!(out, "\n  {section}:");
    for _ in 0..=r.below(2) {
        match r.below(6) {
            0 | 1 => {
                let _ = write!(out, "\n  - {ep}: [{}]", selector(r));
            }
            2 => {
                let ns = r.pick(&["red", "blue"]);
                let _ = write!(out, "\n  - {ep}: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: {ns}}}}}]");
            }
            3 => {
                let _ = write!(out, "\n  - {ent}: [{}]", r.pick(&["cluster", "world", "all"]));
            }
            _ => {
                let (c, except) = cidr(r);
                match except.filter(|_| r.chance(60)) {
                    Some(e) => {
                        let _ = write!(out, "\n  - {cidr_key}: [{{cidr: {c}, except: [{e}]}}]");
                    }
                    None => {
                        let _ = write!(out, "\n  - {cidr_key}: [{{cidr: {c}}}]");
                    }
                }
            }
        }
        let icmp = !deny || r.chance(50);
        cilium_ports(r, out, icmp);
    }
}

fn cilium_policy(r: &mut Rng, name: &str, clusterwide: bool) -> String {
    let mut out = String::new();
    let (kind, ns) = if clusterwide {
        ("CiliumClusterwideNetworkPolicy", String::new())
    } else {
        ("CiliumNetworkPolicy", format!(", namespace: {}", r.pick(&["red", "blue"])))
    };
    let _ = write!(out, "apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\nspec:");
    let _ = write!(out, "\n  endpointSelector: {}", selector(r));
    let mut sections: Vec<&str> = Vec::new();
    for s in ["ingress", "egress", "ingressDeny", "egressDeny"] {
        let p = if s.ends_with("Deny") { 25 } else { 60 };
        if r.chance(p) {
            sections.push(s);
        }
    }
    if sections.is_empty() {
        sections.push(*r.pick(&["ingress", "egress"]));
    }
    for s in sections {
        cilium_rule(r, s, &mut out);
    }
    out
}

fn knp(r: &mut Rng, name: &str) -> String {
    let mut out = String::new();
    let ns = r.pick(&["red", "blue"]);
    let _ = write!(
        out,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:"
    );
    let _ = write!(out, "\n  podSelector: {}", selector(r));
    const TYPES: [&[&str]; 3] = [&["Ingress"], &["Egress"], &["Ingress", "Egress"]];
    let types = *r.pick(&TYPES);
    let _ = write!(out, "\n  policyTypes: [{}]", types.join(", "));
    for t in types {
        let (section, peer_key) = if *t == "Ingress" { ("ingress", "from") } else { ("egress", "to") };
        if r.chance(15) {
            continue; // a policy type with no rules: default deny
        }
        let _ = write!(out, "\n  {section}:");
        for _ in 0..=r.below(2) {
            let peer = match r.below(4) {
                0 => format!("{{podSelector: {}}}", selector(r)),
                1 => format!("{{namespaceSelector: {{matchLabels: {{team: {}}}}}}}", r.pick(&["red", "blue"])),
                2 => {
                    let (c, except) = cidr(r);
                    match except {
                        Some(e) => format!("{{ipBlock: {{cidr: {c}, except: [{e}]}}}}"),
                        None => format!("{{ipBlock: {{cidr: {c}}}}}"),
                    }
                }
                _ => format!(
                    "{{namespaceSelector: {{matchLabels: {{team: {}}}}}, podSelector: {}}}",
                    r.pick(&["red", "blue"]),
                    selector(r)
                ),
            };
            let _ = write!(out, "\n  - {peer_key}: [{peer}]");
            match r.below(4) {
                0 => {}
                1 => {
                    let _ = write!(out, "\n    ports: [{{port: {}}}]", r.pick(&["80", "5432", "web"]));
                }
                2 => {
                    let _ = write!(out, "\n    ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 443}}]");
                }
                _ => {
                    let _ = write!(out, "\n    ports: [{{protocol: TCP, port: 8000, endPort: 8081}}]");
                }
            }
        }
    }
    out
}

fn random_policies(r: &mut Rng, round: usize) -> String {
    let n = 1 + r.below(4);
    let docs: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("p{round}-{i}");
            match r.below(5) {
                0 | 1 => cilium_policy(r, &name, false),
                2 => cilium_policy(r, &name, true),
                _ => knp(r, &name),
            }
        })
        .collect();
    docs.join("\n---\n")
}

#[test]
fn kernel_and_engine_agree_on_random_policies() {
    if !privileged("kernel_and_engine_agree_on_random_policies") {
        return;
    }
    let seed = std::env::var("BULKHEAD_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    let want: usize = std::env::var("BULKHEAD_DIFF_PROBES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    eprintln!("differential: seed {seed} (BULKHEAD_DIFF_SEED={seed} replays it), {want} probes");
    let mut r = Rng(seed);
    let mut lab = Lab::up("d", CLUSTER, "");
    let (mut probes, mut passing, mut dropping) = (0, 0, 0);
    let started = Instant::now();
    let mut round = 0;
    while probes < want {
        // Replace the previous round's policies with new random ones.
        let text = random_policies(&mut r, round);
        lab.replace_policies(&text);
        let (diffs, [pass, drop]) = lab.differences(PORTS, Duration::from_millis(250));
        assert!(
            diffs.is_empty(),
            "seed {seed}, round {round}: {} of {} probes differ\n--- policies ---\n{text}\n--- differences ---\n{}",
            diffs.len(),
            pass + drop,
            diffs.join("\n")
        );
        probes += pass + drop;
        passing += pass;
        dropping += drop;
        round += 1;
    }
    eprintln!(
        "differential: {probes} probes in {round} rounds ({passing} allowed, {dropping} dropped), 0 differences, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(passing > want / 10 && dropping > want / 10, "the random policies exercise both outcomes");
}
