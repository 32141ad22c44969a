//! L7 rule types as they appear under `toPorts[].rules` in Cilium policy.
//!
//! These are the validated, typed forms; the matchers that decide requests
//! against them live in [`crate::l7`]. Regexes are kept as source text here
//! and compiled once by the matchers (anchored, size-limited).

use serde::{Deserialize, Serialize};

/// One HTTP rule (`rules.http[]`): all present fields must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    /// Regex matched against the whole request method (`:method`, case-sensitive).
    /// `None` or an empty string means any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regex matched against the whole request target as Envoy's `:path`
    /// holds it, query string included, after normalization
    /// ([`crate::l7::path`]). `None` or empty means any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regex matched against the whole `:authority` (Host) value as sent,
    /// port included when the client sent one. `None` or empty means any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `Name` (header present) or `Name: value` (exact value; the whitespace
    /// around the value is ignored, and Cilium's `Name value` form is accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Header matches; without a mismatch action they are required, with one
    /// the request is allowed anyway and the action is reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

/// `headerMatches[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Expected value; empty means "present".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// What to do on mismatch; `None` means the request is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<MismatchAction>,
    /// `secret: {namespace, name}` reference, kept for display only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `headerMatches[].mismatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MismatchAction {
    /// Log the mismatch, allow the request.
    Log,
    /// Add the header with the expected value, allow.
    Add,
    /// Remove the header, allow.
    Delete,
    /// Replace the header's value, allow.
    Replace,
}

/// A DNS name selector (`toFQDNs[]` and `rules.dns[]`): exactly one field set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FqdnSelector {
    /// Exact name, compared lowercase in fully-qualified form (trailing dot
    /// added when missing), so `Example.COM` and `example.com.` are the same.
    MatchName(String),
    /// Pattern with `*` wildcards: `*` alone (or any all-star pattern) matches
    /// every name, a leading `**.` matches one or more whole labels, any other
    /// `*` matches zero or more name characters within one label.
    MatchPattern(String),
}

/// Kafka role shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaRole {
    /// produce: Produce, Metadata, ApiVersions.
    Produce,
    /// consume: Fetch, Offsets, Metadata, OffsetCommit, OffsetFetch,
    /// FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup, ApiVersions.
    Consume,
}

/// One Kafka rule (`rules.kafka[]`): all present fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRule {
    /// `role`, exclusive with `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<KafkaRole>,
    /// `apiKey` as its Kafka numeric key (validated from its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<i16>,
    /// `apiVersion`, exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<i16>,
    /// `clientID`, exact.
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `topic`, exact; ignored for request kinds that carry no topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// The L7 rules of one port rule; at most one kind is non-empty (validated).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "rules")]
pub enum L7Rules {
    /// `rules.http`
    Http(Vec<HttpRule>),
    /// `rules.dns`
    Dns(Vec<FqdnSelector>),
    /// `rules.kafka`
    Kafka(Vec<KafkaRule>),
    /// TLS `serverNames` on the port rule (SNI match, no L7 parsing).
    Tls(Vec<String>),
    /// `rules.l7proto` + `rules.l7` (generic key/value rules), shown, not parsed.
    Generic {
        /// The `l7proto` name.
        proto: String,
        /// Each rule's key/value pairs.
        rules: Vec<Vec<(String, String)>>,
    },
}
