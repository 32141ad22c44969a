//! Property tests of the HTTP/1.1 codec: pipelined requests, cut into
//! arbitrary reads, decode to exactly the requests sent, in order; what the
//! proxy writes for them decodes to the same requests again; and a request
//! shaped for smuggling or refused by a strict server stops the stream:
//! nothing of it completes, and nothing after it is ever decoded.

use bulkhead_proxy::http1::{
    BodyLength, Decoder, Event, Refusal, RequestHead, encode_chunk, encode_head, encode_last_chunk,
};
use proptest::prelude::*;

/// A request as the test means it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// `Some(sizes)`: sent chunked in chunks of these sizes (the body's
    /// length is their sum).
    chunks: Option<Vec<usize>>,
}

fn arb_req() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);
    let target = prop::sample::select(vec!["/", "/api/v1/products", "/api/v1/products?id=7", "/a/../b", "/x%41y"]);
    let header = (prop::sample::select(vec!["x-a", "accept", "user-agent", "x-request-id"]), "[a-z0-9 ./=-]{0,12}")
        .prop_map(|(n, v)| (n.to_owned(), v.trim().to_owned()));
    let body = prop::collection::vec(any::<u8>(), 0..64);
    (method, target, prop::collection::vec(header, 0..4), body, any::<bool>(), prop::collection::vec(1..9usize, 1..5))
        .prop_map(|(m, t, headers, body, chunked, sizes)| {
            let chunks = (chunked && !body.is_empty()).then(|| split_sizes(body.len(), &sizes));
            Req { method: m.to_owned(), target: t.to_owned(), headers, body, chunks }
        })
}

/// Sizes from `pattern`, repeated, that add up to `len`.
fn split_sizes(len: usize, pattern: &[usize]) -> Vec<usize> {
    let (mut out, mut left) = (Vec::new(), len);
    for &p in pattern.iter().cycle() {
        if left == 0 {
            break;
        }
        let n = p.min(left);
        out.push(n);
        left -= n;
    }
    out
}

/// The bytes a client sends for `r`, with the liberties clients take:
/// header name case, optional whitespace, chunk extensions.
fn client_bytes(r: &Req, seed: u8) -> Vec<u8> {
    let case = |s: &str| if seed & 1 == 1 { s.to_ascii_uppercase() } else { s.to_owned() };
    let ows = if seed & 2 == 2 { " \t" } else { " " };
    let mut out = format!("{} {} HTTP/1.1\r\n{}:{ows}backend\r\n", r.method, r.target, case("Host")).into_bytes();
    for (n, v) in &r.headers {
        out.extend_from_slice(format!("{}:{ows}{v}\r\n", case(n)).as_bytes());
    }
    match &r.chunks {
        Some(sizes) => {
            out.extend_from_slice(format!("{}: chunked\r\n\r\n", case("Transfer-Encoding")).as_bytes());
            let mut at = 0;
            for &n in sizes {
                let ext = if seed & 4 == 4 { ";name=value" } else { "" };
                out.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                out.extend_from_slice(&r.body[at..at + n]);
                out.extend_from_slice(b"\r\n");
                at += n;
            }
            out.extend_from_slice(if seed & 8 == 8 { b"0\r\nx-trailer: 1\r\n\r\n" } else { b"0\r\n\r\n" });
        }
        None if r.body.is_empty() && seed & 16 == 16 => out.extend_from_slice(b"\r\n"),
        None => {
            out.extend_from_slice(format!("{}: {}\r\n\r\n", case("Content-Length"), r.body.len()).as_bytes());
            out.extend_from_slice(&r.body);
        }
    }
    out
}

/// A request decoded: its head and its body.
type Decoded = (RequestHead, Vec<u8>);

