//! The policy engine: cluster state, identities, selector cache, and the
//! resolved policy of every endpoint, kept up to date incrementally.
//!
//! Policy is computed per identity and set of named ports (a "profile"; the
//! ingress named-port rules need the ports), as Cilium computes a selector
//! policy per identity, and endpoints share their profile's policy. A change
//! is first turned into what it invalidates: profiles whose rules changed
//! are recomputed whole; when only a peer identity appeared, disappeared or
//! changed its pods, just that peer's entries are recomputed and patched in.
//! The result is the diff of policy-map entries per endpoint. Selectors
//! pinned to one namespace (every namespaced policy's) are evaluated only
//! against that namespace's identities.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::api::{Direction, NamedPort, Namespace, Object, Pod, Policy};
use crate::cidr::Cidr;
use crate::identity::{Allocator, Identity, MemoryAllocator, NumericIdentity, Reserved};
use crate::labels::LabelSet;
use crate::repository::{CompiledRule, PeerSel, PolicyId};
use crate::resolve::{EndpointPolicy, PolicyEntry, PolicyKey};

/// A change to the engine's inputs.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add or replace a namespace (its labels are visible to selectors).
    UpsertNamespace(Namespace),
    /// Remove a namespace (its pods stay, without namespace labels).
    DeleteNamespace(String),
    /// Add or replace a pod.
    UpsertPod(Pod),
    /// Remove a pod by `namespace/name`.
    DeletePod(String),
    /// Add or replace a policy.
    UpsertPolicy(Policy),
    /// Remove a policy.
    DeletePolicy(PolicyId),
    /// An address learnt from DNS answers under these names (none: it is
    /// forgotten). `toFQDNs` selectors that match a name select it.
    SetLearnt(IpAddr, BTreeSet<String>),
}

/// How one direction of one endpoint's policy map changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointDiff {
    /// The endpoint (`namespace/pod`).
    pub endpoint: String,
    /// The direction.
    pub direction: Direction,
    /// Entries added or changed.
    pub upserted: Vec<(PolicyKey, Arc<PolicyEntry>)>,
    /// Keys removed.
    pub removed: Vec<PolicyKey>,
    /// The new default-deny flag, when it changed.
    pub default_deny: Option<bool>,
}

type RuleId = (PolicyId, usize);

/// Identity sets (unioned) and pod addresses with their identity: the
/// peers of a contribution.
type PeerSets = (Vec<Arc<BTreeSet<NumericIdentity>>>, Vec<(IpAddr, NumericIdentity)>);
/// Whole identities and single addresses inside an ipBlock.
type BlockPods = (Arc<BTreeSet<NumericIdentity>>, Vec<(IpAddr, NumericIdentity)>);

/// Entries upserted and keys removed in one direction.
type Changes = (Vec<(PolicyKey, Arc<PolicyEntry>)>, Vec<PolicyKey>);
/// A patched policy and what changed, per direction (ingress, egress).
type PatchResult = (Arc<EndpointPolicy>, Arc<[Changes; 2]>);

/// Endpoints with the same identity and named ports have the same policy
/// (Cilium's "selector policy"); it is computed and stored once.
type ProfileKey = (NumericIdentity, Vec<NamedPort>);

#[derive(Debug, Clone)]
struct PodEntry {
    pod: Pod,
    identity: NumericIdentity,
}

impl PodEntry {
    fn profile(&self) -> ProfileKey {
        (self.identity, named_ports_of(&self.pod))
    }
}

fn named_ports_of(pod: &Pod) -> Vec<NamedPort> {
    let mut v: Vec<NamedPort> = pod.ports.iter().filter(|p| !p.name.is_empty()).cloned().collect();
    v.sort();
    v.dedup();
    v
}

#[derive(Debug)]
struct Profile {
    policy: Arc<EndpointPolicy>,
    endpoints: BTreeSet<String>,
    /// The rules the policy was computed from (set by a full computation).
    rules: Option<RulesKey>,
}

/// The rules selecting a subject and its named ports: everything its policy
/// depends on. Rules compare by identity (the `Arc`), which the key keeps
/// alive, so an address is never mistaken for a later rule's.
#[derive(Debug, Clone)]
struct RulesKey(Vec<Arc<CompiledRule>>, Vec<NamedPort>);

impl PartialEq for RulesKey {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
            && self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for RulesKey {}

impl std::hash::Hash for RulesKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        for r in &self.0 {
            (Arc::as_ptr(r) as usize).hash(h);
        }
        self.1.hash(h);
    }
}

/// What a change invalidated, collected before anything is recomputed.
#[derive(Debug, Default)]
struct Dirty {
    /// Subjects whose whole policy must be recomputed (their rules changed).
    full: BTreeSet<NumericIdentity>,
    /// Subjects in which only the entries of these peer identities change
    /// (the peer appeared, disappeared, or its addresses or ports changed).
    levels: BTreeMap<NumericIdentity, BTreeSet<NumericIdentity>>,
    /// Endpoints added, removed or changed.
    pods: BTreeSet<String>,
    /// Pod addresses added or removed, with the identities they had or
    /// have (so that patching one peer touches only its own addresses).
    addrs: BTreeMap<IpAddr, BTreeSet<NumericIdentity>>,
}

