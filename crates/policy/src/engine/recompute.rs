//! Resolution: bringing profiles (policies shared by endpoints with the same
//! identity and named ports) up to date with what a change invalidated —
//! whole recomputes where rules changed, per-peer patches where only a peer
//! did — and computing one policy from its selecting rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::{BlockPods, Changes, EndpointDiff, Engine, PatchResult, PeerSets, PodEntry, Profile, ProfileKey, RulesKey};
use crate::api::{Direction, NamedPort};
use crate::identity::{NumericIdentity, Reserved};
use crate::repository::{CompiledRule, PeerSel, PortItem, Proto, RuleRef};
use crate::resolve::{DirectionPolicy, EndpointPolicy, PolicyEntry, PolicyKey, Resolved, flatten};
use crate::selector::Selector;

impl Engine {
    /// Brings profiles and endpoints up to date with `self.dirty`.
    pub(super) fn recompute(&mut self) -> Vec<EndpointDiff> {
        let dirty = std::mem::take(&mut self.dirty);
        self.block_cache.clear();
        self.peer_memo.clear();
        let mut diffs = Vec::new();
        // 1. Endpoints that appeared, disappeared or changed profile: note
        //    the policy they had, and move them.
        let mut moved: BTreeMap<String, Option<Arc<EndpointPolicy>>> = BTreeMap::new();
        let mut fresh: BTreeSet<ProfileKey> = BTreeSet::new();
        for key in &dirty.pods {
            let new = self.pods.get(key).map(PodEntry::profile);
            let old = self.endpoint_profile.get(key).cloned();
            if old == new {
                continue;
            }
            let before = old.as_ref().and_then(|k| self.profiles.get(k)).map(|p| p.policy.clone());
            moved.insert(key.clone(), before);
            if let Some(ok) = old {
                self.endpoint_profile.remove(key);
                if let Some(p) = self.profiles.get_mut(&ok) {
                    p.endpoints.remove(key);
                    if p.endpoints.is_empty() {
                        if let Some(rk) = p.rules.take()
                            && self.by_rules.get(&rk) == Some(&ok)
                        {
                            self.by_rules.remove(&rk);
                        }
                        self.profiles.remove(&ok);
                    }
                }
            }
            if let Some(nk) = new {
                self.endpoint_profile.insert(key.clone(), nk.clone());
                match self.profiles.get_mut(&nk) {
                    Some(p) => {
                        p.endpoints.insert(key.clone());
                    }
                    None => {
                        fresh.insert(nk.clone());
                        self.profiles.insert(
                            nk,
                            Profile {
                                policy: Arc::new(EndpointPolicy::default()),
                                endpoints: [key.clone()].into(),
                                rules: None,
                            },
                        );
                    }
                }
            }
        }
        // 2. Profiles to recompute whole, and profiles to patch per peer.
        //    A policy is a function of the rules selecting the subject and its
        //    named ports, so profiles with the same rules share one result
        //    (and one copy in memory); a patch of a shared policy is done once.
        let mut patch_memo: HashMap<(usize, Vec<NumericIdentity>), PatchResult> = HashMap::new();
        // New profiles go last, so that they can take the up-to-date policy
        // of an existing profile with the same rules.
        let mut keys: Vec<ProfileKey> = self
            .profiles
            .keys()
            .filter(|k| fresh.contains(*k) || dirty.full.contains(&k.0) || dirty.levels.contains_key(&k.0))
            .cloned()
            .collect();
        keys.sort_by_key(|k| fresh.contains(k));
        let mut done: std::collections::HashSet<ProfileKey> = std::collections::HashSet::new();
        for pk in keys {
            done.insert(pk.clone());
            let is_fresh = fresh.contains(&pk);
            let full = is_fresh || dirty.full.contains(&pk.0);
            let peers: Vec<NumericIdentity> = dirty.levels.get(&pk.0).into_iter().flatten().copied().collect();
            if !full && peers.is_empty() {
                continue;
            }
            if full {
                let rk = RulesKey(self.rules_selecting(pk.0), pk.1.clone());
                // A profile with the same rules whose policy is current: done
                // in this pass, or untouched by it.
                let needs_work =
                    |k: &ProfileKey| fresh.contains(k) || dirty.full.contains(&k.0) || dirty.levels.contains_key(&k.0);
                let shared = self
                    .by_rules
                    .get(&rk)
                    .filter(|rep| **rep != pk && (done.contains(*rep) || !needs_work(rep)))
                    .and_then(|rep| self.profiles.get(rep))
                    .map(|p| p.policy.clone());
                let new = match shared {
                    Some(p) => p,
                    None => Arc::new(self.compute(&rk.0, &pk.1, None)),
                };
                let Some(p) = self.profiles.get_mut(&pk) else { continue };
                let old = std::mem::replace(&mut p.policy, new.clone());
                if let Some(prev) = p.rules.replace(rk.clone())
                    && prev != rk
                    && self.by_rules.get(&prev) == Some(&pk)
                {
                    self.by_rules.remove(&prev);
                }
                self.by_rules.insert(rk, pk.clone());
                let Some(p) = self.profiles.get(&pk) else { continue };
                for ep in p.endpoints.iter().filter(|e| !moved.contains_key(*e)) {
                    for d in Direction::BOTH {
                        diffs.extend(diff_direction(ep, d, dir_of(&old, d), dir_of(&new, d)));
                    }
                }
                continue;
            }
            // Only some peers' entries change: recompute those, patch them in,
            // and report just what changed.
            let old = self.profiles[&pk].policy.clone();
            let memo_key = (Arc::as_ptr(&old) as usize, peers.clone());
            let (new, changes) = match patch_memo.get(&memo_key) {
                Some(r) => r.clone(),
                None => {
                    let rules = self.rules_selecting(pk.0);
                    let mut parts = Vec::new();
                    for peer in &peers {
                        let was: Vec<IpAddr> =
                            dirty.addrs.iter().filter(|(_, ids)| ids.contains(peer)).map(|(a, _)| *a).collect();
                        let addrs: BTreeSet<IpAddr> = self.peer_addrs(*peer).chain(was).collect();
                        parts.push((*peer, addrs, self.compute(&rules, &pk.1, Some(*peer))));
                    }
                    // Release this profile's reference so that an unshared
                    // policy is patched in place rather than copied.
                    let mut policy = {
                        let Some(p) = self.profiles.get_mut(&pk) else { continue };
                        std::mem::take(&mut p.policy)
                    };
                    drop(old);
                    let target = Arc::make_mut(&mut policy);
                    let mut changes: [Changes; 2] = Default::default();
                    for (i, d) in Direction::BOTH.into_iter().enumerate() {
                        for (peer, addrs, part) in &parts {
                            let (u, r) = patch_peer(dir_mut(target, d), dir_of(part, d), *peer, addrs);
                            changes[i].0.extend(u);
                            changes[i].1.extend(r);
                        }
                    }
                    let result = (policy, Arc::new(changes));
                    patch_memo.insert(memo_key, result.clone());
                    result
                }
            };
            let Some(p) = self.profiles.get_mut(&pk) else { continue };
            p.policy = new;
            for (i, d) in Direction::BOTH.into_iter().enumerate() {
                let (upserted, removed) = &changes[i];
                if upserted.is_empty() && removed.is_empty() {
                    continue;
                }
                for ep in p.endpoints.iter().filter(|e| !moved.contains_key(*e)) {
                    diffs.push(EndpointDiff {
                        endpoint: ep.clone(),
                        direction: d,
                        upserted: upserted.clone(),
                        removed: removed.clone(),
                        default_deny: None,
                    });
                }
            }
        }
        // 3. Moved endpoints: from what they had to what they have now.
        let empty = EndpointPolicy::default();
        for (key, before) in moved {
            let after = self.endpoint_profile.get(&key).and_then(|k| self.profiles.get(k)).map(|p| p.policy.clone());
            let (o, n) = (before.as_deref().unwrap_or(&empty), after.as_deref().unwrap_or(&empty));
            for d in Direction::BOTH {
                diffs.extend(diff_direction(&key, d, dir_of(o, d), dir_of(n, d)));
            }
        }
        diffs
    }

