//! Labels with sources, and the identity-relevant label set of a pod.
//!
//! Cilium keys labels by key; each label also has a source (`k8s`,
//! `reserved`, `cidr`, ...). A selector key without a source matches any
//! source. Which pod labels count for identity is Cilium's default label
//! filter: Kubernetes bookkeeping labels would otherwise split one workload
//! into many identities.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::api::{Namespace, Pod};

/// Label of a pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix under which a namespace's labels appear on its pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// A pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The cluster a pod is in.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The cluster name bulkhead uses (Cilium's default).
pub const CLUSTER_NAME: &str = "default";

/// A label source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum Source {
    /// Any source (selectors only).
    Any,
    /// Kubernetes.
    K8s,
    /// Reserved (host, world, ...).
    Reserved,
    /// A CIDR identity.
    Cidr,
    /// An FQDN identity.
    Fqdn,
    /// Anything else (`container`, `unspec`, ...).
    Other(String),
}

impl Source {
    /// Parses `k8s`, `reserved`, ...
    pub fn parse(s: &str) -> Self {
        match s {
            "any" => Self::Any,
            "k8s" => Self::K8s,
            "reserved" => Self::Reserved,
            "cidr" => Self::Cidr,
            "fqdn" => Self::Fqdn,
            other => Self::Other(other.to_string()),
        }
    }

    /// The source's name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Any => "any",
            Self::K8s => "k8s",
            Self::Reserved => "reserved",
            Self::Cidr => "cidr",
            Self::Fqdn => "fqdn",
            Self::Other(s) => s,
        }
    }

    /// Splits a selector key `source:key` (no source: any).
    pub fn split_key(key: &str) -> (Source, &str) {
        match key.split_once(':') {
            Some((src, rest)) => (Source::parse(src), rest),
            None => (Source::Any, key),
        }
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.as_str().to_string()
    }
}

/// A set of labels, keyed by key (one source and value per key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(BTreeMap<String, (Source, String)>);

impl LabelSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a label.
    pub fn insert(&mut self, source: Source, key: &str, value: &str) {
        self.0.insert(key.to_string(), (source, value.to_string()));
    }

    /// The label with this key, if any.
    pub fn get(&self, key: &str) -> Option<(&Source, &str)> {
        self.0.get(key).map(|(s, v)| (s, v.as_str()))
    }

    /// All labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Source, &str)> {
        self.0.iter().map(|(k, (s, v))| (k.as_str(), s, v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Labels as `source:key=value` strings (Hubble's form).
    pub fn to_strings(&self) -> Vec<String> {
        self.iter()
            .map(
                |(k, s, v)| {
                    if v.is_empty() { format!("{}:{k}", s.as_str()) } else { format!("{}:{k}={v}", s.as_str()) }
                },
            )
            .collect()
    }

    /// A set of one reserved label.
    pub fn reserved(name: &str) -> Self {
        let mut l = Self::new();
        l.insert(Source::Reserved, name, "");
        l
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

impl Serialize for LabelSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.to_strings())
    }
}

/// Whether a pod label key takes part in identity (Cilium's default label
/// filter, `pkg/labelsfilter`).
pub fn is_identity_label(key: &str) -> bool {
    const EXCLUDED_PREFIXES: &[&str] = &[
        "io.kubernetes",
        "kubernetes.io",
        "beta.kubernetes.io",
        "k8s.io",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/job-completion-index",
        "batch.kubernetes.io/controller-uid",
        "pod-template-generation",
        "pod-template-hash",
        "controller-revision-hash",
        "controller-uid",
        "annotation.",
        "etcd_node",
    ];
    if key == NAMESPACE_LABEL || key.starts_with("io.cilium.k8s.policy") || key.starts_with(NAMESPACE_LABELS_PREFIX) {
        return true;
    }
    if key.starts_with("app.kubernetes.io") {
        return true;
    }
    !EXCLUDED_PREFIXES.iter().any(|p| key.starts_with(p)) && !key.contains("beta.kubernetes.io")
}

/// The identity labels of a pod: its filtered labels, its namespace, the
/// namespace's labels, its service account and the cluster name.
pub fn pod_identity_labels(pod: &Pod, ns: Option<&Namespace>) -> LabelSet {
    let mut l = LabelSet::new();
    for (k, v) in &pod.labels {
        // A pod cannot claim Cilium's own labels (namespace labels, service
        // account, cluster): those come from the cluster state below.
        if is_identity_label(k) && !k.starts_with("io.cilium.k8s") {
            l.insert(Source::K8s, k, v);
        }
    }
    l.insert(Source::K8s, NAMESPACE_LABEL, &pod.namespace);
    if let Some(ns) = ns {
        for (k, v) in &ns.labels {
            l.insert(Source::K8s, &format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
        }
    } else {
        // The apiserver adds this label to every namespace.
        l.insert(Source::K8s, &format!("{NAMESPACE_LABELS_PREFIX}kubernetes.io/metadata.name"), &pod.namespace);
    }
    l.insert(Source::K8s, SERVICE_ACCOUNT_LABEL, &pod.service_account);
    l.insert(Source::K8s, CLUSTER_LABEL, CLUSTER_NAME);
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_labels_are_filtered() {
        assert!(is_identity_label("app"));
        assert!(is_identity_label("app.kubernetes.io/name"));
        assert!(!is_identity_label("pod-template-hash"));
        assert!(!is_identity_label("controller-revision-hash"));
        assert!(!is_identity_label("statefulset.kubernetes.io/pod-name"));
        assert!(!is_identity_label("kubernetes.io/hostname"));
        assert!(is_identity_label(NAMESPACE_LABEL));
    }

    #[test]
    fn split_key() {
        assert_eq!(Source::split_key("k8s:app"), (Source::K8s, "app"));
        assert_eq!(Source::split_key("app"), (Source::Any, "app"));
        assert_eq!(Source::split_key("reserved:host"), (Source::Reserved, "host"));
    }
}