/// The engine. See the module documentation.
pub struct Engine {
    alloc: Box<dyn Allocator + Send>,
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<String, PodEntry>,
    identities: BTreeMap<NumericIdentity, Arc<Identity>>,
    id_pods: HashMap<NumericIdentity, BTreeSet<String>>,
    ns_ids: HashMap<String, BTreeSet<NumericIdentity>>,
    outside_ids: BTreeSet<NumericIdentity>,
    by_labels: HashMap<LabelSet, NumericIdentity>,
    cidr_ids: BTreeMap<Cidr, NumericIdentity>,
    /// Addresses learnt from DNS answers, with their names.
    learnt: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Their identities, and how many addresses each identity has.
    learnt_ids: BTreeMap<IpAddr, NumericIdentity>,
    learnt_refs: HashMap<NumericIdentity, usize>,
    /// Pod addresses: the pod and its identity.
    addrs: BTreeMap<IpAddr, (String, NumericIdentity)>,
    /// How many pod addresses each identity has.
    id_addr_count: HashMap<NumericIdentity, usize>,
    /// Selector results by the selector's address in its compiled rule,
    /// memoised for one recompute.
    peer_memo: HashMap<usize, Arc<BTreeSet<NumericIdentity>>>,
    /// ipBlock peers resolved against pod addresses, memoised for one
    /// recompute (the result does not depend on the subject).
    block_cache: HashMap<crate::api::CidrRule, BlockPods>,
    /// Every named container port of every pod, with a count (egress
    /// named ports towards "all peers" resolve against this).
    named_ports: BTreeMap<NamedPort, usize>,
    policies: BTreeMap<PolicyId, Arc<Policy>>,
    rules: BTreeMap<RuleId, Arc<CompiledRule>>,
    rules_by_ns: HashMap<Option<String>, BTreeSet<RuleId>>,
    /// Rules that look at pods beyond their identity: ipBlock peers (pod
    /// addresses) and egress named ports (peers' container ports).
    pod_dependent_rules: BTreeSet<RuleId>,
    sel_cache: HashMap<PeerSel, Arc<BTreeSet<NumericIdentity>>>,
    sel_rules: HashMap<PeerSel, BTreeSet<RuleId>>,
    profiles: HashMap<ProfileKey, Profile>,
    /// A profile for each set of selecting rules and named ports, so that a
    /// new identity selected by the same rules as an existing one takes that
    /// policy instead of computing it.
    by_rules: HashMap<RulesKey, ProfileKey>,
    endpoint_profile: HashMap<String, ProfileKey>,
    dirty: Dirty,
    /// While loading in bulk, nothing is tracked or resolved until
    /// [`Engine::resolve_all`].
    deferred: bool,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(Box::new(MemoryAllocator::new()))
    }
}

impl Engine {
    /// An empty engine using `alloc` for cluster identities.
    pub fn new(alloc: Box<dyn Allocator + Send>) -> Self {
        let mut e = Self {
            alloc,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            identities: BTreeMap::new(),
            id_pods: HashMap::new(),
            ns_ids: HashMap::new(),
            outside_ids: BTreeSet::new(),
            by_labels: HashMap::new(),
            cidr_ids: BTreeMap::new(),
            learnt: BTreeMap::new(),
            learnt_ids: BTreeMap::new(),
            learnt_refs: HashMap::new(),
            addrs: BTreeMap::new(),
            id_addr_count: HashMap::new(),
            block_cache: HashMap::new(),
            peer_memo: HashMap::new(),
            named_ports: BTreeMap::new(),
            policies: BTreeMap::new(),
            rules: BTreeMap::new(),
            rules_by_ns: HashMap::new(),
            pod_dependent_rules: BTreeSet::new(),
            sel_cache: HashMap::new(),
            sel_rules: HashMap::new(),
            profiles: HashMap::new(),
            by_rules: HashMap::new(),
            endpoint_profile: HashMap::new(),
            dirty: Dirty::default(),
            deferred: false,
        };
        for r in Reserved::ALL {
            if r != Reserved::Unknown {
                e.insert_identity(Identity::reserved(r));
            }
        }
        e
    }

