//! From the engine's resolved policies to the maps, per endpoint atomically.
//!
//! A policy (one direction of one distinct [`EndpointPolicy`]) is written
//! whole under a fresh *slot*; the endpoint's map value, which names its
//! slots, is then replaced in one update. A packet therefore meets the old
//! policy or the new one, never a mix, and endpoints that share a policy
//! (the engine shares one `Arc` per identity and named ports) share its
//! entries in the kernel. The price is that a change rewrites the changed
//! policy rather than patching it. Old slots are deleted after a grace
//! period, so that a packet that read the old slot just before the swap
//! still finds its entries.
//!
//! When a map is full the new slot is never published and the endpoint
//! keeps its previous policy; the error names the endpoint and the map.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::Key;
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::repository::{Proto, RuleRef};
use bulkhead_policy::resolve::{EndpointPolicy, Peer, PolicyKey, Verdict};

use crate::abi::{
    Addr, EP_AUDIT, EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, Endpoint, LEVEL_ADDRESS, LEVEL_ANY,
    LEVEL_IDENTITY, MATCH_ALL_PROTOCOLS, MATCH_PORT, MATCH_PROTOCOL, POLICY_FIXED_BITS, PolicyKeyData, PolicyValue,
    VERDICT_ALLOW, VERDICT_DENY, VERDICT_REDIRECT,
};
use crate::{Datapath, DatapathError, Direction};

/// How long a replaced slot's entries stay for packets already past the
/// endpoint lookup. A program run takes microseconds.
pub const GRACE: Duration = Duration::from_millis(200);

/// An endpoint as the datapath should enforce it.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// The host-side interface index.
    pub ifindex: u32,
    /// The agent's endpoint id.
    pub id: u32,
    /// The endpoint's identity.
    pub identity: u32,
    /// Audit mode: would-be drops pass and are reported.
    pub audit: bool,
    /// Its resolved policy.
    pub policy: Arc<EndpointPolicy>,
}

/// The outcome of one [`PolicySync::apply`].
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Endpoints whose map value was replaced.
    pub endpoints_updated: usize,
    /// Policies (slots) written.
    pub slots_written: usize,
    /// Entries written.
    pub entries_written: usize,
    /// Endpoints that kept their previous policy, and why.
    pub failed: Vec<(u32, DatapathError)>,
}

struct Slot {
    id: u32,
    /// Keeps the policy alive, so that its address (the key of `slots`)
    /// is not reused by another policy while this slot is live.
    _policy: Arc<EndpointPolicy>,
    users: usize,
}

#[derive(Debug, Clone)]
struct Loaded {
    spec: EndpointSpec,
    value: Endpoint,
}

/// Keeps the maps equal to the desired endpoints and ipcache, writing only
/// what changed. See the module documentation.
#[derive(Default)]
pub struct PolicySync {
    next_slot: u32,
    /// Live slots by (policy pointer, direction).
    slots: HashMap<(usize, Direction), Slot>,
    endpoints: BTreeMap<u32, Loaded>,
    ipcache: BTreeMap<Cidr, u32>,
    rules: Vec<Vec<Arc<RuleRef>>>,
    rule_ids: HashMap<Vec<Arc<RuleRef>>, u32>,
    retired: Vec<(Instant, u32)>,
    /// Slots written by an earlier agent, removed after the first apply.
    foreign: bool,
    /// Endpoints an earlier agent left; the first apply removes those it
    /// does not load.
    adopted: Vec<u32>,
}

impl PolicySync {
    /// Starts from what an earlier agent left in the maps: new slots are
    /// numbered after its, its endpoints and ipcache are known, and its
    /// policy entries are deleted once the first [`PolicySync::apply`] has
    /// replaced them.
    pub fn adopt(dp: &Datapath) -> Result<Self, DatapathError> {
        // Every slot an endpoint names was published first, so the slot map
        // alone says which numbers are taken.
        let slots = dp.slots()?;
        Ok(Self {
            next_slot: slots.iter().max().map_or(1, |m| m.saturating_add(1)),
            foreign: !slots.is_empty(),
            adopted: dp.endpoints()?.into_iter().map(|(ifindex, _)| ifindex).collect(),
            ipcache: dp.ipcache()?.into_iter().collect(),
            ..Self::default()
        })
    }

