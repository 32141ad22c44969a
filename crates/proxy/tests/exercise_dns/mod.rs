//! What the `dns` fuzz target and its corpus replay run on one input: the
//! bytes as a client's query (read and checked, decided by a DNS rule
//! allowing `*.stripe.com`, answered by the proxy itself), and as an
//! upstream's answer to a fixed query (what it teaches).
//!
//! Checks, beyond "no panic": the proxy's own answers decode, are
//! responses, and keep the client's ID and question; the rule allows only
//! names under `stripe.com.`; an answer teaches at most `MAX_LEARNT`
//! distinct addresses, a TTL of 0 when it teaches none, and only from
//! answers with the query's ID.

use bulkhead_policy::api::l7::FqdnSelector;
use bulkhead_policy::l7::DnsPolicy;
use bulkhead_proxy::dns::{BadQuery, MAX_LEARNT, Query, format_error};

/// `api.stripe.com. IN A`, ID 0x1234, recursion desired.
const ASKED: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x06stripe\x03com\x00\x00\x01\x00\x01";

pub fn exercise(data: &[u8]) {
    let policy = DnsPolicy::compile(&[FqdnSelector::MatchPattern("*.stripe.com".into())]).expect("the rule compiles");
    match Query::parse(data) {
        Ok(q) => {
            if policy.allows(&q.name).is_some() {
                assert!(q.name.ends_with(".stripe.com."), "{} allowed", q.name);
            }
            for answer in [q.refuse(false), q.refuse(true), q.server_failure()] {
                let again = Query::parse(&answer);
                assert!(
                    matches!(&again, Err(BadQuery::Malformed { id, why }) if *id == q.id() && why.contains("response")),
                    "the proxy's answer {answer:?} is no response to {:?}: {again:?}",
                    q.name
                );
                let l = q.learn(&answer).expect("the proxy's own answer answers the query");
                assert!(l.addrs.is_empty());
            }
        }
        Err(BadQuery::Malformed { id, .. }) => {
            assert!(matches!(Query::parse(&format_error(id)), Err(BadQuery::Malformed { id: i, .. }) if i == id));
        }
        Err(BadQuery::NoHeader(n)) => assert!(n < 12),
    }
    let asked = Query::parse(ASKED).expect("the fixed query");
    if let Ok(l) = asked.learn(data) {
        assert_eq!(u16::from_be_bytes([data[0], data[1]]), 0x1234);
        assert!(l.addrs.len() <= MAX_LEARNT);
        let distinct: std::collections::HashSet<_> = l.addrs.iter().collect();
        assert_eq!(distinct.len(), l.addrs.len(), "each address once");
        if l.addrs.is_empty() {
            assert_eq!(l.ttl, 0, "nothing learnt, nothing to keep");
        }
    }
}
