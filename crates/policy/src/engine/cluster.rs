//! Pods and namespaces: a pod's identity from its labels (and its
//! namespace's), the indexes of pod addresses and named ports, and what a
//! pod coming, going or changing invalidates.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Engine, PodEntry, RuleId, peer_matches};
use crate::api::Pod;
use crate::identity::{IdentityKind, NumericIdentity};
use crate::labels::pod_identity_labels;
use crate::repository::{PeerSel, PortItem};

impl Engine {
    pub(super) fn upsert_pod(&mut self, pod: Pod) {
        let key = pod.key();
        if self.pods.get(&key).is_some_and(|old| old.pod == pod) {
            return;
        }
        self.detach_pod(&key);
        let labels = pod_identity_labels(&pod, self.namespaces.get(&pod.namespace));
        let identity = self.pod_identity(labels);
        self.attach_pod(key, pod, identity);
    }

    pub(super) fn attach_pod(&mut self, key: String, pod: Pod, identity: NumericIdentity) {
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
    pub(super) fn detach_pod(&mut self, key: &str) {
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
    pub(super) fn mark_pod_dependents(&mut self, pod: &Pod, identity: NumericIdentity) {
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

    pub(super) fn relabel_namespace(&mut self, ns: &str) {
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

    pub(super) fn count_named_ports(&mut self, pod: &Pod, add: bool) {
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
}
