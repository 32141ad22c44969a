//! Policies: compiled into rules, indexed by namespace and by the selectors
//! they use, and marked for recompute as they come and go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{Engine, RuleId};
use crate::api::Policy;
use crate::identity::Identity;
use crate::repository::{CompiledRule, PeerSel, PolicyId, PortItem, compile};

impl Engine {
    pub(super) fn add_policy(&mut self, p: Policy) {
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

    pub(super) fn remove_policy(&mut self, pid: &PolicyId) {
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
}

/// Whether a rule's entries depend on pods beyond their identity.
fn depends_on_pods(rule: &CompiledRule) -> bool {
    let c = rule.ingress.contributions.iter().chain(&rule.egress.contributions);
    c.into_iter().any(|c| {
        c.peers.iter().any(|p| matches!(p, PeerSel::Cidr { pods: true, .. }))
            || c.ports.iter().any(|p| matches!(p, PortItem::Named { .. }))
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

/// The rules whose subject selects `ident`: those of its namespace and the
/// cluster-wide ones (the engine's and a [`super::PolicyView`]'s answer).
pub(super) fn selecting(
    rules: &BTreeMap<RuleId, Arc<CompiledRule>>,
    by_ns: &HashMap<Option<String>, BTreeSet<RuleId>>,
    ident: &Identity,
) -> Vec<Arc<CompiledRule>> {
    let ns = ident.labels.get(crate::labels::NAMESPACE_LABEL).map(|(_, v)| v.to_string());
    let global = by_ns.get(&None).into_iter().flatten();
    let local = ns.and_then(|ns| by_ns.get(&Some(ns))).into_iter().flatten();
    global
        .chain(local)
        .filter_map(|rid| {
            let rule = rules.get(rid)?;
            let subject = rule.subject.as_ref()?;
            subject.matches(&ident.labels).then(|| Arc::clone(rule))
        })
        .collect()
}
