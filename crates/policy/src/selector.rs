//! Endpoint selectors: label requirements, interpreted with label sources,
//! and Cilium's namespace scoping of a policy's selectors.
//!
//! A [`Selector`] is a conjunction of [`Req`]s. Scoping (which namespace
//! requirement a CNP or CCNP adds) happens once, when a policy is compiled,
//! so that matching is a plain evaluation.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::api::{LabelSelector, Operator};
use crate::labels::{LabelSet, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, Source};

/// One requirement on a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Req {
    /// The label's source (`Any` matches every source).
    pub source: Source,
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: Operator,
    /// Values for In / NotIn (sorted).
    pub values: BTreeSet<String>,
}

impl Req {
    /// Whether the labels satisfy this requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let found = labels.get(&self.key).filter(|(src, _)| self.source == Source::Any || **src == self.source);
        match self.op {
            Operator::In => found.is_some_and(|(_, v)| self.values.contains(v)),
            Operator::NotIn => found.is_none_or(|(_, v)| !self.values.contains(v)),
            Operator::Exists => found.is_some(),
            Operator::DoesNotExist => found.is_none(),
        }
    }

    fn key_text(&self) -> String {
        if self.source == Source::Any { self.key.clone() } else { format!("{}:{}", self.source.as_str(), self.key) }
    }
}

