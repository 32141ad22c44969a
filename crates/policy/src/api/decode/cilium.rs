//! Cilium rules: `spec`/`specs`, selectors, peers, ports, ICMP, L7, and
//! Cilium's composition checks (rule_validation.go in Cilium 1.17).

use std::collections::BTreeMap;

use super::{Decoder, Fields, Unknown};
use crate::api::{
    CidrRule, Entity, FqdnSelector, HeaderMatch, HttpRule, IcmpFamily, IcmpField, KafkaRole, KafkaRule, L7Rules,
    LabelSelector, MismatchAction, Operator, PeerRule, PortProtocol, PortRule, PortSpec, Protocol, Requirement, Rule,
};
use crate::cidr::Cidr;
use crate::diag::{FieldPath, closest};
use crate::l7;
use crate::yaml::{Node, Pos, Value};

/// Cilium caps the ports of one port rule.
pub(crate) const MAX_PORTS: usize = 40;

const RULE_FIELDS: &[&str] = &[
    "endpointSelector",
    "nodeSelector",
    "ingress",
    "ingressDeny",
    "egress",
    "egressDeny",
    "labels",
    "description",
    "enableDefaultDeny",
    "log",
];

/// Label sources Cilium knows (`source:key`).
const SOURCES: &[&str] = &["any", "k8s", "reserved", "cidr", "fqdn", "container", "unspec", "cilium-generated", "node"];

/// Whether a top-level list item looks like a Cilium rule.
pub(crate) fn looks_like_rule(node: &Node) -> bool {
    node.get("endpointSelector").is_some() || node.get("nodeSelector").is_some()
}

