//! What the DNS proxy learns, told to the agent, and the answer held until
//! the kernel enforces it ([`Learner::hold`]).
//!
//! The agent subscribes on the control socket (`{"subscribe":"fqdn"}`); the
//! proxy then writes one [`Learn`] per allowed answer with addresses and
//! reads one [`Learnt`] per learn once the agent has the addresses in the
//! kernel's ipcache and policies (and on disk). Only then does the client
//! get its answer, so its first connection to a new address is never
//! dropped while policy catches up. The reply says until when the agent
//! holds those addresses at least: until then an answer with no other
//! address goes out at once, and the agent hears of it only when its
//! TTL would outlast what the agent holds, or that nears its end — one
//! learn at a time per client and name, whose reply moves the end on (a
//! name asked thousands of times a second costs the agent a learn every
//! few seconds, and never waits). An answer is held at most
//! [`crate::dns_proxy::DnsSettings::hold`]; past it, or with no agent
//! subscribed, it is released anyway and counted: the client may then find
//! its first connection dropped (fail closed), never let through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// One allowed answer's addresses, for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learn {
    /// Names the reply ([`Learnt`]).
    pub id: u64,
    /// The client that asked (its endpoint is the lookup's source).
    pub client: IpAddr,
    /// The name asked for, lowercased with its trailing dot.
    pub name: String,
    /// The A and AAAA addresses of the name and its CNAME chain.
    pub addrs: Vec<IpAddr>,
    /// The lowest TTL of the records used, in seconds.
    pub ttl: u32,
}

/// The agent's reply: learn `learnt` is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learnt {
    /// The [`Learn::id`].
    pub learnt: u64,
    /// Unix seconds until which the agent holds every address of that
    /// learn at least (0: no promise); until then an answer with no other
    /// address need not wait.
    #[serde(default)]
    pub until: u64,
}

/// How a held answer was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// After the agent said the kernel enforces its addresses.
    Enforced,
    /// At once: the agent said the kernel holds these addresses for this
    /// name until after now (the learn still goes to it, to extend them).
    Known,
    /// When the hold time ran out first.
    TimedOut,
    /// At once: no agent was subscribed (or it went away meanwhile).
    NoAgent,
}

impl Held {
    /// As metrics and flows name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Known => "known",
            Self::TimedOut => "timeout",
            Self::NoAgent => "no-agent",
        }
    }
}

/// Clients' names whose addresses the agent said it holds, at most (past
/// it the memory starts over: answers then wait for the agent again).
const MAX_KNOWN: usize = 65_536;

/// A learn the agent has not answered: its client, name and addresses,
/// and the held answer's waker (none for one that only extends).
type Waiting = ((IpAddr, String), Vec<IpAddr>, Option<oneshot::Sender<()>>);

/// What the agent holds for a client's name: the addresses, until when
/// (unix s), and whether a learn extending them is on its way.
#[derive(Debug)]
struct Known {
    addrs: Vec<IpAddr>,
    until: u64,
    extending: bool,
}

