//! What the `http_request` fuzz target and its corpus replay run on one
//! input: a client's bytes through the request path as the proxy takes
//! it — strict HTTP/1.1 decode, target normalization, an HTTP rule, the
//! request written anew — and back through the decoder.
//!
//! Checks, beyond "no panic": every request the proxy would forward
//! decodes, alone, to exactly one request with the same method, Host,
//! normalized target and body framing; a rule allowing only
//! `GET /api/v1/products…` allows nothing else; and after a refusal the
//! decoder yields nothing more.

use bulkhead_policy::api::l7::HttpRule;
use bulkhead_policy::l7::{EscapedSlashes, HttpPolicy, HttpRequest, normalize_target};
use bulkhead_proxy::http1::{BodyLength, Decoder, Event, Limits, encode_head};

pub fn exercise(data: &[u8]) {
    let rule = HttpRule { method: Some("GET".into()), path: Some("/api/v1/products.*".into()), ..HttpRule::default() };
    let policy = HttpPolicy::compile(&[rule]).expect("the rule compiles");
    let mut d = Decoder::default();
    let mut at = 0;
    loop {
        let (n, ev) = match d.decode(&data[at..]) {
            Ok(r) => r,
            Err(e) => {
                assert_eq!(d.decode(&data[at..]), Err(e), "a refusal is final");
                return;
            }
        };
        at += n;
        let Some(ev) = ev else {
            if n == 0 {
                return;
            }
            continue;
        };
        let Event::Head(mut head) = ev else { continue };
        if head.host.is_empty() {
            head.host = "198.18.0.1:80".into(); // the original destination, as the proxy fills it in
        }
        let Ok(target) = normalize_target(&head.target, EscapedSlashes::Refuse) else { continue };
        let headers: Vec<(&str, &str)> =
            head.headers.iter().filter_map(|(k, v)| Some((k.as_str(), std::str::from_utf8(v).ok()?))).collect();
        let req = HttpRequest { method: &head.method, path: &target, host: &head.host, headers: &headers };
        if policy.decide(&req).allowed {
            assert!(head.method == "GET" && target.starts_with("/api/v1/products"), "{head:?} allowed as {target}");
        }
        let out = encode_head(&head, &target);
        // Normalization may lengthen the target (it percent-encodes): the
        // forwarded head is checked for framing, not against the client's
        // size limit.
        let mut again = Decoder::new(Limits { max_head_bytes: 4 * out.len(), ..Limits::default() });
        match again.decode(&out) {
            Ok((m, Some(Event::Head(h)))) => {
                assert_eq!(m, out.len(), "the forwarded head is read whole");
                assert_eq!((&h.method, &h.target, &h.host), (&head.method, &target, &head.host));
                assert_eq!(h.body, head.body);
                if head.body == BodyLength::Empty {
                    assert_eq!(again.decode(&[]), Ok((0, Some(Event::End))));
                }
            }
            other => panic!("the forwarded head {:?} decodes to {other:?}", String::from_utf8_lossy(&out)),
        }
    }
}
