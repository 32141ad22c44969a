//! From contributions to a policy map: the entries the datapath loads.
//!
//! The kernel looks a packet up at most three times — by the peer's address
//! (pod addresses named by a NetworkPolicy ipBlock), by the peer's identity,
//! then for any peer — and at each level prefers a protocol+port entry over a
//! level-wide one; the first hit decides. [`flatten`] produces entries for
//! which that first hit is exactly the verdict of the policy semantics (deny
//! beats allow; a peer covered by an L7 rule is redirected), so neither
//! the kernel nor `trace` has to combine rules at lookup time. The cost is
//! that entries below a level repeat the verdicts of the levels above
//! wherever those would change the answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::{L7Rules, RequestLimit};
use crate::identity::NumericIdentity;
use crate::repository::{Proto, RuleRef};

/// Who an entry is about, from most to least specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Any peer.
    Any,
    /// Peers with this identity.
    Identity(NumericIdentity),
    /// This pod address (NetworkPolicy ipBlock rules match pod addresses).
    Address(IpAddr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Identity(id) => write!(f, "identity {id}"),
            Self::Address(a) => write!(f, "address {a}"),
        }
    }
}

/// A policy map key: peer, protocol, inclusive port range (ICMP: type range).
/// `Proto::Any` keys always span every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    /// The peer.
    pub peer: Peer,
    /// The protocol.
    pub proto: Proto,
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PolicyKey {
    /// The port range as aligned prefixes `(port, prefix_len)` for an LPM
    /// map keyed on the 16-bit port; `Proto::Any` keys need none.
    pub fn port_prefixes(&self) -> Vec<(u16, u8)> {
        let mut out = Vec::new();
        let (mut lo, hi) = (u32::from(self.lo), u32::from(self.hi));
        while lo <= hi {
            let mut size = if lo == 0 { 1u32 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
            while lo + size - 1 > hi {
                size >>= 1;
            }
            out.push((lo as u16, 16 - size.trailing_zeros() as u8));
            lo += size;
        }
        out
    }
}

/// L7 rules a redirected port enforces for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct L7Policy {
    /// The union of the rules that allow this peer on this port.
    pub rules: L7Rules,
    /// The peer is also allowed without L7 rules: every request passes
    /// (still proxied and visible).
    pub allow_all: bool,
    /// RateLimits on this peer and port: a request the rules allow must
    /// also be within every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<AppliedLimit>,
}

/// A RateLimit entry that applies to an entry's peer and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AppliedLimit {
    /// The limit.
    pub limit: RequestLimit,
    /// The RateLimit entry that sets it (its buckets are its own).
    pub by: Arc<RuleRef>,
}

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "l7")]
pub enum Verdict {
    /// Pass.
    Allow,
    /// Drop (explicit deny: drop reason POLICY_DENY).
    Deny,
    /// Pass to the L7 proxy, which decides per request.
    Redirect(Arc<L7Policy>),
}

impl Verdict {
    /// `allow`, `deny` or `redirect`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Redirect(_) => "redirect",
        }
    }
}

/// A policy map value: the verdict and the rules that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// The verdict.
    pub verdict: Verdict,
    /// The rules that decided it (the deny rules for a deny, else the allows).
    pub refs: Vec<Arc<RuleRef>>,
}

/// The resolved policy of one direction of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectionPolicy {
    /// Some rule selecting the endpoint has a section in this direction,
    /// or a RateLimit limits it: its entries are looked up.
    pub enforced: bool,
    /// A lookup miss drops (POLICY_DENIED) rather than passes.
    pub default_deny: bool,
    /// The entries. Equal values are shared (one allocation for the many
    /// identities a broad rule covers), and the map is persistent: a copy
    /// shares structure, so patching a policy that several endpoints share
    /// costs only the changed paths.
    pub entries: Entries,
    /// Conflicts found while resolving (ports then fail closed).
    pub errors: Vec<String>,
}

/// A policy map: key → shared entry, ordered (so that one peer's keys are
/// one contiguous range).
pub type Entries = imbl::OrdMap<PolicyKey, Arc<PolicyEntry>>;

