//! Object envelopes (apiVersion, kind, metadata), Kubernetes NetworkPolicy,
//! and the cluster-state kinds (Namespace, Pod).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Decoder, Fields, Unknown};
use crate::api::{
    NamedPort, Namespace, NetworkPolicyPeer, NetworkPolicyRule, NetworkPolicySpec, Object, Origin, Pod, Policy,
    PolicyBody, PolicyKind, PortProtocol, PortSpec,
};
use crate::diag::{FieldPath, closest};
use crate::yaml::{Node, Pos, Value};

/// Kinds we read, with the apiVersion each needs.
const KINDS: &[(&str, &str)] = &[
    ("CiliumNetworkPolicy", "cilium.io/v2"),
    ("CiliumClusterwideNetworkPolicy", "cilium.io/v2"),
    ("NetworkPolicy", "networking.k8s.io/v1"),
    ("RateLimit", "bulkhead.io/v1alpha1"),
    ("Namespace", "v1"),
    ("Pod", "v1"),
];

const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "selfLink",
];

pub(crate) struct Meta {
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
}

impl Decoder<'_> {
    /// Decodes one object of a document or a List's `items`.
    pub(crate) fn object(&mut self, node: &Node, path: &FieldPath) -> Option<Object> {
        let Value::Map(_) = &node.value else {
            self.sink.error(
                node.pos,
                path,
                format!("expected a Kubernetes object (a mapping), found {}", node.type_name()),
            );
            return None;
        };
        let errors_before = self.sink.error_count();
        let kind_node = node.get("kind");
        let kind = match kind_node {
            None => {
                self.sink.error_fix(
                    node.pos,
                    &path.field("kind"),
                    "missing field `kind`",
                    "add e.g. `kind: CiliumNetworkPolicy`",
                );
                return None;
            }
            Some(k) => self.string(k, &path.field("kind"))?,
        };
        let kind_pos = kind_node.map(|n| n.pos).unwrap_or(node.pos);
        if kind == "ExternalHost" && node.get("apiVersion").and_then(Node::as_str) == Some("lab.bulkhead.io/v1alpha1") {
            self.sink.warning(
                kind_pos,
                &path.field("kind"),
                "lab.bulkhead.io/v1alpha1 ExternalHost is a lab-only kind: `bulkhead lab up` makes it a host outside \
                 the cluster (reached as identity world, its names in the lab's DNS); policies and the agent skip it",
                None,
            );
            return None;
        }
        if kind == "Guardrails" || self.guardrails.is_some() {
            return self.guardrails_object(node, path, &kind, kind_pos);
        }
        let Some(&(kind, want_api)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            let names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
            match closest(&kind, &names) {
                Some(k) => self.sink.error_fix(
                    kind_pos,
                    &path.field("kind"),
                    format!("unknown kind `{kind}`"),
                    format!("did you mean `{k}`? kinds are case-sensitive"),
                ),
                None => self.sink.warning(
                    kind_pos,
                    &path.field("kind"),
                    format!("kind `{kind}` is not a policy, Namespace or Pod; skipped"),
                    None,
                ),
            }
            return None;
        };
        self.api_version(node, path, kind, want_api);
        let known: &[&str] = match kind {
            "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
                &["apiVersion", "kind", "metadata", "spec", "specs", "status"]
            }
            "NetworkPolicy" | "RateLimit" => &["apiVersion", "kind", "metadata", "spec", "status"],
            _ => &[],
        };
        let unknown = if known.is_empty() { Unknown::Ignore } else { Unknown::Warn };
        let fields = self.map(node, path, known, unknown)?;
        let origin = Origin { file: self.sink.file().to_string(), line: node.pos.line };
        let meta = self.metadata(&fields, kind);
        let obj = match kind {
            "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
                let clusterwide = kind == "CiliumClusterwideNetworkPolicy";
                let rules = self.cilium_specs(&fields, clusterwide)?;
                let pkind = if clusterwide {
                    PolicyKind::CiliumClusterwideNetworkPolicy
                } else {
                    PolicyKind::CiliumNetworkPolicy
                };
                let namespace = self.policy_namespace(&fields, &meta, clusterwide);
                Object::Policy(Policy {
                    kind: pkind,
                    name: meta.name?,
                    namespace,
                    origin,
                    body: PolicyBody::Cilium(rules),
                })
            }
            "NetworkPolicy" => {
                let spec = self.network_policy_spec(&fields)?;
                let namespace = self.policy_namespace(&fields, &meta, false);
                Object::Policy(Policy {
                    kind: PolicyKind::NetworkPolicy,
                    name: meta.name?,
                    namespace,
                    origin,
                    body: PolicyBody::Kubernetes(spec),
                })
            }
            "RateLimit" => {
                let spec = self.rate_limit_spec(&fields)?;
                let namespace = self.policy_namespace(&fields, &meta, false);
                Object::Policy(Policy {
                    kind: PolicyKind::RateLimit,
                    name: meta.name?,
                    namespace,
                    origin,
                    body: PolicyBody::RateLimit(spec),
                })
            }
            "Namespace" => {
                let name = meta.name?;
                let mut labels = meta.labels;
                labels.insert("kubernetes.io/metadata.name".to_string(), name.clone());
                Object::Namespace(Namespace { name, labels })
            }
            _ => {
                let namespace = meta.namespace.unwrap_or_else(|| self.opts.default_namespace.clone());
                Object::Pod(self.pod(&fields, meta.name?, namespace, meta.labels)?)
            }
        };
        (self.sink.error_count() == errors_before).then_some(obj)
    }

    /// A Guardrails object: decoded into the guardrails file's list, or
    /// (among policies) skipped with a warning; any other kind in a
    /// guardrails file is an error.
    fn guardrails_object(&mut self, node: &Node, path: &FieldPath, kind: &str, kind_pos: Pos) -> Option<Object> {
        if kind != "Guardrails" {
            self.sink.error_fix(
                kind_pos,
                &path.field("kind"),
                format!("a guardrails file holds Guardrails only, not `{kind}`"),
                "keep policies and cluster objects in their own files",
            );
            return None;
        }
        if self.guardrails.is_none() {
            self.sink.warning(
                kind_pos,
                &path.field("kind"),
                "bulkhead.io/v1alpha1 Guardrails is an organisation's rules for policies, not a policy: pass its \
                 file as `--guardrails FILE` (policy lint, agent, webhook); skipped here",
                None,
            );
            return None;
        }
        self.api_version(node, path, "Guardrails", "bulkhead.io/v1alpha1");
        let errors = self.sink.error_count();
        let fields = self.map(node, path, &["apiVersion", "kind", "metadata", "spec"], Unknown::Error)?;
        let origin = Origin { file: self.sink.file().to_string(), line: node.pos.line };
        let meta = self.metadata(&fields, "Guardrails");
        let g = self.guardrails(&fields, meta.name?, origin)?;
        if self.sink.error_count() == errors
            && let Some(out) = self.guardrails.as_mut()
        {
            out.push(g);
        }
        None
    }

    fn api_version(&mut self, node: &Node, path: &FieldPath, kind: &str, want: &str) {
        let p = path.field("apiVersion");
        let Some(v) = node.get("apiVersion") else {
            let msg = match &node.value {
                Value::Map(entries) => match entries.iter().find(|(k, _)| k.text.eq_ignore_ascii_case("apiVersion")) {
                    Some((k, _)) => {
                        format!("missing field `apiVersion` (found `{}`: field names are case-sensitive)", k.text)
                    }
                    None => "missing field `apiVersion`".to_string(),
                },
                _ => "missing field `apiVersion`".to_string(),
            };
            self.sink.error_fix(node.pos, &p, msg, format!("write `apiVersion: {want}`"));
            return;
        };
        let Some(text) = self.string(v, &p) else { return };
        if text != want {
            let why = if want.starts_with(&format!("{text}/")) {
                format!("`{text}` lacks the version")
            } else {
                format!("{kind} is served as `{want}`, not `{text}`")
            };
            self.sink.error_fix(
                v.pos,
                &p,
                format!("wrong apiVersion for {kind}: {why}"),
                format!("apiVersion: {want}"),
            );
        }
    }

    fn metadata(&mut self, f: &Fields<'_>, kind: &str) -> Meta {
        let mut meta = Meta { name: None, namespace: None, labels: BTreeMap::new() };
        let path = f.path("metadata");
        let Some(node) = self.required(f, "metadata", "add `metadata: {name: ...}`") else { return meta };
        let strict = matches!(
            kind,
            "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "NetworkPolicy" | "RateLimit" | "Guardrails"
        );
        let Some(m) = self.map(node, &path, METADATA_FIELDS, if strict { Unknown::Warn } else { Unknown::Ignore })
        else {
            return meta;
        };
        match m.value("name") {
            Some(n) => {
                if let Some(name) = self.string(n, &m.path("name")) {
                    if super::is_dns_subdomain(&name) {
                        meta.name = Some(name);
                    } else {
                        self.sink.error(n.pos, &m.path("name"), format!("`{name}` is not a valid object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"));
                    }
                }
            }
            None => {
                self.sink.error_fix(node.pos, &m.path("name"), "missing field `metadata.name`", "add `name: my-policy`")
            }
        }
        if let Some(n) = m.value("namespace")
            && let Some(ns) = self.string(n, &m.path("namespace"))
        {
            if super::is_dns_subdomain(&ns) && !ns.contains('.') {
                meta.namespace = Some(ns);
            } else {
                self.sink.error(n.pos, &m.path("namespace"), format!("`{ns}` is not a valid namespace name"));
            }
        }
        if let Some(l) = m.value("labels") {
            meta.labels = self.string_map(l, &m.path("labels"));
        }
        meta
    }

    fn policy_namespace(&mut self, f: &Fields<'_>, meta: &Meta, clusterwide: bool) -> Option<String> {
        if clusterwide {
            if let (Some(ns), Some(node)) = (&meta.namespace, f.value("metadata").and_then(|m| m.get("namespace"))) {
                self.sink.warning(
                    node.pos,
                    &f.path("metadata").field("namespace"),
                    format!("a CiliumClusterwideNetworkPolicy is not namespaced; namespace `{ns}` is ignored"),
                    Some("remove metadata.namespace, or use a CiliumNetworkPolicy".into()),
                );
            }
            return None;
        }
        Some(meta.namespace.clone().unwrap_or_else(|| self.opts.default_namespace.clone()))
    }

    /// A map of string to string (labels, annotations), keys validated as
    /// label keys.
    pub(crate) fn string_map(&mut self, node: &Node, path: &FieldPath) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(m) = self.map(node, path, &[], Unknown::Ignore) else { return out };
        for (k, v) in m.entries {
            let p = path.field(&k.text);
            let value = match &v.value {
                Value::Null => Some(String::new()),
                _ => self.string(v, &p),
            };
            if let Some(value) = value {
                out.insert(k.text.clone(), value);
            }
        }
        out
    }

    fn network_policy_spec(&mut self, f: &Fields<'_>) -> Option<NetworkPolicySpec> {
        let path = f.path("spec");
        let Some(node) = f.value("spec") else {
            self.sink.error(f.entries.first().map(|(k, _)| k.pos).unwrap_or_default(), &path, "missing field `spec`");
            return None;
        };
        let s = self.map(node, &path, &["podSelector", "policyTypes", "ingress", "egress"], Unknown::Error)?;
        let pod_selector = match s.get("podSelector") {
            Some(n) => self.label_selector(n, &s.path("podSelector")),
            None => {
                self.sink.error_fix(
                    node.pos,
                    &s.path("podSelector"),
                    "missing field `podSelector`",
                    "use `podSelector: {}` to select every pod of the namespace",
                );
                None
            }
        };
        let ingress = self.np_rules(&s, "ingress", "from");
        let egress = self.np_rules(&s, "egress", "to");
        let (mut isolates_ingress, mut isolates_egress) = (true, egress.as_ref().is_some_and(|e| !e.is_empty()));
        if let Some(types) = s.value("policyTypes") {
            let p = s.path("policyTypes");
            let list = self.strings(types, &p)?;
            isolates_ingress = false;
            isolates_egress = false;
            for (i, (t, pos)) in list.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => isolates_ingress = true,
                    "Egress" => isolates_egress = true,
                    other => {
                        let fix = closest(other, &["Ingress", "Egress"]).map(|c| format!("`{c}` (case-sensitive)"));
                        let msg = format!("unknown policy type `{other}`: expected Ingress or Egress");
                        match fix {
                            Some(fx) => self.sink.error_fix(*pos, &p.index(i), msg, fx),
                            None => self.sink.error(*pos, &p.index(i), msg),
                        }
                    }
                }
            }
        }
        Some(NetworkPolicySpec {
            pod_selector: pod_selector?,
            ingress: ingress?,
            egress: egress?,
            isolates_ingress,
            isolates_egress,
        })
    }

    fn np_rules(&mut self, s: &Fields<'_>, section: &str, peers_field: &str) -> Option<Vec<NetworkPolicyRule>> {
        let Some(node) = s.value(section) else { return Some(Vec::new()) };
        let path = s.path(section);
        let items = self.seq(node, &path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let rp = path.index(i);
            let Some(r) = self.map(item, &rp, &[peers_field, "ports"], Unknown::Error) else {
                ok = false;
                continue;
            };
            let mut peers = Vec::new();
            if let Some(pn) = r.value(peers_field) {
                let pp = r.path(peers_field);
                match self.seq(pn, &pp) {
                    Some(list) => {
                        for (j, peer) in list.iter().enumerate() {
                            match self.np_peer(peer, &pp.index(j)) {
                                Some(p) => peers.push(p),
                                None => ok = false,
                            }
                        }
                    }
                    None => ok = false,
                }
            }
            let mut ports = Vec::new();
            if let Some(pn) = r.value("ports") {
                let pp = r.path("ports");
                match self.seq(pn, &pp) {
                    Some(list) => {
                        for (j, port) in list.iter().enumerate() {
                            match self.np_port(port, &pp.index(j)) {
                                Some(p) => ports.push(p),
                                None => ok = false,
                            }
                        }
                    }
                    None => ok = false,
                }
            }
            out.push(NetworkPolicyRule { path: rp.to_string(), peers, ports });
        }
        ok.then_some(out)
    }

    fn np_peer(&mut self, node: &Node, path: &FieldPath) -> Option<NetworkPolicyPeer> {
        let f = self.map(node, path, &["podSelector", "namespaceSelector", "ipBlock"], Unknown::Error)?;
        let pod = f.get("podSelector");
        let ns = f.get("namespaceSelector");
        if let Some(block) = f.get("ipBlock") {
            if pod.is_some() || ns.is_some() {
                self.sink.error_fix(
                    block.pos,
                    &f.path("ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
                    "make them two entries of the list",
                );
                return None;
            }
            let b = self.map(block, &f.path("ipBlock"), &["cidr", "except"], Unknown::Error)?;
            let Some(cidr_node) = b.value("cidr") else {
                self.sink.error(block.pos, &b.path("cidr"), "missing field `cidr`");
                return None;
            };
            return self
                .cidr_rule(cidr_node, &b.path("cidr"), b.value("except"), &b.path("except"))
                .map(NetworkPolicyPeer::IpBlock);
        }
        if pod.is_none() && ns.is_none() {
            self.sink.error_fix(
                node.pos,
                path,
                "a peer must set podSelector, namespaceSelector or ipBlock",
                "use `podSelector: {}` for every pod of the namespace",
            );
            return None;
        }
        let pod_selector = match pod {
            Some(n) => Some(self.label_selector(n, &f.path("podSelector"))?),
            None => None,
        };
        let namespace_selector = match ns {
            Some(n) => Some(self.label_selector(n, &f.path("namespaceSelector"))?),
            None => None,
        };
        Some(NetworkPolicyPeer::Pods { pod_selector, namespace_selector })
    }

    fn np_port(&mut self, node: &Node, path: &FieldPath) -> Option<PortProtocol> {
        let f = self.map(node, path, &["port", "endPort", "protocol"], Unknown::Error)?;
        let protocol = self.protocol(f.value("protocol"), &f.path("protocol"), super::ProtocolSet::Kubernetes)?;
        let port = match f.value("port") {
            None => PortSpec::Number(0),
            Some(p) => match &p.value {
                Value::Scalar { text, quoted } if super::scalar_type(text, *quoted) == super::ScalarType::Int => {
                    PortSpec::Number(u16::try_from(self.int(p, &f.path("port"), 1, 65535)?).ok()?)
                }
                _ => {
                    let name = self.string(p, &f.path("port"))?;
                    if !super::cilium::is_port_name(&name) {
                        self.sink.error(p.pos, &f.path("port"), format!("`{name}` is neither a port number nor a valid port name (an IANA service name: at most 15 lowercase letters, digits and '-', with at least one letter)"));
                        return None;
                    }
                    PortSpec::Name(name)
                }
            },
        };
        let end_port = match f.value("endPort") {
            None => None,
            Some(e) => {
                let end = u16::try_from(self.int(e, &f.path("endPort"), 1, 65535)?).ok()?;
                match port {
                    PortSpec::Number(start) if start != 0 && end >= start => Some(end),
                    PortSpec::Number(start) if start != 0 => {
                        self.sink.error(e.pos, &f.path("endPort"), format!("endPort {end} is below port {start}"));
                        return None;
                    }
                    _ => {
                        self.sink.error(e.pos, &f.path("endPort"), "endPort needs a numeric port");
                        return None;
                    }
                }
            }
        };
        Some(PortProtocol { port, end_port, protocol })
    }

    fn pod(
        &mut self,
        f: &Fields<'_>,
        name: String,
        namespace: String,
        labels: BTreeMap<String, String>,
    ) -> Option<Pod> {
        let mut pod = Pod {
            namespace,
            name,
            labels,
            service_account: "default".to_string(),
            ips: Vec::new(),
            ports: Vec::new(),
            host_network: false,
        };
        if let Some(spec) = f.value("spec") {
            let sp = f.path("spec");
            let s = self.map(spec, &sp, &[], Unknown::Ignore)?;
            for key in ["serviceAccount", "serviceAccountName"] {
                if let Some(sa) = s.value(key) {
                    pod.service_account = self.string(sa, &s.path(key))?;
                }
            }
            if let Some(h) = s.value("hostNetwork") {
                pod.host_network = self.bool(h, &s.path("hostNetwork"))?;
            }
            for list in ["containers", "initContainers"] {
                let Some(cs) = s.value(list) else { continue };
                let cp = s.path(list);
                for (i, c) in self.seq(cs, &cp)?.iter().enumerate() {
                    let c = self.map(c, &cp.index(i), &[], Unknown::Ignore)?;
                    let Some(ports) = c.value("ports") else { continue };
                    for (j, p) in self.seq(ports, &c.path("ports"))?.iter().enumerate() {
                        pod.ports.push(self.container_port(p, &c.path("ports").index(j))?);
                    }
                }
            }
        }
        if let Some(status) = f.value("status") {
            let st = self.map(status, &f.path("status"), &[], Unknown::Ignore)?;
            if let Some(ips) = st.value("podIPs") {
                for (i, ip) in self.seq(ips, &st.path("podIPs"))?.iter().enumerate() {
                    let e = self.map(ip, &st.path("podIPs").index(i), &[], Unknown::Ignore)?;
                    if let Some(n) = e.value("ip") {
                        pod.ips.push(self.ip(n, &e.path("ip"))?);
                    }
                }
            }
            if let Some(n) = st.value("podIP") {
                let ip = self.ip(n, &st.path("podIP"))?;
                if !pod.ips.contains(&ip) {
                    pod.ips.insert(0, ip);
                }
            }
        }
        Some(pod)
    }

    fn container_port(&mut self, node: &Node, path: &FieldPath) -> Option<NamedPort> {
        let f = self.map(node, path, &[], Unknown::Ignore)?;
        let Some(cp) = f.value("containerPort") else {
            self.sink.error(node.pos, &f.path("containerPort"), "missing field `containerPort`");
            return None;
        };
        let port = u16::try_from(self.int(cp, &f.path("containerPort"), 1, 65535)?).ok()?;
        let name = match f.value("name") {
            Some(n) => {
                let name = self.string(n, &f.path("name"))?;
                if !super::cilium::is_port_name(&name) {
                    self.sink.error(n.pos, &f.path("name"), format!("`{name}` is not a valid port name (an IANA service name: at most 15 lowercase letters, digits and '-')"));
                    return None;
                }
                name
            }
            None => String::new(),
        };
        let protocol = self.protocol(f.value("protocol"), &f.path("protocol"), super::ProtocolSet::Kubernetes)?;
        Some(NamedPort { name, port, protocol })
    }

    fn ip(&mut self, node: &Node, path: &FieldPath) -> Option<IpAddr> {
        let text = self.string(node, path)?;
        match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.sink.error(node.pos, path, format!("`{text}` is not an IP address"));
                None
            }
        }
    }
}
