//! What the proxy tells the agent about each request it decided: one
//! [`L7Event`] per request and one per response (Hubble's L7 flows), sent
//! to every agent that subscribed on the control socket. The agent names
//! the endpoints and policies and files them with the kernel's flows.
//!
//! Header values that look secret (credentials, cookies, tokens) are
//! replaced before they leave the proxy, as Hubble's redaction does.
//! Nobody subscribed, or a subscriber too slow: events are dropped and
//! counted, never queued without bound; enforcement does not wait on them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bulkhead_policy::repository::RuleRef;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use std::time::Instant;

use crate::rules::{RuleRefs, Verdicts};

/// What replaces a secret-looking header value (Hubble's word).
pub const REDACTED: &str = "HUBBLE_REDACTED";

/// Events a subscriber may fall behind by before it misses some.
const QUEUE: usize = 1 << 14;

/// One request or response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L7Event {
    /// Wall-clock time, nanoseconds since the epoch.
    pub time_ns: u64,
    /// A response (else a request).
    pub response: bool,
    /// The request passed the rules (a response: its request did).
    pub allowed: bool,
    /// The client's address.
    pub client: SocketAddr,
    /// The original destination.
    pub server: SocketAddr,
    /// `GET`, … (the text fields are shared with the response's event).
    pub method: Arc<str>,
    /// `http://host/path?query`, as decided (normalized).
    pub url: Arc<str>,
    /// `HTTP/1.1`.
    pub protocol: Arc<str>,
    /// Request headers as sent (secret-looking values redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The response's status (0 for a request).
    #[serde(default)]
    pub code: u16,
    /// From the request's decision to the response's head.
    #[serde(default)]
    pub latency_ns: u64,
    /// The rules that allowed it, or for a denied request the rules that
    /// came closest; with the side whose policy they are.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub by: RuleRefs,
    /// Why the proxy refused to parse the request (answered 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The RateLimit entry the request was over (answered 429; the rules
    /// in `by` allowed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<Arc<RuleRef>>,
    /// A DNS query (request) or answer (response), instead of HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<DnsInfo>>,
}

/// What a DNS event says (Hubble's `l7.dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsInfo {
    /// The name asked for, lowercased with its trailing dot.
    pub query: String,
    /// Its type (`A`, `AAAA`, …).
    pub qtypes: Vec<String>,
    /// Over UDP (else TCP).
    pub udp: bool,
    /// The answer's rcode (responses).
    #[serde(default)]
    pub rcode: u16,
    /// The addresses the answer taught.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
    /// The CNAME chain followed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// The lowest TTL of the records used.
    #[serde(default)]
    pub ttl: u32,
    /// Record types in the answer that taught something.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
    /// How long the answer was held for its addresses to be enforced, and
    /// how it was released (`enforced`, `timeout`, `no-agent`).
    #[serde(default)]
    pub held_ns: u64,
    /// See `held_ns` (empty: not held).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub held: String,
}

impl L7Event {
    /// A request's event, as decided by `v`.
    pub fn request(
        client: SocketAddr,
        server: SocketAddr,
        protocol: &str,
        method: &str,
        url: String,
        headers: Vec<(String, String)>,
        v: Verdicts,
    ) -> Self {
        Self {
            time_ns: now_ns(),
            response: false,
            allowed: v.allowed,
            client,
            server,
            method: method.into(),
            url: url.into(),
            protocol: protocol.into(),
            headers,
            code: 0,
            latency_ns: 0,
            by: v.by,
            refused: None,
            limited_by: None,
            dns: None,
        }
    }

    /// A DNS query's event, as decided by `v`.
    pub fn dns_query(client: SocketAddr, server: SocketAddr, dns: DnsInfo, v: Verdicts) -> Self {
        let mut e = Self::request(client, server, "DNS", "", String::new(), Vec::new(), v);
        e.dns = Some(Box::new(dns));
        e
    }

    /// The event of the answer to this DNS query: `dns` says what it
    /// carried, `since` the query was decided.
    pub fn dns_answer(&self, dns: DnsInfo, since: Instant) -> Self {
        let mut e = self.response(0, since);
        e.dns = Some(Box::new(dns));
        e
    }

    /// The event of the response to this request: `code`, `since` the
    /// request was decided.
    pub fn response(&self, code: u16, since: Instant) -> Self {
        Self {
            time_ns: now_ns(),
            response: true,
            allowed: self.allowed,
            client: self.client,
            server: self.server,
            method: self.method.clone(),
            url: self.url.clone(),
            protocol: self.protocol.clone(),
            headers: Vec::new(),
            code,
            latency_ns: u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX),
            by: Arc::clone(&self.by),
            refused: self.refused.clone(),
            limited_by: self.limited_by.clone(),
            dns: None,
        }
    }
}

/// A line of the event stream that is not an event: how many events the
/// proxy could not deliver since the last such line (no subscriber, or one
/// that fell behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Events dropped.
    pub lost: u64,
}

/// Where events go: every current subscriber.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Arc<L7Event>>,
    lost: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Self { tx: broadcast::channel(QUEUE).0, lost: AtomicU64::new(0) }
    }
}

impl Events {
    /// Sends `e` to the subscribers (dropped, and counted, when there are none).
    pub fn send(&self, e: impl Into<Arc<L7Event>>) {
        if self.tx.send(e.into()).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<L7Event>> {
        self.tx.subscribe()
    }

    /// Events no subscriber took since the last call (a new subscriber
    /// is told).
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

/// Whether a header's value must not leave the proxy.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(n.as_str(), "authorization" | "proxy-authorization" | "cookie" | "set-cookie")
        || ["token", "secret", "password", "passwd", "api-key", "apikey", "session", "credential"]
            .iter()
            .any(|w| n.contains(w))
}

/// `headers` as an event carries them.
pub fn redacted(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| ((*k).to_owned(), if is_secret(k) { REDACTED } else { v }.to_owned())).collect()
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_values_never_leave_the_proxy() {
        let out = redacted(&[
            ("authorization", "Bearer abc"),
            ("cookie", "s=1"),
            ("x-api-key", "k"),
            ("x-auth-token", "t"),
            ("user-agent", "curl"),
            ("accept", "*/*"),
        ]);
        let values: Vec<&str> = out.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, [REDACTED, REDACTED, REDACTED, REDACTED, "curl", "*/*"]);
    }

    #[test]
    fn events_without_subscribers_are_counted_not_kept() {
        let e = Events::default();
        let ev = L7Event {
            time_ns: 1,
            response: false,
            allowed: true,
            client: "198.18.0.1:1000".parse().expect("addr"),
            server: "198.18.0.2:80".parse().expect("addr"),
            method: "GET".into(),
            url: "http://b/".into(),
            protocol: "HTTP/1.1".into(),
            headers: Vec::new(),
            code: 0,
            latency_ns: 0,
            by: Arc::new([]),
            refused: None,
            limited_by: None,
            dns: None,
        };
        e.send(ev.clone());
        assert_eq!(e.take_lost(), 1);
        assert_eq!(e.take_lost(), 0);
        let mut rx = e.subscribe();
        e.send(ev.clone());
        assert_eq!(*rx.try_recv().expect("delivered"), ev);
    }
}
