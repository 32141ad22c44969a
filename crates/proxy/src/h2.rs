//! HTTP/2 with prior knowledge (h2c), and gRPC on it: a client connection
//! that opens with the HTTP/2 preface is served by hyper's HTTP/2 server;
//! each request (stream) is decided like an HTTP/1.1 one — method, the
//! normalized `:path` with its query, `:authority`, headers — and an
//! allowed one is sent on the proxy's own HTTP/2 connection to the
//! original destination (as the client, marked), its response and
//! trailers relayed.
//!
//! hyper's `h2` enforces the protocol's own strictness (connection-specific
//! headers, malformed pseudo-headers and uppercase names reset the stream
//! with PROTOCOL_ERROR before a request exists); the header list is bounded
//! like an HTTP/1.1 head. Denied: `403 Access denied`, or for gRPC
//! (`content-type: application/grpc…`) Cilium's trailers-only answer,
//! `:status 200` with `grpc-status: 7` (PERMISSION_DENIED). Over a
//! RateLimit: `429` with `retry-after`, for gRPC `grpc-status: 8`
//! (RESOURCE_EXHAUSTED).
//!
//! An HTTP/1.1 client may also ask to upgrade (`Upgrade: h2c`, RFC 7540
//! §3.2; deprecated by RFC 9113 but sent by curl `--http2` and Java's
//! HttpClient). The proxy takes the upgrade up only once the server has
//! answered the request over HTTP/2 ([`ahead`]): the request is decided as
//! HTTP/1.1, sent to the server on the proxy's HTTP/2 connection, and when
//! its response comes the client gets `101`, then HTTP/2 with that response
//! on stream 1 ([`serve_upgraded`]). A server that does not answer HTTP/2
//! never saw a request (it refused the preface), so the request goes on as
//! HTTP/1.1 and the upgrade is declined, as RFC 9110 §7.8 allows. Only
//! bodiless safe requests are taken up (a failed attempt is then harmless
//! to repeat); others are answered in HTTP/1.1.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bulkhead_policy::l7::{HeaderAction, HeaderEdit, HttpRequest, normalize_target};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::events::L7Event;
use crate::http1::{ACCESS_DENIED, BodyLength, RequestHead, TOO_MANY_REQUESTS, Version};
use crate::limits::Permit;
use crate::rules::Connection;
use crate::server::{Decided, Shared, connect_as, rewritable, rules_of};

/// What an HTTP/2 connection opens with (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a request's header list (as an HTTP/1.1 head).
const MAX_HEADER_LIST: u32 = 60 * 1024;

/// Concurrent streams a client may open.
const MAX_STREAMS: u32 = 128;

/// The largest frame a client may send the proxy's HTTP/2 server (its
/// default `SETTINGS_MAX_FRAME_SIZE`).
const MAX_FRAME: usize = 16 * 1024;

/// How long a client that was switched to HTTP/2 has to send its preface.
const PREFACE_WAIT: Duration = Duration::from_secs(10);

/// What the proxy answers an upgrade it takes up with.
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

type Body = BoxBody<Bytes, hyper::Error>;

/// What the proxy sends upstream: a client's stream's body, or none (an
/// upgraded HTTP/1.1 request).
type UpBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// One client connection's state.
struct Ctx {
    peer: SocketAddr,
    dst: SocketAddr,
    conn: Connection,
    shared: Arc<Shared>,
    upstream: Mutex<Option<SendRequest<UpBody>>>,
    /// An upgraded connection's stream 1, already answered by the server.
    first: std::sync::Mutex<Option<First>>,
}

/// Serves an HTTP/2 client connection until it ends.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    conn: Connection,
    shared: Arc<Shared>,
) -> io::Result<()> {
    let ctx = Ctx { peer, dst, conn, shared, upstream: Mutex::new(None), first: std::sync::Mutex::new(None) };
    serve_io(client, Arc::new(ctx)).await
}

