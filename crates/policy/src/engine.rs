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
use crate::identity::{Allocator, Identity, IdentityKind, MemoryAllocator, NumericIdentity, Reserved};
use crate::labels::{LabelSet, Source, pod_identity_labels};
use crate::repository::{CompiledRule, PeerSel, PolicyId, PortItem, Proto, compile};
use crate::resolve::{DirectionPolicy, EndpointPolicy, PolicyEntry, PolicyKey};

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
    identities: BTreeMap<NumericIdentity, Identity>,
    id_pods: HashMap<NumericIdentity, BTreeSet<String>>,
    ns_ids: HashMap<String, BTreeSet<NumericIdentity>>,
    outside_ids: BTreeSet<NumericIdentity>,
    by_labels: HashMap<LabelSet, NumericIdentity>,
    cidr_ids: BTreeMap<Cidr, NumericIdentity>,
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
                self.sync_cidr_identities();
            }
            Change::DeletePolicy(id) => {
                self.remove_policy(&id);
                self.sync_cidr_identities();
            }
        }
        if self.deferred {
            self.dirty = Dirty::default();
            return Vec::new();
        }
        self.recompute()
    }

    // ---- identities and the selector cache ----

    fn candidates(&self, sel: &PeerSel) -> Vec<NumericIdentity> {
        match sel {
            PeerSel::Endpoints(s) | PeerSel::Labels(s) => match s.pinned_namespace() {
                Some(ns) => self.ns_ids.get(ns).map(|s| s.iter().copied().collect()).unwrap_or_default(),
                None => self.identities.keys().copied().collect(),
            },
            PeerSel::Cidr { .. } | PeerSel::Fqdn(_) => self.outside_ids.iter().copied().collect(),
            PeerSel::All => self.identities.keys().copied().collect(),
        }
    }

    /// The identities a selector matches (cached).
    pub fn select(&mut self, sel: &PeerSel) -> Arc<BTreeSet<NumericIdentity>> {
        if let Some(s) = self.sel_cache.get(sel) {
            return s.clone();
        }
        let set: BTreeSet<NumericIdentity> = self
            .candidates(sel)
            .into_iter()
            .filter(|id| self.identities.get(id).is_some_and(|i| peer_matches(sel, i)))
            .collect();
        let set = Arc::new(set);
        if !self.deferred {
            self.sel_cache.insert(sel.clone(), set.clone());
        }
        set
    }

    fn insert_identity(&mut self, ident: Identity) -> NumericIdentity {
        let id = ident.id;
        if ident.is_world() {
            self.outside_ids.insert(id);
        }
        if let Some((_, ns)) = ident.labels.get(crate::labels::NAMESPACE_LABEL) {
            self.ns_ids.entry(ns.to_string()).or_default().insert(id);
        }
        self.by_labels.insert(ident.labels.clone(), id);
        self.identities.insert(id, ident);
        id
    }

    /// Updates cached selector results for an identity that appeared (or is
    /// about to disappear); the subjects of the rules using those selectors
    /// get this peer's entries recomputed.
    fn identity_changed(&mut self, id: NumericIdentity, added: bool) {
        if self.deferred {
            return;
        }
        let Some(ident) = self.identities.get(&id).cloned() else { return };
        let mut touched: Vec<PeerSel> = Vec::new();
        for (sel, set) in self.sel_cache.iter_mut() {
            if peer_matches(sel, &ident) {
                let s = Arc::make_mut(set);
                if added {
                    s.insert(id)
                } else {
                    s.remove(&id)
                };
                touched.push(sel.clone());
            }
        }
        let mut rules = BTreeSet::new();
        for sel in touched {
            if let Some(r) = self.sel_rules.get(&sel) {
                rules.extend(r.iter().cloned());
            }
        }
        for r in rules {
            self.mark_rule_level(&r, id);
        }
        if added {
            // Its own policy, if it selects anything.
            self.dirty.full.insert(id);
        }
    }

    /// The subjects of a rule, whose whole policy must be recomputed.
    fn mark_rule_full(&mut self, r: &RuleId) {
        if self.deferred {
            return;
        }
        let Some(subject) = self.rules.get(r).and_then(|cr| cr.subject.clone()) else { return };
        let set = self.select(&PeerSel::Endpoints(subject));
        self.dirty.full.extend(set.iter().copied());
    }

    /// The subjects of a rule, in which only `peer`'s entries change.
    fn mark_rule_level(&mut self, r: &RuleId, peer: NumericIdentity) {
        let Some(subject) = self.rules.get(r).and_then(|cr| cr.subject.clone()) else { return };
        let set = self.select(&PeerSel::Endpoints(subject));
        for s in set.iter() {
            self.dirty.levels.entry(*s).or_default().insert(peer);
        }
    }

    fn remove_identity(&mut self, id: NumericIdentity) {
        self.identity_changed(id, false);
        if let Some(ident) = self.identities.remove(&id) {
            self.by_labels.remove(&ident.labels);
            self.outside_ids.remove(&id);
            if let Some((_, ns)) = ident.labels.get(crate::labels::NAMESPACE_LABEL)
                && let Some(s) = self.ns_ids.get_mut(ns)
            {
                s.remove(&id);
            }
            self.alloc.release(id);
        }
    }

    /// The identity for pod labels, allocating (and announcing) a new one.
    fn pod_identity(&mut self, labels: LabelSet) -> NumericIdentity {
        if let Some(id) = self.by_labels.get(&labels) {
            return *id;
        }
        let id = match self.alloc.allocate(&labels) {
            Ok(id) => id,
            // Out of numbers: the pod is treated as an unmanaged peer, and
            // selects no policy of its own (fail closed at the datapath).
            Err(_) => return Reserved::Unmanaged.id(),
        };
        self.insert_identity(Identity { id, labels, kind: IdentityKind::Cluster });
        self.identity_changed(id, true);
        id
    }

    // ---- pods and namespaces ----

    fn upsert_pod(&mut self, pod: Pod) {
        let key = pod.key();
        if self.pods.get(&key).is_some_and(|old| old.pod == pod) {
            return;
        }
        self.detach_pod(&key);
        let labels = pod_identity_labels(&pod, self.namespaces.get(&pod.namespace));
        let identity = self.pod_identity(labels);
        self.attach_pod(key, pod, identity);
    }

    fn attach_pod(&mut self, key: String, pod: Pod, identity: NumericIdentity) {
        self.id_pods.entry(identity).or_default().insert(key.clone());
        for ip in &pod.ips {
            self.addrs.insert(*ip, (key.clone(), identity));
            *self.id_addr_count.entry(identity).or_default() += 1;
            self.dirty.addrs.entry(*ip).or_default().insert(identity);
        }
        self.count_named_ports(&pod, true);
        self.pods.insert(key.clone(), PodEntry { pod: pod.clone(), identity });
        self.mark_pod_dependents(&pod, identity);
        self.dirty.pods.insert(key);
    }

    /// Removes a pod from the indexes (its identity too, if it was the last).
    fn detach_pod(&mut self, key: &str) {
        let Some(entry) = self.pods.remove(key) else { return };
        self.dirty.pods.insert(key.to_string());
        for ip in &entry.pod.ips {
            if self.addrs.get(ip).is_some_and(|(k, _)| k == key) {
                self.addrs.remove(ip);
                if let Some(n) = self.id_addr_count.get_mut(&entry.identity) {
                    *n = n.saturating_sub(1);
                }
            }
            self.dirty.addrs.entry(*ip).or_default().insert(entry.identity);
        }
        self.count_named_ports(&entry.pod, false);
        if let Some(set) = self.id_pods.get_mut(&entry.identity) {
            set.remove(key);
        }
        self.mark_pod_dependents(&entry.pod, entry.identity);
        if self.id_pods.get(&entry.identity).is_some_and(BTreeSet::is_empty) {
            self.id_pods.remove(&entry.identity);
            if self.identities.get(&entry.identity).is_some_and(|i| i.kind == IdentityKind::Cluster) {
                self.remove_identity(entry.identity);
            }
        }
    }

    /// Rules that look at a pod beyond its identity: ipBlock rules (whether
    /// the identity's pods sit inside a block decides between identity and
    /// address entries) and egress named ports (resolved against the peer's
    /// pods, or against every pod for rules open to all peers).
    fn mark_pod_dependents(&mut self, pod: &Pod, identity: NumericIdentity) {
        if self.deferred {
            return;
        }
        let named = pod.ports.iter().any(|p| !p.name.is_empty());
        let mut ips: Vec<IpAddr> = pod.ips.clone();
        for k in self.id_pods.get(&identity).into_iter().flatten() {
            if let Some(e) = self.pods.get(k) {
                ips.extend(e.pod.ips.iter().copied());
            }
        }
        let ident = self.identities.get(&identity).cloned();
        let mut level: Vec<RuleId> = Vec::new();
        let mut full: Vec<RuleId> = Vec::new();
        for rid in &self.pod_dependent_rules {
            let Some(rule) = self.rules.get(rid) else { continue };
            for c in rule.ingress.contributions.iter().chain(&rule.egress.contributions) {
                let blocks = c.peers.iter().any(|p| match p {
                    PeerSel::Cidr { rule: block, pods: true } => ips.iter().any(|ip| block.contains_ip(*ip)),
                    _ => false,
                });
                if blocks {
                    level.push(rid.clone());
                }
            }
            if named {
                for c in &rule.egress.contributions {
                    if !c.ports.iter().any(|p| matches!(p, PortItem::Named { .. })) {
                        continue;
                    }
                    if c.peers.contains(&PeerSel::All) {
                        full.push(rid.clone());
                    } else if ident.as_ref().is_some_and(|i| c.peers.iter().any(|p| peer_matches(p, i))) {
                        level.push(rid.clone());
                    }
                }
            }
        }
        for r in level {
            self.mark_rule_level(&r, identity);
        }
        for r in full {
            self.mark_rule_full(&r);
        }
    }

    fn relabel_namespace(&mut self, ns: &str) {
        let keys: Vec<String> = self.pods.values().filter(|p| p.pod.namespace == ns).map(|p| p.pod.key()).collect();
        for key in keys {
            if let Some(entry) = self.pods.get(&key).cloned() {
                self.detach_pod(&key);
                let labels = pod_identity_labels(&entry.pod, self.namespaces.get(ns));
                let identity = self.pod_identity(labels);
                self.attach_pod(key, entry.pod, identity);
            }
        }
    }

    fn count_named_ports(&mut self, pod: &Pod, add: bool) {
        for p in pod.ports.iter().filter(|p| !p.name.is_empty()) {
            let n = self.named_ports.entry(p.clone()).or_insert(0);
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.named_ports.remove(p);
                }
            }
        }
    }

    // ---- policies ----

    fn add_policy(&mut self, p: Policy) {
        let pid = PolicyId::of(&p);
        for (i, rule) in compile(&p).into_iter().enumerate() {
            let rid = (pid.clone(), i);
            let ns = rule.subject.as_ref().and_then(|s| s.pinned_namespace().map(str::to_string));
            self.rules_by_ns.entry(ns).or_default().insert(rid.clone());
            for sel in rule_selectors(&rule) {
                self.sel_rules.entry(sel).or_default().insert(rid.clone());
            }
            if depends_on_pods(&rule) {
                self.pod_dependent_rules.insert(rid.clone());
            }
            self.rules.insert(rid.clone(), Arc::new(rule));
            self.mark_rule_full(&rid);
        }
        self.policies.insert(pid, Arc::new(p));
    }

    fn remove_policy(&mut self, pid: &PolicyId) {
        if self.policies.remove(pid).is_none() {
            return;
        }
        let ids: Vec<RuleId> =
            self.rules.range((pid.clone(), 0)..=(pid.clone(), usize::MAX)).map(|(k, _)| k.clone()).collect();
        for rid in ids {
            self.mark_rule_full(&rid);
            self.pod_dependent_rules.remove(&rid);
            if let Some(rule) = self.rules.remove(&rid) {
                let ns = rule.subject.as_ref().and_then(|s| s.pinned_namespace().map(str::to_string));
                if let Some(s) = self.rules_by_ns.get_mut(&ns) {
                    s.remove(&rid);
                }
                for sel in rule_selectors(&rule) {
                    if let Some(s) = self.sel_rules.get_mut(&sel) {
                        s.remove(&rid);
                        if s.is_empty() {
                            self.sel_rules.remove(&sel);
                            self.sel_cache.remove(&sel);
                        }
                    }
                }
            }
        }
    }

    /// Keeps one node-local identity per prefix the policies name.
    fn sync_cidr_identities(&mut self) {
        if self.deferred {
            // Done once by resolve_all.
            return;
        }
        let mut wanted: BTreeSet<Cidr> = BTreeSet::new();
        for rule in self.rules.values() {
            for c in rule.ingress.contributions.iter().chain(&rule.egress.contributions) {
                for p in &c.peers {
                    if let PeerSel::Cidr { rule, .. } = p {
                        wanted.insert(rule.cidr);
                        wanted.extend(rule.except.iter().copied());
                    }
                }
            }
        }
        wanted.retain(|c| !c.is_empty());
        let stale: Vec<(Cidr, NumericIdentity)> =
            self.cidr_ids.iter().filter(|(c, _)| !wanted.contains(c)).map(|(c, i)| (*c, *i)).collect();
        for (c, id) in stale {
            self.cidr_ids.remove(&c);
            self.remove_identity(id);
        }
        for c in wanted {
            if self.cidr_ids.contains_key(&c) {
                continue;
            }
            let labels = cidr_labels(&c);
            let Ok(id) = self.alloc.allocate_local(&labels) else { continue };
            self.insert_identity(Identity { id, labels, kind: IdentityKind::Cidr(c) });
            self.cidr_ids.insert(c, id);
            self.identity_changed(id, true);
        }
    }

    fn sync_cidr_identities_now(&mut self) {
        let deferred = std::mem::replace(&mut self.deferred, false);
        self.sync_cidr_identities();
        self.deferred = deferred;
    }

    /// The node-local identity for addresses `name` resolves to (for `trace
    /// --to-fqdn`): labelled with every toFQDNs selector that matches it.
    pub fn fqdn_identity(&mut self, name: &str) -> NumericIdentity {
        let name = crate::l7::dns::normalize_name(name);
        let mut labels = LabelSet::new();
        labels.insert(Source::Fqdn, &name, "");
        labels.insert(Source::Reserved, "world", "");
        if let Some(id) = self.by_labels.get(&labels) {
            return *id;
        }
        let Ok(id) = self.alloc.allocate_local(&labels) else { return Reserved::World.id() };
        self.insert_identity(Identity { id, labels, kind: IdentityKind::Fqdn(name) });
        self.identity_changed(id, true);
        if !self.deferred {
            self.recompute();
        }
        id
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
        self.identities.get(&id)
    }

    /// Every identity.
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values()
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
        let cidrs = self.cidr_ids.iter().filter(|(c, _)| !self.addrs.contains_key(&c.addr()) || c.len() < host_len(c));
        pods.chain(cidrs.map(|(c, id)| (*c, *id))).collect()
    }

    /// The identity the datapath gives a peer address: its pod's, else the
    /// longest policy prefix's, else world (per family). Also the pod key.
    pub fn identity_of_ip(&self, ip: IpAddr) -> (NumericIdentity, Option<String>) {
        if let Some((key, id)) = self.addrs.get(&ip) {
            return (*id, Some(key.clone()));
        }
        let best = self.cidr_ids.iter().filter(|(c, _)| c.contains_ip(ip)).max_by_key(|(c, _)| c.len());
        match best {
            Some((_, id)) => (*id, None),
            None if ip.is_ipv4() => (Reserved::WorldIpv4.id(), None),
            None => (Reserved::WorldIpv6.id(), None),
        }
    }
}

