//! Cilium rules: `spec`/`specs`, selectors, peers, and Cilium's composition
//! checks (rule_validation.go in Cilium 1.17). Port rules, ICMP and L7 are in
//! [`super::ports`].

use std::collections::BTreeMap;

use super::{Decoder, Fields, Unknown};
use crate::api::{CidrRule, Entity, FqdnSelector, LabelSelector, Operator, PeerRule, Requirement, Rule};
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
        self.items(node, &f.path(section), |d, n, p| d.peer_rule(n, p, egress, deny, host))
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
            rule.fqdns = Some(self.items(n, &f.path("toFQDNs"), Self::fqdn_selector).unwrap_or_default());
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
            rule.to_ports =
                self.items(n, &f.path("toPorts"), |d, n, p| d.port_rule(n, p, egress, deny)).unwrap_or_default();
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
        self.items(node, path, Self::label_selector)
    }

    pub(super) fn entities(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<Entity>> {
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

    pub(super) fn fqdn_selector(&mut self, node: &Node, path: &FieldPath) -> Option<FqdnSelector> {
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
