//! A deterministic, realistic cluster for the engine benchmarks.
//!
//! Shared (through `#[path]`) by `benches/resolve.rs` and
//! `examples/engine_scale.rs`, so that criterion and the percentile harness
//! measure the same objects. Everything is emitted as YAML and decoded with
//! the real decoder: a generated policy that does not validate fails loudly
//! instead of being silently dropped, and the decode time is the in-run
//! baseline the engine is compared to.
//!
//! Shape (for the issue's scale, 1,000 namespaces / 10,000 pods / 1,000
//! policies):
//! - namespace 0 is `kube-system` (kube-dns and friends); the others are
//!   `ns-NNNN` with `team=tN` (20 teams) and `env=prod|staging`;
//! - each namespace runs 5 apps out of a pool of 12; pod `j` runs app `j % 5`
//!   and pods `j >= 5` sometimes carry `version=v2`, so ~6 identities per
//!   namespace, shared by the 10 pods; every pod also carries bookkeeping
//!   labels (`pod-template-hash`, sometimes `controller-revision-hash`,
//!   `statefulset.kubernetes.io/pod-name`) that must not create identities;
//! - unique pod addresses in 198.18.0.0/15 (and fd00:b::/64), named container
//!   ports (`http` 8080, `grpc` 9090, `metrics` 9100, `postgres`, `redis`);
//! - policies: ~2% CiliumClusterwideNetworkPolicy, ~10% NetworkPolicy, the
//!   rest CiliumNetworkPolicy of several shapes (in-namespace ingress on
//!   ports, named ports, HTTP rules, egress to kube-dns with a DNS rule,
//!   toFQDNs, egressDeny, toCIDR/toCIDRSet with except, toEntities world).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use std::collections::BTreeMap;

use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::api::{Namespace, Object, Pod};
use bulkhead_policy::diag::Sink;
use bulkhead_policy::labels::pod_identity_labels;
use bulkhead_policy::repository::compile;

/// A tiny xorshift64 generator: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (zero is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }

    /// `n` lowercase hex digits (like a pod-template-hash).
    pub fn hex(&mut self, n: usize) -> String {
        let v = self.next_u64();
        format!("{v:016x}")[..n].to_string()
    }
}

/// How big a cluster to generate.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Namespaces (the first is `kube-system`).
    pub namespaces: usize,
    /// Pods in each namespace.
    pub pods_per_namespace: usize,
    /// Policies of all kinds.
    pub policies: usize,
}

impl Scale {
    /// The issue's target: 1,000 namespaces, 10,000 pods, 1,000 policies.
    pub const ISSUE: Scale = Scale { namespaces: 1000, pods_per_namespace: 10, policies: 1000 };

    /// A tenth of it (for profiling under valgrind).
    pub const SMALL: Scale = Scale { namespaces: 100, pods_per_namespace: 10, policies: 100 };

    /// Reads `BULKHEAD_SCALE=NS,PODS_PER_NS,POLICIES` (default: [`Scale::ISSUE`]).
    pub fn from_env() -> Scale {
        let Ok(v) = std::env::var("BULKHEAD_SCALE") else { return Scale::ISSUE };
        if v == "small" {
            return Scale::SMALL;
        }
        let n: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        match n.as_slice() {
            [a, b, c] => Scale { namespaces: (*a).max(2), pods_per_namespace: (*b).max(1), policies: *c },
            _ => Scale::ISSUE,
        }
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} namespaces, {} pods, {} policies",
            self.namespaces,
            self.namespaces * self.pods_per_namespace,
            self.policies
        )
    }
}

const APP_POOL: [&str; 12] = [
    "frontend",
    "api",
    "worker",
    "db",
    "cache",
    "auth",
    "search",
    "billing",
    "reports",
    "gateway",
    "queue",
    "scheduler",
];
const KUBE_SYSTEM_APPS: [&str; 5] =
    ["kube-dns", "metrics-server", "konnectivity-agent", "ingress-nginx", "cert-manager"];
const APPS_PER_NS: usize = 5;
const TEAMS: usize = 20;