fn host_len(c: &Cidr) -> u8 {
    if c.is_ipv4() { 32 } else { 128 }
}

/// Replaces, in `into`, the entries about `peer` (and the pod addresses in
/// `addrs`) with those of `from`; returns what changed.
fn patch_peer(
    into: &mut DirectionPolicy,
    from: &DirectionPolicy,
    peer: NumericIdentity,
    addrs: &BTreeSet<IpAddr>,
) -> (Vec<(PolicyKey, Arc<PolicyEntry>)>, Vec<PolicyKey>) {
    use crate::resolve::Peer;
    let (mut upserted, mut removed) = (Vec::new(), Vec::new());
    let levels = std::iter::once(Peer::Identity(peer)).chain(addrs.iter().map(|a| Peer::Address(*a)));
    for level in levels {
        // A peer's keys are one contiguous run of the map's order.
        let lo = PolicyKey { peer: level, proto: Proto::Any, lo: 0, hi: 0 };
        let hi = PolicyKey { peer: level, proto: Proto::Sctp, lo: u16::MAX, hi: u16::MAX };
        let old: Vec<PolicyKey> = into.entries.range(lo..=hi).map(|(k, _)| *k).collect();
        for k in &old {
            if !from.entries.contains_key(k) {
                into.entries.remove(k);
                removed.push(*k);
            }
        }
        for (k, v) in from.entries.range(lo..=hi) {
            if into.entries.get(k) != Some(v) {
                into.entries.insert(*k, v.clone());
                upserted.push((*k, v.clone()));
            }
        }
    }
    (upserted, removed)
}