async fn serve_io(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, ctx: Arc<Ctx>) -> io::Result<()> {
    let svc = hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        // Taken when the stream is accepted, in the order streams open.
        let first = ctx.first(&req);
        async move {
            Ok::<_, Infallible>(match first {
                Some(f) => relayed(&ctx, f.response, &f.event, f.permit, f.decided),
                None => handle(&ctx, req).await,
            })
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(io), svc)
        .await
        .map_err(io::Error::other)
}

impl Ctx {
    /// The answer to an upgraded connection's stream 1, when `req` is it:
    /// the first stream, carrying the upgraded request's method and
    /// target. Any other stream never gets it.
    fn first(&self, req: &Request<Incoming>) -> Option<First> {
        let mut first = self.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        first
            .take()
            .filter(|f| f.method == req.method() && req.uri().path_and_query().is_some_and(|p| p.as_str() == f.target))
    }
}

/// An HTTP/1.1 request that asked to upgrade, answered by the server over
/// HTTP/2: the client is switched to HTTP/2 with it.
pub(crate) struct Upgrade {
    sender: SendRequest<UpBody>,
    first: First,
    /// The request as stream 1's frames ([`stream_one`]).
    stream_one: Vec<u8>,
}

/// The upgraded request, for stream 1.
struct First {
    method: Method,
    target: String,
    response: Response<Incoming>,
    event: Arc<L7Event>,
    permit: Option<Permit>,
    decided: Instant,
}

/// Whether an HTTP/1.1 request asks to upgrade to HTTP/2 (RFC 7540 §3.2)
/// in a way the proxy takes up: `Upgrade: h2c`, `Connection` naming
/// `Upgrade` and `HTTP2-Settings`, exactly one `HTTP2-Settings` that is a
/// base64url SETTINGS payload; no body, a safe method, an origin-form
/// target.
pub(crate) fn asks_h2c(head: &RequestHead) -> bool {
    // Cheap tests first: this runs for every allowed HTTP/1.1 request.
    if head.version != Version::Http11
        || head.body != BodyLength::Empty
        || !matches!(head.method.as_str(), "GET" | "HEAD" | "OPTIONS")
        || !head.target.starts_with('/')
        || !head.hop_by_hop.iter().any(|(k, _)| k == "upgrade")
    {
        return false;
    }
    let values = |name: &'static str| head.hop_by_hop.iter().filter(move |(k, _)| k == name).map(|(_, v)| &v[..]);
    let has_token = |name, token: &str| {
        values(name).any(|v| String::from_utf8_lossy(v).split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let settings: Vec<&[u8]> = values("http2-settings").collect();
    has_token("upgrade", "h2c")
        && has_token("connection", "upgrade")
        && has_token("connection", "http2-settings")
        && matches!(settings[..], [s] if is_settings(s))
}

/// Whether `v` is base64url (unpadded) of a SETTINGS payload (6 bytes a
/// setting).
fn is_settings(v: &[u8]) -> bool {
    v.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && v.len() % 4 != 1
        && (v.len() * 6 / 8).is_multiple_of(6)
}

/// Sends an allowed HTTP/1.1 request that asked to upgrade to the server
/// over HTTP/2 (as the client, marked), and waits for its response. An
/// error means the server did not answer over HTTP/2 (one that does not
/// speak it refuses the preface before any request): the request is then
/// forwarded as HTTP/1.1, with its `permit` still there.
pub(crate) async fn ahead(
    (client, dst): (IpAddr, SocketAddr),
    head: &RequestHead,
    target: &str,
    (event, permit, decided): (&Arc<L7Event>, &mut Option<Permit>, Instant),
) -> Result<Upgrade, String> {
    let req = head
        .headers
        .iter()
        .fold(
            Request::builder().method(head.method.as_str()).uri(format!("http://{}{target}", head.host)),
            |b, (k, v)| b.header(k.as_str(), v.as_slice()),
        )
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let method = req.method().clone();
    let mut sender = open_upstream(client, dst).await?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let stream_one = stream_one(method.as_str(), &head.host, target);
    let first =
        First { method, target: target.to_owned(), response, event: Arc::clone(event), permit: permit.take(), decided };
    Ok(Upgrade { sender, first, stream_one })
}

/// Switches an HTTP/1.1 client whose upgrade the server answered
/// ([`ahead`]) to HTTP/2, and serves it until it ends. `read` is what the
/// client sent past the upgraded request. The answer goes on stream 1,
/// which the client opened by asking (RFC 7540 §3.2): the proxy's HTTP/2
/// server is handed that stream as a HEADERS frame after the client's
/// first SETTINGS, and answers it with the server's response.
pub(crate) async fn serve_upgraded(
    mut client: TcpStream,
    mut read: Vec<u8>,
    (peer, dst): (SocketAddr, SocketAddr),
    conn: Connection,
    shared: Arc<Shared>,
    up: Upgrade,
) -> io::Result<()> {
    client.write_all(SWITCHING).await?;
    let at = tokio::time::timeout(PREFACE_WAIT, preface_and_settings(&mut client, &mut read))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface after the upgrade"))??;
    read.splice(at..at, up.stream_one);
    let ctx = Ctx {
        peer,
        dst,
        conn,
        shared,
        upstream: Mutex::new(Some(up.sender)),
        first: std::sync::Mutex::new(Some(up.first)),
    };
    serve_io(Prefixed { prefix: read, at: 0, inner: client }, Arc::new(ctx)).await
}

/// Reads until `read` holds the client's preface and its first frame,
/// which must be SETTINGS; where that frame ends.
async fn preface_and_settings(client: &mut TcpStream, read: &mut Vec<u8>) -> io::Result<usize> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("after the upgrade: {why}"));
    let head = PREFACE.len() + 9;
    loop {
        if read.len() >= head {
            if &read[..PREFACE.len()] != PREFACE {
                return Err(bad("not the HTTP/2 preface"));
            }
            let frame = &read[PREFACE.len()..head];
            let len = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            // SETTINGS (4), not an ACK, on stream 0, whole settings.
            if frame[3] != 4 || frame[4] & 1 != 0 || stream != 0 || !len.is_multiple_of(6) || len > MAX_FRAME {
                return Err(bad("the first frame is not SETTINGS"));
            }
            if read.len() >= head + len {
                return Ok(head + len);
            }
        }
        read.reserve(MAX_FRAME);
        if client.read_buf(read).await? == 0 {
            return Err(bad("the client closed"));
        }
    }
}

