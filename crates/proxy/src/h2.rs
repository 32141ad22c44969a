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
//! An HTTP/1.1 client asking to upgrade (`Upgrade: h2c`) is answered in
//! HTTP/1.1: the upgrade is hop-by-hop and declined, as RFC 9110 allows.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bulkhead_policy::l7::{HttpRequest, normalize_target};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::http1::{ACCESS_DENIED, TOO_MANY_REQUESTS};
use crate::rules::Connection;
use crate::server::{Decided, Shared, connect_as, rules_of};

/// What an HTTP/2 connection opens with (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a request's header list (as an HTTP/1.1 head).
const MAX_HEADER_LIST: u32 = 60 * 1024;

/// Concurrent streams a client may open.
const MAX_STREAMS: u32 = 128;

type Body = BoxBody<Bytes, hyper::Error>;

/// One client connection's state.
struct Ctx {
    peer: SocketAddr,
    dst: SocketAddr,
    conn: Connection,
    shared: Arc<Shared>,
    upstream: Mutex<Option<SendRequest<Incoming>>>,
}

/// Serves an HTTP/2 client connection until it ends.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    conn: Connection,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let ctx = Arc::new(Ctx { peer, dst, conn, shared, upstream: Mutex::new(None) });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(client), svc)
        .await
        .map_err(std::io::Error::other)
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
    let Decided { event, permit, retry_after } = ctx.shared.decide(&ctx.conn, (ctx.peer, ctx.dst), "HTTP/2", &req_seen);
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
    match forward(ctx, req, &authority, &target).await {
        Ok(resp) => {
            ctx.shared.events.send(event.response(resp.status().as_u16(), decided));
            // In flight (for maxConcurrentRequests) until the response's
            // body is done with.
            resp.map(|body| {
                body.map_frame(move |frame| {
                    let _in_flight = &permit;
                    frame
                })
                .boxed()
            })
        }
        Err(e) => {
            tracing::warn!(client = %ctx.peer, destination = %ctx.dst, error = %e, "upstream failed (503)");
            ctx.shared.events.send(event.response(503, decided));
            plain(StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error: {e}\r\n"))
        }
    }
}

/// Sends the request, rebuilt with the normalized target, on the
/// upstream connection (opened, as the client, when there is none).
async fn forward(
    ctx: &Ctx,
    req: Request<Incoming>,
    authority: &str,
    target: &str,
) -> Result<Response<Incoming>, String> {
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{authority}{target}").parse().map_err(|e| format!("{e}"))?;
    // `:authority` carries the host.
    parts.headers.remove(hyper::header::HOST);
    let out = Request::from_parts(parts, body);
    let mut sender = {
        let mut up = ctx.upstream.lock().await;
        match up.as_ref() {
            Some(s) if !s.is_closed() => s.clone(),
            _ => {
                let stream = connect_as(ctx.peer.ip(), ctx.dst).await.map_err(|e| e.to_string())?;
                let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                up.insert(sender).clone()
            }
        }
    };
    sender.send_request(out).await.map_err(|e| e.to_string())
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
