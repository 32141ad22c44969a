//! The agent's HTTP/JSON API: every request and response body, shared by
//! the agent's server, the CLI and the CNI plugin so that the three cannot
//! drift, and [`client::Client`], the other end of the socket.
//!
//! Its own crate so that what talks to the agent (the CNI plugin, the CLI's
//! live commands) links neither the policy engine nor the web stack.
//!
//! Routes (all under `/v1`, on a unix socket of mode 0600):
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/status` | → [`Status`] |
//! | POST | `/apply` | [`ApplyRequest`] → [`ApplyResponse`] |
//! | POST | `/delete` | [`ApplyRequest`] → [`ApplyResponse`] |
//! | GET | `/endpoints` | → `[`[`EndpointInfo`]`]` |
//! | PUT | `/endpoints/{container_id}` | [`EndpointRequest`] → [`EndpointInfo`] |
//! | GET, DELETE | `/endpoints/{container_id}` | → [`EndpointInfo`] |
//! | GET | `/identities` | → `[`[`IdentityInfo`]`]` |
//! | GET | `/policy?endpoint=NS/POD` | → [`PolicyDump`] |
//! | GET | `/reach?ports=80/TCP,…` | → the `policy reach` matrix |
//! | POST | `/flows` | [`FlowsRequest`] → [`FlowsPage`] |
//! | GET | `/flows/key` | → [`FlowKey`] |
//! | PUT | `/audit` | [`AuditRequest`] → [`AuditSettings`] |
//! | GET | `/ui` | → [`UiAddress`] |
//!
//! Errors are a non-2xx status with an [`ErrorBody`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub mod client;

use bulkhead_flow::Filters;
use bulkhead_flow::model::Flow;
use serde::{Deserialize, Serialize};

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/bulkhead/agent.sock";

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, with the fix where one is known.
    pub error: String,
    /// Every diagnostic behind it (`file:line:col: field: message`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// One input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceFile {
    /// The name diagnostics use.
    pub name: String,
    /// Its text (YAML or JSON, one or more documents).
    pub text: String,
}

/// `apply -f` / `delete -f`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The files, as read by the client.
    pub files: Vec<SourceFile>,
    /// Namespace for namespaced objects that name none (`-n`).
    pub namespace: String,
    /// Check only: validate and report, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an apply or delete did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// `kind namespace/name` of objects that did not exist.
    pub created: Vec<String>,
    /// Objects that changed.
    pub configured: Vec<String>,
    /// Objects that were already so.
    pub unchanged: Vec<String>,
    /// Objects removed.
    pub deleted: Vec<String>,
    /// Objects a delete named that did not exist.
    pub not_found: Vec<String>,
    /// Warnings from validation.
    pub warnings: Vec<String>,
    /// Parts of the applied policies that the datapath does not enforce yet.
    pub not_enforced: Vec<String>,
    /// What reached the kernel.
    pub enforcement: Enforcement,
}

/// The kernel side of a change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Enforcement {
    /// Endpoints whose policy changed in the kernel.
    pub endpoints_updated: usize,
    /// Policies (slots) written.
    pub slots_written: usize,
    /// Map entries written.
    pub entries_written: usize,
    /// Endpoints whose new policy did not load: what they do now, and why.
    pub failed: Vec<EndpointFailure>,
    /// Microseconds from the request to the last map write.
    pub elapsed_us: u64,
}

/// An endpoint whose new policy could not be loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointFailure {
    /// `namespace/pod`.
    pub endpoint: String,
    /// The directions whose policy did not load (`ingress`, `egress`).
    #[serde(default)]
    pub directions: Vec<String>,
    /// True: those directions deny everything until a policy fits (the
    /// agent's default, `--policy-overflow fail-closed`); false: they keep
    /// their previous policy (`--policy-overflow keep-previous`).
    #[serde(default)]
    pub fail_closed: bool,
    /// The datapath's error.
    pub error: String,
}

impl EndpointFailure {
    /// One line: what the endpoint does now and why.
    pub fn summary(&self) -> String {
        let effect =
            if self.fail_closed { "denies everything until a policy fits" } else { "keeps its previous policy" };
        format!("{} {effect}: {}", self.directions.join(" and "), self.error)
    }
}

/// Registers a pod's interface (the CNI plugin's ADD).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRequest {
    /// The runtime's container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub pod: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: String,
    /// The interface inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The host side of the pod's veth.
    pub host_if: String,
    /// Its interface index on the node.
    pub host_ifindex: u32,
    /// The pod's addresses, from the main plugin's result.
    pub ips: Vec<IpAddr>,
}

/// An endpoint as the agent knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// The agent's endpoint id.
    pub id: u32,
    /// `namespace/pod`.
    pub pod: String,
    /// The runtime's container id.
    pub container_id: String,
    /// The numeric identity.
    pub identity: u32,
    /// The identity's labels (`k8s:app=frontend`, …).
    pub labels: Vec<String>,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace.
    pub netns: String,
    /// The host-side interface.
    pub host_if: String,
    /// Its index.
    pub host_ifindex: u32,
    /// Whether policy is enforced (default-deny) on ingress.
    pub ingress_enforced: bool,
    /// Whether policy is enforced on egress.
    pub egress_enforced: bool,
    /// Audit mode in effect (would-be drops pass, reported as AUDIT).
    pub audit: bool,
    /// `ready`, or `not-ready: <why>` when its latest policy could not be loaded.
    pub state: String,
}

/// An identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// The number.
    pub id: u32,
    /// Its labels.
    pub labels: Vec<String>,
    /// Pods (`namespace/name`) that have it.
    pub pods: Vec<String>,
}

/// `fqdn cache list`: one address of one name learnt from DNS answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnCacheEntry {
    /// The name, lowercased with its trailing dot.
    pub name: String,
    /// One of its addresses.
    pub addr: std::net::IpAddr,
    /// Unix seconds after which it is stale (it stays while a connection
    /// to it is open).
    pub expires: u64,
    /// The identity the node gives the address.
    pub identity: u32,
    /// The endpoints (`namespace/pod`) whose lookups returned it.
    pub endpoints: Vec<String>,
}

/// `policy get`: an endpoint's entries as the kernel holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyDump {
    /// `namespace/pod`.
    pub endpoint: String,
    /// Its identity.
    pub identity: u32,
    /// Ingress.
    pub ingress: DirectionDump,
    /// Egress.
    pub egress: DirectionDump,
}

/// One direction of a [`PolicyDump`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectionDump {
    /// Whether traffic no entry allows is dropped.
    pub default_deny: bool,
    /// The slot the endpoint's map value names.
    pub slot: u32,
    /// The slot's entries, read back from the kernel.
    pub entries: Vec<EntryDump>,
}

/// One kernel policy entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryDump {
    /// `address`, `identity` or `any`.
    pub level: String,
    /// The peer: an address, or an identity number.
    pub peer: Option<String>,
    /// The peer identity's labels (identity level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_labels: Vec<String>,
    /// `TCP`, `UDP`, … or `ANY`.
    pub protocol: String,
    /// First port (ICMP: type).
    pub port: u16,
    /// Last port.
    pub end_port: u16,
    /// `allow`, `deny` or `redirect`.
    pub verdict: String,
    /// The rules behind the entry.
    pub rules: Vec<String>,
}

/// `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Whether the agent is serving and its datapath loaded.
    pub healthy: bool,
    /// The agent's process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Its state directory.
    pub state_dir: String,
    /// Where its programs and maps are pinned.
    pub pin_dir: String,
    /// The network namespace holding the host side of pod interfaces.
    pub node_netns: String,
    /// Object and kernel counts.
    pub counts: Counts,
    /// Audit settings.
    pub audit: AuditSettings,
    /// Packets dropped, by reason (Hubble's names) and direction.
    pub drops: BTreeMap<String, u64>,
    /// Packets forwarded.
    pub forwarded: u64,
    /// The flow pipeline: buffer, losses, the flow log.
    pub flows: FlowStatus,
    /// Endpoints whose latest policy is not loaded.
    pub endpoints_not_ready: usize,
    /// The programs' run counts and time (zero unless
    /// `sysctl kernel.bpf_stats_enabled=1`).
    pub programs: Vec<ProgramStat>,
    /// What keeps other processes off the datapath's maps, programs and links.
    #[serde(default)]
    pub protection: Protection,
}