fn tier(app: &str) -> &'static str {
    match app {
        "frontend" | "gateway" => "web",
        "db" | "cache" => "data",
        _ => "backend",
    }
}

/// Container ports of an app: `(name, port, protocol)`.
fn ports(app: &str) -> &'static [(&'static str, u16, &'static str)] {
    match app {
        "db" => &[("postgres", 5432, "TCP"), ("metrics", 9100, "TCP")],
        "cache" => &[("redis", 6379, "TCP"), ("metrics", 9100, "TCP")],
        "frontend" | "gateway" => &[("http", 8080, "TCP"), ("metrics", 9100, "TCP")],
        "api" | "auth" | "search" | "billing" => {
            &[("http", 8080, "TCP"), ("grpc", 9090, "TCP"), ("metrics", 9100, "TCP")]
        }
        "kube-dns" => &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
        _ => &[("http", 8080, "TCP")],
    }
}

/// A generated cluster: YAML text for the cluster state and the policies.
pub struct Generated {
    /// The scale it was generated at.
    pub scale: Scale,
    /// Namespace and Pod documents.
    pub cluster_yaml: String,
    /// Policy documents.
    pub policies_yaml: String,
    /// Policies by kind: (CNP, NetworkPolicy, CCNP).
    pub policy_kinds: (usize, usize, usize),
    /// How many distinct pod identities the labels must produce (bookkeeping
    /// labels excluded).
    pub expected_pod_identities: usize,
    /// The apps of each namespace, by namespace index.
    apps: Vec<[&'static str; APPS_PER_NS]>,
}

fn ns_name(i: usize) -> String {
    if i == 0 { "kube-system".to_string() } else { format!("ns-{i:04}") }
}

fn ipv4(n: u32) -> String {
    let a = 0xC612_0000u32 + n; // 198.18.0.0 + n, inside 198.18.0.0/15
    format!("{}.{}.{}.{}", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255)
}

fn pod_doc(out: &mut String, ns: &str, name: &str, labels: &[(&str, String)], app: &str, addr: u32) {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    let ports: Vec<String> = ports(app)
        .iter()
        .map(|(n, p, proto)| format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}"))
        .collect();
    let v4 = ipv4(addr);
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{}}}\n\
         spec:\n  serviceAccountName: {app}\n  containers:\n  - name: main\n    image: example/{app}:1.0\n    ports: [{}]\n\
         status: {{podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: \"fd00:b::{:x}:{:x}\"}}]}}\n",
        labels.join(", "),
        ports.join(", "),
        addr >> 16,
        addr & 0xffff,
    );
}

/// Generates the cluster and policies for `scale`, deterministically from `seed`.
pub fn generate(scale: Scale, seed: u64) -> Generated {
    let mut rng = Rng::new(seed);
    let mut cluster = String::new();
    let mut apps = Vec::with_capacity(scale.namespaces);
    let mut identities: BTreeSet<(usize, &str, bool)> = BTreeSet::new();
    let mut addr = 1u32;
    for i in 0..scale.namespaces {
        let ns = ns_name(i);
        if i == 0 {
            let _ = write!(cluster, "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
            apps.push(KUBE_SYSTEM_APPS);
        } else {
            let env = if i % 3 == 0 { "staging" } else { "prod" };
            let _ = write!(
                cluster,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{team: t{}, env: {env}}}\n",
                i % TEAMS
            );
            // 5 distinct apps from the pool, starting at a random offset.
            let start = rng.below(APP_POOL.len());
            let step = [1, 5, 7, 11][rng.below(4)];
            let mut a = [""; APPS_PER_NS];
            for (k, slot) in a.iter_mut().enumerate() {
                *slot = APP_POOL[(start + k * step) % APP_POOL.len()];
            }
            apps.push(a);
        }
        for j in 0..scale.pods_per_namespace {
            let app = apps[i][j % APPS_PER_NS];
            let hash = rng.hex(10);
            let v2 = j >= APPS_PER_NS && rng.chance(30);
            let key = if i == 0 { "k8s-app" } else { "app" };
            let mut labels: Vec<(&str, String)> =
                vec![(key, app.to_string()), ("tier", tier(app).to_string()), ("pod-template-hash", hash.clone())];
            if v2 {
                labels.push(("version", "v2".to_string()));
            }
            if rng.chance(20) {
                labels.push(("controller-revision-hash", rng.hex(8)));
            }
            if app == "db" {
                labels.push(("statefulset.kubernetes.io/pod-name", format!("{app}-{j}")));
            }
            identities.insert((i, app, v2));
            pod_doc(&mut cluster, &ns, &format!("{app}-{hash}-{}", rng.hex(5)), &labels, app, addr);
            addr += 1;
        }
    }
    let mut g = Generated {
        scale,
        cluster_yaml: cluster,
        policies_yaml: String::new(),
        policy_kinds: (0, 0, 0),
        expected_pod_identities: identities.len(),
        apps,
    };
    policies(&mut g, &mut rng);
    g
}