/// How long before the agent's hold ends a learn goes to extend it.
const EXTEND_BEFORE: u64 = 2;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Learner {
    /// The subscribed agent: its subscription number and channel.
    agent: Mutex<Option<(u64, mpsc::UnboundedSender<Learn>)>>,
    subscriptions: AtomicU64,
    /// Answers waiting, by learn.
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// What the agent holds, per client and name.
    known: Mutex<HashMap<(IpAddr, String), Known>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Learner {
    /// Tells the agent that `client`'s lookup of `name` returned `addrs`,
    /// and waits (at most `timeout`) until it enforces them — not at all
    /// when it already said it holds them past now (telling it only when
    /// it should extend them).
    pub async fn hold(&self, client: IpAddr, name: &str, addrs: &[IpAddr], ttl: u32, timeout: Duration) -> Held {
        let Some((_, agent)) = lock(&self.agent).clone() else { return Held::NoAgent };
        let key = (client, name.to_owned());
        // A second left over: the agent's clock and this one's may disagree
        // by the second they are read in.
        let now = unix_now() + 1;
        let mut waker = None;
        let rx = {
            let mut known = lock(&self.known);
            match known.get_mut(&key).filter(|k| k.until > now && addrs.iter().all(|a| k.addrs.contains(a))) {
                Some(k) if k.extending || k.until > now + u64::from(ttl) + EXTEND_BEFORE => return Held::Known,
                Some(k) => {
                    k.extending = true;
                    None
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    waker = Some(tx);
                    Some(rx)
                }
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiting).insert(id, (key, addrs.to_vec(), waker));
        let learn = Learn { id, client, name: name.to_owned(), addrs: addrs.to_vec(), ttl };
        if agent.send(learn).is_err() {
            lock(&self.waiting).remove(&id);
            return Held::NoAgent;
        }
        let Some(rx) = rx else { return Held::Known };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Held::Enforced,
            Ok(Err(_)) => Held::NoAgent,
            Err(_) => {
                lock(&self.waiting).remove(&id);
                Held::TimedOut
            }
        }
    }

    /// A subscribing agent: its subscription number and the learns to
    /// send it (a later subscriber takes over).
    pub fn subscribe(&self) -> (u64, mpsc::UnboundedReceiver<Learn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let n = self.subscriptions.fetch_add(1, Ordering::Relaxed);
        *lock(&self.agent) = Some((n, tx));
        // A new agent may know less than the last one said.
        lock(&self.known).clear();
        (n, rx)
    }

    /// The agent enforces learn `r.learnt` until `r.until`: its answer goes
    /// out, if it was held.
    pub fn learnt(&self, r: Learnt) {
        let Some((key, addrs, waker)) = lock(&self.waiting).remove(&r.learnt) else { return };
        {
            let mut known = lock(&self.known);
            if r.until == 0 {
                known.remove(&key);
            } else {
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(key, Known { addrs, until: r.until, extending: false });
            }
        }
        if let Some(tx) = waker {
            let _ = tx.send(());
        }
    }

    /// Subscription `n` went away: answers waiting on it are released
    /// now, and nothing more is sent to it.
    pub fn unsubscribe(&self, n: u64) {
        let mut agent = lock(&self.agent);
        if agent.as_ref().is_some_and(|(current, _)| *current == n) {
            *agent = None;
            lock(&self.waiting).clear();
            lock(&self.known).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[tokio::test]
    async fn an_answer_waits_for_the_agent_once_then_goes_while_the_agent_holds_its_addresses() {
        let l = std::sync::Arc::new(Learner::default());
        let (client, a, b) = (ip("198.18.1.30"), ip("198.18.100.10"), ip("198.18.100.11"));
        let hold = Duration::from_secs(5);
        // No agent: at once.
        assert_eq!(l.hold(client, "api.stripe.com.", &[a], 30, hold).await, Held::NoAgent);
        let (n, mut rx) = l.subscribe();
        let waiter = tokio::spawn({
            let l = std::sync::Arc::clone(&l);
            async move { l.hold(client, "api.stripe.com.", &[a], 30, hold).await }
        });
        let learn = rx.recv().await.expect("the learn reaches the agent");
        assert_eq!((learn.name.as_str(), learn.addrs.as_slice(), learn.ttl), ("api.stripe.com.", &[a][..], 30));
        assert!(!waiter.is_finished(), "released before the agent answered");
        l.learnt(Learnt { learnt: learn.id, until: unix_now() + 60 });
        assert_eq!(waiter.await.expect("task"), Held::Enforced);
        // Held by the agent past its TTL: the same address goes at once,
        // and the agent is not bothered.
        assert_eq!(l.hold(client, "api.stripe.com.", &[a], 30, hold).await, Held::Known);
        assert!(rx.try_recv().is_err(), "a learn the agent did not need");
        // An answer whose TTL outlasts the agent's hold goes at once too,
        // and one learn extends it (not one per answer) ...
        for _ in 0..3 {
            assert_eq!(l.hold(client, "api.stripe.com.", &[a], 59, hold).await, Held::Known);
        }
        let extend = rx.recv().await.expect("the learn that extends the address");
        assert_eq!(extend.ttl, 59);
        assert!(rx.try_recv().is_err(), "one learn extends");
        // ... whose reply moves the hold on: such answers stop telling it.
        l.learnt(Learnt { learnt: extend.id, until: unix_now() + 120 });
        assert_eq!(l.hold(client, "api.stripe.com.", &[a], 59, hold).await, Held::Known);
        assert!(rx.try_recv().is_err(), "held long enough now");
        // Another client's lookup is its own (the agent records who asked).
        let other = ip("198.18.1.31");
        let waiter = tokio::spawn({
            let l = std::sync::Arc::clone(&l);
            async move { l.hold(other, "api.stripe.com.", &[a], 30, hold).await }
        });
        let learn = rx.recv().await.expect("the other client's learn");
        assert_eq!(learn.client, other);
        l.learnt(Learnt { learnt: learn.id, until: unix_now() + 60 });
        assert_eq!(waiter.await.expect("task"), Held::Enforced);
        // A new address waits; the hold time runs out without an answer.
        assert_eq!(l.hold(client, "api.stripe.com.", &[a, b], 30, Duration::from_millis(20)).await, Held::TimedOut);
        // The agent goes: waiting answers are released, nothing is known.
        let waiter = tokio::spawn({
            let l = std::sync::Arc::clone(&l);
            async move { l.hold(client, "js.stripe.com.", &[b], 30, hold).await }
        });
        while rx.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        l.unsubscribe(n);
        assert_eq!(waiter.await.expect("task"), Held::NoAgent);
        assert_eq!(l.hold(client, "api.stripe.com.", &[a], 30, hold).await, Held::NoAgent);
    }
}
