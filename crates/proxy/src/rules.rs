//! What the proxy decides with: the agent's per-endpoint rules, as it
//! streams them ([`Update`]), and the decision for one connection and each
//! request on it ([`Rules::connection`], [`Connection::decide`]).
//!
//! Owns the question "which L7 rules apply to this connection". The kernel
//! redirected it because the client's egress policy or the (local)
//! server's ingress policy gave a `Redirect` verdict; the proxy repeats
//! the kernel's own lookup ([`DirectionPolicy::lookup`], the code `policy
//! trace` runs) on both ends, so it enforces exactly the rules the kernel
//! meant, both when both ends have some (Cilium checks twice). The agent
//! sends an endpoint's direction whole when it holds a redirect entry
//! (a lookup needs every entry to find the one the kernel found), and
//! nothing of a direction without one.
//!
//! Fails closed: before its first update, for a connection whose ends are
//! not local endpoints it knows, or whose lookup now denies, the proxy
//! refuses the connection; a redirect to rules it cannot enforce (not
//! HTTP) denies every request. Pure: no I/O.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use bulkhead_policy::api::L7Rules;
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::identity::{NumericIdentity, Reserved};
use bulkhead_policy::l7::{DnsPolicy, HeaderAction, HttpDecision, HttpPolicy, HttpRequest, L7Error};
use bulkhead_policy::repository::{Proto, RuleRef};
use bulkhead_policy::resolve::{AppliedLimit, Decision, DirectionPolicy, L7Policy, PolicyEntry, PolicyKey, Verdict};
use serde::{Deserialize, Serialize};

/// One message of the agent's stream: what changed since the last one
/// (everything, when `full`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Increases with every update the agent sends; the proxy's reply
    /// names it once the update is in force ([`crate::control::Reply`]).
    pub generation: u64,
    /// Forget every endpoint first (the first update on a connection).
    pub full: bool,
    /// Endpoints added or changed.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints gone, by id.
    pub removed: Vec<u32>,
    /// The node's ipcache (prefix → identity), when it changed.
    pub ipcache: Option<Vec<(Cidr, u32)>>,
}

/// A local endpoint and the directions of its policy that redirect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The agent's endpoint id.
    pub id: u32,
    /// `namespace/pod`.
    pub name: String,
    /// Its security identity.
    pub identity: u32,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Its ingress policy, when that holds a redirect entry.
    pub ingress: Option<Direction>,
    /// Its egress policy, when that holds a redirect entry.
    pub egress: Option<Direction>,
}

/// One direction of an endpoint's policy, every entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Direction {
    /// A lookup miss drops.
    pub default_deny: bool,
    /// The entries, as the kernel holds them.
    pub entries: Vec<(PolicyKey, PolicyEntry)>,
}

impl Direction {
    /// The direction as the proxy needs it: `None` unless some entry
    /// redirects (the proxy has nothing to decide there).
    pub fn of(policy: &DirectionPolicy) -> Option<Self> {
        policy.entries.values().any(|e| matches!(e.verdict, Verdict::Redirect(_))).then(|| Self {
            default_deny: policy.default_deny,
            entries: policy.entries.iter().map(|(k, e)| (*k, PolicyEntry::clone(e))).collect(),
        })
    }
}

/// Which end's policy a check comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The client's egress policy.
    Egress,
    /// The server's ingress policy.
    Ingress,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        })
    }
}

/// The L7 rules one redirect entry enforces, compiled.
#[derive(Debug)]
pub struct Check {
    /// The HTTP rules; `None` when the entry's rules are of another
    /// protocol: every HTTP request is denied.
    http: Option<HttpPolicy>,
    /// The DNS rules; `None` when the entry's rules are of another
    /// protocol: every query is denied.
    dns: Option<DnsPolicy>,
    /// The peer is also allowed without L7 rules: every request passes.
    allow_all: bool,
    /// RateLimits an allowed request must also be within.
    limits: Vec<AppliedLimit>,
    /// The rules behind the entry.
    pub rules: Vec<Arc<RuleRef>>,
}

impl Check {
    fn compile(l7: &L7Policy, entry: &PolicyEntry) -> Result<Self, L7Error> {
        let (http, dns) = match &l7.rules {
            L7Rules::Http(rules) => (Some(HttpPolicy::compile(rules)?), None),
            L7Rules::Dns(selectors) => (None, Some(DnsPolicy::compile(selectors)?)),
            _ => (None, None),
        };
        Ok(Self { http, dns, allow_all: l7.allow_all, limits: l7.limits.clone(), rules: entry.refs.clone() })
    }

