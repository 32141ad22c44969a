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
//! When a policy does not fit its map, the new slot is never published.
//! What the endpoint's direction then does is the [`Overflow`] setting:
//! by default it fails closed (the direction names no slot and drops
//! everything until a policy fits); or it keeps its previous policy. Either
//! way the error names the endpoint, the direction and the map.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::Key;
use bulkhead_policy::api::l7::L7Rules;
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::identity::{NumericIdentity, Reserved};
use bulkhead_policy::repository::{Proto, RuleRef};
use bulkhead_policy::resolve::{Decision, EndpointPolicy, Peer, PolicyKey, Verdict};

use crate::abi::{
    Addr, CT_AUDITED, CT_FROM_PROXY, DIR_EGRESS, EP_AUDIT, EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS,
    EP_MAX_ADDRS, Endpoint, LEVEL_ADDRESS, LEVEL_ANY, LEVEL_IDENTITY, MATCH_ALL_PROTOCOLS, MATCH_PORT, MATCH_PROTOCOL,
    POLICY_FIXED_BITS, PolicyKeyData, PolicyValue, SLOT_NOT_READY, VERDICT_ALLOW, VERDICT_DENY, VERDICT_REDIRECT,
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
    /// Its addresses: the only source addresses its packets may carry (at
    /// most [`EP_MAX_ADDRS`]).
    pub addrs: Vec<IpAddr>,
    /// Its resolved policy.
    pub policy: Arc<EndpointPolicy>,
}

/// The rules behind each rule reference id that the maps and events carry
/// (ids count from 1; 0 is none). Ids are never reused, so a table taken
/// earlier answers every id it holds correctly; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RuleTable(Arc<Vec<Arc<[Arc<RuleRef>]>>>);

impl RuleTable {
    /// The rules behind `id` (none for 0 or an unknown id).
    pub fn get(&self, id: u32) -> &[Arc<RuleRef>] {
        id.checked_sub(1).and_then(|i| self.0.get(i as usize)).map_or(&[], |v| v)
    }
}

/// What an endpoint's direction does when its new policy does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Deny everything in that direction until a policy fits: a change that
    /// meant to close something never leaves it open.
    #[default]
    FailClosed,
    /// Keep enforcing the previous policy.
    KeepPrevious,
}

/// An endpoint whose new policy could not be loaded.
#[derive(Debug)]
pub struct LoadFailure {
    /// Its host-side interface.
    pub ifindex: u32,
    /// The directions whose policy did not load.
    pub directions: Vec<Direction>,
    /// What those directions do now.
    pub overflow: Overflow,
    /// Why.
    pub error: DatapathError,
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
    /// Endpoints whose new policy did not load, and what they do now.
    pub failed: Vec<LoadFailure>,
}

struct Slot {
    id: u32,
    /// The map written for it (a slot found naming another was tampered with).
    map_id: u32,
    direction: Direction,
    /// Keeps the policy alive, so that its address (the key of `slots`)
    /// is not reused by another policy while this slot is live.
    policy: Arc<EndpointPolicy>,
    users: usize,
}

#[derive(Debug, Clone)]
struct Loaded {
    spec: EndpointSpec,
    value: Endpoint,
    /// The directions whose slot it holds a reference to (a direction that
    /// failed closed holds none).
    acquired: Vec<Direction>,
}

/// The L7 proxies' listening ports in the node's network namespace, by the
/// rules they enforce: what a redirect entry names. 0: no proxy, and the
/// kernel drops what would go to it (`PROXY_UNAVAILABLE`). The kernel hands
/// connections over on the client's side, for the client's egress rules and
/// for a local server's ingress rules alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyPorts {
    /// The HTTP (and gRPC) proxy.
    pub http: u16,
    /// The DNS proxy (UDP and TCP on the same port).
    pub dns: u16,
}

impl ProxyPorts {
    /// The port of the proxy that enforces `rules` (0: none does).
    pub fn port(&self, rules: &L7Rules) -> u16 {
        match rules {
            L7Rules::Http(_) => self.http,
            L7Rules::Dns(_) => self.dns,
            _ => 0,
        }
    }
}