/// How a lookup was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// An entry matched.
    Entry(&'a PolicyKey, &'a PolicyEntry),
    /// No entry: the direction's default (allow when not default-deny).
    Default {
        /// Whether the default is to drop.
        deny: bool,
    },
}

impl Decision<'_> {
    /// True unless the packet is dropped.
    pub fn passes(&self) -> bool {
        match self {
            Self::Entry(_, e) => e.verdict != Verdict::Deny,
            Self::Default { deny } => !deny,
        }
    }
}

impl DirectionPolicy {
    /// The kernel's lookup: address level, identity level, any-peer level;
    /// at each, protocol+port before protocol-wide; first hit wins.
    pub fn lookup(&self, addr: Option<IpAddr>, id: NumericIdentity, proto: Proto, port: u16) -> Decision<'_> {
        let levels = [addr.map(Peer::Address), Some(Peer::Identity(id)), Some(Peer::Any)];
        for peer in levels.into_iter().flatten() {
            if proto != Proto::Any {
                let probe = PolicyKey { peer, proto, lo: port, hi: u16::MAX };
                if let Some((k, e)) = self.entries.range(..=probe).next_back()
                    && k.peer == peer
                    && k.proto == proto
                    && k.lo <= port
                    && port <= k.hi
                {
                    return Decision::Entry(k, e);
                }
            }
            let wild = PolicyKey { peer, proto: Proto::Any, lo: 0, hi: u16::MAX };
            if let Some((k, e)) = self.entries.get_key_value(&wild) {
                return Decision::Entry(k, e);
            }
        }
        Decision::Default { deny: self.default_deny }
    }
}

/// The resolved policy of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndpointPolicy {
    /// Traffic arriving at the endpoint.
    pub ingress: DirectionPolicy,
    /// Traffic leaving the endpoint.
    pub egress: DirectionPolicy,
}

/// A contribution with its peers resolved to identities and addresses and
/// its ports resolved to numbers.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    /// Every peer.
    pub all: bool,
    /// These identities (the union of the sets; selector results are shared,
    /// not copied).
    pub ids: Vec<Arc<BTreeSet<NumericIdentity>>>,
    /// These pod addresses, with the identity of their pod.
    pub addrs: Vec<(IpAddr, NumericIdentity)>,
    /// Protocol and port ranges; `(Proto::Any, 0, 65535)` for every port.
    pub ports: Vec<(Proto, u16, u16)>,
    /// Deny or allow.
    pub deny: bool,
    /// L7 rules (allow only).
    pub l7: Option<&'a L7Rules>,
    /// A RateLimit's limit (then neither an allow nor a deny).
    pub limit: Option<RequestLimit>,
    /// The rule.
    pub rule_ref: Arc<RuleRef>,
}

impl Resolved<'_> {
    /// It names every port from `lo` to `hi` of `proto`.
    pub(crate) fn covers(&self, proto: Proto, lo: u32, hi: u32) -> bool {
        self.ports.iter().any(|&(p, a, b)| p == Proto::Any || (p == proto && u32::from(a) <= lo && hi <= u32::from(b)))
    }

    fn has_wild(&self) -> bool {
        self.ports.iter().any(|(p, _, _)| *p == Proto::Any)
    }

    /// The L7 rules, unless they are an empty list (a plain allow).
    fn effective_l7(&self) -> Option<&L7Rules> {
        self.l7.filter(|r| !l7_is_empty(r))
    }

    /// An allow: neither a deny nor a limit.
    fn allows(&self) -> bool {
        !self.deny && self.limit.is_none()
    }

    /// The parser its port needs in the proxy, if any (limits: HTTP's).
    fn proxy_kind(&self) -> Option<String> {
        if self.limit.is_some() { Some("http".into()) } else { self.effective_l7().map(l7_kind) }
    }
}

fn l7_is_empty(r: &L7Rules) -> bool {
    match r {
        L7Rules::Http(v) => v.is_empty(),
        L7Rules::Kafka(v) => v.is_empty(),
        L7Rules::Dns(v) => v.is_empty(),
        L7Rules::Tls(v) => v.is_empty(),
        L7Rules::Generic { rules, .. } => rules.is_empty(),
    }
}

