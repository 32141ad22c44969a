//! HTTP/1.1 requests, strictly: decode what a client sends ([`Decoder`]),
//! write what the proxy forwards ([`encode_head`], [`encode_chunk`]), and
//! what it answers itself ([`forbidden`], [`too_many_requests`],
//! [`bad_request`]).
//!
//! Owns request framing. A request that a strict server would refuse, or
//! that two servers could frame differently, is refused (400, then the
//! connection closes) before any byte of it is forwarded: both
//! `Content-Length` and `Transfer-Encoding`; a `Content-Length` that is
//! malformed, a list, or differs from another; a transfer coding other than
//! `chunked` alone; invalid bytes in names or values; obsolete line
//! folding; none or several `Host` headers; an absolute-form target whose
//! authority is not the `Host`; a header section over 60 KiB or over 100
//! fields; malformed chunk framing. Requests are pipelined: the decoder
//! yields each request in order and stops for good at the first refusal,
//! so nothing after a refused request is ever yielded.
//!
//! Trade-offs: lenient only where the proxy's own framing makes leniency
//! harmless (a bare LF ending a head line, as RFC 9112 §2.2 allows; the
//! head is written anew with CRLF). Trailers are read and not forwarded.
//! `CONNECT` is refused (the proxy decides requests, it does not tunnel).

mod decode;
mod encode;
mod response;
mod upstream;

pub(crate) use decode::HOP_BY_HOP;
pub use decode::{Decoder, Event};
pub use encode::{encode_chunk, encode_head, encode_last_chunk};
pub use response::{
    ACCESS_DENIED, CONTINUE, TOO_MANY_REQUESTS, bad_request, forbidden, too_many_requests, unavailable,
};
pub use upstream::{BadResponse, ResponseFramer, Scan};

/// The protocol version a request was sent with (the proxy forwards
/// HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The target in origin form (`/path?query`), or `*`: an absolute-form
    /// target is reduced to its path and query (its authority is `host`).
    pub target: String,
    /// The version the client used.
    pub version: Version,
    /// The authority: the `Host` header. Empty for an HTTP/1.0 request
    /// without one: the proxy sets the original destination here before it
    /// decides and forwards, since what it writes is HTTP/1.1, which needs
    /// a `Host`.
    pub host: String,
    /// The end-to-end headers, in order, names lowercased, values as sent:
    /// what rules see and what is forwarded. `Host`, `Content-Length` and
    /// `Transfer-Encoding` are not among them (the proxy writes those
    /// itself), nor are the hop-by-hop headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The hop-by-hop headers (RFC 9110 §7.6.1, and any the client's
    /// `Connection` names): about the client's connection to the proxy,
    /// for the proxy's own use (`Connection: close`, `Upgrade: h2c`), never
    /// forwarded.
    pub hop_by_hop: Vec<(String, Vec<u8>)>,
    /// How the body is framed.
    pub body: BodyLength,
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a request head (request line and header section).
    pub max_head_bytes: usize,
    /// Header fields in a head.
    pub max_headers: usize,
}

impl Default for Limits {
    /// 60 KiB and 100 fields, as Envoy's defaults.
    fn default() -> Self {
        Self { max_head_bytes: 60 * 1024, max_headers: 100 }
    }
}

/// Why a request was refused: the proxy answers 400 and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The head is not HTTP/1.x as RFC 9112 writes it.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// The head is larger than [`Limits::max_head_bytes`].
    #[error("the request head is over {0} bytes")]
    HeadTooLarge(usize),
    /// More header fields than [`Limits::max_headers`].
    #[error("the request has over {0} header fields")]
    TooManyHeaders(usize),
    /// Both framings: the classic request smuggling shape.
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    /// A `Content-Length` that is not one decimal number, or two that differ.
    #[error("invalid Content-Length: {0}")]
    BadLength(String),
    /// A transfer coding other than `chunked` alone, or `Transfer-Encoding`
    /// in HTTP/1.0.
    #[error("unsupported Transfer-Encoding: {0}")]
    BadTransferEncoding(String),
    /// No `Host` in HTTP/1.1, several, or one that is not an authority.
    #[error("Host header: {0}")]
    BadHost(String),
    /// An absolute-form target naming another authority than `Host`.
    #[error("the target's authority {target:?} is not the Host {host:?}")]
    AuthorityMismatch {
        /// The target's authority.
        target: String,
        /// The Host header.
        host: String,
    },
    /// A target in no form the proxy forwards (authority form, `CONNECT`,
    /// `*` with another method than `OPTIONS`, a scheme other than http).
    #[error("request target: {0}")]
    BadTarget(String),
    /// Chunked framing that is not `size [ext] CRLF data CRLF`.
    #[error("malformed chunked body: {0}")]
    BadChunk(String),
}
