//! The names this node learnt from DNS answers the proxy allowed, with the
//! addresses they resolved to: what `toFQDNs` selects ([`NameCache`]).
//!
//! Each address is recorded under the name that was asked for (the answer's
//! CNAME chain leads to it), with an expiry from the answer's TTL, raised to
//! the minimum TTL, and the endpoints that asked. An address stays while it
//! has a live name; past its expiry it goes only when no open connection
//! uses it ([`NameCache::expire`]). A name holds at most `max_per_name`
//! addresses and the node `max_total` pairs: a new one pushes out the one
//! expiring first. Pure: the time
//! is given; the agent persists the cache ([`NameCache::to_json`]) after each
//! change and restores it before the first packet is judged.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What the cache keeps for one address of one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix seconds after which the address is stale (unless in use).
    pub expires: u64,
    /// The endpoints (`namespace/pod`) whose lookups returned it.
    pub endpoints: BTreeSet<String>,
}

/// The cache's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A TTL below this many seconds counts as this.
    pub min_ttl: u32,
    /// Addresses one name holds at most.
    pub max_per_name: usize,
    /// (name, address) pairs the node holds at most: a pod that resolves
    /// name after name cannot grow the cache (and the ipcache) without end.
    pub max_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { min_ttl: DEFAULT_MIN_TTL, max_per_name: DEFAULT_MAX_PER_NAME, max_total: DEFAULT_MAX_TOTAL }
    }
}

/// The default cap of (name, address) pairs on the node.
pub const DEFAULT_MAX_TOTAL: usize = 65_536;

/// The default minimum TTL: long enough for a client to connect after its
/// lookup even when the answer's TTL is 0.
pub const DEFAULT_MIN_TTL: u32 = 5;

/// The default cap of addresses per name (Cilium's `--tofqdns-endpoint-max-ip-per-hostname`).
pub const DEFAULT_MAX_PER_NAME: usize = 1000;

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCache {
    names: BTreeMap<String, BTreeMap<IpAddr, Entry>>,
    #[serde(skip)]
    by_addr: BTreeMap<IpAddr, BTreeSet<String>>,
}

/// One row of `fqdn cache list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The name, lowercased with its trailing dot.
    pub name: String,
    /// One of its addresses.
    pub addr: IpAddr,
    /// Unix seconds after which it is stale.
    pub expires: u64,
    /// The endpoints that looked it up.
    pub endpoints: BTreeSet<String>,
}

impl NameCache {
    /// Records that `endpoint`'s lookup of `name` returned `addrs` with
    /// `ttl` at unix second `now`. Returns the addresses whose set of names
    /// changed, with the new set (empty: the address is gone).
    pub fn learn(
        &mut self,
        limits: Limits,
        endpoint: &str,
        name: &str,
        addrs: &[IpAddr],
        ttl: u32,
        now: u64,
    ) -> Vec<(IpAddr, BTreeSet<String>)> {
        if addrs.is_empty() {
            return Vec::new();
        }
        let cap = limits.max_per_name.max(1);
        // An answer over the cap: its first addresses.
        let addrs = &addrs[..addrs.len().min(cap)];
        let expires = now + u64::from(ttl.max(limits.min_ttl));
        let entries = self.names.entry(name.to_owned()).or_default();
        let mut changed = BTreeSet::new();
        for a in addrs {
            let a = a.to_canonical();
            let e = entries.entry(a).or_insert_with(|| {
                changed.insert(a);
                Entry { expires, endpoints: BTreeSet::new() }
            });
            e.expires = e.expires.max(expires);
            e.endpoints.insert(endpoint.to_owned());
        }
        // Over the cap: the addresses expiring first go (never one of this answer's).
        let over = entries.len().saturating_sub(cap);
        let fresh: HashSet<IpAddr> = addrs.iter().map(IpAddr::to_canonical).collect();
        if over > 0 {
            let mut old: Vec<(u64, IpAddr)> =
                entries.iter().filter(|(a, _)| !fresh.contains(a)).map(|(a, e)| (e.expires, *a)).collect();
            old.sort();
            for (_, a) in old.into_iter().take(over) {
                entries.remove(&a);
                changed.insert(a);
            }
        }
        // Over the node's cap: the pairs expiring first go, this answer's last.
        let total: usize = self.names.values().map(BTreeMap::len).sum();
        let over = total.saturating_sub(limits.max_total.max(addrs.len()));
        if over > 0 {
            let mut old: Vec<(u64, String, IpAddr)> = self
                .names
                .iter()
                .flat_map(|(n, e)| e.iter().map(move |(a, x)| (x.expires, n.clone(), *a)))
                .filter(|(_, n, a)| !(n == name && fresh.contains(a)))
                .collect();
            old.sort();
            for (_, n, a) in old.into_iter().take(over) {
                if let Some(e) = self.names.get_mut(&n) {
                    e.remove(&a);
                }
                changed.insert(a);
            }
            self.names.retain(|_, e| !e.is_empty());
        }
        self.reindex(changed)
    }

