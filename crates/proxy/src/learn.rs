//! What the DNS proxy learns, told to the agent, and the answer held until
//! the kernel enforces it ([`Learner::hold`]).
//!
//! The agent subscribes on the control socket (`{"subscribe":"fqdn"}`); the
//! proxy then writes one [`Learn`] per allowed answer with addresses and
//! reads one [`Learnt`] per learn once the agent has the addresses in the
//! kernel's ipcache and policies (and on disk). Only then does the client
//! get its answer, so its first connection to a new address is never
//! dropped while policy catches up. An answer is held at most
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
}

/// How a held answer was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// After the agent said the kernel enforces its addresses.
    Enforced,
    /// When the hold time ran out first.
    TimedOut,
    /// At once: no agent was subscribed (or it went away meanwhile).
    NoAgent,
}

/// Counts of released answers, by how.
#[derive(Debug, Default)]
pub struct HoldStats {
    /// Released once enforced.
    pub enforced: AtomicU64,
    /// Released when the hold time ran out.
    pub timed_out: AtomicU64,
    /// Released with no agent to tell.
    pub no_agent: AtomicU64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Learner {
    /// The subscribed agent: its subscription number and channel.
    agent: Mutex<Option<(u64, mpsc::UnboundedSender<Learn>)>>,
    subscriptions: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next: AtomicU64,
    /// How held answers were released.
    pub stats: HoldStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Learner {
    /// Tells the agent that `client`'s lookup of `name` returned `addrs`,
    /// and waits (at most `timeout`) until it enforces them.
    pub async fn hold(&self, client: IpAddr, name: &str, addrs: &[IpAddr], ttl: u32, timeout: Duration) -> Held {
        let held = self.wait(client, name, addrs, ttl, timeout).await;
        let counter = match held {
            Held::Enforced => &self.stats.enforced,
            Held::TimedOut => &self.stats.timed_out,
            Held::NoAgent => &self.stats.no_agent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        held
    }

    async fn wait(&self, client: IpAddr, name: &str, addrs: &[IpAddr], ttl: u32, timeout: Duration) -> Held {
        let Some((_, agent)) = lock(&self.agent).clone() else { return Held::NoAgent };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        let learn = Learn { id, client, name: name.to_owned(), addrs: addrs.to_vec(), ttl };
        if agent.send(learn).is_err() {
            lock(&self.waiting).remove(&id);
            return Held::NoAgent;
        }
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
        (n, rx)
    }

    /// The agent enforces learn `id`: its answer goes out.
    pub fn learnt(&self, id: u64) {
        if let Some(tx) = lock(&self.waiting).remove(&id) {
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
        }
    }
}