    fn peer_addrs(&self, id: NumericIdentity) -> impl Iterator<Item = IpAddr> + '_ {
        self.id_pods
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
            .flat_map(|e| e.pod.ips.iter().copied())
    }

    /// The rules that select an identity, in rule order.
    pub fn rules_selecting(&self, id: NumericIdentity) -> Vec<Arc<CompiledRule>> {
        match self.identities.get(&id) {
            Some(ident) => super::rules::selecting(&self.rules, &self.rules_by_ns, ident),
            None => Vec::new(),
        }
    }

    /// The policy of a subject selected by `selecting`, with these named
    /// ports. With
    /// `only`, just the entries about that peer identity (and its pods'
    /// addresses) are meaningful.
    fn compute(
        &mut self,
        selecting: &[Arc<CompiledRule>],
        own_ports: &[NamedPort],
        only: Option<NumericIdentity>,
    ) -> EndpointPolicy {
        let mut out = EndpointPolicy::default();
        for d in Direction::BOTH {
            let present: Vec<&Arc<CompiledRule>> = selecting.iter().filter(|r| r.dir(d).present).collect();
            let limited = selecting.iter().any(|r| r.dir(d).contributions.iter().any(|c| c.limit.is_some()));
            if present.is_empty() && !limited {
                continue;
            }
            // Limits alone leave a direction open (a miss passes) but give
            // it entries: the limited peers' redirects.
            let default_deny = present.iter().any(|r| r.dir(d).default_deny != Some(false));
            let mut resolved = self.resolve_direction(selecting, own_ports, d, only);
            if d == Direction::Ingress && only.is_none_or(|x| x == Reserved::Host.id()) {
                resolved.push(Resolved {
                    all: false,
                    ids: vec![Arc::new([Reserved::Host.id()].into())],
                    addrs: Vec::new(),
                    ports: vec![(Proto::Any, 0, 65535)],
                    deny: false,
                    l7: None,
                    limit: None,
                    rule_ref: Arc::new(RuleRef::allow_localhost()),
                });
            }
            let (entries, errors) = flatten(&resolved, default_deny);
            *dir_mut(&mut out, d) = DirectionPolicy { enforced: true, default_deny, entries, errors };
        }
        out
    }

    /// The contributions of the rules `selecting` a subject (with these
    /// named ports) in direction `d`, resolved: peers to identities and pod
    /// addresses (`fromRequires` applied), ports to numbers. What
    /// [`flatten`] turns into the subject's policy, and what `policy lint`
    /// compares rule by rule. With `only`, just that peer identity's.
    pub fn resolve_direction<'a>(
        &mut self,
        selecting: &'a [Arc<CompiledRule>],
        own_ports: &[NamedPort],
        d: Direction,
        only: Option<NumericIdentity>,
    ) -> Vec<Resolved<'a>> {
        let gather = |f: fn(&crate::repository::DirectionRules) -> &Vec<crate::selector::Req>| {
            let mut v: Vec<crate::selector::Req> = selecting.iter().flat_map(|r| f(r.dir(d)).iter().cloned()).collect();
            v.sort();
            v.dedup();
            v
        };
        let requires = gather(|r| &r.requires);
        let deny_requires = gather(|r| &r.deny_requires);
        let mut resolved: Vec<Resolved<'a>> = Vec::new();
        let named_egress = d == Direction::Egress
            && selecting.iter().any(|r| {
                r.egress.contributions.iter().any(|c| c.ports.iter().any(|p| matches!(p, PortItem::Named { .. })))
            });
        let global_ports = if named_egress { self.all_named_ports() } else { Vec::new() };
        for rule in selecting {
            for c in &rule.dir(d).contributions {
                let (all, (mut ids, mut addrs)) =
                    self.resolve_peers(&c.peers, if c.deny { &deny_requires } else { &requires }, only);
                if let Some(x) = only {
                    let has = ids.iter().any(|s| s.contains(&x));
                    ids = if has { vec![Arc::new([x].into())] } else { Vec::new() };
                    addrs.retain(|(_, i)| *i == x);
                }
                let has_named = c.ports.iter().any(|p| matches!(p, PortItem::Named { .. }));
                let base = Resolved {
                    all,
                    ids: Vec::new(),
                    addrs: Vec::new(),
                    ports: Vec::new(),
                    deny: c.deny,
                    l7: c.l7.as_ref(),
                    limit: c.limit,
                    rule_ref: c.rule_ref.clone(),
                };
                if d == Direction::Egress && has_named && !all {
                    // Egress named ports resolve against each peer's own pods.
                    let peers: BTreeSet<NumericIdentity> = ids.iter().flat_map(|s| s.iter().copied()).collect();
                    for pid in peers {
                        let ports = port_ranges(&c.ports, &self.peer_named_ports(pid));
                        resolved.push(Resolved { ids: vec![Arc::new([pid].into())], ports, ..base.clone() });
                    }
                    if !addrs.is_empty() {
                        resolved.push(Resolved { addrs, ports: port_ranges(&c.ports, &global_ports), ..base });
                    }
                    continue;
                }
                let named_source: &[NamedPort] = if d == Direction::Ingress { own_ports } else { &global_ports };
                resolved.push(Resolved { ids, addrs, ports: port_ranges(&c.ports, named_source), ..base });
            }
        }
        resolved
    }

    fn resolve_peers(
        &mut self,
        peers: &[PeerSel],
        requires: &[crate::selector::Req],
        only: Option<NumericIdentity>,
    ) -> (bool, PeerSets) {
        let mut all = false;
        let mut ids = Vec::new();
        let mut addrs = Vec::new();
        for p in peers {
            match p {
                PeerSel::All => all = true,
                PeerSel::Endpoints(s) if !requires.is_empty() => {
                    // Keep the plain selector cached too: it is the one the
                    // reverse index knows, so new identities it matches mark
                    // this rule's subjects.
                    self.select(p);
                    let mut s: Selector = s.clone();
                    for r in requires {
                        s = s.with(r.clone());
                    }
                    ids.push(self.select(&PeerSel::Endpoints(s)));
                }
                PeerSel::Cidr { rule, pods: true } => {
                    ids.push(self.select_stable(p));
                    let (whole, split) = match only {
                        Some(x) => self.identity_in_block(rule, x),
                        None => self.pods_in_block(rule),
                    };
                    if !whole.is_empty() {
                        ids.push(whole);
                    }
                    addrs.extend(split);
                }
                _ => ids.push(self.select_stable(p)),
            }
        }
        (all, (ids, addrs))
    }

    /// [`Engine::select`] for a selector that lives in a compiled rule (its
    /// address is stable for a recompute), memoised by that address: no
    /// hashing or comparing of label strings on the hot path.
    fn select_stable(&mut self, sel: &PeerSel) -> Arc<BTreeSet<NumericIdentity>> {
        let key = sel as *const PeerSel as usize;
        if let Some(s) = self.peer_memo.get(&key) {
            return s.clone();
        }
        let s = self.select(sel);
        self.peer_memo.insert(key, s.clone());
        s
    }

    /// [`Engine::pods_in_block`] for one identity.
    fn identity_in_block(&self, rule: &crate::api::CidrRule, id: NumericIdentity) -> BlockPods {
        let all: Vec<IpAddr> = self.peer_addrs(id).collect();
        let inside: Vec<IpAddr> = all.iter().copied().filter(|ip| rule.contains_ip(*ip)).collect();
        if !inside.is_empty() && inside.len() == all.len() {
            (Arc::new([id].into()), Vec::new())
        } else {
            (Arc::new(BTreeSet::new()), inside.into_iter().map(|ip| (ip, id)).collect())
        }
    }

    /// Pods inside an ipBlock: whole identities when all their addresses
    /// are inside, else the addresses one by one.
    fn pods_in_block(&mut self, rule: &crate::api::CidrRule) -> BlockPods {
        if let Some(hit) = self.block_cache.get(rule) {
            return hit.clone();
        }
        let mut inside: BTreeMap<NumericIdentity, Vec<IpAddr>> = BTreeMap::new();
        for (ip, (_, id)) in self.addrs.range(rule.cidr.first()..=rule.cidr.last()) {
            if rule.contains_ip(*ip) {
                inside.entry(*id).or_default().push(*ip);
            }
        }
        let mut whole = BTreeSet::new();
        let mut split = Vec::new();
        for (id, ips) in inside {
            if self.id_addr_count.get(&id).copied().unwrap_or(0) == ips.len() {
                whole.insert(id);
            } else {
                split.extend(ips.into_iter().map(|ip| (ip, id)));
            }
        }
        let out = (Arc::new(whole), split);
        self.block_cache.insert(rule.clone(), out.clone());
        out
    }

    fn peer_named_ports(&self, id: NumericIdentity) -> Vec<NamedPort> {
        let mut out: Vec<NamedPort> = self
            .id_pods
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
            .flat_map(|e| e.pod.ports.iter().filter(|p| !p.name.is_empty()).cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn all_named_ports(&self) -> Vec<NamedPort> {
        self.named_ports.keys().cloned().collect()
    }
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
