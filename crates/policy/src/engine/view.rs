//! An immutable picture of the engine for readers that must never wait for
//! it: the agent makes one after every change and publishes it, and its
//! event converter and API readers use the newest one while the engine
//! goes on changing. It answers what they ask — a peer address's identity
//! and pod, an identity's labels, the pods of each identity, an endpoint's
//! policy, and why a packet was dropped — exactly as the engine would have
//! at that change.
//!
//! Made in time proportional to the numbers of pods, identities and rules,
//! without copying any of them: identities, rules and policies are shared
//! (`Arc`) with the engine; only the indexes are copied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::{Engine, RuleId};
use crate::api::Direction;
use crate::cidr::Cidr;
use crate::identity::{Identity, NumericIdentity, Reserved};
use crate::reach::ProbePort;
use crate::repository::CompiledRule;
use crate::resolve::EndpointPolicy;
use crate::trace::{DirectionTrace, Facts};

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct PolicyView {
    identities: BTreeMap<NumericIdentity, Arc<Identity>>,
    /// Every pod: its identity and policy (none while unresolved).
    pods: BTreeMap<String, (NumericIdentity, Option<Arc<EndpointPolicy>>)>,
    addrs: BTreeMap<IpAddr, (String, NumericIdentity)>,
    learnt_ids: BTreeMap<IpAddr, NumericIdentity>,
    cidr_ids: BTreeMap<Cidr, NumericIdentity>,
    rules: BTreeMap<RuleId, Arc<CompiledRule>>,
    rules_by_ns: HashMap<Option<String>, BTreeSet<RuleId>>,
}

impl Engine {
    /// The engine as it is now, for readers (see [`PolicyView`]).
    pub fn view(&self) -> PolicyView {
        PolicyView {
            identities: self.identities.clone(),
            pods: self.pods.iter().map(|(k, e)| (k.clone(), (e.identity, self.endpoint_policy(k).cloned()))).collect(),
            addrs: self.addrs.clone(),
            learnt_ids: self.learnt_ids.clone(),
            cidr_ids: self.cidr_ids.clone(),
            rules: self.rules.clone(),
            rules_by_ns: self.rules_by_ns.clone(),
        }
    }
}

impl PolicyView {
    /// An identity.
    pub fn identity(&self, id: NumericIdentity) -> Option<&Identity> {
        self.identities.get(&id).map(Arc::as_ref)
    }

    /// Every identity, by number.
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values().map(Arc::as_ref)
    }

    /// A pod's identity (`namespace/name`).
    pub fn pod_identity(&self, key: &str) -> Option<NumericIdentity> {
        self.pods.get(key).map(|(id, _)| *id)
    }

    /// Every pod with its identity, by key.
    pub fn pods(&self) -> impl Iterator<Item = (&str, NumericIdentity)> {
        self.pods.iter().map(|(k, (id, _))| (k.as_str(), *id))
    }

    /// A pod's resolved policy.
    pub fn endpoint_policy(&self, key: &str) -> Option<&Arc<EndpointPolicy>> {
        self.pods.get(key).and_then(|(_, p)| p.as_ref())
    }

    /// The identity the datapath gives a peer address, and its pod (see
    /// [`Engine::identity_of_ip`]).
    pub fn identity_of_ip(&self, ip: IpAddr) -> (NumericIdentity, Option<String>) {
        identity_of_ip(&self.addrs, &self.learnt_ids, &self.cidr_ids, ip)
    }

    /// Why `endpoint`'s policy in `dir` decides as it does for one packet
    /// the datapath saw: see [`crate::trace::explain_packet`].
    pub fn explain_packet(
        &self,
        endpoint: &str,
        dir: Direction,
        peer_addr: IpAddr,
        peer_id: NumericIdentity,
        port: ProbePort,
    ) -> Option<DirectionTrace> {
        let (id, pol) = self.pods.get(endpoint)?;
        Some(crate::trace::explain_packet(self, endpoint, *id, pol.as_ref()?, dir, peer_addr, peer_id, port))
    }
}

impl Facts for PolicyView {
    fn identity(&self, id: NumericIdentity) -> Option<&Identity> {
        PolicyView::identity(self, id)
    }

    fn rules_selecting(&self, id: NumericIdentity) -> Vec<Arc<CompiledRule>> {
        match self.identities.get(&id) {
            Some(ident) => super::rules::selecting(&self.rules, &self.rules_by_ns, ident),
            None => Vec::new(),
        }
    }
}

/// The identity the datapath gives a peer address: its pod's, else its
/// learnt one (DNS answers), else the longest policy prefix's, else world
/// (per family). Also the pod key.
pub(super) fn identity_of_ip(
    addrs: &BTreeMap<IpAddr, (String, NumericIdentity)>,
    learnt_ids: &BTreeMap<IpAddr, NumericIdentity>,
    cidr_ids: &BTreeMap<Cidr, NumericIdentity>,
    ip: IpAddr,
) -> (NumericIdentity, Option<String>) {
    if let Some((key, id)) = addrs.get(&ip) {
        return (*id, Some(key.clone()));
    }
    if let Some(id) = learnt_ids.get(&ip) {
        return (*id, None);
    }
    let best = cidr_ids.iter().filter(|(c, _)| c.contains_ip(ip)).max_by_key(|(c, _)| c.len());
    match best {
        Some((_, id)) => (*id, None),
        None if ip.is_ipv4() => (Reserved::WorldIpv4.id(), None),
        None => (Reserved::WorldIpv6.id(), None),
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Direction;
    use crate::identity::NumericIdentity;
    use crate::reach::ProbePort;
    use crate::repository::Proto;
    use crate::testutil::{engine, pod};

    #[test]
    fn a_view_answers_as_its_engine_did_and_stays_so_after_changes() {
        let cluster = [pod("a", "web", "app: web", "198.18.0.1"), pod("a", "db", "app: db", "198.18.0.2")].concat();
        let mut e = engine(
            &cluster,
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db, namespace: a}\nspec:\n  \
             endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    \
             toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n",
        );
        let v = e.view();
        let web_ip = "198.18.0.1".parse().expect("ip");
        let (web_id, web_pod) = v.identity_of_ip(web_ip);
        assert_eq!((web_id, web_pod.as_deref()), (e.identity_of_ip(web_ip).0, Some("a/web")));
        assert_eq!(
            v.identity_of_ip("203.0.113.1".parse().expect("ip")),
            e.identity_of_ip("203.0.113.1".parse().expect("ip"))
        );
        assert_eq!(
            v.identity(web_id).map(|i| i.labels.to_strings()),
            e.identity(web_id).map(|i| i.labels.to_strings())
        );
        let miss = v
            .explain_packet("a/db", Direction::Ingress, web_ip, web_id, ProbePort { proto: Proto::Tcp, port: 80 })
            .expect("db is known");
        assert_eq!(miss.verdict, "denied");
        assert!(miss.near_misses[0].why.contains("not 80/TCP"), "{:?}", miss.near_misses);
        // The engine moves on; the view does not.
        e.apply(crate::engine::Change::DeletePod("a/web".into()));
        assert_eq!(e.identity_of_ip(web_ip).1, None);
        assert_eq!(v.identity_of_ip(web_ip).1.as_deref(), Some("a/web"));
        assert!(v.identity(web_id).is_some());
        assert_eq!(v.pod_identity("a/web"), Some(web_id));
        assert_ne!(web_id, NumericIdentity(0));
    }
}