/// The parser an L7 rule set needs; different parsers on one port conflict.
fn l7_kind(r: &L7Rules) -> String {
    match r {
        L7Rules::Http(_) => "http".into(),
        L7Rules::Dns(_) => "dns".into(),
        L7Rules::Kafka(_) => "kafka".into(),
        L7Rules::Tls(_) => "tls".into(),
        L7Rules::Generic { proto, .. } => format!("l7proto {proto}"),
    }
}

fn empty_like(r: &L7Rules) -> L7Rules {
    match r {
        L7Rules::Http(_) => L7Rules::Http(Vec::new()),
        L7Rules::Dns(_) => L7Rules::Dns(Vec::new()),
        L7Rules::Kafka(_) => L7Rules::Kafka(Vec::new()),
        L7Rules::Tls(_) => L7Rules::Tls(Vec::new()),
        L7Rules::Generic { proto, .. } => L7Rules::Generic { proto: proto.clone(), rules: Vec::new() },
    }
}

fn merge_l7(into: &mut L7Rules, from: &L7Rules) {
    fn union<T: Clone + Ord>(a: &mut Vec<T>, b: &[T]) {
        a.extend_from_slice(b);
        a.sort();
        a.dedup();
    }
    match (into, from) {
        (L7Rules::Http(a), L7Rules::Http(b)) => union(a, b),
        (L7Rules::Dns(a), L7Rules::Dns(b)) => union(a, b),
        (L7Rules::Kafka(a), L7Rules::Kafka(b)) => union(a, b),
        (L7Rules::Tls(a), L7Rules::Tls(b)) => union(a, b),
        (L7Rules::Generic { rules: a, .. }, L7Rules::Generic { rules: b, .. }) => union(a, b),
        _ => {}
    }
}

struct Flattener<'c, 'a> {
    cs: &'c [Resolved<'a>],
    /// A lookup miss passes: a limit then applies to peers no rule allows.
    default_allow: bool,
    interned: HashMap<PolicyEntry, Arc<PolicyEntry>>,
    /// (proto, lo, hi, index of the contribution) of every L7 allow and
    /// every limit: the ranges that go through the proxy.
    l7_ranges: Vec<(Proto, u16, u16, usize)>,
    errors: BTreeSet<String>,
}

impl Flattener<'_, '_> {
    /// The verdict for a point covered by `cov` (indices into `cs`).
    fn combine(&mut self, cov: &[usize], proto: Proto, lo: u32, hi: u32) -> Option<PolicyEntry> {
        let refs = |pred: &dyn Fn(&Resolved<'_>) -> bool| {
            let mut r: Vec<Arc<RuleRef>> =
                cov.iter().map(|&i| &self.cs[i]).filter(|c| pred(c)).map(|c| c.rule_ref.clone()).collect();
            r.sort();
            r.dedup();
            r
        };
        let deny_refs = refs(&|c| c.deny);
        if !deny_refs.is_empty() {
            return Some(PolicyEntry { verdict: Verdict::Deny, refs: deny_refs });
        }
        let allow_refs = refs(&|c| c.allows());
        let mut limits: Vec<AppliedLimit> = cov
            .iter()
            .map(|&i| &self.cs[i])
            .filter_map(|c| c.limit.map(|limit| AppliedLimit { limit, by: c.rule_ref.clone() }))
            .collect();
        limits.sort();
        limits.dedup();
        // A limit alone passes nothing, except where a miss would pass.
        if allow_refs.is_empty() && (limits.is_empty() || !self.default_allow) {
            return None;
        }
        // Different L7 parsers on one port conflict whoever the peers are
        // (Cilium refuses to merge them); the port then fails closed.
        if proto != Proto::Any {
            let mut kinds: BTreeSet<String> = BTreeSet::new();
            for &(p, a, b, i) in &self.l7_ranges {
                if p == proto && u32::from(a) <= lo && hi <= u32::from(b) {
                    kinds.extend(self.cs[i].proxy_kind());
                }
            }
            if kinds.len() > 1 {
                let kinds: Vec<String> = kinds.into_iter().collect();
                self.errors.insert(format!(
                    "port {lo}/{proto}: conflicting L7 parsers ({}); the port is denied",
                    kinds.join(", ")
                ));
                return Some(PolicyEntry { verdict: Verdict::Deny, refs: allow_refs });
            }
        }
        // A peer is redirected when an L7 rule or a limit covering it
        // applies here; its other allows on the port then mean "every
        // request" (Cilium 1.17), and so does the default with only limits.
        let port_l7 = if proto == Proto::Any {
            None
        } else {
            cov.iter().map(|&i| &self.cs[i]).filter(|c| c.allows()).find_map(|c| c.effective_l7())
        };
        let mut rules = match port_l7 {
            Some(kind) => empty_like(kind),
            None if !limits.is_empty() => L7Rules::Http(Vec::new()),
            None => return Some(PolicyEntry { verdict: Verdict::Allow, refs: allow_refs }),
        };
        let mut allow_all = allow_refs.is_empty();
        for &i in cov {
            let c = &self.cs[i];
            if !c.allows() {
                continue;
            }
            match c.effective_l7() {
                Some(r) => merge_l7(&mut rules, r),
                None => allow_all = true,
            }
        }
        let l7 = L7Policy { rules, allow_all, limits };
        Some(PolicyEntry { verdict: Verdict::Redirect(Arc::new(l7)), refs: allow_refs })
    }

