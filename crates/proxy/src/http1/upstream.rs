//! The server's side: where each response on an upstream connection ends
//! ([`ResponseFramer`]), so that the proxy relays exactly one response per
//! request it forwarded, in order, and can then send the next request or
//! its own answer.
//!
//! Responses are relayed as the server wrote them (the proxy decides
//! requests; a server is not the party this product defends against), but
//! framed strictly: a response whose framing two parsers could read
//! differently ends the upstream connection and the client's with it.
//! Interim `1xx` responses are relayed and the final one awaited; `101`
//! is refused, since the proxy never forwards `Upgrade`.

use std::fmt;

use super::decode::{chunk_size, crlf_line};

/// Bytes of a response head the framer accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line.
const MAX_CHUNK_LINE: usize = 4096;

/// A response the proxy cannot frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadResponse(pub String);

impl fmt::Display for BadResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed response from the server: {}", self.0)
    }
}

impl std::error::Error for BadResponse {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the end of a head; bytes already searched.
    Head(usize),
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// The body runs to the end of the connection.
    UntilClose,
    Done,
}

/// What [`ResponseFramer::scan`] found in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the start of the input that belong to the response (to
    /// relay); the rest belongs to whatever follows it.
    pub consumed: usize,
    /// The response ended with them.
    pub done: bool,
}

/// Frames one response (and the interim responses before it).
#[derive(Debug, Clone)]
pub struct ResponseFramer {
    state: State,
    head_request: bool,
    close: bool,
    status: u16,
}

impl ResponseFramer {
    /// A framer for the response to a request; `head_request`: the request
    /// was `HEAD`, so the response has no body whatever it says.
    pub fn new(head_request: bool) -> Self {
        Self { state: State::Head(0), head_request, close: false, status: 0 }
    }

    /// The final status, once its head was read (0 before).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the upstream connection cannot carry another request after
    /// this response (the server said so, or the body runs to its end).
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Scans from the start of `input` (bytes not consumed before).
    pub fn scan(&mut self, input: &[u8]) -> Result<Scan, BadResponse> {
        let mut at = 0;
        loop {
            if self.state == State::Done {
                return Ok(Scan { consumed: at, done: true });
            }
            let n = self.step(&input[at..])?;
            if n == 0 && self.state != State::Done {
                return Ok(Scan { consumed: at, done: false });
            }
            at += n;
        }
    }

