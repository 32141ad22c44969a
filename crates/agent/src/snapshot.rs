//! What the agent publishes after every change, for everything that only
//! reads: the API's read requests, `status`, metrics, and the conversion
//! of datapath events into flows.
//!
//! The reconciler (the one writer) builds a [`Snapshot`] at the end of each
//! change and swaps it in; a reader takes the newest with one atomic load
//! and keeps it as long as it needs, so no reader ever waits for a change
//! in progress (a 10 MiB apply, a conntrack walk) and no change waits for a
//! reader. A snapshot is immutable and consistent: every part of it is from
//! the same change. The price is building one per change, proportional to
//! the numbers of pods, identities and rules (shared, not copied).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bulkhead_api::{AuditSettings, EndpointFailure, EndpointInfo, IdentityInfo};
use bulkhead_datapath::sync::RuleTable;
use bulkhead_policy::api::Object;
use bulkhead_policy::engine::{Engine, PolicyView};
use bulkhead_policy::identity::NumericIdentity;

use crate::config::AgentError;
use crate::observer::convert::Local;
use crate::store::State;

/// Objects applied to the agent, by kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectCounts {
    /// Policies.
    pub policies: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Pods (with or without a local endpoint).
    pub pods: usize,
}

/// The agent's state as of one change. See the module documentation.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped by every change: caches of names start over when it moves.
    pub generation: u64,
    /// The policy engine as of this change.
    pub policy: PolicyView,
    /// The rules behind the datapath's rule reference ids.
    pub rules: RuleTable,
    /// The local endpoints as flows name them.
    pub local: Local,
    /// Every local endpoint, by pod.
    pub endpoints: Vec<EndpointInfo>,
    /// Every identity, by number.
    pub identities: Vec<IdentityInfo>,
    /// What was applied.
    pub objects: ObjectCounts,
    /// Audit settings.
    pub audit: AuditSettings,
    /// Endpoints (by pod) whose latest policy did not load.
    pub not_ready: BTreeMap<String, EndpointFailure>,
    /// The names learnt from DNS answers, with their addresses.
    pub fqdn: Vec<bulkhead_api::FqdnCacheEntry>,
    /// The same, by address (what flows name a peer by).
    pub names: HashMap<std::net::IpAddr, Vec<String>>,
}

impl Snapshot {
    /// Builds the snapshot of `state` and `engine` after change `generation`.
    pub fn build(
        generation: u64,
        state: &State,
        engine: &Engine,
        rules: RuleTable,
        not_ready: &BTreeMap<String, EndpointFailure>,
        fqdn: &crate::fqdn::NameCache,
    ) -> Self {
        let policy = engine.view();
        let fqdn_rows = fqdn
            .rows(None)
            .into_iter()
            .map(|r| bulkhead_api::FqdnCacheEntry {
                identity: policy.identity_of_ip(r.addr).0.0,
                name: r.name,
                addr: r.addr,
                expires: r.expires,
                endpoints: r.endpoints.into_iter().collect(),
            })
            .collect();
        let mut endpoints: Vec<EndpointInfo> = state
            .endpoints
            .values()
            .filter_map(|r| {
                let key = r.pod_key();
                let identity = policy.pod_identity(&key)?;
                let enforced = policy.endpoint_policy(&key);
                Some(EndpointInfo {
                    id: r.id,
                    pod: key.clone(),
                    container_id: r.request.container_id.clone(),
                    identity: identity.0,
                    labels: labels_of(&policy, identity),
                    ips: r.request.ips.clone(),
                    netns: r.request.netns.clone(),
                    host_if: r.request.host_if.clone(),
                    host_ifindex: r.request.host_ifindex,
                    ingress_enforced: enforced.is_some_and(|p| p.ingress.default_deny),
                    egress_enforced: enforced.is_some_and(|p| p.egress.default_deny),
                    audit: state.audit.effective(&key),
                    state: match not_ready.get(&key) {
                        Some(f) => format!("not-ready: {}", f.summary()),
                        None => "ready".into(),
                    },
                })
            })
            .collect();
        endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
        let mut pods: HashMap<NumericIdentity, Vec<String>> = HashMap::new();
        for (k, id) in policy.pods() {
            pods.entry(id).or_default().push(k.to_string());
        }
        let identities = policy
            .identities()
            .map(|i| IdentityInfo {
                id: i.id.0,
                labels: i.labels.to_strings(),
                pods: pods.remove(&i.id).unwrap_or_default(),
            })
            .collect();
        let count = |f: fn(&Object) -> bool| state.objects.values().filter(|o| f(o)).count();
        Snapshot {
            generation,
            local: Local::new(
                state
                    .endpoints
                    .values()
                    .map(|r| (r.id, r.request.host_ifindex, r.request.host_if.clone(), r.pod_key())),
            ),
            endpoints,
            identities,
            objects: ObjectCounts {
                policies: count(|o| matches!(o, Object::Policy(_))),
                namespaces: count(|o| matches!(o, Object::Namespace(_))),
                pods: count(|o| matches!(o, Object::Pod(_))),
            },
            audit: state.audit.clone(),
            not_ready: not_ready.clone(),
            names: fqdn
                .addresses()
                .iter()
                .map(|(a, n)| (*a, n.iter().map(|n| n.trim_end_matches('.').to_owned()).collect()))
                .collect(),
            fqdn: fqdn_rows,
            policy,
            rules,
        }
    }

    /// The names `ip` was learnt under (flows' `source_names`, `destination_names`).
    pub fn names_of(&self, ip: std::net::IpAddr) -> Vec<String> {
        self.names.get(&ip).cloned().unwrap_or_default()
    }

    /// One endpoint, by container id.
    pub fn endpoint(&self, container_id: &str) -> Result<&EndpointInfo, AgentError> {
        self.endpoints
            .iter()
            .find(|e| e.container_id == container_id)
            .ok_or_else(|| AgentError::NotFound(format!("no endpoint for container {container_id}")))
    }

    /// An endpoint by `namespace/pod`, endpoint id or container id.
    pub fn find_endpoint(&self, name: &str) -> Result<&EndpointInfo, AgentError> {
        self.endpoints
            .iter()
            .find(|e| e.pod == name || e.id.to_string() == name || e.container_id == name)
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "no endpoint `{name}`: name it NAMESPACE/POD, by endpoint id or by container id (bulkhead endpoint list)"
                ))
            })
    }

    /// An identity's labels (`k8s:app=web`, …).
    pub fn labels(&self, id: NumericIdentity) -> Vec<String> {
        labels_of(&self.policy, id)
    }
}

fn labels_of(policy: &PolicyView, id: NumericIdentity) -> Vec<String> {
    policy.identity(id).map(|i| i.labels.to_strings()).unwrap_or_default()
}

/// The newest snapshot, swapped in by the writer and loaded by readers
/// without a lock.
#[derive(Debug, Default)]
pub struct Published(ArcSwap<Snapshot>);

impl Published {
    /// The newest snapshot (one atomic load; hold it as long as needed).
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Makes `s` the newest.
    pub fn store(&self, s: Snapshot) {
        self.0.store(Arc::new(s));
    }
}