    /// Forgets every address whose expiry has passed at `now` and that no
    /// open connection uses (`in_use`). Returns what changed, as
    /// [`NameCache::learn`] does.
    pub fn expire(&mut self, now: u64, in_use: &HashSet<IpAddr>) -> Vec<(IpAddr, BTreeSet<String>)> {
        let mut changed = BTreeSet::new();
        for entries in self.names.values_mut() {
            entries.retain(|a, e| {
                let keep = e.expires >= now || in_use.contains(a);
                if !keep {
                    changed.insert(*a);
                }
                keep
            });
        }
        self.names.retain(|_, e| !e.is_empty());
        self.reindex(changed)
    }

    /// Until when (unix seconds) every one of `addrs` stays under `name`
    /// at least — unless a cap pushes it out first (`None`: one is not there).
    pub fn held_until(&self, name: &str, addrs: &[IpAddr]) -> Option<u64> {
        let entries = self.names.get(name)?;
        addrs.iter().map(|a| entries.get(&a.to_canonical()).map(|e| e.expires)).min().flatten()
    }

    /// The soonest expiry, to know when to look again.
    pub fn next_expiry(&self) -> Option<u64> {
        self.names.values().flat_map(|e| e.values().map(|e| e.expires)).min()
    }

    /// Every address with its names.
    pub fn addresses(&self) -> &BTreeMap<IpAddr, BTreeSet<String>> {
        &self.by_addr
    }

    /// Every (name, address), by name; only those `endpoint` looked up when given.
    pub fn rows(&self, endpoint: Option<&str>) -> Vec<Row> {
        self.names
            .iter()
            .flat_map(|(name, entries)| {
                entries.iter().map(move |(addr, e)| Row {
                    name: name.clone(),
                    addr: *addr,
                    expires: e.expires,
                    endpoints: e.endpoints.clone(),
                })
            })
            .filter(|r| endpoint.is_none_or(|ep| r.endpoints.contains(ep)))
            .collect()
    }