/// How the datapath's kernel objects are protected (BPF LSM guard).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Protection {
    /// `bpf-lsm` (other processes are refused writable maps, programs and
    /// links) or `none`.
    pub mode: String,
    /// Why there is none, when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Attempts refused since the agent started.
    pub refused: u64,
    /// Drift put right since the agent started: pins removed, entries of
    /// the endpoints, ipcache and slot index changed behind its back.
    #[serde(default)]
    pub repaired: u64,
}

/// One program's run statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramStat {
    /// `bh_from_pod` (egress policy) or `bh_to_pod` (ingress policy).
    pub name: String,
    /// Packets it ran on.
    pub run_count: u64,
    /// Nanoseconds it ran.
    pub run_time_ns: u64,
}

/// Counts for [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Policies.
    pub policies: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pods known (with or without a local endpoint).
    pub pods: usize,
    /// Local endpoints.
    pub endpoints: usize,
    /// Identities.
    pub identities: usize,
    /// ipcache prefixes in the kernel.
    pub ipcache: usize,
    /// Policy slots in the kernel.
    pub policy_slots: usize,
    /// Conntrack entries.
    pub conntrack: usize,
}

/// Audit mode at three scopes; the narrowest set one wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSettings {
    /// Every endpoint.
    pub global: bool,
    /// Per namespace.
    #[serde(default)]
    pub namespaces: BTreeMap<String, bool>,
    /// Per endpoint (`namespace/pod`).
    #[serde(default)]
    pub endpoints: BTreeMap<String, bool>,
}

