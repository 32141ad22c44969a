//! What the proxy answers itself on an HTTP/1.1 connection: a request its
//! rules deny (Cilium's `403 Access denied`), one it refuses to parse
//! (`400`, naming why, then the connection closes), one over a RateLimit
//! (`429` with `Retry-After`), one whose server it cannot reach (`503`, as
//! Envoy), and the `100 Continue` it sends itself for a request it allowed.

use std::fmt::Display;

/// The interim response to `Expect: 100-continue` (the proxy answers it
/// once the rules allowed the request, and does not forward the `Expect`).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of a denied request, as Cilium's Envoy filter writes it.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// The body of a request over a RateLimit.
pub const TOO_MANY_REQUESTS: &str = "Too many requests\r\n";

/// The response to a request the rules deny. The connection stays open
/// (`keep_alive`) unless the request's body was not read to its end, in
/// which case the response says `connection: close` and the proxy closes
/// after it: what follows on the connection could be the rest of that body.
pub fn forbidden(keep_alive: bool) -> Vec<u8> {
    plain(403, "Forbidden", "", ACCESS_DENIED, !keep_alive)
}

/// The response to a request over a RateLimit: come back in
/// `retry_after` seconds. The connection stays open as for [`forbidden`].
pub fn too_many_requests(retry_after: u64, keep_alive: bool) -> Vec<u8> {
    let extra = format!("retry-after: {retry_after}\r\n");
    plain(429, "Too Many Requests", &extra, TOO_MANY_REQUESTS, !keep_alive)
}

/// The response to a request the decoder refused (or whose target could
/// not be normalized); the connection closes after it (nothing more on it
/// can be framed safely).
pub fn bad_request(why: &dyn Display) -> Vec<u8> {
    plain(400, "Bad Request", "", &format!("{why}\r\n"), true)
}

/// The response when the original destination cannot be reached; the
/// connection closes after it.
pub fn unavailable(why: &dyn Display) -> Vec<u8> {
    plain(503, "Service Unavailable", "", &format!("upstream connect error: {why}\r\n"), true)
}

/// `extra`: more header lines, each ending in CRLF.
fn plain(status: u16, reason: &str, extra: &str, body: &str, close: bool) -> Vec<u8> {
    let close = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}{close}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::Refusal;

    #[test]
    fn a_denied_request_gets_cilium_s_answer() {
        assert_eq!(
            forbidden(true),
            b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 15\r\n\r\nAccess denied\r\n"
        );
        assert!(String::from_utf8_lossy(&forbidden(false)).contains("\r\nconnection: close\r\n\r\n"));
    }

    #[test]
    fn a_limited_request_is_told_when_to_come_back() {
        assert_eq!(
            too_many_requests(1, true),
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 19\r\nretry-after: 1\r\n\r\nToo many requests\r\n"
        );
        assert!(
            String::from_utf8_lossy(&too_many_requests(2, false))
                .contains("retry-after: 2\r\nconnection: close\r\n\r\n")
        );
    }

    #[test]
    fn a_refused_request_is_told_why_and_the_connection_closes() {
        let r = String::from_utf8(bad_request(&Refusal::LengthAndChunked)).expect("text");
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(
            r.contains("connection: close\r\n") && r.ends_with("\r\n\r\nboth Content-Length and Transfer-Encoding\r\n"),
            "{r}"
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(r.contains(&format!("content-length: {}\r\n", body.len())), "{r}");
    }
}