    /// The cache as persisted.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// A persisted cache.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        let mut c: Self = serde_json::from_slice(bytes)?;
        let all: BTreeSet<IpAddr> = c.names.values().flat_map(|e| e.keys().copied()).collect();
        c.reindex(all);
        Ok(c)
    }

    /// Recomputes the names of `addrs`; returns them with their new sets.
    fn reindex(&mut self, addrs: BTreeSet<IpAddr>) -> Vec<(IpAddr, BTreeSet<String>)> {
        addrs
            .into_iter()
            .map(|a| {
                let names: BTreeSet<String> =
                    self.names.iter().filter(|(_, e)| e.contains_key(&a)).map(|(n, _)| n.clone()).collect();
                if names.is_empty() {
                    self.by_addr.remove(&a);
                } else {
                    self.by_addr.insert(a, names.clone());
                }
                (a, names)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn addresses_are_recorded_under_their_names_and_expire_unless_in_use() {
        let mut c = NameCache::default();
        let l = Limits { min_ttl: 5, ..Limits::default() };
        let changed =
            c.learn(l, "production/pay", "api.stripe.com.", &[ip("198.18.10.1"), ip("fd00:b::10:1")], 60, 1000);
        assert_eq!(
            changed,
            vec![(ip("198.18.10.1"), set(&["api.stripe.com."])), (ip("fd00:b::10:1"), set(&["api.stripe.com."]))]
        );
        // The same answer again changes nothing but the expiry.
        assert!(c.learn(l, "production/pay", "api.stripe.com.", &[ip("198.18.10.1")], 300, 1010).is_empty());
        // Another name for the same address: its set grows.
        let changed = c.learn(l, "production/web", "js.stripe.com.", &[ip("198.18.10.1")], 0, 1010);
        assert_eq!(changed, vec![(ip("198.18.10.1"), set(&["api.stripe.com.", "js.stripe.com."]))]);
        assert_eq!(c.rows(Some("production/web")).len(), 1);
        assert_eq!(c.rows(None).len(), 3);
        // js.stripe.com.'s TTL 0 counts as 5; the v6 address expires at 1060.
        assert_eq!(c.next_expiry(), Some(1015));
        assert_eq!(c.expire(1016, &HashSet::new()), vec![(ip("198.18.10.1"), set(&["api.stripe.com."]))]);
        // Past its expiry an address in use stays; then goes.
        let in_use: HashSet<IpAddr> = [ip("fd00:b::10:1")].into();
        assert!(c.expire(1061, &in_use).is_empty());
        assert_eq!(c.expire(1062, &HashSet::new()), vec![(ip("fd00:b::10:1"), BTreeSet::new())]);
        assert_eq!(c.addresses().len(), 1);
        // Restored from disk, the same cache.
        let back = NameCache::from_json(&c.to_json().expect("json")).expect("parse");
        assert_eq!(back, c);
        assert_eq!(back.addresses(), c.addresses());
    }

    #[test]
    fn a_name_holds_at_most_its_cap_and_the_first_to_expire_go() {
        let mut c = NameCache::default();
        let l = Limits { min_ttl: 0, max_per_name: 2, ..Limits::default() };
        c.learn(l, "a/b", "cdn.example.", &[ip("198.18.20.1")], 10, 0);
        c.learn(l, "a/b", "cdn.example.", &[ip("198.18.20.2")], 20, 0);
        let changed = c.learn(l, "a/b", "cdn.example.", &[ip("198.18.20.3")], 30, 0);
        assert_eq!(changed, vec![(ip("198.18.20.1"), BTreeSet::new()), (ip("198.18.20.3"), set(&["cdn.example."]))]);
        // An answer over the cap: its first addresses, the older ones gone.
        let many: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("198.18.21.{i}"))).collect();
        c.learn(l, "a/b", "cdn.example.", &many, 5, 0);
        let kept: Vec<IpAddr> = c.rows(None).into_iter().map(|r| r.addr).collect();
        assert_eq!(kept, many[..2]);
    }

    #[test]
    fn the_node_holds_at_most_its_cap_and_the_pairs_expiring_first_go() {
        let mut c = NameCache::default();
        let l = Limits { min_ttl: 0, max_per_name: 10, max_total: 3 };
        for i in 1..=3u8 {
            c.learn(l, "a/b", &format!("n{i}.example."), &[ip(&format!("198.18.30.{i}"))], u32::from(i) * 10, 0);
        }
        // A fourth pair pushes out the one expiring first (n1, at 10).
        let changed = c.learn(l, "a/b", "n4.example.", &[ip("198.18.30.4")], 5, 0);
        assert_eq!(changed, vec![(ip("198.18.30.1"), BTreeSet::new()), (ip("198.18.30.4"), set(&["n4.example."]))]);
        assert_eq!(c.rows(None).len(), 3);
        assert!(c.addresses().contains_key(&ip("198.18.30.4")), "the new answer's own pair stays");
    }
}