    /// The connection ended: whether that ends the response properly (a
    /// body read to the end of the connection), else the response was cut.
    pub fn eof(&mut self) -> Result<(), BadResponse> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BadResponse("the server closed the connection mid-response".into())),
        }
    }

    fn step(&mut self, input: &[u8]) -> Result<usize, BadResponse> {
        match self.state {
            State::Head(scanned) => self.head(input, scanned),
            State::Length(left) => Ok(self.body(input, left, State::Done, State::Length)),
            State::ChunkSize => {
                let Some(end) = line_end(input, MAX_CHUNK_LINE)? else { return Ok(0) };
                // Extensions may follow whitespace in a response (RFC 9112
                // §7.1.1 BWS).
                match chunk_size(&input[..end]) {
                    Some((size, ext)) if ext.is_empty() || matches!(ext[0], b';' | b' ' | b'\t') => {
                        self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                        Ok(end + 2)
                    }
                    _ => Err(BadResponse("chunk size".into())),
                }
            }
            State::ChunkData(left) => Ok(self.body(input, left, State::ChunkDataEnd, State::ChunkData)),
            State::ChunkDataEnd => {
                if input.len() < 2 {
                    return Ok(0);
                }
                if &input[..2] != b"\r\n" {
                    return Err(BadResponse("chunk data not followed by CRLF".into()));
                }
                self.state = State::ChunkSize;
                Ok(2)
            }
            State::Trailers => {
                let Some(end) = line_end(input, MAX_HEAD)? else { return Ok(0) };
                if end == 0 {
                    self.state = State::Done;
                }
                Ok(end + 2)
            }
            State::UntilClose => Ok(input.len()),
            State::Done => Ok(0),
        }
    }

    /// Takes what `input` holds of the `left` body bytes; then `done`, or
    /// `more` with what is left.
    fn body(&mut self, input: &[u8], left: u64, done: State, more: fn(u64) -> State) -> usize {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
        let left = left - n as u64;
        self.state = if left == 0 { done } else { more(left) };
        n
    }

    fn head(&mut self, input: &[u8], scanned: usize) -> Result<usize, BadResponse> {
        let from = scanned.saturating_sub(3);
        let Some(end) = input[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| from + p + 4) else {
            if input.len() > MAX_HEAD {
                return Err(BadResponse(format!("head over {MAX_HEAD} bytes")));
            }
            self.state = State::Head(input.len());
            return Ok(0);
        };
        if end > MAX_HEAD {
            return Err(BadResponse(format!("head over {MAX_HEAD} bytes")));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&input[..end]) {
            Ok(httparse::Status::Complete(n)) if n == end => {}
            Ok(_) => return Err(BadResponse("incomplete head".into())),
            Err(e) => return Err(BadResponse(e.to_string())),
        }
        let status = r.code.unwrap_or(0);
        let http10 = r.version == Some(0);
        if status == 101 {
            return Err(BadResponse("101 Switching Protocols: the proxy never asks to upgrade".into()));
        }
        if (100..200).contains(&status) {
            // Interim: relayed; the final response follows.
            self.state = State::Head(0);
            return Ok(end);
        }
        self.status = status;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut keep_alive = !http10;
        for h in r.headers.iter() {
            let value = std::str::from_utf8(h.value).map_err(|_| BadResponse(format!("{} value", h.name)))?;
            if h.name.eq_ignore_ascii_case("content-length") {
                for v in value.split(',') {
                    let n: u64 = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|_| v.trim().bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| BadResponse(format!("content-length {value:?}")))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(BadResponse("differing content-length".into()));
                    }
                    length = Some(n);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or("").trim();
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                        keep_alive = true;
                    }
                }
            }
        }
        self.close = !keep_alive;
        self.state = if self.head_request || status == 204 || status == 304 {
            State::Done
        } else {
            match (chunked, length) {
                (Some(_), Some(_)) => return Err(BadResponse("both content-length and transfer-encoding".into())),
                (Some(true), None) => State::ChunkSize,
                (Some(false), None) | (None, None) => {
                    self.close = true;
                    State::UntilClose
                }
                (None, Some(0)) => State::Done,
                (None, Some(n)) => State::Length(n),
            }
        };
        Ok(end)
    }
}

/// Where the CRLF ending the line at the start of `input` is, if it has
/// arrived (the request decoder's rule: no bare LF, at most `max` bytes).
fn line_end(input: &[u8], max: usize) -> Result<Option<usize>, BadResponse> {
    crlf_line(input, max).map_err(BadResponse)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, as reads would bring it.
    fn frame(head_request: bool, input: &[u8], step: usize) -> Result<(usize, ResponseFramer), BadResponse> {
        let mut f = ResponseFramer::new(head_request);
        let (mut at, mut buf) = (0, Vec::new());
        let mut pieces = input.chunks(step);
        loop {
            let s = f.scan(&buf)?;
            at += s.consumed;
            buf.drain(..s.consumed);
            if s.done {
                return Ok((at, f));
            }
            match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => {
                    f.eof()?;
                    return Ok((at + buf.len(), f));
                }
            }
        }
    }

    #[test]
    fn each_framing_ends_where_it_says() {
        let next = b"HTTP/1.1 200 OK\r\n";
        for (resp, head_request, status, closes) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..], false, 200, false),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
                false,
                200,
                false,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, 204, false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true, 200, false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n", false, 403, false),
            (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", false, 200, true),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false, 200, true),
        ] {
            for step in [1, 3, resp.len() + next.len()] {
                let input = [resp, &next[..]].concat();
                let (n, f) = frame(head_request, &input, step).expect("frames");
                assert_eq!(n, resp.len(), "{:?} in steps of {step}", String::from_utf8_lossy(resp));
                assert_eq!((f.status(), f.closes()), (status, closes), "{:?}", String::from_utf8_lossy(resp));
            }
        }
    }

    #[test]
    fn a_body_without_length_runs_to_the_end_of_the_connection() {
        let resp = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        let (n, f) = frame(false, resp, 4).expect("frames");
        assert_eq!(n, resp.len());
        assert!(f.closes());
    }

    #[test]
    fn responses_two_parsers_could_frame_differently_are_refused() {
        for resp in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(frame(false, resp, resp.len()).is_err(), "{:?}", String::from_utf8_lossy(resp));
        }
    }

    #[test]
    fn a_response_cut_short_is_an_error() {
        assert!(frame(false, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", 2).is_err());
        assert!(frame(false, b"HTTP/1.1 200 OK\r\n", 2).is_err());
    }
}