    /// The rules behind a rule reference id from an event or a map value.
    pub fn rules(&self, id: u32) -> &[Arc<RuleRef>] {
        id.checked_sub(1).and_then(|i| self.rules.get(i as usize)).map_or(&[], |v| v.as_slice())
    }

    /// The slots an endpoint's policy lives in (ingress, egress).
    pub fn slots_of(&self, ifindex: u32) -> Option<[u32; 2]> {
        self.endpoints.get(&ifindex).map(|l| l.value.slot)
    }

    /// Makes the maps hold exactly `endpoints` and `ipcache`.
    pub fn apply(
        &mut self,
        dp: &mut Datapath,
        endpoints: impl IntoIterator<Item = EndpointSpec>,
        ipcache: impl IntoIterator<Item = (Cidr, u32)>,
    ) -> Result<SyncReport, DatapathError> {
        let mut report = SyncReport::default();
        self.collect_retired(dp, false)?;

        // New prefixes before the policies that may name them.
        let ipcache: BTreeMap<Cidr, u32> = ipcache.into_iter().collect();
        for (c, id) in &ipcache {
            if self.ipcache.get(c) != Some(id) {
                dp.set_ipcache(*c, *id)?;
                self.ipcache.insert(*c, *id);
            }
        }

        let desired: BTreeMap<u32, EndpointSpec> = endpoints.into_iter().map(|e| (e.ifindex, e)).collect();
        for (ifindex, spec) in &desired {
            match self.load_endpoint(dp, spec, &mut report) {
                Ok(true) => report.endpoints_updated += 1,
                Ok(false) => {}
                Err(e) => report.failed.push((*ifindex, e)),
            }
        }
        let adopted = std::mem::take(&mut self.adopted);
        let gone: std::collections::BTreeSet<u32> =
            self.endpoints.keys().chain(&adopted).filter(|k| !desired.contains_key(k)).copied().collect();
        for ifindex in gone {
            dp.remove_endpoint(ifindex)?;
            if let Some(old) = self.endpoints.remove(&ifindex) {
                self.release(&old.spec.policy);
            }
        }

        let stale: Vec<Cidr> = self.ipcache.keys().filter(|c| !ipcache.contains_key(c)).copied().collect();
        for c in stale {
            dp.remove_ipcache(c)?;
            self.ipcache.remove(&c);
        }
        if std::mem::take(&mut self.foreign) {
            self.retire_foreign(dp)?;
        }
        Ok(report)
    }

