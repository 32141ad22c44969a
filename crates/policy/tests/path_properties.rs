//! Property tests of HTTP path normalization (`l7::path`): the normal form
//! is a fixed point, holds no dot segment, empty segment or needless
//! escape, and means to a server exactly what the request sent meant; a
//! path spelled only with what a path may hold is never refused.

use bulkhead_policy::l7::{EscapedSlashes, normalize_target};
use proptest::prelude::*;

/// Targets made of the pieces that matter: separators, dots, escapes
/// (valid, malformed, of unreserved and reserved characters, of `/`, `\`
/// and NUL), other characters, and a query.
fn arb_target() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", "\\", ".", "..", "a", "b", "api", "v1", "%2e", "%2E", "%41", "%7e", "%3b", "%3F", "%25", "%2f",
        "%5C", "%00", "%", "%g", "%2", "~", "-", "_", ";", "=", "@", ":", "|", "é", " ", "#", "?", "&", "x=1",
    ]);
    (prop::bool::weighted(0.95), prop::collection::vec(piece, 0..16))
        .prop_map(|(rooted, ps)| format!("{}{}", if rooted { "/" } else { "" }, ps.concat()))
}

/// Paths spelled only with what a path may hold: unreserved characters,
/// their escapes, sub-delims, dot segments and repeated slashes.
fn arb_meaningful() -> impl Strategy<Value = String> {
    let seg =
        prop::sample::select(vec!["", ".", "..", "%2e", "%2e%2E", "api", "v1", "%70roducts", "a;b=c", "~x", "%3B"]);
    prop::collection::vec(seg, 1..10).prop_map(|segs| format!("/{}", segs.join("/")))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Every escape decoded.
fn decode(seg: &str) -> Vec<u8> {
    let s = seg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match (s[i], s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// What an RFC 3986 server makes of a target's path: segments split at `/`
/// (and `\`, as Windows servers and Envoy do), each fully decoded, dot
/// segments removed, empty segments dropped; and the query as sent.
fn server_view(target: &str) -> (Vec<Vec<u8>>, Option<String>) {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for seg in path.split(['/', '\\']).skip(1) {
        match decode(seg).as_slice() {
            b"." => {}
            b".." => {
                kept.pop();
            }
            d => kept.push(d.to_vec()),
        }
    }
    kept.retain(|s| !s.is_empty());
    (kept, query)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_normal_form_is_a_fixed_point(t in arb_target()) {
        for mode in [EscapedSlashes::Refuse, EscapedSlashes::Unescape] {
            if let Ok(once) = normalize_target(&t, mode) {
                prop_assert_eq!(normalize_target(&once, mode), Ok(once.clone()), "{:?}", t);
            }
        }
    }

    #[test]
    fn the_normal_form_holds_nothing_a_server_could_read_two_ways(t in arb_target()) {
        let Ok(n) = normalize_target(&t, EscapedSlashes::Refuse) else { return Ok(()) };
        if n == "*" {
            return Ok(());
        }
        let path = n.split('?').next().unwrap_or_default();
        prop_assert!(path.starts_with('/'));
        prop_assert!(!path.contains("//") && !path.contains('\\'), "{n}");
        for seg in path.split('/') {
            prop_assert!(seg != "." && seg != "..", "a dot segment in {n}");
        }
        let b = path.as_bytes();
        for (i, _) in path.match_indices('%') {
            let (h, l) = (b[i + 1], b[i + 2]);
            prop_assert!(h.is_ascii_hexdigit() && l.is_ascii_hexdigit() && !h.is_ascii_lowercase() && !l.is_ascii_lowercase(), "{n}");
            let v = hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0);
            prop_assert!(!(v.is_ascii_alphanumeric() || b"-._~/\\\0".contains(&v)), "needless or dangerous escape in {n}");
        }
    }

    #[test]
    fn a_server_reads_the_normal_form_as_it_would_have_read_the_request(t in arb_target()) {
        let Ok(n) = normalize_target(&t, EscapedSlashes::Refuse) else { return Ok(()) };
        if n != "*" {
            prop_assert_eq!(server_view(&t), server_view(&n), "{:?} → {:?}", t, n);
        }
    }

    #[test]
    fn a_path_spelled_as_paths_may_be_is_never_refused(p in arb_meaningful()) {
        let n = normalize_target(&p, EscapedSlashes::Refuse);
        prop_assert!(n.is_ok(), "{p}: {n:?}");
    }
}
