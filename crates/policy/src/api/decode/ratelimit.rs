//! `bulkhead.io/v1alpha1 RateLimit`: a bulkhead kind (Cilium has none).
//!
//! Its entries read like a Cilium ingress rule cut down to what a limit
//! needs — `fromEndpoints` or `fromEntities` (neither: every peer),
//! `toPorts[].ports` (TCP: the limits are enforced by the HTTP proxy) —
//! plus the limit itself. Everything else is an error naming the field,
//! so a misspelt limit is never silently unlimited.

use super::{Decoder, Fields, Unknown};
use crate::api::{PeerRule, PortProtocol, PortRule, PortSpec, Protocol, RateLimitRule, RateLimitSpec, RequestLimit};
use crate::diag::FieldPath;
use crate::yaml::Node;

const SPEC_FIELDS: &[&str] = &["endpointSelector", "ingress"];
const ENTRY_FIELDS: &[&str] =
    &["fromEndpoints", "fromEntities", "toPorts", "requestsPerSecond", "burst", "maxConcurrentRequests"];

/// The largest rate, burst or concurrency accepted (far beyond what one
/// proxy serves; a bound keeps the arithmetic exact).
const MAX_LIMIT: i64 = 1_000_000;

impl Decoder<'_> {
    /// `spec` of a RateLimit.
    pub(super) fn rate_limit_spec(&mut self, f: &Fields<'_>) -> Option<RateLimitSpec> {
        let path = f.path("spec");
        let node = self.required(f, "spec", "add `spec: {endpointSelector: ..., ingress: [...]}`")?;
        let errors = self.sink.error_count();
        let s = self.map(node, &path, SPEC_FIELDS, Unknown::Error)?;
        let endpoint_selector = match s.get("endpointSelector") {
            Some(n) => self.label_selector(n, &s.path("endpointSelector")),
            None => {
                self.sink.error_fix(
                    node.pos,
                    &s.path("endpointSelector"),
                    "missing field `endpointSelector`",
                    "add `endpointSelector: {}` to limit every endpoint of the namespace",
                );
                None
            }
        };
        let ingress = match s.value("ingress") {
            Some(n) => self.items(n, &s.path("ingress"), Self::rate_limit_rule).unwrap_or_default(),
            None => Vec::new(),
        };
        if ingress.is_empty() && self.sink.error_count() == errors {
            self.sink.error_fix(
                node.pos,
                &s.path("ingress"),
                "a RateLimit needs at least one `ingress` entry",
                "add `ingress: [{toPorts: [{ports: [{port: \"80\"}]}], requestsPerSecond: 100}]`",
            );
        }
        if self.sink.error_count() != errors {
            return None;
        }
        Some(RateLimitSpec { endpoint_selector: endpoint_selector?, ingress })
    }

    fn rate_limit_rule(&mut self, node: &Node, path: &FieldPath) -> Option<RateLimitRule> {
        let errors = self.sink.error_count();
        let f = self.map(node, path, ENTRY_FIELDS, Unknown::Error)?;
        let mut peers = PeerRule { path: path.to_string(), ..PeerRule::default() };
        if let Some(n) = f.get("fromEndpoints") {
            peers.endpoints = self.items(n, &f.path("fromEndpoints"), Self::label_selector);
        }
        if let Some(n) = f.get("fromEntities") {
            peers.entities = self.entities(n, &f.path("fromEntities"));
        }
        if let (Some(_), Some(n)) = (f.get("fromEndpoints"), f.get("fromEntities")) {
            self.sink.error_fix(
                n.pos,
                &f.path("fromEntities"),
                "combining fromEndpoints and fromEntities in one entry is not supported",
                "split them into separate entries (each is its own limit)",
            );
        }
        match f.value("toPorts") {
            Some(n) => peers.to_ports = self.items(n, &f.path("toPorts"), Self::rate_limit_ports).unwrap_or_default(),
            None => self.sink.error_fix(
                node.pos,
                &f.path("toPorts"),
                "missing field `toPorts`: a limit applies to named ports",
                "add `toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]`",
            ),
        }
        let mut int = |key: &str| f.value(key).and_then(|n| self.int(n, &f.path(key), 1, MAX_LIMIT)).map(|v| v as u32);
        let limit = RequestLimit {
            requests_per_second: int("requestsPerSecond"),
            burst: int("burst"),
            max_concurrent_requests: int("maxConcurrentRequests"),
        };
        let given = |key: &str| f.value(key).is_some();
        if !given("requestsPerSecond") && !given("maxConcurrentRequests") {
            self.sink.error_fix(
                node.pos,
                path,
                "the entry sets no limit",
                "set `requestsPerSecond` (with an optional `burst`) and/or `maxConcurrentRequests`",
            );
        }
        if let Some(b) = f.value("burst")
            && !given("requestsPerSecond")
        {
            self.sink.error_fix(
                b.pos,
                &f.path("burst"),
                "`burst` needs `requestsPerSecond` (it is the size of the bucket that rate refills)",
                "add `requestsPerSecond`",
            );
        }
        (self.sink.error_count() == errors).then_some(RateLimitRule { peers, limit })
    }

    /// A `toPorts` entry of a RateLimit: `ports` only, TCP.
    fn rate_limit_ports(&mut self, node: &Node, path: &FieldPath) -> Option<PortRule> {
        let errors = self.sink.error_count();
        let f = self.map(node, path, &["ports", "rules"], Unknown::Error)?;
        if let Some(r) = f.entries.iter().find(|(k, _)| k.text == "rules") {
            self.sink.error_fix(
                r.0.pos,
                &f.path("rules"),
                "a RateLimit limits requests; it does not allow or deny them",
                "put L7 rules in a CiliumNetworkPolicy",
            );
        }
        let pp = f.path("ports");
        let Some(pn) = f.value("ports") else {
            self.sink.error_fix(node.pos, &pp, "missing field `ports`", "add `ports: [{port: \"80\"}]`");
            return None;
        };
        let mut ports: Vec<PortProtocol> = Vec::new();
        for (i, item) in self.seq(pn, &pp)?.iter().enumerate() {
            let ip = pp.index(i);
            let Some(mut p) = self.port_protocol(item, &ip) else { continue };
            match p.protocol {
                Protocol::Tcp => {}
                // Omitted (Cilium's ANY): the proxy serves TCP.
                Protocol::Any if item.get("protocol").is_none() => p.protocol = Protocol::Tcp,
                other => {
                    self.sink.error_fix(
                        item.pos,
                        &ip.field("protocol"),
                        format!("rate limits apply to HTTP over TCP, not {}", other.as_str()),
                        "set `protocol: TCP` or leave it out",
                    );
                    continue;
                }
            }
            if p.port == PortSpec::Number(0) {
                self.sink.error_fix(
                    item.pos,
                    &ip.field("port"),
                    "a rate limit needs an explicit port (every port would send all TCP traffic to the HTTP proxy)",
                    "e.g. `port: \"80\"` or a named port",
                );
                continue;
            }
            ports.push(p);
        }
        if ports.is_empty() {
            if self.sink.error_count() == errors {
                self.sink.error_fix(pn.pos, &pp, "no ports listed", "add `- port: \"80\"`");
            }
            return None;
        }
        Some(PortRule { ports, rules: None })
    }
}