/// Feeds `stream` to a decoder in reads of the given sizes; returns the
/// complete requests, the head of an incomplete one, and the refusal that
/// stopped it, if any.
fn decode_all(stream: &[u8], reads: &[usize]) -> (Vec<Decoded>, Option<RequestHead>, Option<Refusal>) {
    let mut d = Decoder::default();
    let (mut done, mut current, mut buf, mut fed) = (Vec::new(), None::<Decoded>, Vec::new(), 0);
    let mut sizes = reads.iter().cycle();
    loop {
        match d.decode(&buf) {
            Err(e) => return (done, current.map(|c| c.0), Some(e)),
            Ok((n, ev)) => {
                buf.drain(..n);
                match ev {
                    Some(Event::Head(h)) => {
                        assert!(current.is_none(), "a head inside a request");
                        current = Some((h, Vec::new()));
                    }
                    Some(Event::Data(b)) => current.as_mut().expect("data inside a request").1.extend(b),
                    Some(Event::End) => done.push(current.take().expect("an end inside a request")),
                    None if n == 0 => {
                        if fed == stream.len() {
                            return (done, current.map(|c| c.0), None);
                        }
                        let k = (*sizes.next().unwrap_or(&1)).max(1).min(stream.len() - fed);
                        buf.extend_from_slice(&stream[fed..fed + k]);
                        fed += k;
                    }
                    None => {}
                }
            }
        }
    }
}

/// What the proxy writes for a decoded request.
fn forwarded((head, body): &Decoded) -> Vec<u8> {
    let mut out = encode_head(head, &head.target);
    match head.body {
        BodyLength::Chunked => {
            if !body.is_empty() {
                out.extend(encode_chunk(body));
            }
            out.extend_from_slice(encode_last_chunk());
        }
        _ => out.extend_from_slice(body),
    }
    out
}

fn matches(got: &Decoded, want: &Req) -> bool {
    let (h, body) = got;
    let headers: Vec<(String, String)> =
        h.headers.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).trim().to_owned())).collect();
    h.method == want.method
        && h.target == want.target
        && h.host == "backend"
        && headers == want.headers
        && *body == want.body
}

