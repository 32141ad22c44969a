//! What the proxy's socket tests share: a client and a server on
//! loopback, the rules between them, and the root check.

use std::net::IpAddr;
use std::sync::Arc;

use bulkhead_policy::api::{HttpRule, L7Rules, PolicyKind};
use bulkhead_policy::identity::NumericIdentity;
use bulkhead_policy::l7::EscapedSlashes;
use bulkhead_policy::repository::{Proto, RuleRef};
use bulkhead_policy::resolve::{L7Policy, Peer, PolicyEntry, PolicyKey, Verdict};
use bulkhead_proxy::rules::{Direction, Endpoint, Rules, Update};
use bulkhead_proxy::server::Shared;

/// The client's address (identity 1000).
pub const CLIENT: &str = "127.0.0.2";
/// The server's address (identity 2000).
pub const SERVER: &str = "127.0.0.3";

/// The proxy's shared state with [`rules`] in force.
pub fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        limiter: Default::default(),
        rules: arc_swap::ArcSwap::from_pointee(rules()),
        escaped_slashes: EscapedSlashes::Refuse,
        port: 1,
        events: Default::default(),
        learner: Default::default(),
        reporter_init: None,
    })
}

/// The server allows the client `GET /api/v1/products.*` on every port.
pub fn rules() -> Rules {
    let ip = |s: &str| s.parse::<IpAddr>().expect("address");
    let rule = HttpRule { method: Some("GET".into()), path: Some("/api/v1/products.*".into()), ..HttpRule::default() };
    let entry = PolicyEntry {
        verdict: Verdict::Redirect(Arc::new(L7Policy {
            rules: L7Rules::Http(vec![rule]),
            allow_all: false,
            limits: Vec::new(),
        })),
        refs: vec![Arc::new(RuleRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("t".into()),
            name: "api".into(),
            rule: "spec.ingress[0]".into(),
        })],
    };
    let key = PolicyKey { peer: Peer::Identity(NumericIdentity(1000)), proto: Proto::Tcp, lo: 0, hi: u16::MAX };
    let endpoint = |id, addr, identity, ingress| Endpoint {
        id,
        name: format!("t/ep{id}"),
        identity,
        addrs: vec![ip(addr)],
        ingress,
        egress: None,
    };
    let update = Update {
        generation: 1,
        full: true,
        endpoints: vec![
            endpoint(1, CLIENT, 1000, None),
            endpoint(2, SERVER, 2000, Some(Direction { default_deny: true, entries: vec![(key, entry)] })),
        ],
        ..Update::default()
    };
    Rules::default().apply(&update).expect("rules")
}

/// Whether the test can run: the proxy's upstream socket is transparent.
/// In CI it must.
pub fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI runs this test as root (the proxy's upstream socket is transparent)");
    eprintln!("skipped: needs root");
    false
}
