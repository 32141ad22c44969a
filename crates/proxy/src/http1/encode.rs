//! What the proxy forwards: each request written anew from its decoded
//! form, never the client's bytes. HTTP/1.1, CRLF, one `Host`, the
//! request's end-to-end headers (the decoder set the hop-by-hop ones
//! apart) and the framing the proxy chose.

use super::{BodyLength, RequestHead};

/// The head to forward for `head`, with `target` (the normalized target
/// the rules decided on) as its request target.
pub fn encode_head(head: &RequestHead, target: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !head.host.is_empty() {
        field(&mut out, "host", head.host.as_bytes());
    }
    for (name, value) in &head.headers {
        field(&mut out, name, value);
    }
    match head.body {
        BodyLength::Empty => {}
        BodyLength::Length(n) => field(&mut out, "content-length", n.to_string().as_bytes()),
        BodyLength::Chunked => field(&mut out, "transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked body (`data` must not be empty: an empty chunk
/// ends the body, see [`encode_last_chunk`]).
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body (no trailers).
pub fn encode_last_chunk() -> &'static [u8] {
    b"0\r\n\r\n"
}