fn dir_mut(p: &mut EndpointPolicy, d: Direction) -> &mut DirectionPolicy {
    match d {
        Direction::Ingress => &mut p.ingress,
        Direction::Egress => &mut p.egress,
    }
}

/// Whether a rule's entries depend on pods beyond their identity.
fn depends_on_pods(rule: &CompiledRule) -> bool {
    let c = rule.ingress.contributions.iter().chain(&rule.egress.contributions);
    c.into_iter().any(|c| {
        c.peers.iter().any(|p| matches!(p, PeerSel::Cidr { pods: true, .. }))
            || c.ports.iter().any(|p| matches!(p, PortItem::Named { .. }))
    })
}

fn dir_of(p: &EndpointPolicy, d: Direction) -> &DirectionPolicy {
    match d {
        Direction::Ingress => &p.ingress,
        Direction::Egress => &p.egress,
    }
}

fn diff_direction(key: &str, d: Direction, old: &DirectionPolicy, new: &DirectionPolicy) -> Option<EndpointDiff> {
    let upserted: Vec<(PolicyKey, Arc<PolicyEntry>)> =
        new.entries.iter().filter(|(k, v)| old.entries.get(*k) != Some(*v)).map(|(k, v)| (*k, v.clone())).collect();
    let removed: Vec<PolicyKey> = old.entries.keys().filter(|k| !new.entries.contains_key(*k)).copied().collect();
    let default_deny = (old.default_deny != new.default_deny).then_some(new.default_deny);
    (!upserted.is_empty() || !removed.is_empty() || default_deny.is_some()).then(|| EndpointDiff {
        endpoint: key.to_string(),
        direction: d,
        upserted,
        removed,
        default_deny,
    })
}