    fn allows_name(&self, qname: &str) -> bool {
        self.allow_all || self.dns.as_ref().is_some_and(|d| d.allows(qname).is_some())
    }

    fn decide(&self, req: &HttpRequest<'_>) -> Option<HttpDecision> {
        if self.allow_all {
            return Some(HttpDecision {
                allowed: true,
                matched_rule: None,
                header_actions: Vec::new(),
                secret_unresolved: false,
            });
        }
        self.http.as_ref().map(|h| h.decide(req))
    }
}

/// One direction, ready for lookups, with its redirect entries compiled.
#[derive(Debug)]
struct Compiled {
    policy: DirectionPolicy,
    checks: HashMap<PolicyKey, Arc<Check>>,
}

impl Compiled {
    fn new(d: &Direction) -> Result<Self, L7Error> {
        let mut checks = HashMap::new();
        // Entries share their rules (one policy for many peers): compile
        // each distinct entry (its rules and the refs behind them) once.
        let mut seen: HashMap<&PolicyEntry, Arc<Check>> = HashMap::new();
        for (k, e) in &d.entries {
            if let Verdict::Redirect(l7) = &e.verdict {
                let c = match seen.get(e) {
                    Some(c) => Arc::clone(c),
                    None => {
                        let c = Arc::new(Check::compile(l7, e)?);
                        seen.insert(e, Arc::clone(&c));
                        c
                    }
                };
                checks.insert(*k, c);
            }
        }
        let policy = DirectionPolicy {
            enforced: true,
            default_deny: d.default_deny,
            entries: d.entries.iter().map(|(k, e)| (*k, Arc::new(e.clone()))).collect(),
            errors: Vec::new(),
        };
        Ok(Self { policy, checks })
    }
}

#[derive(Debug)]
struct Local {
    name: Arc<str>,
    identity: u32,
    ingress: Option<Compiled>,
    egress: Option<Compiled>,
}

/// Everything the proxy knows, as of one update. Immutable once built:
/// the proxy swaps in a new one per update.
#[derive(Debug, Default)]
pub struct Rules {
    generation: u64,
    synced: bool,
    wire: HashMap<u32, Endpoint>,
    /// Each endpoint compiled, by id (an update recompiles only its own).
    locals: HashMap<u32, Arc<Local>>,
    by_addr: HashMap<IpAddr, Arc<Local>>,
    /// The ipcache: (IPv6, prefix length, prefixes), longest first.
    ipcache: Vec<(bool, u8, HashMap<IpAddr, u32>)>,
    ipcache_wire: Vec<(Cidr, u32)>,
}

/// Why a connection is refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The proxy has had no rules from the agent yet.
    #[error("no rules from the agent yet")]
    NotSynced,
    /// Neither end is a local endpoint.
    #[error("neither {client} nor {server} is a local endpoint")]
    NotLocal {
        /// The client's address.
        client: IpAddr,
        /// The original destination's address.
        server: IpAddr,
    },
    /// An end's policy denies the connection (it changed since the kernel
    /// redirected it).
    #[error("{side} policy of {endpoint} denies it")]
    Denied {
        /// Which end.
        side: Side,
        /// The endpoint.
        endpoint: String,
    },
}

/// Why an update could not be taken (the proxy keeps the rules it had).
#[derive(Debug, thiserror::Error)]
#[error("endpoint {endpoint}: {error}")]
pub struct UpdateError {
    /// The endpoint whose rules did not compile.
    pub endpoint: String,
    /// Why.
    pub error: L7Error,
}

