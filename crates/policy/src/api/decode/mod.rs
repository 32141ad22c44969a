//! Documents → typed objects, with every problem reported.
//!
//! Each decoder takes a [`Node`] and its field path, records diagnostics in a
//! [`Sink`] and returns `None` for what it could not make sense of, so that
//! one pass reports every error in a file. Objects with any error are dropped
//! whole: a half-understood policy must never be enforced.

mod cilium;
mod guardrails;
mod kube;
mod ports;
mod ratelimit;
mod scalar;

use crate::api::{Guardrails, Object, Protocol};
use crate::diag::{FieldPath, Sink, closest};
use crate::yaml::{self, Key, Node, Pos, Value};

pub(crate) use scalar::{ScalarType, scalar_type};

/// Options for decoding.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Namespace for namespaced objects that name none (like `kubectl -n`).
    pub default_namespace: String,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { default_namespace: "default".to_string() }
    }
}

/// Decodes every document of `src` (YAML or JSON). Diagnostics go to `sink`;
/// objects with errors are not returned.
pub fn decode_str(src: &str, opts: &DecodeOptions, sink: &mut Sink) -> Vec<Object> {
    let docs = match yaml::parse_documents(src) {
        Ok(docs) => docs,
        Err(e) => {
            sink.error(e.pos(), &FieldPath::root(), format!("not valid YAML or JSON: {}", e.message));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for doc in &docs {
        let d = Decoder { sink: &mut *sink, opts, guardrails: None };
        d.document(doc, &mut out);
    }
    out
}

/// Decodes a guardrails file: `bulkhead.io/v1alpha1 Guardrails` objects
/// only (anything else in it is an error). Diagnostics go to `sink`;
/// objects with errors are not returned.
pub fn decode_guardrails(src: &str, sink: &mut Sink) -> Vec<Guardrails> {
    let docs = match yaml::parse_documents(src) {
        Ok(docs) => docs,
        Err(e) => {
            sink.error(e.pos(), &FieldPath::root(), format!("not valid YAML or JSON: {}", e.message));
            return Vec::new();
        }
    };
    let opts = DecodeOptions::default();
    let mut found = Vec::new();
    for doc in &docs {
        let mut others = Vec::new();
        Decoder { sink: &mut *sink, opts: &opts, guardrails: Some(&mut found) }.document(doc, &mut others);
    }
    found
}

pub(crate) struct Decoder<'a> {
    pub(crate) sink: &'a mut Sink,
    pub(crate) opts: &'a DecodeOptions,
    /// Reading a guardrails file: the Guardrails go here, any other kind
    /// is an error. Otherwise a Guardrails is skipped with a warning.
    pub(crate) guardrails: Option<&'a mut Vec<Guardrails>>,
}

/// A mapping being read: its entries and its path.
pub(crate) struct Fields<'n> {
    pub(crate) entries: &'n [(Key, Node)],
    pub(crate) path: FieldPath,
}

impl<'n> Fields<'n> {
    pub(crate) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v)
    }

    /// A present, non-null field.
    pub(crate) fn value(&self, key: &str) -> Option<&'n Node> {
        self.get(key).filter(|n| n.value != Value::Null)
    }

    pub(crate) fn path(&self, key: &str) -> FieldPath {
        self.path.field(key)
    }
}

/// How to treat a field a mapping does not know.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// An error (inside a policy spec: the field would be silently dropped).
    Error,
    /// A warning (top level and metadata: harmless but probably a mistake).
    Warn,
    /// Accepted silently (cluster-state objects carry many fields we ignore).
    Ignore,
}