/// Every selector a rule uses (subject and peers), for the reverse index.
fn rule_selectors(rule: &CompiledRule) -> Vec<PeerSel> {
    let mut out: Vec<PeerSel> = rule.subject.iter().map(|s| PeerSel::Endpoints(s.clone())).collect();
    for c in rule.ingress.contributions.iter().chain(&rule.egress.contributions) {
        out.extend(c.peers.iter().filter(|p| **p != PeerSel::All).cloned());
    }
    out.sort();
    out.dedup();
    out
}

fn cidr_labels(c: &Cidr) -> LabelSet {
    let mut l = LabelSet::new();
    l.insert(Source::Cidr, &c.to_string(), "");
    l.insert(Source::Reserved, "world", "");
    l.insert(Source::Reserved, if c.is_ipv4() { "world-ipv4" } else { "world-ipv6" }, "");
    l
}

/// Whether a peer selector matches an identity.
pub fn peer_matches(sel: &PeerSel, ident: &Identity) -> bool {
    match sel {
        PeerSel::All => true,
        PeerSel::Endpoints(s) | PeerSel::Labels(s) => s.matches(&ident.labels),
        PeerSel::Cidr { rule, .. } => match &ident.kind {
            IdentityKind::Cidr(p) => rule.cidr.contains(p) && !rule.except.iter().any(|e| e.contains(p)),
            IdentityKind::Reserved(Reserved::WorldIpv4) => rule.cidr.is_empty() && rule.cidr.is_ipv4(),
            IdentityKind::Reserved(Reserved::WorldIpv6) => rule.cidr.is_empty() && !rule.cidr.is_ipv4(),
            IdentityKind::Reserved(Reserved::World) => rule.cidr.is_empty(),
            // A /0 rule is the world selector, which also covers names.
            IdentityKind::Fqdn(_) => rule.cidr.is_empty() && rule.except.is_empty(),
            _ => false,
        },
        PeerSel::Fqdn(f) => match &ident.kind {
            IdentityKind::Fqdn(name) => crate::l7::dns::selector_matches(f, name),
            _ => false,
        },
    }
}

/// Port items as numeric ranges; named ports through `named`.
fn port_ranges(items: &[PortItem], named: &[NamedPort]) -> Vec<(Proto, u16, u16)> {
    let mut out = Vec::new();
    for item in items {
        match item {
            PortItem::All => out.push((Proto::Any, 0, 65535)),
            PortItem::Range { proto, lo, hi } => out.push((*proto, *lo, *hi)),
            PortItem::Named { name, proto } => {
                for np in named.iter().filter(|np| &np.name == name) {
                    let protos = Proto::expand(*proto);
                    let p = Proto::expand(np.protocol)[0];
                    if protos.contains(&p) {
                        out.push((p, np.port, np.port));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

mod recompute;
#[cfg(test)]
mod tests;
