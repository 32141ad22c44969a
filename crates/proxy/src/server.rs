//! The HTTP/1.1 proxy on real sockets: transparent listeners in the node's
//! network namespace, one task per client connection, and the upstream
//! connection it opens as the client.
//!
//! A connection's rules are fixed when it is accepted (the kernel decided
//! to redirect it then; [`Rules::connection`]). Each request is then read
//! with the strict decoder, its target normalized, decided by both ends'
//! rules, and either answered by the proxy (403, 400) or written anew to
//! the server, whose response is relayed whole before the next request is
//! looked at: responses come back in request order, and the proxy's own
//! answers fall between them where they belong.
//!
//! The upstream connection keeps the client's address (`IP_TRANSPARENT`
//! bind) and carries [`UPSTREAM_MARK`], so the server's L3/L4 policy
//! judges it as the client and its replies come back to this socket
//! (DESIGN.md §4). It is opened at the first allowed request and kept for
//! the next ones while the server keeps it open.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bulkhead_policy::identity::Reserved;
use bulkhead_policy::l7::{EscapedSlashes, HeaderAction, HttpRequest, normalize_target};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::events::{Events, L7Event, redacted};
use crate::http1::{
    self, BodyLength, CONTINUE, Decoder, Event, Refusal, RequestHead, ResponseFramer, Version, encode_chunk,
    encode_head, encode_last_chunk,
};
use crate::limits::{Limiter, Permit};
use crate::rules::{Connection, Rules, Verdicts};

/// The mark on the proxy's upstream packets (`BH_FROM_PROXY_MARK` in
/// `bpf/`): the datapath lets them past the server's L7 redirect (their
/// requests were checked) and steers the replies back to the proxy.
pub const UPSTREAM_MARK: u32 = 0xa00;

/// How long the proxy waits to connect to a server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Read size for client and server sockets.
const READ_CHUNK: usize = 16 * 1024;

/// What every connection shares: the rules in force and the settings.
#[derive(Debug)]
pub struct Shared {
    /// The rules in force (swapped whole by each update).
    pub rules: ArcSwap<Rules>,
    /// What an encoded slash in a path does.
    pub escaped_slashes: EscapedSlashes,
    /// The port the proxy listens on (a connection to it that was not
    /// redirected is refused, else the proxy would connect to itself).
    pub port: u16,
    /// Where each request's and response's event goes.
    pub events: Events,
    /// What the DNS proxy learns goes to the agent through it.
    pub learner: crate::learn::Learner,
    /// The RateLimits' buckets.
    pub limiter: Arc<Limiter>,
    /// See [`crate::Config::reporter_init`].
    pub reporter_init: Option<fn() -> io::Result<()>>,
}

impl Shared {
    /// Decides one request (its target already normalized) with the
    /// connection's rules, then its RateLimits, and reports it: the
    /// request's event is sent, and its response's are made from the one
    /// returned. An admitted request under a limit comes with its permit,
    /// to hold until its response is relayed. HTTP/1.1 and HTTP/2 alike.
    pub(crate) fn decide(
        &self,
        conn: &Connection,
        (peer, dst): (SocketAddr, SocketAddr),
        protocol: &str,
        req: &HttpRequest<'_>,
    ) -> Decided {
        let mut verdict = conn.decide(req);
        let actions = std::mem::take(&mut verdict.actions);
        for a in &actions {
            tracing::info!(
                client = %peer, destination = %dst, header = %a.name, action = ?a.action, expected = %a.expected,
                found = ?a.found, applied = rewritable(&a.name), "headerMatches mismatch"
            );
        }
        let mut permit = None;
        let mut limited = None;
        if verdict.allowed
            && let Some(server) = &conn.server
        {
            let limits = conn.limits();
            if !limits.is_empty() {
                match self.limiter.admit(&limits, conn.client_identity, server, std::time::Instant::now()) {
                    Ok(p) => permit = Some(p),
                    Err(l) => limited = Some(l),
                }
            }
        }
        let url = format!("http://{}{}", req.host, req.path);
        let headers = redacted(req.headers);
        let mut event = L7Event::request(peer, dst, protocol, req.method, url, headers, verdict);
        if let Some(l) = &limited {
            event.allowed = false;
            event.limited_by = Some(Arc::clone(&l.by));
        }
        let event = Arc::new(event);
        self.events.send(Arc::clone(&event));
        Decided { event, permit, retry_after: limited.map(|l| l.retry_after), actions }
    }