/// A difference between the kernel's maps and what [`PolicySync`] wrote,
/// found by [`PolicySync::verify`] and put right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// What kind: `endpoint-changed`, `ipcache-added`, `slot-replaced`, …
    pub kind: &'static str,
    /// Which entry.
    pub what: String,
}

/// Keeps the maps equal to the desired endpoints and ipcache, writing only
/// what changed. See the module documentation.
#[derive(Default)]
pub struct PolicySync {
    overflow: Overflow,
    proxy_ports: ProxyPorts,
    next_slot: u32,
    /// Live slots by (policy pointer, direction).
    slots: HashMap<(usize, Direction), Slot>,
    endpoints: BTreeMap<u32, Loaded>,
    ipcache: BTreeMap<Cidr, u32>,
    rules: RuleTable,
    rule_ids: HashMap<Vec<Arc<RuleRef>>, u32>,
    retired: Vec<(Instant, u32)>,
    /// Slots written by an earlier agent may remain: retired once no
    /// endpoint names them.
    foreign: bool,
    /// Endpoints an earlier agent left and this one has not loaded yet (a
    /// policy that did not fit under `KeepPrevious` leaves one so): removed
    /// when they are not wanted, until then their slots are kept.
    adopted: std::collections::BTreeSet<u32>,
}

impl PolicySync {
    /// Starts from what an earlier agent left in the maps: new slots are
    /// numbered after its, its endpoints and ipcache are known, and its
    /// policy entries are deleted once the first [`PolicySync::apply`] has
    /// replaced them.
    pub fn adopt(dp: &Datapath) -> Result<Self, DatapathError> {
        // Numbers are never reused (conntrack entries remember theirs): go on
        // from the pinned sequence, or past any slot still published.
        let slots = dp.view().slots()?;
        let past_published = slots.iter().max().map_or(0, |m| m.saturating_add(1));
        Ok(Self {
            next_slot: dp.slot_sequence()?.max(past_published),
            foreign: !slots.is_empty(),
            adopted: dp.view().endpoints()?.into_iter().map(|(ifindex, _)| ifindex).collect(),
            ipcache: dp.view().ipcache()?.into_iter().collect(),
            ..Self::default()
        })
    }

    /// Sets what a direction does when its new policy does not fit.
    pub fn set_overflow(&mut self, overflow: Overflow) {
        self.overflow = overflow;
    }

    /// Sets the proxies' ports; policies written from now on name them.
    pub fn set_proxy_ports(&mut self, ports: ProxyPorts) {
        self.proxy_ports = ports;
    }

    /// The proxies' ports.
    pub fn proxy_ports(&self) -> ProxyPorts {
        self.proxy_ports
    }

    /// The rules behind a rule reference id from an event or a map value.
    pub fn rules(&self, id: u32) -> &[Arc<RuleRef>] {
        self.rules.get(id)
    }

    /// Every rule reference id so far, to read rules on another thread.
    pub fn rule_table(&self) -> RuleTable {
        self.rules.clone()
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
        for spec in desired.values() {
            match self.load_endpoint(dp, spec, &mut report) {
                Ok(true) => report.endpoints_updated += 1,
                Ok(false) => {}
                Err(f) => report.failed.push(*f),
            }
        }
        let gone: std::collections::BTreeSet<u32> =
            self.endpoints.keys().chain(&self.adopted).filter(|k| !desired.contains_key(k)).copied().collect();
        for ifindex in gone {
            dp.remove_endpoint(ifindex)?;
            self.adopted.remove(&ifindex);
            if let Some(old) = self.endpoints.remove(&ifindex) {
                self.release(&old.spec.policy, &old.acquired);
            }
        }

        let stale: Vec<Cidr> = self.ipcache.keys().filter(|c| !ipcache.contains_key(c)).copied().collect();
        for c in stale {
            dp.remove_ipcache(c)?;
            self.ipcache.remove(&c);
        }
        if self.foreign {
            self.retire_foreign(dp)?;
            self.foreign = !self.adopted.is_empty();
        }
        Ok(report)
    }

