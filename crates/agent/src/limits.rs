//! What the applied policies ask for that this node cannot do (yet), said
//! plainly at `apply` time rather than discovered as silent drops.
//!
//! HTTP rules and RateLimits are enforced by the L7 proxy; while it is not
//! there (or the agent runs without one) their traffic is dropped
//! (`SOCKET_LOOKUP_FAILED`: fail closed). Other L7 rules (DNS, Kafka, TLS, l7proto) have no proxy
//! yet and are dropped the same way, and `toFQDNs` matches no address,
//! because names are learnt only from DNS answers a DNS proxy sees.

use bulkhead_policy::api::{L7Rules, Policy, PolicyBody};

/// One line per rule that is not enforced as written; `no_http_proxy`:
/// why the HTTP proxy does not hold the rules (`None`: it does).
pub fn not_enforced<'a>(policies: impl IntoIterator<Item = &'a Policy>, no_http_proxy: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for p in policies {
        let name = format!("{} {}", p.kind, p.display_name());
        if let (PolicyBody::RateLimit(spec), Some(why)) = (&p.body, no_http_proxy) {
            for r in &spec.ingress {
                out.push(format!(
                    "{name} {}: rate limits need the L7 proxy, and {why}: the limited traffic is dropped (SOCKET_LOOKUP_FAILED: no proxy socket)",
                    r.peers.path
                ));
            }
        }
        let PolicyBody::Cilium(rules) = &p.body else { continue };
        for rule in rules {
            let sections = [&rule.ingress, &rule.egress].into_iter().flatten().flatten();
            for peer in sections {
                for pr in &peer.to_ports {
                    let what = match &pr.rules {
                        Some(L7Rules::Http(_)) => {
                            if let Some(why) = no_http_proxy {
                                out.push(format!(
                                    "{name} {}: HTTP rules need the L7 proxy, and {why}: this traffic is dropped (SOCKET_LOOKUP_FAILED: no proxy socket)",
                                    peer.path
                                ));
                            }
                            continue;
                        }
                        Some(L7Rules::Dns(_)) => "DNS rules",
                        Some(L7Rules::Kafka(_)) => "Kafka rules",
                        Some(L7Rules::Tls(_)) => "TLS serverNames",
                        Some(L7Rules::Generic { .. }) => "l7proto rules",
                        None => continue,
                    };
                    out.push(format!(
                        "{name} {}: {what} need a proxy bulkhead does not have yet: this traffic is dropped (SOCKET_LOOKUP_FAILED: no proxy socket)",
                        peer.path
                    ));
                }
                if peer.fqdns.is_some() {
                    out.push(format!(
                        "{name} {}: toFQDNs needs the DNS proxy, which bulkhead does not have yet: it matches no address",
                        peer.path
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
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
        let lines = super::not_enforced(&policies, Some("it is not running"));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("allow-stripe-api-only spec.egress[0]: toFQDNs"), "{lines:#?}");
        assert!(lines[1].contains("allow-stripe-api-only spec.egress[1]: DNS rules"), "{lines:#?}");
        assert!(
            lines[2]
                .contains("restrict-backend-api spec.ingress[0]: HTTP rules need the L7 proxy, and it is not running"),
            "{lines:#?}"
        );
        // With the proxy holding the rules, HTTP rules are enforced.
        let lines = super::not_enforced(&policies, None);
        assert_eq!(lines.len(), 2, "{lines:#?}");
    }
}