impl Rules {
    /// The rules after `u`, or why `u` cannot be taken.
    pub fn apply(&self, u: &Update) -> Result<Rules, UpdateError> {
        let (mut wire, mut locals) =
            if u.full { (HashMap::new(), HashMap::new()) } else { (self.wire.clone(), self.locals.clone()) };
        for id in &u.removed {
            wire.remove(id);
            locals.remove(id);
        }
        // Only the endpoints in the update are compiled anew (an update of
        // the ipcache alone, as a learnt name brings, compiles nothing).
        for e in &u.endpoints {
            let compile = |d: &Option<Direction>| {
                d.as_ref()
                    .map(Compiled::new)
                    .transpose()
                    .map_err(|error| UpdateError { endpoint: e.name.clone(), error })
            };
            let local = Arc::new(Local {
                name: e.name.as_str().into(),
                identity: e.identity,
                ingress: compile(&e.ingress)?,
                egress: compile(&e.egress)?,
            });
            locals.insert(e.id, local);
            wire.insert(e.id, e.clone());
        }
        let mut by_addr = HashMap::new();
        for e in wire.values() {
            let Some(local) = locals.get(&e.id) else { continue };
            for a in &e.addrs {
                by_addr.insert(a.to_canonical(), Arc::clone(local));
            }
        }
        let ipcache_wire = u.ipcache.clone().unwrap_or_else(|| self.ipcache_wire.clone());
        Ok(Rules {
            generation: u.generation,
            synced: true,
            wire,
            locals,
            by_addr,
            ipcache: index_ipcache(&ipcache_wire),
            ipcache_wire,
        })
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Local endpoints known.
    pub fn endpoints(&self) -> usize {
        self.wire.len()
    }

    /// The identity the kernel gives `ip`: a local endpoint's, else the
    /// ipcache's longest prefix, else world.
    pub fn identity(&self, ip: IpAddr) -> NumericIdentity {
        let ip = ip.to_canonical();
        if let Some(l) = self.by_addr.get(&ip) {
            return NumericIdentity(l.identity);
        }
        for (v6, len, prefixes) in &self.ipcache {
            if *v6 == ip.is_ipv4() {
                continue;
            }
            if let Some(id) = prefixes.get(&Cidr::new(ip, *len).addr()) {
                return NumericIdentity(*id);
            }
        }
        match ip {
            IpAddr::V4(_) => Reserved::WorldIpv4.id(),
            IpAddr::V6(_) => Reserved::WorldIpv6.id(),
        }
    }

    /// The checks for a TCP connection from `client` to `server:port`.
    pub fn connection(&self, client: IpAddr, server: IpAddr, port: u16) -> Result<Connection, Refused> {
        self.flow(client, server, Proto::Tcp, port)
    }

    /// The checks for a flow of `proto` (a TCP connection, a UDP query)
    /// from `client` to `server:port`.
    pub fn flow(&self, client: IpAddr, server: IpAddr, proto: Proto, port: u16) -> Result<Connection, Refused> {
        if !self.synced {
            return Err(Refused::NotSynced);
        }
        let (client, server) = (client.to_canonical(), server.to_canonical());
        let (c, s) = (self.by_addr.get(&client), self.by_addr.get(&server));
        if c.is_none() && s.is_none() {
            return Err(Refused::NotLocal { client, server });
        }
        let mut checks = Vec::new();
        let client_identity = self.identity(client);
        for (side, local, peer) in [(Side::Egress, c, server), (Side::Ingress, s, client)] {
            let Some(local) = local else { continue };
            let dir = match side {
                Side::Egress => &local.egress,
                Side::Ingress => &local.ingress,
            };
            let Some(dir) = dir else { continue };
            let peer_identity = if side == Side::Ingress { client_identity } else { self.identity(peer) };
            match dir.policy.lookup(Some(peer), peer_identity, proto, port) {
                Decision::Entry(k, e) => match e.verdict {
                    Verdict::Allow => {}
                    Verdict::Deny => return Err(Refused::Denied { side, endpoint: local.name.to_string() }),
                    Verdict::Redirect(_) => {
                        // Compiled with the direction: present for every
                        // redirect key.
                        if let Some(check) = dir.checks.get(k) {
                            checks.push((side, Arc::clone(check)));
                        } else {
                            return Err(Refused::Denied { side, endpoint: local.name.to_string() });
                        }
                    }
                },
                Decision::Default { deny: true } => {
                    return Err(Refused::Denied { side, endpoint: local.name.to_string() });
                }
                Decision::Default { deny: false } => {}
            }
        }
        // What a verdict names, made once per connection, not per request.
        let allowed_by = checks.iter().flat_map(|(side, c)| c.rules.iter().map(|r| (*side, Arc::clone(r)))).collect();
        let checks = checks
            .into_iter()
            .map(|(side, c)| {
                let denied_by = c.rules.iter().map(|r| (side, Arc::clone(r))).collect();
                (side, c, denied_by)
            })
            .collect();
        Ok(Connection {
            client: c.map(|l| Arc::clone(&l.name)),
            server: s.map(|l| Arc::clone(&l.name)),
            client_identity: client_identity.0,
            checks,
            allowed_by,
        })
    }
}

/// The ipcache by family and prefix length, longest first: a lookup tries
/// each length present once (at most 33 or 129 hash lookups, whatever the
/// number of prefixes).
fn index_ipcache(entries: &[(Cidr, u32)]) -> Vec<(bool, u8, HashMap<IpAddr, u32>)> {
    let mut by_len: std::collections::BTreeMap<(bool, std::cmp::Reverse<u8>), HashMap<IpAddr, u32>> =
        Default::default();
    for (c, id) in entries {
        by_len.entry((!c.is_ipv4(), std::cmp::Reverse(c.len()))).or_default().insert(c.addr(), *id);
    }
    by_len.into_iter().map(|((v6, std::cmp::Reverse(len)), m)| (v6, len, m)).collect()
}

/// The checks a connection's requests pass, in order: the client's egress
/// rules, then the server's ingress rules.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client's endpoint (`namespace/pod`), when local.
    pub client: Option<Arc<str>>,
    /// The server's endpoint, when local.
    pub server: Option<Arc<str>>,
    /// The client's identity (what RateLimits count by).
    pub client_identity: u32,
    /// Each check, with what a request it denies is denied by.
    checks: Vec<(Side, Arc<Check>, RuleRefs)>,
    /// What an allowed request is allowed by: every check's rules.
    allowed_by: RuleRefs,
}

