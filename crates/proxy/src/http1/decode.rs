//! The request decoder: bytes as a client sent them → heads, body data
//! and ends, one request after another, or the refusal that stops them.

use super::{BodyLength, Limits, Refusal, RequestHead, Version};

/// What [`Decoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request's head, checked.
    Head(RequestHead),
    /// Body bytes (chunked framing removed).
    Data(Vec<u8>),
    /// The end of the request's body (trailers, if any, were read and
    /// dropped).
    End,
}

/// Where in a request the decoder is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes left to read under `Content-Length` (0: the end is next).
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    /// Trailer bytes read so far.
    Trailers(usize),
    /// Refused: every later call gives the same refusal.
    Failed(Refusal),
}

/// Longest chunk-size line (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 4096;

/// Headers about the client's connection, not the request (RFC 9110
/// §7.6.1; `Transfer-Encoding` is framing, handled apart).
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// A strict, sans-I/O HTTP/1.1 request decoder for one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    limits: Limits,
    /// Bytes of an incomplete head already searched for its end: a head
    /// trickling in a byte at a time is parsed once, not once per byte.
    scanned: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub fn new(limits: Limits) -> Self {
        Self { state: State::Head, limits, scanned: 0 }
    }

    /// Decodes from the start of `input` (what the client sent that was not
    /// consumed yet). Returns the bytes consumed and the event found, if
    /// any; `(0, None)` means more input is needed. After a refusal every
    /// call returns it again: nothing after a refused request is decoded.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Refusal> {
        let r = self.step(input);
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r
    }

    /// Whether the decoder is between requests (a connection may end here
    /// cleanly).
    pub fn is_idle(&self) -> bool {
        self.state == State::Head
    }

    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Refusal> {
        match self.state.clone() {
            State::Failed(e) => Err(e),
            State::Head => self.head(input),
            State::Length(0) => {
                self.state = State::Head;
                Ok((0, Some(Event::End)))
            }
            State::Length(left) => Ok(self.data(input, left, State::Length)),
            State::ChunkSize => self.chunk_size(input),
            State::ChunkData(left) => {
                Ok(self.data(input, left, |left| if left == 0 { State::ChunkDataEnd } else { State::ChunkData(left) }))
            }
            State::ChunkDataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Ok((2, None))
                }
                [] | [b'\r'] => Ok((0, None)),
                _ => Err(Refusal::BadChunk("chunk data is not followed by CRLF".into())),
            },
            State::Trailers(read) => self.trailer(input, read),
        }
    }

    /// Up to `left` body bytes; `next` gives the state for what is left.
    fn data(&mut self, input: &[u8], left: u64, next: impl Fn(u64) -> State) -> (usize, Option<Event>) {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
        if n == 0 {
            return (0, None);
        }
        self.state = next(left - n as u64);
        (n, Some(Event::Data(input[..n].to_vec())))
    }

    fn head(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Refusal> {
        // Parse only once the head's end (an empty line) has arrived.
        let from = self.scanned.saturating_sub(2).min(input.len());
        if !input[from..].windows(2).any(|w| w == b"\n\n") && !input[from..].windows(3).any(|w| w == b"\n\r\n") {
            if input.len() > self.limits.max_head_bytes {
                return Err(Refusal::HeadTooLarge(self.limits.max_head_bytes));
            }
            self.scanned = input.len();
            return Ok((0, None));
        }
        let mut fields = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut fields);
        let n = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if input.len() > self.limits.max_head_bytes {
                    return Err(Refusal::HeadTooLarge(self.limits.max_head_bytes));
                }
                self.scanned = input.len();
                return Ok((0, None));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders(self.limits.max_headers)),
            Err(e) => return Err(Refusal::Malformed(e.to_string())),
        };
        if n > self.limits.max_head_bytes {
            return Err(Refusal::HeadTooLarge(self.limits.max_head_bytes));
        }
        self.scanned = 0;
        let head = check_head(&req)?;
        // HTTP/1.0 without a Host: the head forwarded gets one, and must
        // stay within the limit as well.
        if head.host.is_empty() && req.headers.len() >= self.limits.max_headers {
            return Err(Refusal::TooManyHeaders(self.limits.max_headers));
        }
        self.state = match head.body {
            BodyLength::Empty => State::Length(0),
            BodyLength::Length(n) => State::Length(n),
            BodyLength::Chunked => State::ChunkSize,
        };
        Ok((n, Some(Event::Head(head))))
    }

    fn chunk_size(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Refusal> {
        let Some(line) = crlf_line(input, MAX_CHUNK_LINE).map_err(Refusal::BadChunk)? else { return Ok((0, None)) };
        let text = &input[..line];
        let Some((size, ext)) = chunk_size(text) else {
            return Err(Refusal::BadChunk(format!("chunk size {:?}", String::from_utf8_lossy(text))));
        };
        if !(ext.is_empty() || ext[0] == b';') || ext.iter().any(|&b| is_ctl(b)) {
            return Err(Refusal::BadChunk(format!("chunk size line {:?}", String::from_utf8_lossy(text))));
        }
        self.state = if size == 0 { State::Trailers(0) } else { State::ChunkData(size) };
        Ok((line + 2, None))
    }

    fn trailer(&mut self, input: &[u8], read: usize) -> Result<(usize, Option<Event>), Refusal> {
        let Some(line) = crlf_line(input, self.limits.max_head_bytes).map_err(Refusal::BadChunk)? else {
            return Ok((0, None));
        };
        if line == 0 {
            self.state = State::Head;
            return Ok((2, Some(Event::End)));
        }
        let read = read + line + 2;
        if read > self.limits.max_head_bytes {
            return Err(Refusal::HeadTooLarge(self.limits.max_head_bytes));
        }
        let text = &input[..line];
        let name = text.iter().take_while(|&&b| is_token(b)).count();
        if name == 0 || text.get(name) != Some(&b':') || text.iter().any(|&b| is_ctl(b)) {
            return Err(Refusal::BadChunk(format!("trailer {:?}", String::from_utf8_lossy(text))));
        }
        self.state = State::Trailers(read);
        Ok((line + 2, None))
    }
}