const KUBE_DNS: &str = "{matchLabels: {\"k8s:io.kubernetes.pod.namespace\": kube-system, \"k8s:k8s-app\": kube-dns}}";
const DNS_PORTS: &str = "toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*\"}]}}]";

fn policies(g: &mut Generated, rng: &mut Rng) {
    let n = g.scale.policies;
    let ccnp = (n / 50).max(usize::from(n > 0));
    let knp = n / 10;
    let cnp = n - ccnp - knp;
    g.policy_kinds = (cnp, knp, ccnp);
    let user_ns = g.scale.namespaces - 1;
    let mut out = String::new();
    for k in 0..ccnp {
        ccnp_doc(&mut out, k);
    }
    for k in 0..knp {
        let i = 1 + (k * 7) % user_ns;
        knp_doc(&mut out, rng, k, i, &g.apps[i], g.scale.namespaces);
    }
    for k in 0..cnp {
        let i = 1 + k % user_ns;
        cnp_doc(&mut out, rng, k, i, &g.apps[i]);
    }
    g.policies_yaml = out;
}

fn ccnp_doc(out: &mut String, k: usize) {
    let shape = match k {
        0 => "kube-dns",
        1 => "deny-world-prod",
        _ => "team-baseline",
    };
    let head = format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: ccnp-{k:03}-{shape}}}\nspec:\n"
    );
    out.push_str(&head);
    match k {
        0 => {
            // Every pod may query kube-dns.
            let _ = write!(
                out,
                "  endpointSelector: {KUBE_DNS}\n  ingress:\n  - fromEndpoints: [{{}}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: ANY}}]}}]\n"
            );
        }
        1 => {
            // Nothing from outside the cluster reaches prod.
            out.push_str(
                "  endpointSelector: {matchLabels: {io.cilium.k8s.namespace.labels.env: prod}}\n  ingressDeny:\n  - fromEntities: [world]\n",
            );
        }
        _ => {
            // Per-team baseline: DNS through the proxy, the API server,
            // health checks in.
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{io.cilium.k8s.namespace.labels.team: t{}}}}}\n  egress:\n  - toEndpoints: [{KUBE_DNS}]\n    {DNS_PORTS}\n  - toEntities: [kube-apiserver]\n    toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]\n  ingress:\n  - fromEntities: [health, remote-node]\n",
                (k - 2) % TEAMS
            );
        }
    }
}

fn knp_doc(out: &mut String, rng: &mut Rng, k: usize, i: usize, apps: &[&str; APPS_PER_NS], namespaces: usize) {
    let ns = ns_name(i);
    let subject = apps[rng.below(APPS_PER_NS)];
    let peer = apps[rng.below(APPS_PER_NS)];
    let egress = rng.chance(40);
    let shape = if egress { "ingress-egress" } else { "ingress" };
    let _ = write!(
        out,
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: knp-{k:03}-{shape}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: {subject}}}}}\n"
    );
    out.push_str(if egress { "  policyTypes: [Ingress, Egress]\n" } else { "  policyTypes: [Ingress]\n" });
    let _ = write!(
        out,
        "  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: {peer}}}}}\n    - namespaceSelector: {{matchLabels: {{team: t{}}}}}\n      podSelector: {{matchLabels: {{app: frontend}}}}\n",
        rng.below(TEAMS)
    );
    if rng.chance(50) {
        out.push_str("    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n");
    } else {
        // A node's pod range: ipBlock matches pod addresses (see DESIGN §3).
        let third = rng.below((namespaces * 10 / 256).max(1));
        let _ = writeln!(out, "    - ipBlock: {{cidr: 198.18.{third}.0/24, except: [198.18.{third}.128/25]}}");
    }
    out.push_str("    ports: [{port: 8080, protocol: TCP}, {port: http}]\n");
    if egress {
        out.push_str(
            "  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n",
        );
        let _ = write!(
            out,
            "  - to:\n    - podSelector: {{matchLabels: {{tier: data}}}}\n  - to:\n    - ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 169.254.0.0/16]}}\n    ports: [{{port: 443, protocol: TCP}}]\n"
        );
    }
}