/// An IANA service name, as Kubernetes validates container port names.
pub(crate) fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// Checks a selector key (`[source:][prefix/]name`); returns the problem.
fn check_label_key(key: &str) -> Result<(), String> {
    let rest = match key.split_once(':') {
        Some((src, rest)) => {
            if !SOURCES.contains(&src) {
                return Err(format!("unknown label source `{src}` in `{key}` (known: {})", SOURCES.join(", ")));
            }
            rest
        }
        None => key,
    };
    if rest.starts_with("io.cilium.k8s.namespace.labels.")
        || key.starts_with("reserved:")
        || key.starts_with("cidr:")
        || key.starts_with("fqdn:")
    {
        return Ok(());
    }
    let (prefix, name) = match rest.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, rest),
    };
    if let Some(p) = prefix
        && !super::is_dns_subdomain(p)
    {
        return Err(format!("label key prefix `{p}` must be a DNS subdomain (lowercase, at most 253 characters)"));
    }
    if !is_label_name(name) {
        return Err(format!(
            "label key `{rest}` is invalid: the name part must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// Direction-specific field names of peer rules.
struct PeerFields {
    endpoints: &'static str,
    requires: &'static str,
    cidr: &'static str,
    cidr_set: &'static str,
    entities: &'static str,
    nodes: &'static str,
    groups: &'static str,
}

const FROM: PeerFields = PeerFields {
    endpoints: "fromEndpoints",
    requires: "fromRequires",
    cidr: "fromCIDR",
    cidr_set: "fromCIDRSet",
    entities: "fromEntities",
    nodes: "fromNodes",
    groups: "fromGroups",
};
const TO: PeerFields = PeerFields {
    endpoints: "toEndpoints",
    requires: "toRequires",
    cidr: "toCIDR",
    cidr_set: "toCIDRSet",
    entities: "toEntities",
    nodes: "toNodes",
    groups: "toGroups",
};

impl Decoder<'_> {
    /// `spec` and `specs` of a CNP/CCNP.
    pub(crate) fn cilium_specs(&mut self, f: &Fields<'_>, clusterwide: bool) -> Option<Vec<Rule>> {
        let mut rules = Vec::new();
        let mut ok = true;
        if let Some(spec) = f.value("spec") {
            match self.rule(spec, &f.path("spec"), Some(clusterwide)) {
                Some(r) => rules.push(r),
                None => ok = false,
            }
        }
        if let Some(specs) = f.value("specs") {
            let p = f.path("specs");
            for (i, s) in self.seq(specs, &p)?.iter().enumerate() {
                match self.rule(s, &p.index(i), Some(clusterwide)) {
                    Some(r) => rules.push(r),
                    None => ok = false,
                }
            }
        }
        if ok && rules.is_empty() {
            let pos = f.entries.first().map(|(k, _)| k.pos).unwrap_or_default();
            self.sink.error_fix(
                pos,
                &f.path("spec"),
                "the policy has no rules",
                "add `spec:` (one rule) or `specs:` (a list of rules)",
            );
            return None;
        }
        ok.then_some(rules)
    }

    /// A bare JSON/YAML list of Cilium rules (`cilium policy import` form).
    pub(crate) fn cilium_rule_list(&mut self, doc: &Node, items: &[Node]) -> Option<crate::api::Policy> {
        let root = FieldPath::root();
        let mut rules = Vec::new();
        let mut name = None;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = root.index(i);
            if name.is_none() {
                name = rule_list_name(item);
            }
            match self.rule(item, &p, None) {
                Some(r) => rules.push(r),
                None => ok = false,
            }
        }
        let file = self.sink.file().to_string();
        let fallback = file.rsplit('/').next().unwrap_or("rules").split('.').next().unwrap_or("rules").to_string();
        ok.then(|| crate::api::Policy {
            kind: crate::api::PolicyKind::CiliumRules,
            name: name.unwrap_or(fallback),
            namespace: None,
            origin: crate::api::Origin { file, line: doc.pos.line },
            body: crate::api::PolicyBody::Cilium(rules),
        })
    }

    /// One rule. `clusterwide`: `Some(false)` for a CNP (no nodeSelector),
    /// `Some(true)` for a CCNP, `None` for a bare rule list.
    fn rule(&mut self, node: &Node, path: &FieldPath, clusterwide: Option<bool>) -> Option<Rule> {
        let errors = self.sink.error_count();
        let f = self.map(node, path, RULE_FIELDS, Unknown::Error)?;
        let endpoint_selector =
            f.get("endpointSelector").and_then(|n| self.label_selector(n, &f.path("endpointSelector")));
        let node_selector = f.get("nodeSelector").and_then(|n| self.label_selector(n, &f.path("nodeSelector")));
        match (f.get("endpointSelector"), f.get("nodeSelector")) {
            (None, None) => self.sink.error_fix(
                node.pos,
                &f.path("endpointSelector"),
                "a rule must have an endpointSelector (or, for host policies, a nodeSelector)",
                "add `endpointSelector: {}` to select every endpoint",
            ),
            (Some(_), Some(n)) => self.sink.error(
                n.pos,
                &f.path("nodeSelector"),
                "a rule cannot have both endpointSelector and nodeSelector",
            ),
            (None, Some(n)) if clusterwide == Some(false) => self.sink.error_fix(
                n.pos,
                &f.path("nodeSelector"),
                "a CiliumNetworkPolicy cannot have a nodeSelector: host policies are clusterwide",
                "use kind: CiliumClusterwideNetworkPolicy",
            ),
            _ => {}
        }
        let host = f.get("nodeSelector").is_some();
        let ingress = self.peer_rules(&f, "ingress", false, false, host);
        let ingress_deny = self.peer_rules(&f, "ingressDeny", false, true, host);
        let egress = self.peer_rules(&f, "egress", true, false, host);
        let egress_deny = self.peer_rules(&f, "egressDeny", true, true, host);
        let sections = [&ingress, &ingress_deny, &egress, &egress_deny];
        if self.sink.error_count() == errors && sections.iter().all(|s| s.as_ref().is_none_or(Vec::is_empty)) {
            self.sink.error_fix(
                node.pos,
                path,
                "a rule must have at least one of ingress, ingressDeny, egress or egressDeny (Cilium 1.17 rejects empty rules)",
                "to deny all ingress write `ingress: [{}]`; to select without restricting, remove the rule",
            );
        }
        let (mut default_deny_ingress, mut default_deny_egress) = (None, None);
        if let Some(dd) = f.value("enableDefaultDeny")
            && let Some(d) = self.map(dd, &f.path("enableDefaultDeny"), &["ingress", "egress"], Unknown::Error)
        {
            default_deny_ingress = d.value("ingress").and_then(|n| self.bool(n, &d.path("ingress")));
            default_deny_egress = d.value("egress").and_then(|n| self.bool(n, &d.path("egress")));
        }
        let description = f.value("description").and_then(|n| self.string(n, &f.path("description")));
        if let Some(l) = f.value("labels") {
            self.rule_labels(l, &f.path("labels"));
        }
        if self.sink.error_count() != errors {
            return None;
        }
        Some(Rule {
            path: path.to_string(),
            endpoint_selector: endpoint_selector.or_else(|| node_selector.is_none().then(LabelSelector::default)),
            node_selector,
            ingress,
            ingress_deny,
            egress,
            egress_deny,
            default_deny_ingress,
            default_deny_egress,
            description,
        })
    }

    /// `labels:` of a rule: a list of `{key, value, source}`.
    fn rule_labels(&mut self, node: &Node, path: &FieldPath) {
        let Some(items) = self.seq(node, path) else { return };
        for (i, item) in items.iter().enumerate() {
            if let Some(l) = self.map(item, &path.index(i), &["key", "value", "source"], Unknown::Error) {
                if l.get("key").is_none() {
                    self.sink.error(item.pos, &l.path("key"), "missing field `key`");
                }
                for k in ["key", "value", "source"] {
                    if let Some(n) = l.value(k) {
                        self.string(n, &l.path(k));
                    }
                }
            }
        }
    }

    /// A label selector (`matchLabels`, `matchExpressions`).
    pub(crate) fn label_selector(&mut self, node: &Node, path: &FieldPath) -> Option<LabelSelector> {
        let errors = self.sink.error_count();
        let f = self.map(node, path, &["matchLabels", "matchExpressions"], Unknown::Error)?;
        let mut sel = LabelSelector::default();
        if let Some(ml) = f.value("matchLabels") {
            let mp = f.path("matchLabels");
            if let Some(m) = self.map(ml, &mp, &[], Unknown::Ignore) {
                for (k, v) in m.entries {
                    let kp = mp.field(&k.text);
                    if let Err(e) = check_label_key(&k.text) {
                        self.sink.error(k.pos, &kp, e);
                    }
                    let value = match &v.value {
                        Value::Null => Some(String::new()),
                        _ => self.string(v, &kp),
                    };
                    if let Some(value) = value {
                        if !is_label_value(&value) {
                            self.sink.error(v.pos, &kp, format!("`{value}` is not a valid label value: at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"));
                        }
                        sel.match_labels.insert(k.text.clone(), value);
                    }
                }
            }
        }
        if let Some(me) = f.value("matchExpressions") {
            let mp = f.path("matchExpressions");
            if let Some(items) = self.seq(me, &mp) {
                for (i, item) in items.iter().enumerate() {
                    if let Some(r) = self.requirement(item, &mp.index(i)) {
                        sel.match_expressions.push(r);
                    }
                }
            }
        }
        (self.sink.error_count() == errors).then_some(sel)
    }

    fn requirement(&mut self, node: &Node, path: &FieldPath) -> Option<Requirement> {
        let f = self.map(node, path, &["key", "operator", "values"], Unknown::Error)?;
        let key = match f.value("key") {
            Some(k) => self.string(k, &f.path("key"))?,
            None => {
                self.sink.error(node.pos, &f.path("key"), "missing field `key`");
                return None;
            }
        };
        if let Err(e) = check_label_key(&key) {
            self.sink.error(f.get("key").map(|n| n.pos).unwrap_or(node.pos), &f.path("key"), e);
        }
        let Some(op_node) = f.value("operator") else {
            self.sink.error_fix(
                node.pos,
                &f.path("operator"),
                "missing field `operator`",
                "one of In, NotIn, Exists, DoesNotExist",
            );
            return None;
        };
        let op_text = self.string(op_node, &f.path("operator"))?;
        let ops = [
            ("In", Operator::In),
            ("NotIn", Operator::NotIn),
            ("Exists", Operator::Exists),
            ("DoesNotExist", Operator::DoesNotExist),
        ];
        let Some(&(_, operator)) = ops.iter().find(|(n, _)| *n == op_text) else {
            let names: Vec<&str> = ops.iter().map(|(n, _)| *n).collect();
            match closest(&op_text, &names) {
                Some(c) => self.sink.error_fix(
                    op_node.pos,
                    &f.path("operator"),
                    format!("`{op_text}` is not a valid operator: operators are case-sensitive"),
                    format!("`{c}`"),
                ),
                None => self.sink.error(
                    op_node.pos,
                    &f.path("operator"),
                    format!("`{op_text}` is not a valid operator: expected In, NotIn, Exists or DoesNotExist"),
                ),
            }
            return None;
        };
        let mut values = Vec::new();
        if let Some(v) = f.value("values") {
            for (s, pos) in self.strings(v, &f.path("values"))? {
                if !is_label_value(&s) {
                    self.sink.error(pos, &f.path("values"), format!("`{s}` is not a valid label value"));
                }
                values.push(s);
            }
        }
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values && values.is_empty() {
            self.sink.error(op_node.pos, &f.path("values"), format!("operator {op_text} needs at least one value"));
            return None;
        }
        if !needs_values && !values.is_empty() {
            self.sink.error_fix(
                op_node.pos,
                &f.path("values"),
                format!("operator {op_text} takes no values"),
                "remove `values`",
            );
            return None;
        }
        Some(Requirement { key, operator, values })
    }

    /// `ingress`, `ingressDeny`, `egress` or `egressDeny` of a rule.
    fn peer_rules(
        &mut self,
        f: &Fields<'_>,
        section: &str,
        egress: bool,
        deny: bool,
        host: bool,
    ) -> Option<Vec<PeerRule>> {
        let node = f.value(section)?;
        let path = f.path(section);
        let items = self.seq(node, &path)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(r) = self.peer_rule(item, &path.index(i), egress, deny, host) {
                out.push(r);
            }
        }
        Some(out)
    }

    fn peer_rule(&mut self, node: &Node, path: &FieldPath, egress: bool, deny: bool, host: bool) -> Option<PeerRule> {
        let errors = self.sink.error_count();
        let names = if egress { &TO } else { &FROM };
        let mut known = vec![
            names.endpoints,
            names.requires,
            names.cidr,
            names.cidr_set,
            names.entities,
            names.nodes,
            names.groups,
            "toPorts",
            "icmps",
        ];
        if egress {
            known.push("toServices");
            if !deny {
                known.push("toFQDNs");
            }
        }
        if !deny {
            known.push("authentication");
        }
        let f = self.map(node, path, &known, Unknown::Error)?;
        let mut rule = PeerRule { path: path.to_string(), ..PeerRule::default() };
        if let Some(n) = f.get(names.endpoints) {
            rule.endpoints = self.selectors(n, &f.path(names.endpoints));
        }
        if let Some(n) = f.get(names.requires) {
            rule.requires = self.selectors(n, &f.path(names.requires));
        }
        if let Some(n) = f.get(names.nodes) {
            rule.nodes = self.selectors(n, &f.path(names.nodes));
        }
        let mut cidrs: Option<Vec<CidrRule>> = None;
        if let Some(n) = f.get(names.cidr) {
            let p = f.path(names.cidr);
            let list = self.seq(n, &p).unwrap_or_default();
            let mut v = Vec::new();
            for (i, item) in list.iter().enumerate() {
                if let Some(c) = self.cidr_rule(item, &p.index(i), None, &p) {
                    v.push(c);
                }
            }
            cidrs = Some(v);
        }
        if let Some(n) = f.get(names.cidr_set) {
            let p = f.path(names.cidr_set);
            let list = self.seq(n, &p).unwrap_or_default();
            let v = cidrs.get_or_insert_with(Vec::new);
            for (i, item) in list.iter().enumerate() {
                let ip = p.index(i);
                let Some(e) =
                    self.map(item, &ip, &["cidr", "except", "cidrGroupRef", "cidrGroupSelector"], Unknown::Error)
                else {
                    continue;
                };
                match (e.value("cidr"), e.value("cidrGroupRef").or(e.value("cidrGroupSelector"))) {
                    (Some(c), None) => {
                        if let Some(r) = self.cidr_rule(c, &e.path("cidr"), e.value("except"), &e.path("except")) {
                            v.push(r);
                        }
                    }
                    (None, Some(g)) => self.sink.warning(
                        g.pos,
                        &ip,
                        "CiliumCIDRGroup references are not resolved by bulkhead yet; this entry selects nothing",
                        Some("list the prefixes with `cidr:` instead".into()),
                    ),
                    (Some(_), Some(g)) => {
                        self.sink.error(g.pos, &ip, "set exactly one of cidr, cidrGroupRef or cidrGroupSelector")
                    }
                    (None, None) => self.sink.error(item.pos, &e.path("cidr"), "missing field `cidr`"),
                }
            }
        }
        rule.cidrs = cidrs;
        if let Some(n) = f.get(names.entities) {
            rule.entities = self.entities(n, &f.path(names.entities));
        }
        if let Some(n) = f.get("toFQDNs") {
            let p = f.path("toFQDNs");
            let mut v = Vec::new();
            for (i, item) in self.seq(n, &p).unwrap_or_default().iter().enumerate() {
                if let Some(s) = self.fqdn_selector(item, &p.index(i)) {
                    v.push(s);
                }
            }
            rule.fqdns = Some(v);
        }
        if let Some(n) = f.get("toServices") {
            let p = f.path("toServices");
            let mut v = Vec::new();
            for (i, item) in self.seq(n, &p).unwrap_or_default().iter().enumerate() {
                if let Some(s) = self.map(item, &p.index(i), &["k8sService", "k8sServiceSelector"], Unknown::Error) {
                    v.push(render_service(item));
                    if s.get("k8sService").is_some() == s.get("k8sServiceSelector").is_some() {
                        self.sink.error(item.pos, &p.index(i), "set exactly one of k8sService or k8sServiceSelector");
                    }
                }
            }
            rule.services = Some(v);
        }
        if let Some(g) = f.get(names.groups) {
            rule.groups = true;
            self.sink.warning(
                g.pos,
                &f.path(names.groups),
                "cloud provider groups are not resolved by bulkhead; this peer selects nothing",
                None,
            );
        }
        if let Some(n) = f.value("toPorts") {
            let p = f.path("toPorts");
            for (i, item) in self.seq(n, &p).unwrap_or_default().iter().enumerate() {
                if let Some(pr) = self.port_rule(item, &p.index(i), egress, deny) {
                    rule.to_ports.push(pr);
                }
            }
        }
        if let Some(n) = f.value("icmps") {
            rule.icmps = self.icmps(n, &f.path("icmps")).unwrap_or_default();
            if let Some(tp) = f.get("toPorts") {
                self.sink.error_fix(
                    tp.pos,
                    &f.path("toPorts"),
                    "icmps and toPorts cannot be in the same rule",
                    "put the ICMP types in a separate rule",
                );
            }
        }
        // One L3 peer type per rule.
        let mut l3: Vec<(&str, Pos)> = Vec::new();
        for name in [
            names.endpoints,
            names.cidr,
            names.cidr_set,
            names.entities,
            names.nodes,
            names.groups,
            "toServices",
            "toFQDNs",
        ] {
            if let Some(n) = f.get(name) {
                l3.push((name, n.pos));
            }
        }
        if l3.len() > 1 {
            let (second, pos) = l3[1];
            self.sink.error_fix(
                pos,
                &f.path(second),
                format!("combining {} and {second} in one rule is not supported", l3[0].0),
                "split them into separate rules (rules are ORed)",
            );
        }
        if host && rule.fqdns.is_some() {
            self.sink.error(node.pos, &f.path("toFQDNs"), "toFQDNs is not supported in host policies (nodeSelector)");
        }
        if host && rule.to_ports.iter().any(|p| p.rules.is_some()) {
            self.sink.error_fix(
                node.pos,
                &f.path("toPorts"),
                "host policies (nodeSelector) do not support L7 rules",
                "remove `rules`, or select pods with endpointSelector",
            );
        }
        let raw_dns = f.value("toPorts").and_then(|tp| match &tp.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, it)| it.get("rules").and_then(|r| r.get("dns")).map(|d| (i, d.pos))),
            _ => None,
        });
        if let (Some(_), Some((i, pos))) = (&rule.fqdns, raw_dns) {
            self.sink.warning(
                pos,
                &f.path("toPorts").index(i).field("rules").field("dns"),
                "a DNS rule on a toFQDNs rule never sees lookups: the DNS proxy inspects traffic to the DNS server",
                Some(
                    "put `rules: {dns: [...]}` on the port-53 rule that selects the DNS server (e.g. kube-dns)".into(),
                ),
            );
        }
        (self.sink.error_count() == errors).then_some(rule)
    }

    fn selectors(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<LabelSelector>> {
        let items = self.seq(node, path)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.label_selector(item, &path.index(i)) {
                out.push(s);
            }
        }
        Some(out)
    }

    fn entities(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<Entity>> {
        let mut out = Vec::new();
        for (i, (name, pos)) in self.strings(node, path)?.into_iter().enumerate() {
            match Entity::ALL.iter().find(|(_, n)| *n == name) {
                Some((e, _)) => out.push(*e),
                None => {
                    let names: Vec<&str> = Entity::ALL.iter().map(|(_, n)| *n).collect();
                    let msg = format!("unknown entity `{name}`");
                    match closest(&name, &names) {
                        Some(c) => self.sink.error_fix(pos, &path.index(i), msg, format!("did you mean `{c}`?")),
                        None => self.sink.error(pos, &path.index(i), format!("{msg} (known: {})", names.join(", "))),
                    }
                }
            }
        }
        Some(out)
    }

    /// A CIDR (string) with optional `except` list.
    pub(crate) fn cidr_rule(
        &mut self,
        node: &Node,
        path: &FieldPath,
        except: Option<&Node>,
        except_path: &FieldPath,
    ) -> Option<CidrRule> {
        let text = self.string(node, path)?;
        let cidr = match Cidr::parse_strict(&text) {
            Ok((c, host_bits)) => {
                if host_bits {
                    self.sink.warning(
                        node.pos,
                        path,
                        format!("`{text}` has host bits set; it is read as {c}"),
                        Some(format!("write {c}")),
                    );
                }
                c
            }
            Err(e) => {
                self.sink.error(node.pos, path, e.to_string());
                return None;
            }
        };
        let mut rule = CidrRule { cidr, except: Vec::new() };
        if let Some(ex) = except {
            for (i, (t, pos)) in self.strings(ex, except_path)?.into_iter().enumerate() {
                match t.parse::<Cidr>() {
                    Ok(e) if cidr.contains(&e) => rule.except.push(e),
                    Ok(e) => self.sink.error_fix(
                        pos,
                        &except_path.index(i),
                        format!("except {e} is not inside {cidr}"),
                        "every except entry must be a sub-prefix of its cidr",
                    ),
                    Err(err) => self.sink.error(pos, &except_path.index(i), err.to_string()),
                }
            }
        }
        Some(rule)
    }

    fn fqdn_selector(&mut self, node: &Node, path: &FieldPath) -> Option<FqdnSelector> {
        let f = self.map(node, path, &["matchName", "matchPattern"], Unknown::Error)?;
        match (f.value("matchName"), f.value("matchPattern")) {
            (Some(n), None) => {
                let s = self.string(n, &f.path("matchName"))?;
                match l7::dns::validate_match_name(&s) {
                    Ok(()) => Some(FqdnSelector::MatchName(s)),
                    Err(e) => {
                        self.sink.error(n.pos, &f.path("matchName"), e.to_string());
                        None
                    }
                }
            }
            (None, Some(n)) => {
                let s = self.string(n, &f.path("matchPattern"))?;
                match l7::dns::validate_match_pattern(&s) {
                    Ok(()) => Some(FqdnSelector::MatchPattern(s)),
                    Err(e) => {
                        self.sink.error(n.pos, &f.path("matchPattern"), e.to_string());
                        None
                    }
                }
            }
            (Some(_), Some(n)) => {
                self.sink.error_fix(n.pos, path, "set only one of matchName or matchPattern", "make them two entries");
                None
            }
            (None, None) => {
                if f.entries.is_empty() || self.sink.error_count() == 0 {
                    self.sink.error_fix(
                        node.pos,
                        path,
                        "a name selector needs matchName or matchPattern",
                        "e.g. `matchPattern: \"*.example.com\"`",
                    );
                }
                None
            }
        }
    }

    fn port_rule(&mut self, node: &Node, path: &FieldPath, egress: bool, deny: bool) -> Option<PortRule> {
        let known: &[&str] = if deny {
            &["ports"]
        } else {
            &["ports", "rules", "serverNames", "terminatingTLS", "originatingTLS", "listener"]
        };
        let f = self.map(node, path, known, Unknown::Error)?;
        let mut ports = Vec::new();
        if let Some(pn) = f.value("ports") {
            let pp = f.path("ports");
            let items = self.seq(pn, &pp)?;
            if items.len() > MAX_PORTS {
                self.sink.error_fix(
                    pn.pos,
                    &pp,
                    format!("{} ports in one port rule; Cilium allows at most {MAX_PORTS}", items.len()),
                    "split them over several toPorts entries, or use port ranges (endPort)",
                );
            }
            for (i, item) in items.iter().enumerate() {
                if let Some(p) = self.port_protocol(item, &pp.index(i)) {
                    ports.push(p);
                }
            }
        }
        let mut rules = None;
        if let Some(rn) = f.value("rules") {
            rules = self.l7_rules(rn, &f.path("rules"));
        }
        if let Some(sn) = f.value("serverNames") {
            let names: Vec<String> = self.strings(sn, &f.path("serverNames"))?.into_iter().map(|(s, _)| s).collect();
            if rules.is_some() && f.get("terminatingTLS").is_none() {
                self.sink.error(
                    sn.pos,
                    &f.path("serverNames"),
                    "serverNames cannot be combined with L7 rules unless TLS is terminated (terminatingTLS)",
                );
            } else if !names.is_empty() {
                rules = Some(L7Rules::Tls(names));
            }
        }
        // Check where the L7 rules sit even when their contents are invalid,
        // so that one pass reports both kinds of problem.
        let placed = rules.clone().or_else(|| {
            let rn = f.value("rules")?;
            if rn.get("dns").is_some() {
                Some(L7Rules::Dns(Vec::new()))
            } else if rn.get("http").is_some() || rn.get("kafka").is_some() || rn.get("l7proto").is_some() {
                Some(L7Rules::Http(Vec::new()))
            } else {
                None
            }
        });
        if let Some(r) = &placed {
            self.check_l7_placement(r, &ports, &f, egress);
        }
        Some(PortRule { ports, rules })
    }

    fn check_l7_placement(&mut self, rules: &L7Rules, ports: &[PortProtocol], f: &Fields<'_>, egress: bool) {
        let rp = f.path("rules");
        let pos = f.get("rules").or(f.get("serverNames")).map(|n| n.pos).unwrap_or_default();
        let is_dns = matches!(rules, L7Rules::Dns(_));
        if is_dns && !egress {
            self.sink.error_fix(
                pos,
                &rp.field("dns"),
                "DNS rules are only allowed in egress rules",
                "move the DNS rule to an egress rule that selects the DNS server",
            );
            return;
        }
        if ports.is_empty() {
            self.sink.error_fix(
                pos,
                &f.path("ports"),
                "L7 rules need an explicit port",
                "add `ports: [{port: \"80\", protocol: TCP}]`",
            );
            return;
        }
        for (i, p) in ports.iter().enumerate() {
            let pp = f.path("ports").index(i);
            let tcp_ok = p.protocol == Protocol::Tcp || (is_dns && matches!(p.protocol, Protocol::Udp | Protocol::Any));
            if !tcp_ok {
                let fix = if is_dns { "DNS rules take protocol TCP, UDP or ANY" } else { "set `protocol: TCP`" };
                self.sink.error_fix(
                    pos,
                    &pp.field("protocol"),
                    format!("L7 rules only apply to TCP, not {}", protocol_name(p.protocol)),
                    fix,
                );
            }
            if is_dns && p.port == PortSpec::Number(0) {
                self.sink.error_fix(pos, &pp.field("port"), "DNS rules need an explicit port", "e.g. `port: \"53\"`");
            }
            if is_dns && p.end_port.is_some() {
                self.sink.error(pos, &pp.field("endPort"), "DNS rules do not support port ranges");
            }
        }
    }

    fn port_protocol(&mut self, node: &Node, path: &FieldPath) -> Option<PortProtocol> {
        let f = self.map(node, path, &["port", "endPort", "protocol"], Unknown::Error)?;
        let protocol = self.protocol(f.value("protocol"), &f.path("protocol"), super::ProtocolSet::Cilium);
        let port = match f.value("port") {
            None => PortSpec::Number(0),
            Some(p) => {
                let text = match &p.value {
                    Value::Scalar { text, quoted } if super::scalar_type(text, *quoted) == super::ScalarType::Int => {
                        self.sink.error_fix(
                            p.pos,
                            &f.path("port"),
                            format!("port must be a string in Cilium policies, found the number {text}"),
                            format!("quote it: port: \"{text}\""),
                        );
                        return None;
                    }
                    _ => self.string(p, &f.path("port"))?,
                };
                match text.parse::<u32>() {
                    Ok(n) if n <= 65535 && text.chars().all(|c| c.is_ascii_digit()) => PortSpec::Number(n as u16),
                    Ok(n) if text.chars().all(|c| c.is_ascii_digit()) => {
                        self.sink.error(p.pos, &f.path("port"), format!("port {n} is out of range 0..65535"));
                        return None;
                    }
                    _ if text.is_empty() => PortSpec::Number(0),
                    _ if is_port_name(&text.to_ascii_lowercase()) => PortSpec::Name(text.to_ascii_lowercase()),
                    _ => {
                        self.sink.error(p.pos, &f.path("port"), format!("`{text}` is neither a port number (0-65535) nor a valid port name (an IANA service name: at most 15 letters, digits and '-', with at least one letter; no '_')"));
                        return None;
                    }
                }
            }
        };
        let end_port = match f.value("endPort") {
            None => None,
            Some(e) => {
                let end = u16::try_from(self.int(e, &f.path("endPort"), 0, 65535)?).ok()?;
                match &port {
                    PortSpec::Name(_) => {
                        self.sink.error(e.pos, &f.path("endPort"), "endPort cannot be used with a named port");
                        return None;
                    }
                    PortSpec::Number(start) if end != 0 && end < *start => {
                        self.sink.error_fix(
                            e.pos,
                            &f.path("endPort"),
                            format!("endPort {end} is below port {start}"),
                            "endPort must be at least port",
                        );
                        return None;
                    }
                    PortSpec::Number(0) if end != 0 => {
                        self.sink.error(e.pos, &f.path("endPort"), "endPort needs a non-zero port");
                        return None;
                    }
                    _ => (end != 0).then_some(end),
                }
            }
        };
        Some(PortProtocol { port, end_port, protocol: protocol? })
    }

    fn icmps(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<IcmpField>> {
        let mut out = Vec::new();
        for (i, item) in self.seq(node, path)?.iter().enumerate() {
            let ip = path.index(i);
            let f = self.map(item, &ip, &["fields"], Unknown::Error)?;
            let Some(fields) = f.value("fields") else { continue };
            let fp = f.path("fields");
            let items = self.seq(fields, &fp)?;
            if items.len() > MAX_PORTS {
                self.sink.error(
                    fields.pos,
                    &fp,
                    format!("{} ICMP fields in one rule; at most {MAX_PORTS}", items.len()),
                );
            }
            for (j, field) in items.iter().enumerate() {
                let p = fp.index(j);
                let Some(ff) = self.map(field, &p, &["type", "family"], Unknown::Error) else { continue };
                let family = match ff.value("family") {
                    None => IcmpFamily::IPv4,
                    Some(n) => match self.string(n, &ff.path("family")).as_deref() {
                        Some("IPv4") => IcmpFamily::IPv4,
                        Some("IPv6") => IcmpFamily::IPv6,
                        Some(other) => {
                            self.sink.error_fix(
                                n.pos,
                                &ff.path("family"),
                                format!("unknown family `{other}`"),
                                "IPv4 or IPv6 (case-sensitive)",
                            );
                            continue;
                        }
                        None => continue,
                    },
                };
                let Some(t) = ff.value("type") else {
                    self.sink.error(field.pos, &ff.path("type"), "missing field `type`");
                    continue;
                };
                let icmp_type = match &t.value {
                    Value::Scalar { text, quoted } if super::scalar_type(text, *quoted) == super::ScalarType::Int => {
                        self.int(t, &ff.path("type"), 0, 255).map(|n| n as u8)
                    }
                    _ => {
                        let name = self.string(t, &ff.path("type"));
                        name.and_then(|n| match icmp_type_by_name(family, &n) {
                            Some(v) => Some(v),
                            None => {
                                self.sink.error(
                                    t.pos,
                                    &ff.path("type"),
                                    format!("unknown ICMP type name `{n}` for {family:?}"),
                                );
                                None
                            }
                        })
                    }
                };
                if let Some(icmp_type) = icmp_type {
                    out.push(IcmpField { family, icmp_type });
                }
            }
        }
        Some(out)
    }

    fn l7_rules(&mut self, node: &Node, path: &FieldPath) -> Option<L7Rules> {
        let errors = self.sink.error_count();
        let f = self.map(node, path, &["http", "kafka", "dns", "l7proto", "l7"], Unknown::Error)?;
        let present: Vec<&str> =
            ["http", "kafka", "dns", "l7proto"].into_iter().filter(|k| f.value(k).is_some()).collect();
        if present.len() > 1 {
            self.sink.error_fix(
                node.pos,
                path,
                format!("several L7 protocols ({}) in one rule", present.join(", ")),
                "one L7 protocol per port rule",
            );
            return None;
        }
        let rules = if let Some(n) = f.value("http") {
            let p = f.path("http");
            let mut v = Vec::new();
            for (i, item) in self.seq(n, &p)?.iter().enumerate() {
                if let Some(r) = self.http_rule(item, &p.index(i)) {
                    v.push(r);
                }
            }
            L7Rules::Http(v)
        } else if let Some(n) = f.value("dns") {
            let p = f.path("dns");
            let mut v = Vec::new();
            for (i, item) in self.seq(n, &p)?.iter().enumerate() {
                if let Some(r) = self.fqdn_selector(item, &p.index(i)) {
                    v.push(r);
                }
            }
            L7Rules::Dns(v)
        } else if let Some(n) = f.value("kafka") {
            let p = f.path("kafka");
            let mut v = Vec::new();
            for (i, item) in self.seq(n, &p)?.iter().enumerate() {
                if let Some(r) = self.kafka_rule(item, &p.index(i)) {
                    v.push(r);
                }
            }
            L7Rules::Kafka(v)
        } else if let Some(n) = f.value("l7proto") {
            let proto = self.string(n, &f.path("l7proto"))?;
            let mut rules = Vec::new();
            if let Some(l) = f.value("l7") {
                for (i, item) in self.seq(l, &f.path("l7"))?.iter().enumerate() {
                    let m = self.string_map(item, &f.path("l7").index(i));
                    rules.push(m.into_iter().collect());
                }
            }
            L7Rules::Generic { proto, rules }
        } else {
            if let Some(l) = f.get("l7") {
                self.sink.error(l.pos, &f.path("l7proto"), "`l7` rules need `l7proto`");
            }
            return None;
        };
        for (suffix, msg) in l7::check_rules(&rules) {
            self.sink.error(node.pos, &FieldPath::root().field(&format!("{path}.{suffix}")), msg);
        }
        (self.sink.error_count() == errors).then_some(rules)
    }

    fn http_rule(&mut self, node: &Node, path: &FieldPath) -> Option<HttpRule> {
        let f = self.map(node, path, &["method", "path", "host", "headers", "headerMatches"], Unknown::Error)?;
        let mut r = HttpRule::default();
        for (key, slot) in [("method", &mut r.method), ("path", &mut r.path), ("host", &mut r.host)] {
            if let Some(n) = f.value(key) {
                let s = self.string(n, &f.path(key))?;
                if let Err(e) = l7::http::compile_regex(key, &s) {
                    self.sink.error(n.pos, &f.path(key), e.to_string());
                }
                *slot = Some(s);
            }
        }
        if let Some(h) = f.value("headers") {
            r.headers = self.strings(h, &f.path("headers"))?.into_iter().map(|(s, _)| s).collect();
        }
        if let Some(h) = f.value("headerMatches") {
            let p = f.path("headerMatches");
            for (i, item) in self.seq(h, &p)?.iter().enumerate() {
                let ip = p.index(i);
                let m = self.map(item, &ip, &["mismatch", "name", "secret", "value"], Unknown::Error)?;
                let Some(name) = m.value("name").and_then(|n| self.string(n, &m.path("name"))) else {
                    self.sink.error(item.pos, &m.path("name"), "missing field `name`");
                    continue;
                };
                let value = m.value("value").and_then(|n| self.string(n, &m.path("value"))).unwrap_or_default();
                let mismatch = match m.value("mismatch") {
                    None => None,
                    Some(n) => match self.string(n, &m.path("mismatch")).as_deref() {
                        Some("LOG") => Some(MismatchAction::Log),
                        Some("ADD") => Some(MismatchAction::Add),
                        Some("DELETE") => Some(MismatchAction::Delete),
                        Some("REPLACE") => Some(MismatchAction::Replace),
                        Some(other) => {
                            self.sink.error_fix(
                                n.pos,
                                &m.path("mismatch"),
                                format!("unknown mismatch action `{other}`"),
                                "LOG, ADD, DELETE or REPLACE",
                            );
                            None
                        }
                        None => None,
                    },
                };
                let secret = m.value("secret").map(|s| {
                    let ns = s.get("namespace").and_then(Node::as_str).unwrap_or("");
                    let n = s.get("name").and_then(Node::as_str).unwrap_or("");
                    format!("{ns}/{n}")
                });
                r.header_matches.push(HeaderMatch { name, value, mismatch, secret });
            }
        }
        Some(r)
    }

    fn kafka_rule(&mut self, node: &Node, path: &FieldPath) -> Option<KafkaRule> {
        let f = self.map(node, path, &["role", "apiKey", "apiVersion", "clientID", "topic"], Unknown::Error)?;
        let mut r = KafkaRule::default();
        if let Some(n) = f.value("role") {
            let s = self.string(n, &f.path("role"))?;
            r.role = match s.to_ascii_lowercase().as_str() {
                "produce" => Some(KafkaRole::Produce),
                "consume" => Some(KafkaRole::Consume),
                _ => {
                    self.sink.error_fix(
                        n.pos,
                        &f.path("role"),
                        format!("unknown Kafka role `{s}`"),
                        "`produce` or `consume`",
                    );
                    return None;
                }
            };
        }
        if let Some(n) = f.value("apiKey") {
            let s = self.string(n, &f.path("apiKey"))?;
            match l7::kafka::api_key_from_name(&s) {
                Some(k) => r.api_key = Some(k),
                None => {
                    self.sink.error(
                        n.pos,
                        &f.path("apiKey"),
                        format!("unknown Kafka apiKey `{s}` (e.g. produce, fetch, metadata, apiversions)"),
                    );
                    return None;
                }
            }
            if r.role.is_some() {
                self.sink.error_fix(
                    n.pos,
                    &f.path("apiKey"),
                    "role and apiKey cannot both be set",
                    "keep one: role is a shorthand for a set of apiKeys",
                );
                return None;
            }
        }
        if let Some(n) = f.value("apiVersion") {
            let s = self.string(n, &f.path("apiVersion"))?;
            match s.parse::<i16>() {
                Ok(v) if v >= 0 => r.api_version = Some(v),
                _ => {
                    self.sink.error(
                        n.pos,
                        &f.path("apiVersion"),
                        format!("apiVersion `{s}` is not a non-negative number"),
                    );
                    return None;
                }
            }
        }
        if let Some(n) = f.value("clientID") {
            r.client_id = Some(self.string(n, &f.path("clientID"))?);
        }
        if let Some(n) = f.value("topic") {
            r.topic = Some(self.string(n, &f.path("topic"))?);
        }
        Some(r)
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
        Protocol::Any => "ANY",
    }
}

fn rule_list_name(item: &Node) -> Option<String> {
    let Value::Seq(labels) = &item.get("labels")?.value else { return None };
    labels
        .iter()
        .find(|l| l.get("key").and_then(Node::as_str) == Some("name"))
        .and_then(|l| l.get("value").and_then(Node::as_str))
        .map(str::to_string)
}

fn render_service(node: &Node) -> String {
    if let Some(s) = node.get("k8sService") {
        let ns = s.get("namespace").and_then(Node::as_str).unwrap_or("");
        let name = s.get("serviceName").and_then(Node::as_str).unwrap_or("");
        return format!("service {ns}/{name}");
    }
    let labels: BTreeMap<String, String> = match node
        .get("k8sServiceSelector")
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .map(|m| &m.value)
    {
        Some(Value::Map(entries)) => {
            entries.iter().map(|(k, v)| (k.text.clone(), v.as_str().unwrap_or("").to_string())).collect()
        }
        _ => BTreeMap::new(),
    };
    let sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("services with labels {}", sel.join(","))
}

/// ICMP type names Cilium accepts, per family.
fn icmp_type_by_name(family: IcmpFamily, name: &str) -> Option<u8> {
    let v4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    let v6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = if family == IcmpFamily::IPv4 { v4 } else { v6 };
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