/// The rules behind a verdict, with the side whose policy they are.
pub type RuleRefs = Arc<[(Side, Arc<RuleRef>)]>;

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// Every check allowed it.
    pub allowed: bool,
    /// The side and rules that decided: for an allowed request every
    /// check's rules; for a denied one those of the first check that
    /// denied (the rules that came closest).
    pub by: RuleRefs,
    /// An allowed request's `headerMatches` mismatch actions, in the order
    /// they apply to what is forwarded.
    pub actions: Vec<HeaderAction>,
}

impl Verdicts {
    /// Denied, by no rule (a request refused before any rule could see it).
    pub fn denied() -> Self {
        Self { allowed: false, by: Arc::new([]), actions: Vec::new() }
    }
}

impl Connection {
    /// Whether any L7 rule applies (else every request passes, still
    /// proxied and visible).
    pub fn has_rules(&self) -> bool {
        !self.checks.is_empty()
    }

    /// The RateLimits on this connection's requests (the server's:
    /// RateLimits are ingress rules).
    pub fn limits(&self) -> Vec<&AppliedLimit> {
        self.checks.iter().filter(|(side, ..)| *side == Side::Ingress).flat_map(|(_, c, _)| &c.limits).collect()
    }

    /// Decides `req` with every check; denied when any denies. An allowed
    /// request comes with its `headerMatches` actions, in order; a check
    /// sees the headers as the checks before it left them (Cilium's two
    /// proxy passes: the server's ingress rules see what the client's
    /// egress rules forwarded).
    pub fn decide(&self, req: &HttpRequest<'_>) -> Verdicts {
        let mut actions: Vec<HeaderAction> = Vec::new();
        // The headers as changed by the actions so far (none: as sent).
        let mut changed: Option<Vec<(String, String)>> = None;
        for (_, check, denied_by) in &self.checks {
            let decision = match &changed {
                None => check.decide(req),
                Some(h) => {
                    let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    check.decide(&HttpRequest { headers: &headers, ..*req })
                }
            };
            let Some(d) = decision.filter(|d| d.allowed) else {
                return Verdicts { allowed: false, by: Arc::clone(denied_by), actions: Vec::new() };
            };
            if !d.header_actions.is_empty() {
                let h = changed.get_or_insert_with(|| {
                    req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect()
                });
                for a in &d.header_actions {
                    a.apply(h);
                }
                actions.extend(d.header_actions);
            }
        }
        Verdicts { allowed: true, by: Arc::clone(&self.allowed_by), actions }
    }

    /// Decides a DNS query for `qname` with every check; denied when any
    /// denies (a check of rules that are not DNS rules denies every query).
    pub fn decide_dns(&self, qname: &str) -> Verdicts {
        for (_, check, denied_by) in &self.checks {
            if !check.allows_name(qname) {
                return Verdicts { allowed: false, by: Arc::clone(denied_by), actions: Vec::new() };
            }
        }
        Verdicts { allowed: true, by: Arc::clone(&self.allowed_by), actions: Vec::new() }
    }
}

#[cfg(test)]
mod tests;