impl AuditSettings {
    /// Whether audit mode applies to the pod `namespace/name`.
    pub fn effective(&self, pod_key: &str) -> bool {
        let ns = pod_key.split_once('/').map_or("", |(ns, _)| ns);
        self.endpoints.get(pod_key).or_else(|| self.namespaces.get(ns)).copied().unwrap_or(self.global)
    }
}

/// The scope of an [`AuditRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "scope", content = "name")]
pub enum AuditScope {
    /// Every endpoint.
    Global,
    /// One namespace.
    Namespace(String),
    /// One endpoint, `namespace/pod`.
    Endpoint(String),
}

/// Sets audit mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRequest {
    /// Where.
    #[serde(flatten)]
    pub scope: AuditScope,
    /// On, off, or `None` to remove the setting (inherit the wider scope).
    pub enabled: Option<bool>,
}

/// `observe`: which flows, how many, from where.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowsRequest {
    /// Hubble-style allow and deny filters and a time window.
    pub filters: Filters,
    /// At most this many (the newest that match).
    pub last: usize,
    /// Only flows with a sequence number at or after this (a follower's
    /// `next` from its previous page); none: from the oldest kept.
    pub after: Option<u64>,
    /// When nothing matches yet, wait up to this long for a flow that does.
    pub wait_ms: u64,
}

/// A page of flows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowsPage {
    /// Matching flows, oldest first.
    pub flows: Vec<Arc<Flow>>,
    /// The `after` to ask with next.
    pub next: u64,
    /// Flows after the requested point that were overwritten before they
    /// could be read (the reader fell behind).
    pub missed: u64,
}

/// `flows key`: the flow log's public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowKey {
    /// ed25519 public key, hex.
    pub public_key: String,
    /// The log directory.
    pub dir: String,
}

/// `bulkhead ui`: where the service map is served, with the token that
/// reading it takes (it changes at every agent start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UiAddress {
    /// `http://127.0.0.1:9962/?token=…`
    pub url: String,
}

/// Where events were lost, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LostEvents {
    /// The kernel's ring buffer was full.
    pub datapath_ring: u64,
    /// Flows the flow log's queue could not take.
    pub flow_log: u64,
    /// L7 events the proxy could not deliver (no agent listening, or the
    /// agent behind: enforcement goes first).
    #[serde(default)]
    pub l7_proxy: u64,
}

/// The flow pipeline, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowStatus {
    /// Flows in the observer's ring.
    pub buffered: u64,
    /// The oldest flows the ring let go to make room (not a loss: they were
    /// processed, logged and counted).
    pub evicted: u64,
    /// Bytes they hold, and the bound.
    pub buffer_bytes: u64,
    /// The ring's bound.
    pub buffer_max_bytes: u64,
    /// Flows seen since the agent started.
    pub seen: u64,
    /// Losses.
    pub lost: LostEvents,
    /// The flow log's directory (empty: no log).
    pub log_dir: String,
    /// Flow records written.
    pub log_written: u64,
    /// The newest signed checkpoint.
    pub log_checkpoint: u64,
    /// The flow log's last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
    /// Where metrics are served, and the service map (which takes the
    /// token `bulkhead ui` gives); empty: not served.
    pub web: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowest_audit_setting_wins() {
        let mut a = AuditSettings::default();
        assert!(!a.effective("prod/web"));
        a.global = true;
        assert!(a.effective("prod/web"));
        a.namespaces.insert("prod".into(), false);
        assert!(!a.effective("prod/web"));
        assert!(a.effective("staging/web"));
        a.endpoints.insert("prod/web".into(), true);
        assert!(a.effective("prod/web"));
        assert!(!a.effective("prod/db"));
    }

    #[test]
    fn audit_request_json() {
        let r: AuditRequest =
            serde_json::from_str(r#"{"scope":"namespace","name":"prod","enabled":true}"#).expect("valid request");
        assert_eq!(r.scope, AuditScope::Namespace("prod".into()));
        let g: AuditRequest = serde_json::from_str(r#"{"scope":"global","enabled":null}"#).expect("valid request");
        assert_eq!(g.scope, AuditScope::Global);
    }
}