    /// Reports a request refused before any rule saw it (answered 400).
    pub(crate) fn refused(&self, (peer, dst): (SocketAddr, SocketAddr), protocol: &str, method: &str, why: String) {
        let mut event = L7Event::request(peer, dst, protocol, method, String::new(), Vec::new(), Verdicts::denied());
        event.refused = Some(why);
        let response = event.response(400, std::time::Instant::now());
        self.events.send(event);
        self.events.send(response);
    }
}

/// A request, decided.
pub(crate) struct Decided {
    /// Its event (responses' events are made from it).
    pub event: Arc<L7Event>,
    /// Admitted under RateLimits: in flight until dropped.
    pub permit: Option<Permit>,
    /// Over a RateLimit: the seconds for `Retry-After` (the event is
    /// denied, and names the limit).
    pub retry_after: Option<u64>,
    /// An allowed request's `headerMatches` actions (logged already): the
    /// [`rewritable`] ones are applied to what is forwarded.
    pub actions: Vec<HeaderAction>,
}

/// Whether a `headerMatches` action may change header `name` in what the
/// proxy forwards: not a pseudo-header, `Host`, the body's framing or a
/// hop-by-hop header — those the proxy writes itself, from what it
/// decided (a rule's ADD of `Content-Length` must not reframe a request).
/// Such an action is logged, not applied.
pub(crate) fn rewritable(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !name.starts_with(':')
        && !["host", "content-length", "transfer-encoding", "expect"].contains(&name.as_str())
        && !http1::HOP_BY_HOP.contains(&name.as_str())
}

/// The rules behind an event, `side policy rule, …`, for a log line.
pub(crate) fn rules_of(event: &L7Event) -> String {
    event.by.iter().map(|(side, r)| format!("{side} {r}")).collect::<Vec<_>>().join(", ")
}

/// A non-blocking socket of `addr`'s family (IPv6 only, for IPv6) that may
/// use addresses not the node's own (`IP_TRANSPARENT`: without it the
/// kernel never answers an assigned SYN, nor binds the client's address).
pub(crate) fn transparent(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let s = Socket::new(if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 }, ty, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
    } else {
        s.set_ip_transparent_v4(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Transparent listeners on `port`, IPv4 and IPv6, in the calling thread's
/// network namespace.
pub fn listeners(port: u16) -> io::Result<Vec<std::net::TcpListener>> {
    [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])]
        .into_iter()
        .map(|any| {
            let addr = SocketAddr::new(any, port);
            let s = transparent(addr, Type::STREAM)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("binding [{any}]:{port}: {e}")))?;
            s.listen(1024)?;
            Ok(s.into())
        })
        .collect()
}

/// Accepts on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, peer, shared).await {
                        tracing::debug!(client = %peer, error = %e, "connection ended");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> io::Result<()> {
    let dst = client.local_addr()?;
    session(client, peer, dst, shared).await
}

/// Serves one client connection from `peer` whose original destination is
/// `dst` (for a redirected connection, its own local address).
pub async fn session(client: TcpStream, peer: SocketAddr, dst: SocketAddr, shared: Arc<Shared>) -> io::Result<()> {
    let rules = shared.rules.load();
    if dst.port() == shared.port && (dst.ip().is_loopback() || rules.identity(dst.ip()) == Reserved::Host.id()) {
        tracing::warn!(client = %peer, "refused a connection to the proxy's own port (only redirected ones are served)");
        return Ok(());
    }
    let conn = match rules.connection(peer.ip(), dst.ip(), dst.port()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(client = %peer, destination = %dst, reason = %e, "refused a connection");
            return Ok(());
        }
    };
    drop(rules);
    client.set_nodelay(true)?;
    if opens_http2(&client).await? {
        return crate::h2::serve(client, peer, dst, conn, shared).await;
    }
    Session { client, peer, dst, conn, shared, decoder: Decoder::default(), buf: Vec::new() }.run().await
}