/// The length of the line at the start of `input`, which must end in CRLF
/// within `max` bytes; `None` until it has arrived.
/// Where the CRLF ending the line at the start of `input` is (`None`: not
/// arrived yet); what is wrong with the line otherwise. Chunk lines and
/// trailers, of requests and of responses.
pub(super) fn crlf_line(input: &[u8], max: usize) -> Result<Option<usize>, String> {
    match input.iter().position(|&b| b == b'\n') {
        Some(0) => Err("a line ends in a bare LF".into()),
        Some(lf) if input[lf - 1] != b'\r' => Err("a line ends in a bare LF".into()),
        Some(lf) if lf + 1 > max => Err(format!("a line is over {max} bytes")),
        Some(lf) => Ok(Some(lf - 1)),
        None if input.len() > max => Err(format!("a line is over {max} bytes")),
        None => Ok(None),
    }
}

/// A chunk-size line's size (1 to 15 hex digits) and what follows the
/// digits (the extensions, checked by the caller); `None` if it has no
/// size.
pub(super) fn chunk_size(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let hex = std::str::from_utf8(&text[..digits]).ok()?;
    Some((u64::from_str_radix(hex, 16).ok()?, &text[digits..]))
}

fn is_ctl(b: u8) -> bool {
    (b < b' ' && b != b'\t') || b == 0x7F
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The checks httparse leaves to its caller.
fn check_head(req: &httparse::Request<'_, '_>) -> Result<RequestHead, Refusal> {
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        v => return Err(Refusal::Malformed(format!("HTTP version {v:?}"))),
    };
    let (mut hosts, mut length, mut chunked) = (Vec::new(), None::<u64>, Vec::new());
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "host" => hosts.push(h.value),
            "content-length" => {
                let n = content_length(h.value)?;
                if length.is_some_and(|m| m != n) {
                    return Err(Refusal::BadLength("two Content-Length headers differ".into()));
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked.push(h.value),
            _ => headers.push((name, h.value.to_vec())),
        }
    }
    if length.is_some() && !chunked.is_empty() {
        return Err(Refusal::LengthAndChunked);
    }
    let body = match chunked.as_slice() {
        [] => length.filter(|&n| n > 0).map_or(BodyLength::Empty, BodyLength::Length),
        [te] if version == Version::Http11 && trim_ows(te).eq_ignore_ascii_case(b"chunked") => BodyLength::Chunked,
        [te] if version == Version::Http11 => {
            return Err(Refusal::BadTransferEncoding(format!("{:?} (only chunked)", String::from_utf8_lossy(te))));
        }
        [_] => return Err(Refusal::BadTransferEncoding("in an HTTP/1.0 request".into())),
        _ => return Err(Refusal::BadTransferEncoding("several Transfer-Encoding headers".into())),
    };
    let host = match hosts.as_slice() {
        [] if version == Version::Http11 => return Err(Refusal::BadHost("missing (HTTP/1.1 requires one)".into())),
        [] => String::new(),
        [h] => authority(h)
            .ok_or_else(|| Refusal::BadHost(format!("{:?} is not host[:port]", String::from_utf8_lossy(h))))?,
        _ => return Err(Refusal::BadHost("several Host headers".into())),
    };
    let (target, host) = origin_form(&method, target, host)?;
    let named: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>()
        })
        .collect();
    let (hop_by_hop, headers) =
        headers.into_iter().partition(|(n, _)| HOP_BY_HOP.contains(&n.as_str()) || named.contains(n));
    Ok(RequestHead { method, target, version, host, headers, hop_by_hop, body })
}