    /// Deletes replaced slots whose grace period is over (`force`: all).
    pub fn collect_retired(&mut self, dp: &mut Datapath, force: bool) -> Result<(), DatapathError> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retired).into_iter().partition(|(t, _)| force || now.duration_since(*t) >= GRACE);
        self.retired = keep;
        let mut due = due.into_iter();
        while let Some((t, slot)) = due.next() {
            if let Err(e) = dp.remove_slot(slot) {
                // Tried again next time, with the rest.
                self.retired.push((t, slot));
                self.retired.extend(due);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Loads one endpoint; true when its map value changed. A failure says
    /// which directions did not load and what they do now: with
    /// [`Overflow::FailClosed`] the value is written with those directions
    /// naming no slot; with [`Overflow::KeepPrevious`] nothing is written.
    fn load_endpoint(
        &mut self,
        dp: &mut Datapath,
        spec: &EndpointSpec,
        report: &mut SyncReport,
    ) -> Result<bool, Box<LoadFailure>> {
        let failure = |directions: Vec<Direction>, overflow, error| {
            Box::new(LoadFailure { ifindex: spec.ifindex, directions, overflow, error })
        };
        if spec.addrs.len() > EP_MAX_ADDRS {
            let error = DatapathError::TooManyAddresses { count: spec.addrs.len(), max: EP_MAX_ADDRS };
            return Err(failure(Direction::BOTH.to_vec(), Overflow::KeepPrevious, error));
        }
        let mut slots = [SLOT_NOT_READY; 2];
        let mut acquired = Vec::new();
        let mut failed: Option<(Vec<Direction>, DatapathError)> = None;
        for d in Direction::BOTH {
            match self.acquire(dp, &spec.policy, d, report) {
                Ok(id) => {
                    slots[d as usize] = id;
                    acquired.push(d);
                }
                Err(e) => match &mut failed {
                    Some((dirs, _)) => dirs.push(d),
                    None => failed = Some((vec![d], e)),
                },
            }
        }
        if self.overflow == Overflow::KeepPrevious
            && let Some((dirs, error)) = failed
        {
            self.release(&spec.policy, &acquired);
            return Err(failure(dirs, Overflow::KeepPrevious, error));
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
        let mut addrs = [Addr::default(); EP_MAX_ADDRS];
        for (a, ip) in addrs.iter_mut().zip(&spec.addrs) {
            *a = Addr::from(*ip);
        }
        let value = Endpoint {
            id: spec.id,
            identity: spec.identity,
            flags,
            slot: slots,
            naddrs: spec.addrs.len() as u32,
            addrs,
        };
        let old = self.endpoints.get(&spec.ifindex);
        let changed = if old.is_some_and(|o| o.value == value) {
            // The same value: the references its entry holds stand, the
            // ones just taken are extra.
            self.release(&spec.policy, &acquired);
            false
        } else {
            if let Err(e) = dp.set_endpoint(spec.ifindex, &value) {
                self.release(&spec.policy, &acquired);
                return Err(failure(Direction::BOTH.to_vec(), Overflow::KeepPrevious, e));
            }
            let loaded = Loaded { spec: spec.clone(), value, acquired };
            self.adopted.remove(&spec.ifindex);
            if let Some(old) = self.endpoints.insert(spec.ifindex, loaded) {
                self.release(&old.spec.policy, &old.acquired);
            }
            true
        };
        match failed {
            Some((directions, error)) => Err(failure(directions, Overflow::FailClosed, error)),
            None => Ok(changed),
        }
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
        // Slot numbers are never reused (the sequence is pinned before the
        // number is used), and never SLOT_NOT_READY.
        let id = self.next_slot.max(SLOT_NOT_READY + 1);
        dp.set_slot_sequence(id + 1)?;
        self.next_slot = id + 1;
        let entries = self.slot_entries(policy, d);
        let (written, map_id) = dp.write_slot(id, entries)?;
        report.slots_written += 1;
        report.entries_written += written;
        self.slots.insert(key, Slot { id, map_id, direction: d, policy: policy.clone(), users: 1 });
        Ok(id)
    }

    /// The map entries of one direction of `policy`.
    fn slot_entries(&mut self, policy: &EndpointPolicy, d: Direction) -> Vec<(Key<PolicyKeyData>, PolicyValue)> {
        let dir = match d {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        let mut entries = Vec::with_capacity(dir.entries.len());
        for (k, e) in dir.entries.iter() {
            let (verdict, proxy_port) = match &e.verdict {
                Verdict::Allow => (VERDICT_ALLOW, 0),
                Verdict::Deny => (VERDICT_DENY, 0),
                Verdict::Redirect(l7) => (VERDICT_REDIRECT, self.proxy_ports.port(&l7.rules)),
            };
            let value = PolicyValue { verdict, r#match: match_kind(k), proxy_port, rule: self.rule_id(&e.refs) };
            entries.extend(map_keys(k).into_iter().map(|key| (key, value)));
        }
        entries
    }

    /// Compares the kernel's endpoints (and their address map), ipcache and
    /// slot index with what this sync wrote, and puts every difference
    /// right: an endpoint, address or prefix changed, removed or added, a
    /// slot removed, added, or naming another map than the one written for
    /// it (its entries are written again from the policy); then removes
    /// the conntrack entries the policy does not admit
    /// ([`Self::unallowed_conntrack`]). The entries inside a slot need no
    /// look: slots are frozen. One read of each of those maps (an entry per
    /// endpoint, prefix and slot; conntrack in batches); the policy entries
    /// are never read. At 10,000 endpoints and 100,000 connections a look
    /// takes about 85 ms (`examples/verify_scale.rs`, BENCHMARKS.md).
    pub fn verify(&mut self, dp: &mut Datapath) -> Result<Vec<Drift>, DatapathError> {
        let mut out = Vec::new();
        let keys: Vec<(usize, Direction)> = self.slots.keys().copied().collect();
        for key in keys {
            let Some(slot) = self.slots.get(&key) else { continue };
            let (id, want, d, policy) = (slot.id, slot.map_id, slot.direction, Arc::clone(&slot.policy));
            let found = dp.view().slot_map_id(id)?;
            if found == Some(want) {
                continue;
            }
            if found.is_some() {
                dp.remove_slot(id)?;
            }
            let entries = self.slot_entries(&policy, d);
            let (_, map_id) = dp.write_slot(id, entries)?;
            if let Some(s) = self.slots.get_mut(&key) {
                s.map_id = map_id;
            }
            let kind = if found.is_some() { "slot-replaced" } else { "slot-removed" };
            out.push(Drift { kind, what: format!("policy slot {id}") });
        }
        // Live: this sync's slots, those waiting out their grace period, and
        // those adopted endpoints still name.
        let kernel_endpoints: BTreeMap<u32, Endpoint> = dp.view().endpoints()?.into_iter().collect();
        let mut live: std::collections::HashSet<u32> = self.slots.values().map(|s| s.id).collect();
        live.extend(self.retired.iter().map(|(_, s)| *s));
        live.extend(self.adopted.iter().filter_map(|i| kernel_endpoints.get(i)).flat_map(|e| e.slot));
        if !self.foreign {
            for id in dp.view().slots()? {
                if !live.contains(&id) {
                    dp.remove_slot(id)?;
                    out.push(Drift { kind: "slot-added", what: format!("policy slot {id}") });
                }
            }
        }
        for (ifindex, l) in &self.endpoints {
            match kernel_endpoints.get(ifindex) {
                Some(v) if *v == l.value => continue,
                found => {
                    dp.set_endpoint(*ifindex, &l.value)?;
                    let kind = if found.is_some() { "endpoint-changed" } else { "endpoint-removed" };
                    out.push(Drift { kind, what: format!("endpoint on interface {ifindex}") });
                }
            }
        }
        for ifindex in kernel_endpoints.keys() {
            if !self.endpoints.contains_key(ifindex) && !self.adopted.contains(ifindex) {
                dp.remove_endpoint(*ifindex)?;
                out.push(Drift { kind: "endpoint-added", what: format!("endpoint on interface {ifindex}") });
            }
        }
        // The address map follows the endpoints map, now put right.
        for (kind, addr) in dp.repair_endpoint_addrs()? {
            out.push(Drift { kind, what: format!("endpoint address {addr}") });
        }
        let kernel_ipcache: BTreeMap<Cidr, u32> = dp.view().ipcache()?.into_iter().collect();
        for (c, id) in &self.ipcache {
            match kernel_ipcache.get(c) {
                Some(v) if v == id => continue,
                found => {
                    dp.set_ipcache(*c, *id)?;
                    let kind = if found.is_some() { "ipcache-changed" } else { "ipcache-removed" };
                    out.push(Drift { kind, what: format!("ipcache {c}") });
                }
            }
        }
        for c in kernel_ipcache.keys() {
            if !self.ipcache.contains_key(c) {
                dp.remove_ipcache(*c)?;
                out.push(Drift { kind: "ipcache-added", what: format!("ipcache {c}") });
            }
        }
        // Connections let in without policy, asked about with the maps
        // above put right.
        for k in self.unallowed_conntrack(dp)? {
            dp.remove_conntrack(&k)?;
            out.push(Drift { kind: "conntrack-unallowed", what: describe_ct(&k) });
        }
        Ok(out)
    }

    /// The conntrack entries that stand for their endpoint's current policy
    /// (decided under the slot it names now, `ct_current` in
    /// `bpf/bulkhead.c`) although that policy does not admit them. The
    /// datapath makes an entry only for what the slot admits and asks again
    /// whenever the slot changes, so such an entry was written behind the
    /// agent's back: a connection let through without policy. Each is asked
    /// about as the kernel asks about an established connection
    /// (`ct_recheck`), here from what this sync wrote, which the kernel
    /// holds (slots are frozen; the endpoints and ipcache were put right
    /// just before): the resolved policy's own lookup, which the
    /// differential tests hold to the kernel's, and the ipcache's longest
    /// prefix. One batched read of the conntrack map, no other system call;
    /// each peer's identity looked up once. Entries of interfaces without
    /// an endpoint of this sync, or decided under another slot than the
    /// endpoint's, are not judged: the kernel asks again at their next
    /// packet.
    fn unallowed_conntrack(&self, dp: &Datapath) -> Result<Vec<crate::abi::CtKey>, DatapathError> {
        let by_slot: HashMap<u32, (&EndpointPolicy, Direction)> =
            self.slots.values().map(|s| (s.id, (&*s.policy, s.direction))).collect();
        let mut identities: HashMap<IpAddr, u32> = HashMap::new();
        let mut out = Vec::new();
        for (k, v) in dp.view().conntrack_entries()? {
            let Some(ep) = self.endpoints.get(&k.ifindex).map(|l| &l.value) else { continue };
            let dir = usize::from(k.dir & 1);
            let audit = ep.flags & EP_AUDIT != 0;
            if v.slot != ep.slot[dir] || (v.flags & CT_AUDITED != 0 && !audit) {
                continue;
            }
            // A direction that failed closed admits nothing, audit or not.
            if v.slot == SLOT_NOT_READY {
                out.push(k);
                continue;
            }
            // A slot of an adopted endpoint (written by an earlier agent,
            // until this one loads its own) is not judged.
            let Some((policy, d)) = by_slot.get(&v.slot) else { continue };
            let egress = dir == DIR_EGRESS;
            let peer = IpAddr::from(if egress { k.daddr } else { k.saddr });
            let id = *identities.entry(peer).or_insert_with(|| self.ipcache_identity(peer));
            let proto = Proto::from_number(k.proto).unwrap_or(Proto::Any);
            let table = match d {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            let admitted = match table.lookup(Some(peer), NumericIdentity(id), proto, v.policy_port) {
                Decision::Default { .. } => {
                    ep.flags & if egress { EP_DEFAULT_DENY_EGRESS } else { EP_DEFAULT_DENY_INGRESS } == 0
                }
                Decision::Entry(_, e) => match &e.verdict {
                    Verdict::Allow => true,
                    Verdict::Deny => false,
                    // From the proxy, which checked it; on the source side,
                    // handed to a running proxy; anywhere else, dropped.
                    Verdict::Redirect(_) if !egress && v.flags & CT_FROM_PROXY != 0 => true,
                    Verdict::Redirect(l7) => egress && self.proxy_ports.port(&l7.rules) != 0,
                },
            };
            // Audit mode admits what the policy denies (`audited()`).
            if !admitted && !audit {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// The identity the kernel gives `ip` (`ipcache_identity`): the
    /// longest prefix of the ipcache holding it, else world (per family).
    fn ipcache_identity(&self, ip: IpAddr) -> u32 {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (0..=max)
            .rev()
            .find_map(|len| self.ipcache.get(&Cidr::new(ip, len)).copied())
            .unwrap_or_else(|| if ip.is_ipv4() { Reserved::WorldIpv4.id().0 } else { Reserved::WorldIpv6.id().0 })
    }

    fn rule_id(&mut self, refs: &[Arc<RuleRef>]) -> u32 {
        if refs.is_empty() {
            return 0;
        }
        if let Some(id) = self.rule_ids.get(refs) {
            return *id;
        }
        let table = Arc::make_mut(&mut self.rules.0);
        table.push(refs.into());
        let id = u32::try_from(table.len()).unwrap_or(u32::MAX);
        self.rule_ids.insert(refs.to_vec(), id);
        id
    }

    /// Drops one reference to each of `dirs`' slots of `policy`.
    fn release(&mut self, policy: &Arc<EndpointPolicy>, dirs: &[Direction]) {
        for d in dirs {
            let key = (Arc::as_ptr(policy) as usize, *d);
            let Some(s) = self.slots.get_mut(&key) else { continue };
            s.users -= 1;
            if s.users == 0
                && let Some(s) = self.slots.remove(&key)
            {
                self.retired.push((Instant::now(), s.id));
            }
        }
    }

    /// Schedules for deletion every slot no endpoint uses.
    fn retire_foreign(&mut self, dp: &Datapath) -> Result<(), DatapathError> {
        // Live: this agent's slots, and whatever an endpoint in the kernel
        // still names (an adopted endpoint that kept its previous policy).
        let mut live: std::collections::HashSet<u32> = self.slots.values().map(|s| s.id).collect();
        live.extend(dp.view().endpoints()?.into_iter().flat_map(|(_, e)| e.slot));
        let retiring: std::collections::HashSet<u32> = self.retired.iter().map(|(_, s)| *s).collect();
        let now = Instant::now();
        self.retired.extend(
            dp.view().slots()?.into_iter().filter(|s| !live.contains(s) && !retiring.contains(s)).map(|s| (now, s)),
        );
        Ok(())
    }
}

/// A conntrack entry as a drift report names it.
fn describe_ct(k: &crate::abi::CtKey) -> String {
    let (s, d) = (IpAddr::from(k.saddr), IpAddr::from(k.daddr));
    let (sp, dp) = (u16::from_be_bytes(k.sport), u16::from_be_bytes(k.dport));
    let dir = if usize::from(k.dir & 1) == crate::abi::DIR_EGRESS { "egress" } else { "ingress" };
    let at = |ip: IpAddr, port: u16| if ip.is_ipv6() { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
    format!(
        "conntrack {} {} -> {} ({dir} of interface {})",
        crate::abi::proto_name(k.proto),
        at(s, sp),
        at(d, dp),
        k.ifindex
    )
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