    /// Deletes replaced slots whose grace period is over (`force`: all).
    pub fn collect_retired(&mut self, dp: &mut Datapath, force: bool) -> Result<(), DatapathError> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retired).into_iter().partition(|(t, _)| force || now.duration_since(*t) >= GRACE);
        self.retired = keep;
        for (_, slot) in due {
            dp.remove_slot(slot)?;
        }
        Ok(())
    }

    /// Loads one endpoint; true when its map value changed.
    fn load_endpoint(
        &mut self,
        dp: &mut Datapath,
        spec: &EndpointSpec,
        report: &mut SyncReport,
    ) -> Result<bool, DatapathError> {
        let mut slots = [0u32; 2];
        let mut acquired = Vec::new();
        for d in Direction::BOTH {
            match self.acquire(dp, &spec.policy, d, report) {
                Ok(id) => {
                    slots[d as usize] = id;
                    acquired.push(d);
                }
                Err(e) => {
                    for d in acquired {
                        self.release_one(&spec.policy, d);
                    }
                    return Err(e);
                }
            }
        }
        let mut flags = 0;
        if spec.audit {
            flags |= EP_AUDIT;
        }
        if spec.policy.ingress.default_deny {
            flags |= EP_DEFAULT_DENY_INGRESS;
        }
        if spec.policy.egress.default_deny {
            flags |= EP_DEFAULT_DENY_EGRESS;
        }
        let value = Endpoint { id: spec.id, identity: spec.identity, flags, slot: slots };
        let old = self.endpoints.get(&spec.ifindex).cloned();
        if old.as_ref().is_some_and(|o| o.value == value) {
            // Same slots: the references taken above are extra.
            self.release(&spec.policy);
            self.endpoints.insert(spec.ifindex, Loaded { spec: spec.clone(), value });
            return Ok(false);
        }
        if let Err(e) = dp.set_endpoint(spec.ifindex, &value) {
            self.release(&spec.policy);
            return Err(e);
        }
        self.endpoints.insert(spec.ifindex, Loaded { spec: spec.clone(), value });
        if let Some(old) = old {
            self.release(&old.spec.policy);
        }
        Ok(true)
    }

    /// The slot holding one direction of `policy`, written now if needed.
    fn acquire(
        &mut self,
        dp: &mut Datapath,
        policy: &Arc<EndpointPolicy>,
        d: Direction,
        report: &mut SyncReport,
    ) -> Result<u32, DatapathError> {
        let key = (Arc::as_ptr(policy) as usize, d);
        if let Some(s) = self.slots.get_mut(&key) {
            s.users += 1;
            return Ok(s.id);
        }
        let id = self.next_slot;
        self.next_slot += 1;
        let dir = match d {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        let mut entries = Vec::with_capacity(dir.entries.len());
        for (k, e) in dir.entries.iter() {
            let verdict = match &e.verdict {
                Verdict::Allow => VERDICT_ALLOW,
                Verdict::Deny => VERDICT_DENY,
                Verdict::Redirect(_) => VERDICT_REDIRECT,
            };
            let value = PolicyValue { verdict, r#match: match_kind(k), proxy_port: 0, rule: self.rule_id(&e.refs) };
            entries.extend(map_keys(k).into_iter().map(|key| (key, value)));
        }
        let written = dp.write_slot(id, entries)?;
        report.slots_written += 1;
        report.entries_written += written;
        self.slots.insert(key, Slot { id, _policy: policy.clone(), users: 1 });
        Ok(id)
    }

    fn rule_id(&mut self, refs: &[Arc<RuleRef>]) -> u32 {
        if refs.is_empty() {
            return 0;
        }
        if let Some(id) = self.rule_ids.get(refs) {
            return *id;
        }
        self.rules.push(refs.to_vec());
        let id = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        self.rule_ids.insert(refs.to_vec(), id);
        id
    }

    fn release(&mut self, policy: &Arc<EndpointPolicy>) {
        for d in Direction::BOTH {
            self.release_one(policy, d);
        }
    }

    fn release_one(&mut self, policy: &Arc<EndpointPolicy>, d: Direction) {
        let key = (Arc::as_ptr(policy) as usize, d);
        let Some(s) = self.slots.get_mut(&key) else { return };
        s.users -= 1;
        if s.users == 0
            && let Some(s) = self.slots.remove(&key)
        {
            self.retired.push((Instant::now(), s.id));
        }
    }

    /// Schedules for deletion every slot no endpoint uses.
    fn retire_foreign(&mut self, dp: &Datapath) -> Result<(), DatapathError> {
        let live: std::collections::HashSet<u32> = self.slots.values().map(|s| s.id).collect();
        let now = Instant::now();
        self.retired.extend(dp.slots()?.into_iter().filter(|s| !live.contains(s)).map(|s| (now, s)));
        Ok(())
    }
}

/// What an entry's key covers, for the match type flows report.
fn match_kind(k: &PolicyKey) -> u8 {
    match (k.proto, k.lo, k.hi) {
        (Proto::Any, _, _) => MATCH_ALL_PROTOCOLS,
        (_, 0, u16::MAX) => MATCH_PROTOCOL,
        _ => MATCH_PORT,
    }
}

/// The LPM keys of one engine entry.
pub fn map_keys(k: &PolicyKey) -> Vec<Key<PolicyKeyData>> {
    let (level, peer) = match k.peer {
        Peer::Any => (LEVEL_ANY, Addr::default()),
        Peer::Identity(id) => {
            let mut a = Addr::default();
            a.0[..4].copy_from_slice(&id.0.to_be_bytes());
            (LEVEL_IDENTITY, a)
        }
        Peer::Address(ip) => (LEVEL_ADDRESS, Addr::from(ip)),
    };
    let data = |proto: u8, port: u16| PolicyKeyData {
        level,
        proto,
        pad: [0; 2],
        peer,
        port: port.to_be_bytes(),
        pad2: [0; 2],
    };
    if k.proto == Proto::Any {
        return vec![Key::new(POLICY_FIXED_BITS, data(0, 0))];
    }
    k.port_prefixes()
        .into_iter()
        .map(|(port, len)| Key::new(POLICY_FIXED_BITS + u32::from(len), data(k.proto as u8, port)))
        .collect()
}
