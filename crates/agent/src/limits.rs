//! What the applied policies ask for that this node cannot do (yet), said
//! plainly at `apply` time rather than discovered as silent drops.
//!
//! HTTP rules, RateLimits and DNS rules are enforced by the L7 proxy; while
//! it is not there (or the agent runs without one) their traffic is dropped
//! (`SOCKET_LOOKUP_FAILED`: fail closed), and `toFQDNs` learns no address
//! (names are learnt from the answers the DNS proxy allows). Other L7 rules
//! (Kafka, TLS, l7proto) have no proxy yet and are dropped the same way.

use bulkhead_policy::api::{L7Rules, Policy, PolicyBody};

/// What applied policies ask for that this node cannot do as written,
/// read from the policies before their objects are moved into the store,
/// and worded once the proxy's state is known ([`NotEnforced::lines`]).
#[derive(Debug)]
pub struct NotEnforced(Vec<Need>);

#[derive(Debug)]
enum Need {
    /// HTTP rules or RateLimits (`dns` false), DNS rules (true): enforced
    /// while the proxy holds them.
    Proxy { subject: String, what: &'static str, traffic: &'static str, dns: bool },
    /// Said whatever the proxy does.
    Always(String),
}

impl NotEnforced {
    /// Reads what `policies` need.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Self {
        let mut out = Vec::new();
        for p in policies {
            let name = format!("{} {}", p.kind, p.display_name());
            if let PolicyBody::RateLimit(spec) = &p.body {
                for r in &spec.ingress {
                    out.push(Need::Proxy {
                        subject: format!("{name} {}", r.peers.path),
                        what: "rate limits",
                        traffic: "the limited traffic",
                        dns: false,
                    });
                }
            }
            let PolicyBody::Cilium(rules) = &p.body else { continue };
            for rule in rules {
                let sections = [&rule.ingress, &rule.egress].into_iter().flatten().flatten();
                for peer in sections {
                    for pr in &peer.to_ports {
                        let what = match &pr.rules {
                            Some(rules @ (L7Rules::Http(_) | L7Rules::Dns(_))) => {
                                let dns = matches!(rules, L7Rules::Dns(_));
                                out.push(Need::Proxy {
                                    subject: format!("{name} {}", peer.path),
                                    what: if dns { "DNS rules" } else { "HTTP rules" },
                                    traffic: "this traffic",
                                    dns,
                                });
                                continue;
                            }
                            Some(L7Rules::Kafka(_)) => "Kafka rules",
                            Some(L7Rules::Tls(_)) => "TLS serverNames",
                            Some(L7Rules::Generic { .. }) => "l7proto rules",
                            None => continue,
                        };
                        out.push(Need::Always(format!(
                            "{name} {}: {what} need a proxy bulkhead does not have yet: this traffic is dropped (SOCKET_LOOKUP_FAILED: no proxy socket)",
                            peer.path
                        )));
                    }
                    if peer.fqdns.is_some() {
                        out.push(Need::Proxy {
                            subject: format!("{name} {}", peer.path),
                            what: "toFQDNs",
                            traffic: "no address is learnt, and this traffic",
                            dns: true,
                        });
                    }
                }
            }
        }
        Self(out)
    }

    /// One line per rule that is not enforced as written; `no_proxy(dns)`:
    /// why the HTTP (`false`) or DNS (`true`) proxy does not hold the rules
    /// (`None`: it does).
    pub fn lines(&self, no_proxy: impl Fn(bool) -> Option<String>) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .iter()
            .filter_map(|n| match n {
                Need::Always(line) => Some(line.clone()),
                Need::Proxy { subject, what, traffic, dns } => no_proxy(*dns).map(|why| format!(
                    "{subject}: {what} need the L7 proxy, and {why}: {traffic} is dropped (SOCKET_LOOKUP_FAILED: no proxy socket)"
                )),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_policy::api::Object;
    use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
    use bulkhead_policy::diag::Sink;

    #[test]
    fn names_the_seed_rules_that_need_proxies() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed/policies");
        let mut policies = Vec::new();
        for f in ["restrict-backend-api.yaml", "allow-stripe-api-only.yaml"] {
            let text = std::fs::read_to_string(format!("{dir}/{f}")).expect("seed policy");
            let mut sink = Sink::default();
            let opts = DecodeOptions { default_namespace: "production".into() };
            policies.extend(decode_str(&text, &opts, &mut sink).into_iter().filter_map(|o| match o {
                Object::Policy(p) => Some(p),
                _ => None,
            }));
        }
        let lines = super::NotEnforced::of(&policies).lines(|_| Some("it is not running".into()));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("allow-stripe-api-only spec.egress[0]: toFQDNs need the L7 proxy"), "{lines:#?}");
        assert!(
            lines[1]
                .contains("allow-stripe-api-only spec.egress[1]: DNS rules need the L7 proxy, and it is not running"),
            "{lines:#?}"
        );
        assert!(
            lines[2]
                .contains("restrict-backend-api spec.ingress[0]: HTTP rules need the L7 proxy, and it is not running"),
            "{lines:#?}"
        );
        // With the proxy holding the rules, HTTP and DNS rules and toFQDNs are enforced.
        let lines = super::NotEnforced::of(&policies).lines(|_| None);
        assert!(lines.is_empty(), "{lines:#?}");
        // Without a DNS port, DNS rules and toFQDNs are not.
        let lines = super::NotEnforced::of(&policies).lines(|dns| dns.then(|| "no DNS port".to_string()));
        assert_eq!(lines.len(), 2, "{lines:#?}");
    }
}
