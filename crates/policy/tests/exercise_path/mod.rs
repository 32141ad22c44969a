//! What the `http_path` fuzz target and its corpus replay run on one input:
//! an untrusted request target through normalization and an HTTP rule, as
//! the proxy will (the parse step before it comes with the proxy).
//!
//! Checks, beyond "no panic": the normal form is a fixed point, and a rule
//! that allows only `/api/v1/products…` never allows a target whose normal
//! form could reach anything else (no dot segment, no escaped separator).

use bulkhead_policy::api::l7::HttpRule;
use bulkhead_policy::l7::{EscapedSlashes, HttpPolicy, HttpRequest, normalize_target};

pub fn exercise(data: &[u8]) {
    let target = String::from_utf8_lossy(data);
    let rule = HttpRule { method: Some("GET".into()), path: Some("/api/v1/products.*".into()), ..HttpRule::default() };
    let policy = HttpPolicy::compile(&[rule]).expect("the rule compiles");
    for mode in [EscapedSlashes::Refuse, EscapedSlashes::Unescape] {
        let Ok(normal) = normalize_target(&target, mode) else { continue };
        assert_eq!(normalize_target(&normal, mode).as_deref(), Ok(normal.as_str()), "not a fixed point: {target:?}");
        let d = policy.decide(&HttpRequest { method: "GET", path: &normal, host: "backend", headers: &[] });
        if d.allowed {
            let path = normal.split('?').next().unwrap_or_default();
            assert!(path.starts_with("/api/v1/products"), "{target:?} allowed as {normal:?}");
            assert!(
                !path.split('/').any(|s| s == ".." || s == ".") && !path.contains("//"),
                "{target:?} allowed as {normal:?}, which a server could resolve elsewhere"
            );
            let lower = path.to_ascii_lowercase();
            assert!(
                !["%2f", "%5c", "%2e", "%00", "\\"].iter().any(|e| lower.contains(e)),
                "{target:?} allowed as {normal:?}, which a server could decode elsewhere"
            );
        }
    }
}