    /// Entries of one level: `own` are the contributions about this level's
    /// peer, `anc` those of the less specific levels that also apply to it.
    fn level(&mut self, own: &[usize], anc: &[usize]) -> Vec<LevelEntry> {
        let mut out = Vec::new();
        if own.is_empty() {
            return out;
        }
        let all: Vec<usize> = own.iter().chain(anc).copied().collect();
        let has_wild = own.iter().any(|&i| self.cs[i].has_wild());
        let wild_cov: Vec<usize> = all.iter().copied().filter(|&i| self.cs[i].has_wild()).collect();
        let wild = if has_wild { self.combine(&wild_cov, Proto::Any, 0, 65535) } else { None };
        if let Some(w) = &wild {
            out.push((Proto::Any, 0, 65535, self.intern(w.clone())));
        }
        let mut protos: BTreeSet<Proto> = BTreeSet::new();
        for &i in &all {
            protos.extend(self.cs[i].ports.iter().map(|p| p.0).filter(|p| *p != Proto::Any));
        }
        if has_wild {
            protos.extend(self.l7_ranges.iter().map(|r| r.0));
        }
        for proto in protos {
            let mut bounds: BTreeSet<u32> = [0, 65536].into();
            for &i in &all {
                for &(p, a, b) in &self.cs[i].ports {
                    if p == proto {
                        bounds.insert(u32::from(a));
                        bounds.insert(u32::from(b) + 1);
                    }
                }
            }
            for &(p, a, b, _) in &self.l7_ranges {
                if p == proto {
                    bounds.insert(u32::from(a));
                    bounds.insert(u32::from(b) + 1);
                }
            }
            let bounds: Vec<u32> = bounds.into_iter().collect();
            let mut pending: Option<(u32, u32, PolicyEntry)> = None;
            for w in bounds.windows(2) {
                let (lo, hi) = (w[0], w[1] - 1);
                let own_specific = own.iter().any(|&i| {
                    self.cs[i].ports.iter().any(|&(p, a, b)| p == proto && u32::from(a) <= lo && hi <= u32::from(b))
                });
                let entry = if own_specific || has_wild {
                    let cov: Vec<usize> = all.iter().copied().filter(|&i| self.cs[i].covers(proto, lo, hi)).collect();
                    self.combine(&cov, proto, lo, hi)
                        .filter(|e| !(has_wild && !own_specific && Some(e) == wild.as_ref()))
                } else {
                    None
                };
                // Coalesce equal neighbours; flush on a gap or a change.
                match (&mut pending, entry) {
                    (Some((_, phi, pe)), Some(e)) if *phi + 1 == lo && *pe == e => *phi = hi,
                    (p, e) => {
                        if let Some((a, b, pe)) = p.take() {
                            out.push((proto, a as u16, b as u16, self.intern(pe)));
                        }
                        *p = e.map(|e| (lo, hi, e));
                    }
                }
            }
            if let Some((a, b, pe)) = pending {
                out.push((proto, a as u16, b as u16, self.intern(pe)));
            }
        }
        out
    }