/// Whether the client's first bytes are the HTTP/2 preface (they are not
/// consumed). Waits only while what arrived could still be one.
async fn opens_http2(client: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; crate::h2::PREFACE.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(1);
    loop {
        client.readable().await?;
        let n = client.peek(&mut buf).await?;
        if n == 0 || !crate::h2::PREFACE.starts_with(&buf[..n]) {
            return Ok(false);
        }
        if n == buf.len() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "a partial HTTP/2 preface"));
        }
        // Part of the preface: the rest is on its way (backing off, so a
        // client that stops mid-preface costs next to nothing).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// One client connection.
struct Session {
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    conn: Connection,
    shared: Arc<Shared>,
    decoder: Decoder,
    /// What the client sent that the decoder has not consumed.
    buf: Vec<u8>,
}

/// What became of a request.
enum After {
    /// Go on with the next request.
    Next,
    /// Close the client's connection.
    Close,
    /// Switch the client to HTTP/2: the server answered its upgrade.
    Upgrade(Box<crate::h2::Upgrade>),
}

impl Session {
    async fn run(mut self) -> io::Result<()> {
        let mut upstream: Option<Upstream> = None;
        loop {
            let head = match self.next_event().await? {
                None => return Ok(()),
                Some(Err(refusal)) => return self.refuse(&refusal).await,
                Some(Ok(Event::Head(head))) => head,
                Some(Ok(other)) => {
                    // The decoder yields body events only after a head,
                    // and this loop reads every body to its end.
                    return Err(io::Error::other(format!("unexpected {other:?} between requests")));
                }
            };
            match self.request(head, &mut upstream).await? {
                After::Next => {}
                After::Close => return Ok(()),
                After::Upgrade(up) => {
                    let Session { client, peer, dst, conn, shared, buf, .. } = self;
                    return Box::pin(crate::h2::serve_upgraded(client, buf, (peer, dst), conn, shared, *up)).await;
                }
            }
        }
    }