/// One `Content-Length` value: decimal digits only (no sign, no list).
fn content_length(v: &[u8]) -> Result<u64, Refusal> {
    let v = trim_ows(v);
    let bad = || Refusal::BadLength(format!("{:?}", String::from_utf8_lossy(v)));
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

/// `v` as an authority (`host[:port]`: a registered name, an IPv4 address
/// or a bracketed IPv6 address), or `None`.
fn authority(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(trim_ows(v)).ok()?;
    let (host_ok, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (h, port) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            (!h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)), port)
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535)
    });
    (host_ok && port_ok).then(|| s.to_owned())
}

/// The target in origin form, and the authority: an absolute-form target
/// must name the `Host` (or stands for it in HTTP/1.0 without one).
fn origin_form(method: &str, target: &str, host: String) -> Result<(String, String), Refusal> {
    if method == "CONNECT" {
        return Err(Refusal::BadTarget("CONNECT is not proxied".into()));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((target.to_owned(), host))
        } else {
            Err(Refusal::BadTarget(format!("`*` with {method}")))
        };
    }
    if target.starts_with('/') {
        return Ok((target.to_owned(), host));
    }
    let rest = match target.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &target[7..],
        _ => return Err(Refusal::BadTarget(format!("{target:?} is neither /path nor http://authority/path"))),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let named = authority(&rest.as_bytes()[..end])
        .ok_or_else(|| Refusal::BadTarget(format!("{:?} is not host[:port]", &rest[..end])))?;
    let path = match &rest[end..] {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    if host.is_empty() {
        return Ok((path, named));
    }
    if !named.eq_ignore_ascii_case(&host) {
        return Err(Refusal::AuthorityMismatch { target: named, host });
    }
    Ok((path, host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::encode_head;

    fn head(raw: &str) -> RequestHead {
        match Decoder::default().decode(raw.as_bytes()) {
            Ok((_, Some(Event::Head(h)))) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn hop_by_hop_headers_are_set_apart_and_never_forwarded() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, X-Secret\r\nx-secret: 1\r\nUpgrade: h2c\r\nTE: trailers\r\nx-a: 2\r\n\r\n",
        );
        assert_eq!(h.headers, vec![("x-a".to_owned(), b"2".to_vec())], "rules see only end-to-end headers");
        let names: Vec<&str> = h.hop_by_hop.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["connection", "x-secret", "upgrade", "te"]);
        assert_eq!(encode_head(&h, "/"), b"GET / HTTP/1.1\r\nhost: b\r\nx-a: 2\r\n\r\n");
    }

    #[test]
    fn an_absolute_form_target_becomes_origin_form() {
        let h = head("GET HTTP://Backend:80?x=1 HTTP/1.1\r\nHost: backend:80\r\n\r\n");
        assert_eq!((h.target.as_str(), h.host.as_str()), ("/?x=1", "backend:80"));
        let h = head("GET http://backend/a HTTP/1.0\r\n\r\n");
        assert_eq!((h.target.as_str(), h.host.as_str()), ("/a", "backend"), "HTTP/1.0: the target names the host");
    }

    #[test]
    fn framing_is_the_proxy_s_own() {
        let h = head("POST /a HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(h.body, BodyLength::Length(3));
        assert_eq!(encode_head(&h, "/a"), b"POST /a HTTP/1.1\r\nhost: b\r\ncontent-length: 3\r\n\r\n");
        let h = head("POST /a HTTP/1.1\r\nHost: b\r\ntransfer-encoding:  Chunked \r\n\r\n");
        assert_eq!(h.body, BodyLength::Chunked);
    }
}