/// Requests a strict server refuses, or that two parsers could frame
/// differently; `true` when the refusal comes before any of its head is
/// decoded (body-framing faults come after the head).
fn bad_requests() -> Vec<(&'static str, Vec<u8>, bool)> {
    let b = |s: &str| s.as_bytes().to_vec();
    let mut v = vec![
        (
            "CL and TE",
            b("POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "TE and CL",
            b("POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "CL that differ",
            b("POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            true,
        ),
        ("CL list", b("POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 2, 2\r\n\r\nab"), true),
        ("CL with sign", b("POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: +2\r\n\r\nab"), true),
        ("CL in hex", b("POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 0x2\r\n\r\nab"), true),
        ("CL too big", b("POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 99999999999999999999\r\n\r\n"), true),
        ("TE not chunked", b("POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), true),
        (
            "TE chunked then gzip",
            b("POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
            true,
        ),
        (
            "TE twice",
            b(
                "POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
            true,
        ),
        ("TE in HTTP/1.0", b("POST / HTTP/1.0\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), true),
        ("two Hosts", b("GET / HTTP/1.1\r\nHost: backend\r\nHost: admin\r\n\r\n"), true),
        ("no Host", b("GET / HTTP/1.1\r\nx-a: 1\r\n\r\n"), true),
        ("Host not an authority", b("GET / HTTP/1.1\r\nHost: back end\r\n\r\n"), true),
        ("absolute form, other authority", b("GET http://admin/x HTTP/1.1\r\nHost: backend\r\n\r\n"), true),
        ("obs-fold", b("GET / HTTP/1.1\r\nHost: backend\r\nx-a: 1\r\n 2\r\n\r\n"), true),
        ("space in a name", b("GET / HTTP/1.1\r\nHost: backend\r\nx a: 1\r\n\r\n"), true),
        ("NUL in a value", b("GET / HTTP/1.1\r\nHost: backend\r\nx-a: 1\0\r\n\r\n"), true),
        ("bare CR in a value", b("GET / HTTP/1.1\r\nHost: backend\r\nx-a: 1\r2\r\n\r\n"), true),
        ("CONNECT", b("CONNECT backend:443 HTTP/1.1\r\nHost: backend:443\r\n\r\n"), true),
        ("* with GET", b("GET * HTTP/1.1\r\nHost: backend\r\n\r\n"), true),
        ("HTTP/2.0 line", b("GET / HTTP/2.0\r\nHost: backend\r\n\r\n"), true),
        (
            "chunk size in 0x",
            b("POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n"),
            false,
        ),
        (
            "chunk size overflow",
            b(
                "POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000002\r\nab\r\n0\r\n\r\n",
            ),
            false,
        ),
        (
            "chunk line bare LF",
            b("POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n"),
            false,
        ),
        (
            "chunk data too long",
            b("POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
            false,
        ),
    ];
    let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
    v.push(("101 fields", format!("GET / HTTP/1.1\r\nHost: backend\r\n{many}\r\n").into_bytes(), true));
    let big = "a".repeat(61 * 1024);
    v.push(("61 KiB head", format!("GET / HTTP/1.1\r\nHost: backend\r\nx-a: {big}\r\n\r\n").into_bytes(), true));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn pipelined_requests_decode_exactly_in_any_reads(
        reqs in prop::collection::vec(arb_req(), 1..6),
        seeds in prop::collection::vec(any::<u8>(), 6),
        reads in prop::collection::vec(1..40usize, 1..8),
    ) {
        let stream: Vec<u8> = reqs.iter().zip(seeds.iter().cycle()).flat_map(|(r, s)| client_bytes(r, *s)).collect();
        let (done, partial, err) = decode_all(&stream, &reads);
        prop_assert_eq!(err, None);
        prop_assert!(partial.is_none());
        prop_assert_eq!(done.len(), reqs.len());
        for (got, want) in done.iter().zip(&reqs) {
            prop_assert!(matches(got, want), "{:?} ≠ {:?}", got, want);
        }
        // What the proxy forwards is the same requests, one for one.
        let again: Vec<u8> = done.iter().flat_map(forwarded).collect();
        let (redone, partial, err) = decode_all(&again, &[4096]);
        prop_assert_eq!(err, None);
        prop_assert!(partial.is_none());
        prop_assert_eq!(redone.len(), reqs.len());
        for (got, want) in redone.iter().zip(&reqs) {
            prop_assert!(matches(got, want), "forwarded {:?} ≠ {:?}", got, want);
        }
    }

    #[test]
    fn nothing_from_a_refused_request_on_is_decoded(
        reqs in prop::collection::vec(arb_req(), 1..5),
        at in 0..5usize,
        bad in 0..28usize,
        reads in prop::collection::vec(1..64usize, 1..8),
    ) {
        let catalogue = bad_requests();
        let (what, bytes, before_head) = &catalogue[bad % catalogue.len()];
        let at = at.min(reqs.len());
        let mut stream: Vec<u8> = reqs[..at].iter().flat_map(|r| client_bytes(r, 0)).collect();
        stream.extend_from_slice(bytes);
        stream.extend(reqs[at..].iter().flat_map(|r| client_bytes(r, 0)));
        let (done, partial, err) = decode_all(&stream, &reads);
        prop_assert!(err.is_some(), "{what}: not refused");
        prop_assert_eq!(done.len(), at, "{}: requests after the refused one were decoded", what);
        for (got, want) in done.iter().zip(&reqs) {
            prop_assert!(matches(got, want));
        }
        prop_assert_eq!(partial.is_none(), *before_head, "{}: {:?}", what, partial);
    }
}

#[test]
fn every_bad_request_alone_is_refused_with_its_reason() {
    for (what, bytes, _) in bad_requests() {
        let (done, _, err) = decode_all(&bytes, &[bytes.len()]);
        assert!(done.is_empty() && err.is_some(), "{what}: {done:?} {err:?}");
    }
}