    /// The next decoder event, reading as needed; `None` at a clean end.
    async fn next_event(&mut self) -> io::Result<Option<Result<Event, Refusal>>> {
        loop {
            match self.decoder.decode(&self.buf) {
                Ok((n, ev)) => {
                    self.buf.drain(..n);
                    if let Some(ev) = ev {
                        return Ok(Some(Ok(ev)));
                    }
                    if n > 0 {
                        continue;
                    }
                }
                Err(r) => return Ok(Some(Err(r))),
            }
            // Into spare capacity: nothing is zeroed first.
            self.buf.reserve(READ_CHUNK);
            let n = self.client.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.decoder.is_idle() && self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-request"))
                };
            }
        }
    }

    async fn refuse(&mut self, why: &(dyn std::fmt::Display + Sync)) -> io::Result<()> {
        tracing::info!(client = %self.peer, destination = %self.dst, reason = %why, "refused a request (400)");
        self.shared.refused((self.peer, self.dst), "HTTP/1.1", "", why.to_string());
        let answer = http1::bad_request(why);
        self.client.write_all(&answer).await?;
        self.client.shutdown().await
    }

    async fn request(&mut self, mut head: RequestHead, upstream: &mut Option<Upstream>) -> io::Result<After> {
        if head.body == BodyLength::Empty {
            // The decoder marks the end of every request, also of one with
            // no body: take it now, nothing is left to forward.
            match self.next_event().await? {
                Some(Ok(Event::End)) => {}
                other => {
                    return Err(io::Error::other(format!("expected the end of a bodiless request, got {other:?}")));
                }
            }
        }
        if head.host.is_empty() {
            // HTTP/1.0 without Host: what is forwarded is HTTP/1.1, which
            // needs one; the original destination is the authority.
            head.host = self.dst.to_string();
        }
        let target = match normalize_target(&head.target, self.shared.escaped_slashes) {
            Ok(t) => t,
            Err(e) => {
                self.refuse(&e).await?;
                return Ok(After::Close);
            }
        };
        let values: Vec<_> = head.headers.iter().map(|(_, v)| String::from_utf8_lossy(v)).collect();
        let headers: Vec<(&str, &str)> =
            head.headers.iter().zip(&values).map(|((k, _), v)| (k.as_str(), &**v)).collect();
        let req = HttpRequest { method: &head.method, path: &target, host: &head.host, headers: &headers };
        let Decided { event, mut permit, retry_after, actions } =
            self.shared.decide(&self.conn, (self.peer, self.dst), "HTTP/1.1", &req);
        let decided = std::time::Instant::now();
        let respond = |code: u16| event.response(code, decided);
        // Keep-alive goes on after the proxy's own answer unless a body is
        // still unread (it could hold anything, including what would look
        // like a request).
        let unread = head.body != BodyLength::Empty;
        if let Some(retry_after) = retry_after {
            tracing::info!(
                client = %self.peer, destination = %self.dst, method = %head.method, path = %target,
                limited_by = ?event.limited_by.as_ref().map(ToString::to_string), "request over a rate limit (429)"
            );
            self.client.write_all(&http1::too_many_requests(retry_after, !unread)).await?;
            self.shared.events.send(respond(429));
            return Ok(if unread || self.client_closes(&head) { After::Close } else { After::Next });
        }
        if !event.allowed {
            tracing::info!(
                client = %self.peer, destination = %self.dst, method = %head.method, path = %target,
                denied_by = %rules_of(&event), "request denied (403)"
            );
            self.client.write_all(&http1::forbidden(!unread)).await?;
            self.shared.events.send(respond(403));
            return Ok(if unread || self.client_closes(&head) { After::Close } else { After::Next });
        }
        tracing::debug!(
            client = %self.peer, destination = %self.dst, method = %head.method, path = %target,
            allowed_by = %rules_of(&event), "request allowed"
        );
        for a in actions.iter().filter(|a| rewritable(&a.name)) {
            a.apply(&mut head.headers);
        }
        if crate::h2::asks_h2c(&head) {
            // The upgrade's futures are boxed: inline, their state would
            // grow every HTTP/1.1 connection's task (memory per idle
            // connection).
            let decision = (&event, &mut permit, decided);
            match Box::pin(crate::h2::ahead((self.peer.ip(), self.dst), &head, &target, decision)).await {
                Ok(up) => return Ok(After::Upgrade(Box::new(up))),
                Err(e) => tracing::debug!(
                    client = %self.peer, destination = %self.dst, error = %e,
                    "the server did not answer over HTTP/2: the upgrade is declined"
                ),
            }
        }
        let expects_continue = take_expect_continue(&mut head);
        let up = match upstream {
            Some(up) => up,
            None => match Upstream::connect(self.peer.ip(), self.dst).await {
                Ok(up) => upstream.insert(up),
                Err(e) => {
                    tracing::warn!(client = %self.peer, destination = %self.dst, error = %e, "upstream connect failed (503)");
                    let answer = http1::unavailable(&e);
                    self.client.write_all(&answer).await?;
                    self.shared.events.send(respond(503));
                    return Ok(After::Close);
                }
            },
        };
        up.stream.write_all(&encode_head(&head, &target)).await?;
        if expects_continue && head.body != BodyLength::Empty {
            self.client.write_all(CONTINUE).await?;
        }
        // A server may answer before the body is all there (and close):
        // its answer is relayed then, not lost to a write that fails.
        let whole = head.body == BodyLength::Empty || self.forward_body(head.body, &mut up.stream).await?;
        let (keep, status) = up.relay_response(&mut self.client, head.method == "HEAD", permit).await?;
        self.shared.events.send(respond(status));
        // A body not read to its end: what follows on either connection is
        // part of it, never a request or a response.
        let keep = keep && whole;
        if !keep {
            *upstream = None;
        }
        Ok(if self.client_closes(&head) || !keep { After::Close } else { After::Next })
    }

    /// Copies the request body, re-framed as the proxy chose (chunked
    /// stays chunked, with the client's chunk boundaries not preserved).
    /// Whether it was copied whole: `false` when the server began to answer
    /// (or closed) first — the rest is left unread, and the answer relayed.
    async fn forward_body(&mut self, framing: BodyLength, up: &mut TcpStream) -> io::Result<bool> {
        loop {
            let event = tokio::select! {
                biased;
                ready = up.readable() => {
                    ready?;
                    let peer = socket2::SockRef::from(&*up);
                    let mut one = [std::mem::MaybeUninit::<u8>::uninit()];
                    match up.try_io(tokio::io::Interest::READABLE, || peer.peek(&mut one)) {
                        // Bytes of an answer, or the end: the server is done reading.
                        Ok(_) => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                event = self.next_event() => event?,
            };
            match event {
                Some(Ok(Event::Data(d))) => {
                    if framing == BodyLength::Chunked {
                        up.write_all(&encode_chunk(&d)).await?;
                    } else {
                        up.write_all(&d).await?;
                    }
                }
                Some(Ok(Event::End)) => {
                    if framing == BodyLength::Chunked {
                        up.write_all(encode_last_chunk()).await?;
                    }
                    return Ok(true);
                }
                Some(Err(refusal)) => {
                    // A bad chunk: the server got part of a body and will
                    // see the connection end; the client is told why.
                    self.refuse(&refusal).await?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, refusal.to_string()));
                }
                Some(Ok(Event::Head(_))) | None => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the request body ended early"));
                }
            }
        }
    }

    /// Whether the client asked to close after this request.
    fn client_closes(&self, head: &RequestHead) -> bool {
        let said = |token: &str| {
            head.hop_by_hop.iter().any(|(k, v)| {
                k == "connection" && String::from_utf8_lossy(v).split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        match head.version {
            Version::Http11 => said("close"),
            Version::Http10 => !said("keep-alive"),
        }
    }
}

/// Removes `Expect: 100-continue` (the proxy answers it itself); whether
/// it was there.
fn take_expect_continue(head: &mut RequestHead) -> bool {
    let before = head.headers.len();
    head.headers.retain(|(k, v)| !(k == "expect" && v.eq_ignore_ascii_case(b"100-continue")));
    head.headers.len() != before
}

/// The proxy's connection to the original destination.
struct Upstream {
    stream: TcpStream,
    /// Bytes read from the server past the response being relayed.
    buf: Vec<u8>,
}

/// Connects to `dst` from `client`'s address (`IP_TRANSPARENT`), marked
/// [`UPSTREAM_MARK`].
pub(crate) async fn connect_as(client: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = transparent(dst, Type::STREAM)?;
    s.set_mark(UPSTREAM_MARK)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::new(client, 0).into())?;
    let std: std::net::TcpStream = s.into();
    let socket = tokio::net::TcpSocket::from_std_stream(std);
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {dst} timed out")))?
}

impl Upstream {
    async fn connect(client: IpAddr, dst: SocketAddr) -> io::Result<Self> {
        Ok(Self { stream: connect_as(client, dst).await?, buf: Vec::new() })
    }

    /// Relays one response (and interim ones) to `client`; whether the
    /// upstream connection can carry another request, and the status. The
    /// request's `permit` (RateLimits' in-flight count) is released before
    /// the response's last bytes go out: a client holding the whole
    /// response never finds its request still counted.
    async fn relay_response(
        &mut self,
        client: &mut TcpStream,
        head_request: bool,
        mut permit: Option<Permit>,
    ) -> io::Result<(bool, u16)> {
        let mut framer = ResponseFramer::new(head_request);
        loop {
            let scan = framer.scan(&self.buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if scan.done {
                drop(permit.take());
            }
            if scan.consumed > 0 {
                client.write_all(&self.buf[..scan.consumed]).await?;
                self.buf.drain(..scan.consumed);
            }
            if scan.done {
                // Bytes after the response that nobody asked for: the
                // connection is not trusted with another request.
                return Ok((!framer.closes() && self.buf.is_empty(), framer.status()));
            }
            self.buf.reserve(READ_CHUNK);
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                framer.eof().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return Ok((false, framer.status()));
            }
        }
    }
}