/// Stream 1 as a client would have opened it: HEADERS (and CONTINUATION)
/// frames ending the stream, the pseudo-headers as HPACK literals without
/// indexing (RFC 7541 §6.2.2), so the client's header compression state
/// is untouched.
fn stream_one(method: &str, authority: &str, path: &str) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, mut n: usize) {
        // A 7-bit prefix, Huffman bit clear (RFC 7541 §5.1, §5.2).
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    let mut block = Vec::new();
    for (name, value) in [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)] {
        block.push(0);
        for s in [name, value] {
            int(&mut block, s.len());
            block.extend_from_slice(s.as_bytes());
        }
    }
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut out = Vec::with_capacity(block.len() + 9 * chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        // HEADERS with END_STREAM, then CONTINUATIONs; END_HEADERS on the last.
        let (kind, mut flags) = if i == 0 { (1, 1) } else { (9, 0) };
        if i + 1 == chunks.len() {
            flags |= 4;
        }
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A client connection with bytes put before what it sends.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            buf.put_slice(&self.prefix[self.at..self.at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers().get(hyper::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let grpc = is_grpc(&req);
    let method = req.method().as_str().to_owned();
    let sent = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| ctx.dst.to_string());
    let target = match normalize_target(&sent, ctx.shared.escaped_slashes) {
        Ok(t) => t,
        Err(e) => {
            ctx.shared.refused((ctx.peer, ctx.dst), "HTTP/2", &method, e.to_string());
            return plain(StatusCode::BAD_REQUEST, format!("{e}\r\n"));
        }
    };
    let values: Vec<_> = req.headers().values().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
    let headers: Vec<(&str, &str)> = req.headers().keys().zip(&values).map(|(k, v)| (k.as_str(), &**v)).collect();
    let req_seen = HttpRequest { method: &method, path: &target, host: &authority, headers: &headers };
    let Decided { event, permit, retry_after, actions } =
        ctx.shared.decide(&ctx.conn, (ctx.peer, ctx.dst), "HTTP/2", &req_seen);
    let decided = Instant::now();
    if let Some(retry_after) = retry_after {
        tracing::info!(
            client = %ctx.peer, destination = %ctx.dst, method = %method, path = %target, grpc,
            limited_by = ?event.limited_by.as_ref().map(ToString::to_string), "request over a rate limit"
        );
        ctx.shared.events.send(event.response(if grpc { 200 } else { 429 }, decided));
        let mut r = if grpc {
            grpc_refused("8", "Too%20many%20requests%0D%0A")
        } else {
            plain(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_REQUESTS.into())
        };
        r.headers_mut().insert(hyper::header::RETRY_AFTER, retry_after.into());
        return r;
    }
    if !event.allowed {
        tracing::info!(
            client = %ctx.peer, destination = %ctx.dst, method = %method, path = %target, grpc,
            denied_by = %rules_of(&event), "request denied"
        );
        ctx.shared.events.send(event.response(if grpc { 200 } else { 403 }, decided));
        return if grpc {
            grpc_refused("7", "Access%20denied%0D%0A")
        } else {
            plain(StatusCode::FORBIDDEN, ACCESS_DENIED.into())
        };
    }
    match forward(ctx, req, &authority, &target, &actions).await {
        Ok(resp) => relayed(ctx, resp, &event, permit, decided),
        Err(e) => {
            tracing::warn!(client = %ctx.peer, destination = %ctx.dst, error = %e, "upstream failed (503)");
            ctx.shared.events.send(event.response(503, decided));
            plain(StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error: {e}\r\n"))
        }
    }
}

/// The server's response to a request, reported and relayed; the request
/// is in flight (for maxConcurrentRequests) until the response's body is
/// done with.
fn relayed(
    ctx: &Ctx,
    resp: Response<Incoming>,
    event: &L7Event,
    permit: Option<Permit>,
    decided: Instant,
) -> Response<Body> {
    ctx.shared.events.send(event.response(resp.status().as_u16(), decided));
    resp.map(|body| {
        body.map_frame(move |frame| {
            let _in_flight = &permit;
            frame
        })
        .boxed()
    })
}

/// Sends the request, rebuilt with the normalized target, on the
/// upstream connection (opened, as the client, when there is none).
async fn forward(
    ctx: &Ctx,
    req: Request<Incoming>,
    authority: &str,
    target: &str,
    actions: &[HeaderAction],
) -> Result<Response<Incoming>, String> {
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{authority}{target}").parse().map_err(|e| format!("{e}"))?;
    // `:authority` carries the host.
    parts.headers.remove(hyper::header::HOST);
    // `headerMatches` actions (`HeaderAction::apply` on a list).
    for a in actions.iter().filter(|a| rewritable(&a.name)) {
        let Some(edit) = a.edit() else { continue };
        // Names and values were validated with the policy.
        let Ok(name) = HeaderName::try_from(a.name.to_ascii_lowercase()) else { continue };
        match edit {
            HeaderEdit::Remove => drop(parts.headers.remove(name)),
            HeaderEdit::Append(v) => {
                if let Ok(v) = HeaderValue::try_from(v) {
                    parts.headers.append(name, v);
                }
            }
            HeaderEdit::Set(v) => {
                if let Ok(v) = HeaderValue::try_from(v) {
                    parts.headers.insert(name, v);
                }
            }
        }
    }
    let out = Request::from_parts(parts, body.boxed_unsync());
    let mut sender = {
        let mut up = ctx.upstream.lock().await;
        match up.as_ref() {
            Some(s) if !s.is_closed() => s.clone(),
            _ => up.insert(open_upstream(ctx.peer.ip(), ctx.dst).await?).clone(),
        }
    };
    sender.send_request(out).await.map_err(|e| e.to_string())
}

/// The proxy's HTTP/2 connection to `dst`, as `client`.
async fn open_upstream(client: IpAddr, dst: SocketAddr) -> Result<SendRequest<UpBody>, String> {
    let stream = connect_as(client, dst).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

fn plain(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}

/// A gRPC call the proxy answers itself, as Cilium does: trailers-only
/// (one HEADERS frame ending the stream), `status` (7 PERMISSION_DENIED
/// for a denied call, 8 RESOURCE_EXHAUSTED for one over a RateLimit), the
/// message percent-encoded.
fn grpc_refused(status: &'static str, message: &'static str) -> Response<Body> {
    let mut r = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", hyper::header::HeaderValue::from_static(status));
    h.insert("grpc-message", hyper::header::HeaderValue::from_static(message));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{Decoder, Event};

    fn head(text: &str) -> RequestHead {
        match Decoder::default().decode(text.as_bytes()) {
            Ok((_, Some(Event::Head(h)))) => h,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    const UPGRADE: &str =
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n";

    #[test]
    fn only_a_complete_bodiless_safe_upgrade_is_taken_up() {
        let req = |line: &str, extra: &str| head(&format!("{line}\r\nHost: b\r\n{extra}\r\n"));
        assert!(asks_h2c(&req("GET /a HTTP/1.1", UPGRADE)));
        assert!(asks_h2c(&req("HEAD /a HTTP/1.1", &UPGRADE.replace("h2c", "websocket, H2C"))));
        for (line, extra, why) in [
            ("POST /a HTTP/1.1", UPGRADE, "an unsafe method"),
            ("GET /a HTTP/1.1", &format!("{UPGRADE}Content-Length: 1\r\n"), "a body"),
            ("GET /a HTTP/1.0", UPGRADE, "HTTP/1.0"),
            ("OPTIONS * HTTP/1.1", UPGRADE, "not origin form"),
            ("GET /a HTTP/1.1", &UPGRADE.replace("h2c", "websocket"), "another protocol"),
            ("GET /a HTTP/1.1", &UPGRADE.replace(", HTTP2-Settings", ""), "HTTP2-Settings not a connection option"),
            ("GET /a HTTP/1.1", &UPGRADE.replace("Upgrade, ", ""), "Upgrade not a connection option"),
            ("GET /a HTTP/1.1", &format!("{UPGRADE}HTTP2-Settings: \r\n"), "two HTTP2-Settings"),
            ("GET /a HTTP/1.1", &UPGRADE.replace("AAMAAABkAAQAoAAAAAIAAAAA", "AAMAAABkAA=="), "padded"),
            ("GET /a HTTP/1.1", &UPGRADE.replace("AAMAAABkAAQAoAAAAAIAAAAA", "AAMAAABkAA"), "not whole settings"),
        ] {
            assert!(!asks_h2c(&req(line, extra)), "{why}");
        }
        assert!(is_settings(b""), "no settings at all is a SETTINGS payload");
    }

    #[test]
    fn stream_one_is_one_headers_frame_or_continues() {
        let short = stream_one("GET", "b", "/a");
        // 9-byte header: length, HEADERS, END_STREAM|END_HEADERS, stream 1.
        assert_eq!(&short[3..9], &[1, 5, 0, 0, 0, 1]);
        assert_eq!(short.len(), 9 + usize::from(short[2]));
        let long = stream_one("GET", &"a".repeat(20_000), "/a");
        assert_eq!(&long[..9], &[0, 0x40, 0, 1, 1, 0, 0, 0, 1], "HEADERS, END_STREAM, a full frame");
        let next = &long[9 + MAX_FRAME..];
        assert_eq!(&next[3..9], &[9, 4, 0, 0, 0, 1], "CONTINUATION with END_HEADERS");
        assert_eq!(next.len(), 9 + (usize::from(next[1]) << 8 | usize::from(next[2])));
        // The authority's length as an HPACK integer: 127, then 19,873
        // (= 33 + 27·128 + 1·128²) in 7-bit groups, least first.
        let at =
            2 + ":method".len() + 1 + "GET".len() + 2 + ":scheme".len() + 1 + "http".len() + 2 + ":authority".len();
        assert_eq!(&long[9 + at..9 + at + 4], &[127, 33 | 0x80, 27 | 0x80, 1]);
    }
}