fn cnp_doc(out: &mut String, rng: &mut Rng, k: usize, i: usize, apps: &[&str; APPS_PER_NS]) {
    let ns = ns_name(i);
    let a = apps[rng.below(APPS_PER_NS)];
    let b = apps[rng.below(APPS_PER_NS)];
    let roll = rng.below(100);
    // The shape is in the name, so that costs can be attributed to shapes.
    let shape = match roll {
        0..=34 => "l4-ingress",
        35..=49 => "http-ingress",
        50..=64 => "dns-egress",
        65..=74 => "cidr-egress",
        75..=84 => "egress-deny",
        85..=89 => "world-egress",
        _ => "public-web",
    };
    let _ = write!(
        out,
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: cnp-{k:04}-{shape}, namespace: {ns}}}\nspec:\n"
    );
    match roll {
        // In-namespace ingress on ports (numeric or named).
        0..=34 => {
            let port = if rng.chance(30) { "http" } else { "\"8080\"" };
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {b}}}}}, {{matchLabels: {{tier: web}}}}]\n    toPorts: [{{ports: [{{port: {port}, protocol: TCP}}, {{port: \"9090\", protocol: TCP}}]}}]\n  - fromEndpoints: [{{matchExpressions: [{{key: tier, operator: In, values: [web, backend]}}]}}]\n    toPorts: [{{ports: [{{port: \"9100\", protocol: TCP}}]}}]\n"
            );
        }
        // HTTP rules.
        35..=49 => {
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {b}}}}}]\n    toPorts:\n    - ports: [{{port: \"8080\", protocol: TCP}}]\n      rules:\n        http:\n        - {{method: GET, path: \"/api/v1/.*\"}}\n        - {{method: POST, path: \"/api/v1/orders\", headers: [\"X-Tenant: t{}\"]}}\n",
                i % TEAMS
            );
        }
        // Egress to kube-dns with a DNS rule, in-namespace data, maybe FQDNs.
        50..=64 => {
            let sel = if rng.chance(50) { "{}".to_string() } else { format!("{{matchLabels: {{app: {a}}}}}") };
            let _ = write!(
                out,
                "  endpointSelector: {sel}\n  egress:\n  - toEndpoints: [{KUBE_DNS}]\n    {DNS_PORTS}\n  - toEndpoints: [{{matchLabels: {{tier: data}}}}]\n    toPorts: [{{ports: [{{port: \"5432\", protocol: TCP}}, {{port: \"6379\", protocol: TCP}}]}}]\n"
            );
            if rng.chance(30) {
                out.push_str(
                    "  - toFQDNs: [{matchName: api.stripe.com}, {matchPattern: \"*.githubusercontent.com\"}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n",
                );
            }
        }
        // CIDR egress with exceptions.
        65..=74 => {
            let net = rng.below(200) + 1;
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  egress:\n  - toCIDR: [203.0.113.{}/32, 192.0.2.0/24]\n    toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]\n  - toCIDRSet:\n    - {{cidr: 10.{net}.0.0/16, except: [10.{net}.1.0/24, 10.{net}.2.0/24]}}\n    - {{cidr: \"2001:db8:{net:x}::/48\", except: [\"2001:db8:{net:x}:1::/64\"]}}\n    toPorts: [{{ports: [{{port: \"5432\", protocol: TCP}}]}}]\n",
                rng.below(250)
            );
        }
        // Egress deny beside an in-namespace allow.
        75..=84 => {
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  egress:\n  - toEndpoints: [{{}}]\n  egressDeny:\n  - toEndpoints: [{{matchLabels: {{tier: data}}}}]\n    toPorts: [{{ports: [{{port: \"5432\", protocol: TCP}}]}}]\n  - toCIDRSet: [{{cidr: 169.254.0.0/16, except: [169.254.169.253/32]}}]\n"
            );
        }
        // Public egress.
        85..=89 => {
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  egress:\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}, {{port: \"80\", protocol: TCP}}]}}]\n"
            );
        }
        // Ingress from the world on the web tier, with a deny section.
        _ => {
            let _ = write!(
                out,
                "  endpointSelector: {{matchLabels: {{tier: web}}}}\n  ingress:\n  - fromEntities: [world, cluster]\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n  ingressDeny:\n  - fromCIDRSet: [{{cidr: 0.0.0.0/0, except: [198.18.0.0/15]}}]\n    toPorts: [{{ports: [{{port: \"9100\", protocol: TCP}}]}}]\n"
            );
        }
    }
}

/// Decodes YAML with the real decoder; panics with every diagnostic if any
/// document is invalid (a dropped policy would make the benchmark lie).
pub fn decode(yaml: &str, file: &str) -> Vec<Object> {
    let mut sink = Sink::new(file);
    let objs = decode_str(yaml, &DecodeOptions::default(), &mut sink);
    if sink.error_count() > 0 {
        let shown: Vec<String> = sink.diagnostics.iter().take(20).map(ToString::to_string).collect();
        panic!("generated {file} does not validate ({} errors):\n{}", sink.error_count(), shown.join("\n"));
    }
    objs
}

/// Every object of a generated cluster: namespaces, pods, then policies.
pub fn objects(g: &Generated) -> Vec<Object> {
    let mut o = decode(&g.cluster_yaml, "cluster.yaml");
    o.extend(decode(&g.policies_yaml, "policies.yaml"));
    o
}

/// Pods to add on top of a generated cluster, in existing namespaces. Even
/// ones reuse the labels of an existing identity (new pod-template-hash);
/// odd ones carry a unique `version` and so need a new identity.
pub fn extra_pods(g: &Generated, n: usize, seed: u64) -> Vec<Pod> {
    let mut rng = Rng::new(seed);
    let mut yaml = String::new();
    // Above every initial pod, still inside 198.18.0.0/15.
    let base = (g.scale.namespaces * g.scale.pods_per_namespace) as u32 + 0x1_0000;
    let user_ns = g.scale.namespaces - 1;
    for k in 0..n {
        let i = 1 + (k * 7919) % user_ns;
        let app = g.apps[i][k % APPS_PER_NS];
        let mut labels: Vec<(&str, String)> =
            vec![("app", app.to_string()), ("tier", tier(app).to_string()), ("pod-template-hash", rng.hex(10))];
        if k % 2 == 1 {
            labels.push(("version", format!("canary-{k}")));
        }
        pod_doc(&mut yaml, &ns_name(i), &format!("extra-{app}-{k}"), &labels, app, base + k as u32);
    }
    decode(&yaml, "extra-pods.yaml")
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// The naive in-run reference: for each pod, for each compiled rule, evaluate the
/// rule's subject selector on the pod's identity labels. No peers, no ports:
/// just the subject scan a resolver without indexes would start with.
pub fn naive_subject_match(objs: &[Object]) -> usize {
    let namespaces: BTreeMap<&str, &Namespace> = objs
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some((n.name.as_str(), n)),
            _ => None,
        })
        .collect();
    let rules: Vec<_> = objs
        .iter()
        .filter_map(|o| match o {
            Object::Policy(p) => Some(compile(p)),
            _ => None,
        })
        .flatten()
        .collect();
    let mut hits = 0;
    for o in objs {
        if let Object::Pod(p) = o {
            let labels = pod_identity_labels(p, namespaces.get(p.namespace.as_str()).copied());
            hits += rules.iter().filter(|r| r.subject.as_ref().is_some_and(|s| s.matches(&labels))).count();
        }
    }
    hits
}