impl Decoder<'_> {
    fn document(mut self, doc: &Node, out: &mut Vec<Object>) {
        let root = FieldPath::root();
        match &doc.value {
            Value::Seq(items) => {
                if items.iter().all(cilium::looks_like_rule) && !items.is_empty() {
                    if let Some(p) = self.cilium_rule_list(doc, items) {
                        out.push(Object::Policy(p));
                    }
                } else {
                    self.sink.error(
                        doc.pos,
                        &root,
                        "a top-level list must hold Cilium rules (objects with endpointSelector or nodeSelector)",
                    );
                }
            }
            Value::Map(_) => {
                if doc.get("kind").and_then(Node::as_str) == Some("List") {
                    self.list(doc, out);
                } else if let Some(obj) = self.object(doc, &root) {
                    out.push(obj);
                }
            }
            _ => self.sink.error(
                doc.pos,
                &root,
                format!("expected a Kubernetes object (a mapping), found {}", doc.type_name()),
            ),
        }
    }

    fn list(&mut self, doc: &Node, out: &mut Vec<Object>) {
        let root = FieldPath::root();
        let Some(f) = self.map(doc, &root, &["apiVersion", "kind", "items", "metadata"], Unknown::Warn) else {
            return;
        };
        let Some(items) = f.value("items") else { return };
        let Some(items) = self.seq(items, &f.path("items")) else { return };
        for (i, item) in items.iter().enumerate() {
            if let Some(obj) = self.object(item, &f.path("items").index(i)) {
                out.push(obj);
            }
        }
    }

    /// A field an object must have: its value, or an error at the object's
    /// first key naming the field, with `fix`.
    pub(crate) fn required<'n>(&mut self, f: &Fields<'n>, field: &str, fix: &str) -> Option<&'n Node> {
        let node = f.value(field);
        if node.is_none() {
            let pos = f.entries.first().map(|(k, _)| k.pos).unwrap_or_default();
            self.sink.error_fix(pos, &f.path(field), format!("missing field `{field}`"), fix);
        }
        node
    }

    /// Reads a mapping, reporting fields not in `known` (with a "did you
    /// mean" from `known` and the decoders' hints).
    pub(crate) fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &FieldPath,
        known: &[&str],
        unknown: Unknown,
    ) -> Option<Fields<'n>> {
        let entries = match &node.value {
            Value::Map(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => {
                self.sink.error(node.pos, path, format!("expected a mapping, found {}", node.type_name()));
                return None;
            }
        };
        if unknown != Unknown::Ignore {
            for (key, _) in entries {
                if known.contains(&key.text.as_str()) {
                    continue;
                }
                let fpath = path.field(&key.text);
                let (msg, fix) = unknown_field_help(&key.text, known);
                match unknown {
                    Unknown::Error => match fix {
                        Some(fix) => self.sink.error_fix(key.pos, &fpath, msg, fix),
                        None => self.sink.error(key.pos, &fpath, msg),
                    },
                    Unknown::Warn => self.sink.warning(key.pos, &fpath, format!("{msg}; it is ignored"), fix),
                    Unknown::Ignore => {}
                }
            }
        }
        Some(Fields { entries, path: path.clone() })
    }

    /// Reads a sequence (null reads as empty).
    pub(crate) fn seq<'n>(&mut self, node: &'n Node, path: &FieldPath) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => {
                self.sink.error(node.pos, path, format!("expected a list, found {}", node.type_name()));
                None
            }
        }
    }

    /// Reads a list whose items `item` decodes; items that fail are left
    /// out (their errors are in the sink), so one pass reports them all.
    pub(crate) fn items<T>(
        &mut self,
        node: &Node,
        path: &FieldPath,
        mut item: impl FnMut(&mut Self, &Node, &FieldPath) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.seq(node, path)?;
        Some(items.iter().enumerate().filter_map(|(i, n)| item(self, n, &path.index(i))).collect())
    }

    /// Reads a string-typed field. Unquoted numbers and booleans are refused,
    /// as the API server refuses them for string fields.
    pub(crate) fn string(&mut self, node: &Node, path: &FieldPath) -> Option<String> {
        match &node.value {
            Value::Scalar { text, quoted } => {
                let ty = scalar_type(text, *quoted);
                if ty != ScalarType::Str {
                    self.sink.error_fix(
                        node.pos,
                        path,
                        format!("expected a string, found {} `{text}`", ty.name()),
                        format!("quote it: \"{text}\""),
                    );
                    return None;
                }
                Some(text.clone())
            }
            _ => {
                self.sink.error(node.pos, path, format!("expected a string, found {}", node.type_name()));
                None
            }
        }
    }

    /// Reads an integer field within `min..=max`.
    pub(crate) fn int(&mut self, node: &Node, path: &FieldPath, min: i64, max: i64) -> Option<i64> {
        let text = node.as_str().unwrap_or_default();
        let parsed = match &node.value {
            Value::Scalar { quoted: false, .. } => scalar::parse_int(text),
            _ => None,
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.sink.error(node.pos, path, format!("{n} is out of range {min}..{max}"));
                None
            }
            None => {
                let found = if node.as_str().is_some() { format!("`{text}`") } else { node.type_name().to_string() };
                self.sink.error(node.pos, path, format!("expected an integer, found {found}"));
                None
            }
        }
    }

    /// Reads a boolean field.
    pub(crate) fn bool(&mut self, node: &Node, path: &FieldPath) -> Option<bool> {
        match &node.value {
            Value::Scalar { text, quoted: false } if scalar_type(text, false) == ScalarType::Bool => {
                Some(text.eq_ignore_ascii_case("true"))
            }
            _ => {
                self.sink.error_fix(node.pos, path, "expected a boolean", "write true or false, unquoted");
                None
            }
        }
    }

    /// Reads a list of strings.
    pub(crate) fn strings(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<(String, Pos)>> {
        let items = self.seq(node, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &path.index(i)) {
                Some(s) => out.push((s, item.pos)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Which protocol names a field accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtocolSet {
    /// Kubernetes: TCP, UDP, SCTP; omitted is TCP.
    Kubernetes,
    /// Cilium port rules: also ANY; omitted is ANY.
    Cilium,
}

impl Decoder<'_> {
    /// Reads a `protocol` field (case-sensitive, as the API server reads it).
    pub(crate) fn protocol(&mut self, node: Option<&Node>, path: &FieldPath, set: ProtocolSet) -> Option<Protocol> {
        let cilium = set == ProtocolSet::Cilium;
        let Some(node) = node else { return Some(if cilium { Protocol::Any } else { Protocol::Tcp }) };
        let text = self.string(node, path)?;
        match text.as_str() {
            "TCP" => return Some(Protocol::Tcp),
            "UDP" => return Some(Protocol::Udp),
            "SCTP" => return Some(Protocol::Sctp),
            "ANY" if cilium => return Some(Protocol::Any),
            _ => {}
        }
        let up = text.to_ascii_uppercase();
        let known = if cilium { "TCP, UDP, SCTP or ANY" } else { "TCP, UDP or SCTP" };
        if matches!(up.as_str(), "TCP" | "UDP" | "SCTP") || (cilium && up == "ANY") {
            self.sink.error_fix(
                node.pos,
                path,
                format!("unknown protocol `{text}`: protocols are case-sensitive"),
                format!("`{up}`"),
            );
        } else if cilium && matches!(up.as_str(), "VRRP" | "IGMP" | "ICMP" | "ICMPV6") {
            let fix = if up.starts_with("ICMP") {
                "use an `icmps` rule for ICMP types"
            } else {
                "allow it with an L3 rule (no toPorts) for now"
            };
            self.sink.error_fix(
                node.pos,
                path,
                format!("protocol `{text}` is not accepted by Cilium 1.17 port rules ({known})"),
                fix,
            );
        } else {
            self.sink.error(node.pos, path, format!("unknown protocol `{text}`: expected {known}"));
        }
        None
    }
}

/// A DNS-1123 subdomain: object names, label-key prefixes.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

/// Hints for fields people commonly get wrong, beyond spelling.
const HINTS: &[(&str, &str, &str)] = &[
    // (wrong field, right field, why)
    ("pattern", "matchPattern", "DNS rules and toFQDNs use matchName or matchPattern"),
    ("name", "matchName", "DNS rules and toFQDNs use matchName or matchPattern"),
    ("mode", "", "a DNS rule has no `mode`: listing a name or pattern allows it, and anything not listed is refused"),
    ("action", "", "allow and deny are separate sections: use ingress/egress to allow, ingressDeny/egressDeny to deny"),
    ("ports", "toPorts", "peer rules list ports under toPorts[].ports"),
    ("apiversion", "apiVersion", "field names are case-sensitive"),
    ("selector", "endpointSelector", "a Cilium rule selects its endpoints with endpointSelector"),
    ("podSelector", "endpointSelector", "a Cilium rule selects its endpoints with endpointSelector"),
    ("description", "", "the API server drops fields it does not know; a rule's description goes in spec.description"),
];

fn unknown_field_help(field: &str, known: &[&str]) -> (String, Option<String>) {
    let msg = format!("unknown field `{field}`");
    for (wrong, right, why) in HINTS {
        if *wrong == field && (right.is_empty() || known.contains(right)) {
            let fix = if right.is_empty() { why.to_string() } else { format!("did you mean `{right}`? {why}") };
            return (msg, Some(fix));
        }
    }
    // `toEndpoints` in an ingress rule, `fromCIDR` in an egress rule, ...
    for (a, b) in [("to", "from"), ("from", "to")] {
        if let Some(rest) = field.strip_prefix(a) {
            let swapped = format!("{b}{rest}");
            if let Some(k) = known.iter().find(|k| **k == swapped) {
                let dir = if b == "from" { "ingress" } else { "egress" };
                return (msg, Some(format!("did you mean `{k}`? {dir} rules name their peers with {b}*")));
            }
        }
    }
    match closest(field, known) {
        Some(k) => (msg, Some(format!("did you mean `{k}`?"))),
        None => (format!("{msg} (known fields: {})", known.join(", ")), None),
    }
}

#[cfg(test)]
mod tests;
