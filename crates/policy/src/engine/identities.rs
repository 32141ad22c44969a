//! Identities and the selector cache: the identity of a label set
//! (allocated once, announced to the selectors that match it), selector
//! results kept current as identities come and go, and the node-local
//! identities of the CIDRs and names that policies use.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::{Engine, RuleId};
use crate::cidr::Cidr;
use crate::identity::{Identity, IdentityKind, NumericIdentity, Reserved};
use crate::labels::{LabelSet, Source};
use crate::repository::PeerSel;

impl Engine {
    pub(super) fn candidates(&self, sel: &PeerSel) -> Vec<NumericIdentity> {
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

    pub(super) fn insert_identity(&mut self, ident: Identity) -> NumericIdentity {
        let id = ident.id;
        if ident.is_world() {
            self.outside_ids.insert(id);
        }
        if let Some((_, ns)) = ident.labels.get(crate::labels::NAMESPACE_LABEL) {
            self.ns_ids.entry(ns.to_string()).or_default().insert(id);
        }
        self.by_labels.insert(ident.labels.clone(), id);
        self.identities.insert(id, Arc::new(ident));
        id
    }

    /// Updates cached selector results for an identity that appeared (or is
    /// about to disappear); the subjects of the rules using those selectors
    /// get this peer's entries recomputed.
    pub(super) fn identity_changed(&mut self, id: NumericIdentity, added: bool) {
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
    pub(super) fn mark_rule_full(&mut self, r: &RuleId) {
        if self.deferred {
            return;
        }
        let Some(subject) = self.rules.get(r).and_then(|cr| cr.subject.clone()) else { return };
        let set = self.select(&PeerSel::Endpoints(subject));
        self.dirty.full.extend(set.iter().copied());
    }

    /// The subjects of a rule, in which only `peer`'s entries change.
    pub(super) fn mark_rule_level(&mut self, r: &RuleId, peer: NumericIdentity) {
        let Some(subject) = self.rules.get(r).and_then(|cr| cr.subject.clone()) else { return };
        let set = self.select(&PeerSel::Endpoints(subject));
        for s in set.iter() {
            self.dirty.levels.entry(*s).or_default().insert(peer);
        }
    }

    pub(super) fn remove_identity(&mut self, id: NumericIdentity) {
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
    pub(super) fn pod_identity(&mut self, labels: LabelSet) -> NumericIdentity {
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

    /// Keeps one node-local identity per prefix the policies name.
    pub(super) fn sync_cidr_identities(&mut self) {
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

    pub(super) fn sync_cidr_identities_now(&mut self) {
        let deferred = std::mem::replace(&mut self.deferred, false);
        self.sync_cidr_identities();
        self.deferred = deferred;
    }

    /// Gives `addr`, learnt from DNS answers under `names` (none: forgotten),
    /// the identity of its names and containing policy prefixes, shared by
    /// every address with the same; an identity no address has any more is
    /// removed.
    pub(super) fn set_learnt(&mut self, addr: IpAddr, names: BTreeSet<String>) {
        if names.is_empty() {
            self.learnt.remove(&addr);
        } else {
            self.learnt.insert(addr, names);
        }
        self.sync_learnt(addr);
    }

    /// Brings `addr`'s identity up to date with its names and the policy
    /// prefixes (every address's, after the prefixes changed).
    pub(super) fn sync_learnt(&mut self, addr: IpAddr) {
        // Only addresses some toFQDNs selector wants get an identity (and an
        // ipcache entry): the others stay world's, as if never learnt.
        let selected = self.learnt.get(&addr).filter(|names| {
            self.rules.values().any(|r| {
                r.egress.contributions.iter().flat_map(|c| &c.peers).any(|p| match p {
                    PeerSel::Fqdn(f) => names.iter().any(|n| crate::l7::dns::selector_matches(f, n)),
                    _ => false,
                })
            })
        });
        let want = selected.map(|names| {
            let host = Cidr::host(addr);
            let mut cidrs: Vec<Cidr> = self.cidr_ids.keys().filter(|c| c.contains(&host)).copied().collect();
            cidrs.push(Cidr::new(addr, 0));
            cidrs.sort();
            cidrs.dedup();
            (fqdn_labels(names, &cidrs), names, cidrs)
        });
        let new = match want {
            None => None,
            Some((labels, _, _)) if self.by_labels.contains_key(&labels) => {
                let id = self.by_labels[&labels];
                if self.learnt_ids.get(&addr) == Some(&id) {
                    return;
                }
                Some(id)
            }
            Some((labels, names, cidrs)) => {
                let names = names.iter().cloned().collect();
                let Ok(id) = self.alloc.allocate_local(&labels) else {
                    // Out of numbers: the address stays world's (fail closed).
                    return self.drop_learnt_id(addr);
                };
                self.insert_identity(Identity { id, labels, kind: IdentityKind::Fqdn { names, cidrs } });
                self.identity_changed(id, true);
                Some(id)
            }
        };
        self.drop_learnt_id(addr);
        if let Some(id) = new {
            self.learnt_ids.insert(addr, id);
            *self.learnt_refs.entry(id).or_default() += 1;
        }
    }

    /// Takes `addr`'s learnt identity away, removing it when no address
    /// has it any more.
    fn drop_learnt_id(&mut self, addr: IpAddr) {
        let Some(old) = self.learnt_ids.remove(&addr) else { return };
        let refs = self.learnt_refs.entry(old).or_default();
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.learnt_refs.remove(&old);
            self.remove_identity(old);
        }
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
        self.insert_identity(Identity {
            id,
            labels,
            kind: IdentityKind::Fqdn { names: vec![name], cidrs: Vec::new() },
        });
        self.identity_changed(id, true);
        if !self.deferred {
            self.recompute();
        }
        id
    }
}

/// The labels of learnt addresses: each name (`fqdn:`), each policy
/// prefix containing them with their family's `/0` (`cidr:`), and world.
fn fqdn_labels(names: &BTreeSet<String>, cidrs: &[Cidr]) -> LabelSet {
    let mut l = LabelSet::new();
    for n in names {
        l.insert(Source::Fqdn, n, "");
    }
    for c in cidrs {
        l.insert(Source::Cidr, &c.to_string(), "");
    }
    l.insert(Source::Reserved, "world", "");
    if let Some(c) = cidrs.first() {
        l.insert(Source::Reserved, if c.is_ipv4() { "world-ipv4" } else { "world-ipv6" }, "");
    }
    l
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
            // Learnt addresses: as the prefixes that contain them. A name
            // without addresses: only the world selector covers it.
            IdentityKind::Fqdn { cidrs, .. } if cidrs.is_empty() => rule.cidr.is_empty() && rule.except.is_empty(),
            IdentityKind::Fqdn { cidrs, .. } => {
                cidrs.contains(&rule.cidr) && !rule.except.iter().any(|e| cidrs.contains(e))
            }
            _ => false,
        },
        PeerSel::Fqdn(f) => match &ident.kind {
            IdentityKind::Fqdn { names, .. } => names.iter().any(|n| crate::l7::dns::selector_matches(f, n)),
            _ => false,
        },
    }
}