    /// Builds an engine from decoded objects and resolves every endpoint once.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut e = Self { deferred: true, ..Self::default() };
        for o in objects {
            let change = match o {
                Object::Namespace(n) => Change::UpsertNamespace(n),
                Object::Pod(p) => Change::UpsertPod(p),
                Object::Policy(p) => Change::UpsertPolicy(p),
            };
            e.apply(change);
        }
        e.resolve_all();
        e
    }

    /// Resolves every endpoint from scratch (and ends bulk loading).
    pub fn resolve_all(&mut self) -> Vec<EndpointDiff> {
        self.sync_cidr_identities_now();
        self.deferred = false;
        for addr in self.learnt.keys().copied().collect::<Vec<_>>() {
            self.sync_learnt(addr);
        }
        // Selector results were not maintained while deferred.
        self.sel_cache.clear();
        self.dirty = Dirty { pods: self.pods.keys().cloned().collect(), ..Dirty::default() };
        self.profiles.clear();
        self.by_rules.clear();
        self.endpoint_profile.clear();
        self.recompute()
    }

    /// Applies one change and returns how endpoint policy maps changed.
    pub fn apply(&mut self, change: Change) -> Vec<EndpointDiff> {
        self.apply_batch([change])
    }

    /// Applies several changes and then resolves once: what each change
    /// invalidates is collected as it is made, and the node-local CIDR
    /// identities are brought up to date and the affected policies
    /// recomputed once for the whole batch (a property test checks that
    /// this equals applying them one by one). Applying a large policy set
    /// this way costs one resolve instead of one per policy.
    pub fn apply_batch(&mut self, changes: impl IntoIterator<Item = Change>) -> Vec<EndpointDiff> {
        let mut policies_changed = false;
        for change in changes {
            match change {
                Change::UpsertNamespace(ns) => {
                    let name = ns.name.clone();
                    self.namespaces.insert(name.clone(), ns);
                    self.relabel_namespace(&name);
                }
                Change::DeleteNamespace(name) => {
                    self.namespaces.remove(&name);
                    self.relabel_namespace(&name);
                }
                Change::UpsertPod(pod) => self.upsert_pod(pod),
                Change::DeletePod(key) => self.detach_pod(&key),
                Change::UpsertPolicy(p) => {
                    let id = PolicyId::of(&p);
                    self.remove_policy(&id);
                    self.add_policy(p);
                    policies_changed = true;
                }
                Change::DeletePolicy(id) => {
                    self.remove_policy(&id);
                    policies_changed = true;
                }
                Change::SetLearnt(addr, names) => self.set_learnt(addr, names),
            }
        }
        if policies_changed {
            self.sync_cidr_identities();
            // The prefixes containing learnt addresses may have changed.
            for addr in self.learnt.keys().copied().collect::<Vec<_>>() {
                self.sync_learnt(addr);
            }
        }
        if self.deferred {
            self.dirty = Dirty::default();
            return Vec::new();
        }
        self.recompute()
    }

    // ---- queries ----

    /// The resolved policy of an endpoint (`namespace/pod`).
    ///
    /// Endpoints with the same profile share one `Arc`, and a policy that
    /// did not change keeps its `Arc`: the datapath loads each distinct
    /// policy once and skips endpoints whose pointer is unchanged.
    pub fn endpoint_policy(&self, key: &str) -> Option<&Arc<EndpointPolicy>> {
        self.endpoint_profile.get(key).and_then(|k| self.profiles.get(k)).map(|p| &p.policy)
    }

    /// A pod and its identity.
    pub fn pod(&self, key: &str) -> Option<(&Pod, NumericIdentity)> {
        self.pods.get(key).map(|e| (&e.pod, e.identity))
    }

    /// Every pod key, sorted.
    pub fn pod_keys(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// An identity.
    pub fn identity(&self, id: NumericIdentity) -> Option<&Identity> {
        self.identities.get(&id).map(Arc::as_ref)
    }

    /// Every identity.
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values().map(Arc::as_ref)
    }

    /// Every policy.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().map(|p| p.as_ref())
    }

    /// What the datapath's ipcache holds: every pod address (as a host
    /// prefix) and every policy CIDR, with its identity. A lookup takes the
    /// longest prefix, which is [`Engine::identity_of_ip`]'s answer.
    pub fn ipcache(&self) -> Vec<(Cidr, NumericIdentity)> {
        let pods = self.addrs.iter().map(|(ip, (_, id))| (Cidr::host(*ip), *id));
        let learnt = self.learnt_ids.iter().filter(|(ip, _)| !self.addrs.contains_key(ip));
        let host = |ip: &IpAddr| self.addrs.contains_key(ip) || self.learnt_ids.contains_key(ip);
        let cidrs = self.cidr_ids.iter().filter(|(c, _)| !host(&c.addr()) || c.len() < host_len(c));
        pods.chain(learnt.map(|(ip, id)| (Cidr::host(*ip), *id))).chain(cidrs.map(|(c, id)| (*c, *id))).collect()
    }

    /// The identity the datapath gives a peer address: its pod's, else the
    /// longest policy prefix's, else world (per family). Also the pod key.
    pub fn identity_of_ip(&self, ip: IpAddr) -> (NumericIdentity, Option<String>) {
        view::identity_of_ip(&self.addrs, &self.learnt_ids, &self.cidr_ids, ip)
    }
}

fn host_len(c: &Cidr) -> u8 {
    if c.is_ipv4() { 32 } else { 128 }
}

mod cluster;
mod identities;
mod recompute;
mod rules;
#[cfg(test)]
mod tests;
mod view;

pub use identities::peer_matches;
pub use view::PolicyView;