    /// One shared allocation per distinct entry value.
    fn intern(&mut self, e: PolicyEntry) -> Arc<PolicyEntry> {
        self.interned.entry(e).or_insert_with_key(|e| Arc::new(e.clone())).clone()
    }
}

/// An entry of a level, before the level's peer is attached.
type LevelEntry = (Proto, u16, u16, Arc<PolicyEntry>);

/// Builds the entries of one direction from its resolved contributions;
/// `default_deny`: whether a lookup miss drops. Returns the entries and
/// any conflicts (conflicting ports are denied).
///
/// Identities covered by the same set of contributions get the same entries
/// (only the peer differs), so each such class is computed once: a rule
/// selecting thousands of identities costs one level computation and one map
/// insert per identity.
pub fn flatten(cs: &[Resolved<'_>], default_deny: bool) -> (Entries, Vec<String>) {
    let mut l7_ranges = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        if !c.deny && c.proxy_kind().is_some() {
            for &(p, a, b) in &c.ports {
                if p != Proto::Any {
                    l7_ranges.push((p, a, b, i));
                }
            }
        }
    }
    let mut f =
        Flattener { cs, default_allow: !default_deny, interned: HashMap::new(), l7_ranges, errors: BTreeSet::new() };
    let any: Vec<usize> = (0..cs.len()).filter(|&i| cs[i].all).collect();
    let mut pairs: Vec<(NumericIdentity, usize)> = Vec::new();
    let mut by_addr: BTreeMap<IpAddr, (NumericIdentity, Vec<usize>)> = BTreeMap::new();
    for (i, c) in cs.iter().enumerate() {
        if c.all {
            continue;
        }
        for set in &c.ids {
            pairs.extend(set.iter().map(|id| (*id, i)));
        }
        for (addr, id) in &c.addrs {
            by_addr.entry(*addr).or_insert_with(|| (*id, Vec::new())).1.push(i);
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    let parents: BTreeSet<NumericIdentity> = by_addr.values().map(|(id, _)| *id).collect();
    let mut out = Entries::new();
    for (proto, lo, hi, e) in f.level(&any, &[]) {
        out.insert(PolicyKey { peer: Peer::Any, proto, lo, hi }, e);
    }
    let mut classes: HashMap<Vec<usize>, Vec<LevelEntry>> = HashMap::new();
    let mut parent_own: HashMap<NumericIdentity, Vec<usize>> = HashMap::new();
    let mut own: Vec<usize> = Vec::new();
    let mut start = 0;
    while start < pairs.len() {
        let id = pairs[start].0;
        let mut end = start;
        own.clear();
        while end < pairs.len() && pairs[end].0 == id {
            own.push(pairs[end].1);
            end += 1;
        }
        if !classes.contains_key(own.as_slice()) {
            let entries = f.level(&own, &any);
            classes.insert(own.clone(), entries);
        }
        for (proto, lo, hi, e) in &classes[own.as_slice()] {
            out.insert(PolicyKey { peer: Peer::Identity(id), proto: *proto, lo: *lo, hi: *hi }, e.clone());
        }
        if parents.contains(&id) {
            parent_own.insert(id, own.clone());
        }
        start = end;
    }
    for (addr, (id, own)) in &by_addr {
        let mut anc: Vec<usize> = parent_own.get(id).cloned().unwrap_or_default();
        anc.extend(&any);
        let mut own = own.clone();
        own.dedup();
        for (proto, lo, hi, e) in f.level(&own, &anc) {
            out.insert(PolicyKey { peer: Peer::Address(*addr), proto, lo, hi }, e);
        }
    }
    (out, f.errors.into_iter().collect())
}

#[cfg(test)]
mod tests;