impl fmt::Display for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key_text();
        let vals: Vec<&str> = self.values.iter().map(String::as_str).collect();
        match self.op {
            Operator::In if vals.len() == 1 => write!(f, "{key}={}", vals[0]),
            Operator::In => write!(f, "{key} in ({})", vals.join(",")),
            Operator::NotIn => write!(f, "{key} notin ({})", vals.join(",")),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A conjunction of requirements; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Selector {
    /// The requirements, sorted and deduplicated.
    pub reqs: Vec<Req>,
}

impl Selector {
    /// From a written label selector (no scoping).
    pub fn from_api(sel: &LabelSelector) -> Self {
        let mut reqs = Vec::new();
        for (k, v) in &sel.match_labels {
            let (source, key) = Source::split_key(k);
            reqs.push(Req { source, key: key.to_string(), op: Operator::In, values: [v.clone()].into() });
        }
        for e in &sel.match_expressions {
            let (source, key) = Source::split_key(&e.key);
            reqs.push(Req { source, key: key.to_string(), op: e.operator, values: e.values.iter().cloned().collect() });
        }
        let mut s = Self { reqs };
        s.normalise();
        s
    }

    fn normalise(&mut self) {
        self.reqs.sort();
        self.reqs.dedup();
    }

    /// Adds a requirement.
    pub fn with(mut self, req: Req) -> Self {
        self.reqs.push(req);
        self.normalise();
        self
    }

    /// `k8s:key=value`.
    pub fn k8s_eq(key: &str, value: &str) -> Req {
        Req { source: Source::K8s, key: key.to_string(), op: Operator::In, values: [value.to_string()].into() }
    }

    /// `k8s:key` exists.
    pub fn k8s_exists(key: &str) -> Req {
        Req { source: Source::K8s, key: key.to_string(), op: Operator::Exists, values: BTreeSet::new() }
    }

    /// A selector of one reserved label (`reserved:host`).
    pub fn reserved(name: &str) -> Self {
        Self {
            reqs: vec![Req {
                source: Source::Reserved,
                key: name.to_string(),
                op: Operator::Exists,
                values: BTreeSet::new(),
            }],
        }
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// The first requirement the labels fail, for explanations.
    pub fn first_failure(&self, labels: &LabelSet) -> Option<&Req> {
        self.reqs.iter().find(|r| !r.matches(labels))
    }

    /// Whether any requirement is on `key` (any source counts).
    pub fn has_key(&self, key: &str) -> bool {
        self.reqs.iter().any(|r| r.key == key && matches!(r.source, Source::Any | Source::K8s))
    }

    /// Whether any requirement has a reserved source.
    pub fn has_reserved(&self) -> bool {
        self.reqs.iter().any(|r| r.source == Source::Reserved)
    }

    /// The namespace this selector is pinned to (`io.kubernetes.pod.namespace` In one value).
    pub fn pinned_namespace(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|r| {
                r.key == NAMESPACE_LABEL
                    && r.op == Operator::In
                    && r.values.len() == 1
                    && matches!(r.source, Source::Any | Source::K8s)
            })
            .and_then(|r| r.values.iter().next().map(String::as_str))
    }

    /// Scopes an endpoint selector of a namespaced policy: it always applies
    /// in the policy's namespace (Cilium replaces any namespace requirement).
    pub fn scope_subject(sel: &LabelSelector, namespace: Option<&str>) -> Self {
        let mut s = Self::from_api(sel);
        if let Some(ns) = namespace {
            s.reqs.retain(|r| r.key != NAMESPACE_LABEL);
            s = s.with(Self::k8s_eq(NAMESPACE_LABEL, ns));
        }
        s
    }

    /// Scopes a peer selector (`fromEndpoints`/`toEndpoints`/requirements),
    /// as Cilium 1.17's `getEndpointSelector`: a CNP's peers default to its
    /// namespace unless they name a namespace, use a reserved label or select
    /// on namespace labels; a CCNP's peers must be pods (namespace Exists),
    /// except for rules selecting `reserved:init` endpoints.
    pub fn scope_peer(sel: &LabelSelector, namespace: Option<&str>, subject_is_init: bool) -> Self {
        let s = Self::from_api(sel);
        if s.has_reserved() || s.has_key(NAMESPACE_LABEL) {
            return s;
        }
        match namespace {
            None if subject_is_init => s,
            None => s.with(Self::k8s_exists(NAMESPACE_LABEL)),
            Some(_)
                if s.reqs.iter().any(|r| {
                    r.key.starts_with(NAMESPACE_LABELS_PREFIX) && matches!(r.source, Source::Any | Source::K8s)
                }) =>
            {
                s
            }
            Some(ns) => s.with(Self::k8s_eq(NAMESPACE_LABEL, ns)),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self.reqs.iter().map(Req::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Requirement;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        let mut l = LabelSet::new();
        for (k, v) in pairs {
            let (src, key) = Source::split_key(k);
            l.insert(src, key, v);
        }
        l
    }

    fn sel(ml: &[(&str, &str)], me: Vec<Requirement>) -> LabelSelector {
        LabelSelector {
            match_labels: ml.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            match_expressions: me,
        }
    }

    #[test]
    fn any_source_matches_k8s_but_k8s_does_not_match_reserved() {
        let l = labels(&[("k8s:app", "web"), ("reserved:host", "")]);
        assert!(Selector::from_api(&sel(&[("app", "web")], vec![])).matches(&l));
        assert!(Selector::from_api(&sel(&[("k8s:app", "web")], vec![])).matches(&l));
        assert!(!Selector::from_api(&sel(&[("reserved:app", "web")], vec![])).matches(&l));
        assert!(!Selector::from_api(&sel(&[("k8s:host", "")], vec![])).matches(&l));
    }

    #[test]
    fn operators() {
        let l = labels(&[("k8s:env", "prod")]);
        let req = |key: &str, op, vals: &[&str]| Requirement {
            key: key.into(),
            operator: op,
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        let m = |r| Selector::from_api(&sel(&[], vec![r])).matches(&l);
        assert!(m(req("env", Operator::In, &["prod", "dev"])));
        assert!(!m(req("env", Operator::NotIn, &["prod"])));
        assert!(m(req("tier", Operator::NotIn, &["x"])));
        assert!(m(req("env", Operator::Exists, &[])));
        assert!(m(req("tier", Operator::DoesNotExist, &[])));
    }

    #[test]
    fn peer_scoping() {
        let plain = sel(&[("app", "web")], vec![]);
        let s = Selector::scope_peer(&plain, Some("prod"), false);
        assert_eq!(s.pinned_namespace(), Some("prod"));
        let with_ns = sel(&[("app", "web"), ("k8s:io.kubernetes.pod.namespace", "other")], vec![]);
        assert_eq!(Selector::scope_peer(&with_ns, Some("prod"), false).pinned_namespace(), Some("other"));
        let nslabels = sel(&[("io.cilium.k8s.namespace.labels.team", "a")], vec![]);
        assert_eq!(Selector::scope_peer(&nslabels, Some("prod"), false).pinned_namespace(), None);
        let reserved = sel(&[("reserved:host", "")], vec![]);
        assert_eq!(Selector::scope_peer(&reserved, Some("prod"), false).reqs.len(), 1);
        let ccnp = Selector::scope_peer(&sel(&[], vec![]), None, false);
        assert_eq!(ccnp.to_string(), "k8s:io.kubernetes.pod.namespace");
    }

    #[test]
    fn subject_scoping_replaces_namespace() {
        let s = sel(&[("io.kubernetes.pod.namespace", "other"), ("app", "x")], vec![]);
        assert_eq!(Selector::scope_subject(&s, Some("prod")).pinned_namespace(), Some("prod"));
    }
}
