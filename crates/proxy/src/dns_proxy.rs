//! The DNS proxy on real sockets: the queries a DNS rule covers, handed
//! over by the kernel on UDP and TCP (transparent sockets on one port in
//! the node's network namespace), decided by name and either answered by
//! the proxy or forwarded to their original destination as the client.
//!
//! A UDP query arrives on the proxy's wildcard socket with its original
//! destination (`IP_RECVORIGDSTADDR`); a TCP one on a transparent listener
//! whose accepted socket's own address is the original destination. Each
//! query is read with [`crate::dns`] and decided by both ends' rules
//! ([`crate::rules::Connection::decide_dns`]):
//!
//! - not a DNS message: dropped; a header but not a query the proxy
//!   forwards (a response, several questions, another opcode or class):
//!   FORMERR. Nothing malformed is ever forwarded.
//! - denied: REFUSED (or NXDOMAIN, [`DnsSettings::nxdomain`]).
//! - allowed: sent to the original destination from the client's address
//!   with [`crate::UPSTREAM_MARK`] (the server's policy judges the client,
//!   and the kernel steers the answer back to the proxy; over UDP on a
//!   socket shared by the client's queries, [`crate::dns_upstream`]), and the upstream's
//!   answer relayed as it is — NXDOMAIN and SERVFAIL too — once it is
//!   checked to answer the query (ID and question). An upstream that does
//!   not answer in [`UPSTREAM_TIMEOUT`], or answers wrongly: SERVFAIL.
//!
//! A UDP answer leaves from a transparent socket bound to the original
//! destination, so that the client's resolver sees it come from the server
//! it asked. Fails closed: before the agent's first rules a query gets
//! SERVFAIL (the client asks again), a query to a flow the policy no longer
//! redirects is refused, and past [`MAX_IN_FLIGHT`] UDP queries at once a
//! query is dropped rather than queued without bound.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_policy::repository::Proto;
use hickory_proto::op::ResponseCode;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt};
use socket2::Type;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::dns::{BadQuery, Learnt, MAX_MESSAGE, Query, format_error};
use crate::dns_upstream::{Upstreams, no_answer};
use crate::events::{DnsInfo, L7Event};
use crate::learn::Held;
use crate::rules::{Refused, Verdicts};
use crate::server::{Shared, connect_as, transparent};

/// How long the proxy waits for the upstream's answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// UDP queries being answered at once, at most (each holds a task); past
/// it a query is dropped and its client retries.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How long a TCP client connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Reply sockets kept, one per original destination (resolvers are few;
/// past this many the cache starts over).
const MAX_REPLY_SOCKETS: usize = 1024;

/// What the DNS proxy runs with.
#[derive(Debug, Clone, Copy)]
pub struct DnsSettings {
    /// Its port (UDP and TCP); a query addressed to it was not redirected
    /// and is dropped.
    pub port: u16,
    /// A denied query is answered NXDOMAIN instead of REFUSED.
    pub nxdomain: bool,
    /// How long an allowed answer with addresses is held at most, waiting
    /// for the kernel to enforce them ([`crate::learn`]).
    pub hold: Duration,
}

/// The DNS proxy's state, shared by its tasks.
#[derive(Debug)]
pub struct Dns {
    shared: Arc<Shared>,
    settings: DnsSettings,
    in_flight: Arc<Semaphore>,
    /// Sockets bound to an original destination, to answer from it.
    replies: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    /// The sockets UDP queries go upstream on.
    upstreams: Upstreams,
}

/// What becomes of one query.
enum Outcome {
    /// Nothing is sent back.
    Drop,
    /// The proxy answers it, before any rule saw it.
    Answer(Vec<u8>),
    /// The rules deny it: the proxy refuses it.
    Refuse(Asked),
    /// It goes to the original destination.
    Forward(Asked),
}

/// A query the rules decided, with its event (its answer's is made from it).
struct Asked {
    query: Query,
    event: Arc<L7Event>,
    since: Instant,
}

impl Dns {
    /// The DNS proxy deciding with `shared`'s rules.
    pub fn new(shared: Arc<Shared>, settings: DnsSettings) -> Self {
        Self {
            shared,
            settings,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            replies: Mutex::default(),
            upstreams: Upstreams::default(),
        }
    }

    /// Decides the query `bytes` from `client` to `dst` over `proto`.
    fn decide(&self, client: SocketAddr, dst: SocketAddr, proto: Proto, bytes: &[u8]) -> Outcome {
        if dst.port() == self.settings.port {
            // Addressed to the proxy itself, not handed over by the kernel.
            return Outcome::Drop;
        }
        let query = match Query::parse(bytes) {
            Ok(q) => q,
            Err(BadQuery::NoHeader(n)) => {
                tracing::debug!(%client, destination = %dst, bytes = n, "not a DNS message; dropped");
                return Outcome::Drop;
            }
            Err(BadQuery::Malformed { id, why }) => {
                tracing::info!(%client, destination = %dst, %why, "malformed DNS query; FORMERR");
                return Outcome::Answer(format_error(id));
            }
        };
        let rules = self.shared.rules.load();
        let verdict = match rules.flow(client.ip(), dst.ip(), proto, dst.port()) {
            Ok(conn) => conn.decide_dns(&query.name),
            Err(Refused::NotSynced) => return Outcome::Answer(query.server_failure()),
            Err(e @ Refused::Denied { .. }) => {
                tracing::info!(%client, destination = %dst, query = %query.name, why = %e, "DNS query refused");
                Verdicts::denied()
            }
            Err(e @ Refused::NotLocal { .. }) => {
                tracing::warn!(%client, destination = %dst, why = %e, "DNS query dropped");
                return Outcome::Drop;
            }
        };
        let by = verdict.by.iter().map(|(side, r)| format!("{side} {r}")).collect::<Vec<_>>().join(", ");
        let allowed = verdict.allowed;
        if allowed {
            tracing::debug!(%client, destination = %dst, query = %query.name, qtype = %query.qtype, rules = %by, "DNS query allowed");
        } else {
            tracing::info!(%client, destination = %dst, query = %query.name, qtype = %query.qtype, rules = %by, "DNS query denied");
        }
        let info = DnsInfo {
            query: query.name.clone(),
            qtypes: vec![query.qtype.to_string()],
            udp: proto == Proto::Udp,
            ..DnsInfo::default()
        };
        let event = Arc::new(L7Event::dns_query(client, dst, info, verdict));
        self.shared.events.send(Arc::clone(&event));
        let asked = Asked { query, event, since: Instant::now() };
        if allowed { Outcome::Forward(asked) } else { Outcome::Refuse(asked) }
    }

    /// The proxy's answer to a query the rules deny, reported.
    fn refuse(&self, asked: &Asked) -> Vec<u8> {
        let code = if self.settings.nxdomain { ResponseCode::NXDomain } else { ResponseCode::Refused };
        self.report(asked, code, None, None);
        asked.query.refuse(self.settings.nxdomain)
    }

    /// Reports the answer to `asked`: `rcode`, what it taught, how it was held.
    fn report(&self, asked: &Asked, rcode: ResponseCode, learnt: Option<&Learnt>, held: Option<(Held, Duration)>) {
        let Some(q) = &asked.event.dns else { return };
        let mut info = DnsInfo { rcode: u16::from(rcode), ..DnsInfo::clone(q) };
        if let Some(l) = learnt {
            info.ips = l.addrs.clone();
            info.cnames = l.cnames.clone();
            info.ttl = l.ttl;
            let mut types = Vec::new();
            if !l.cnames.is_empty() {
                types.push("CNAME".to_string());
            }
            for (v4, t) in [(true, "A"), (false, "AAAA")] {
                if l.addrs.iter().any(|a| a.is_ipv4() == v4) {
                    types.push(t.into());
                }
            }
            info.rrtypes = types;
        }
        if let Some((how, took)) = held {
            info.held = how.as_str().into();
            info.held_ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        }
        self.shared.events.send(Arc::new(asked.event.dns_answer(info, asked.since)));
    }

    /// What the client gets for `asked` once the upstream answered (the
    /// answer, checked, with what it teaches) or failed: the answer as it
    /// is — once the kernel enforces the addresses it teaches, or the hold
    /// time ran out — else (as the error) SERVFAIL.
    async fn relay(
        &self,
        client: SocketAddr,
        dst: SocketAddr,
        asked: &Asked,
        answer: io::Result<(Vec<u8>, Learnt)>,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let query = &asked.query;
        match answer {
            Ok((a, learnt)) => {
                let mut held = None;
                if !learnt.addrs.is_empty() {
                    let t0 = Instant::now();
                    let how = self
                        .shared
                        .learner
                        .hold(client.ip(), &query.name, &learnt.addrs, learnt.ttl, self.settings.hold)
                        .await;
                    if matches!(how, Held::TimedOut | Held::NoAgent) {
                        tracing::info!(%client, query = %query.name, held = ?how, "DNS answer released before its addresses were enforced");
                    }
                    held = Some((how, t0.elapsed()));
                }
                tracing::debug!(%client, destination = %dst, query = %query.name, rcode = %learnt.rcode,
                    addresses = learnt.addrs.len(), ttl = learnt.ttl, "DNS answer relayed");
                self.report(asked, learnt.rcode, Some(&learnt), held);
                Ok(a)
            }
            Err(e) => {
                tracing::info!(%client, destination = %dst, query = %query.name, error = %e, "upstream failed; SERVFAIL");
                self.report(asked, ResponseCode::ServFail, None, None);
                Err(query.server_failure())
            }
        }
    }

    /// The socket that answers as `dst` (bound to it, transparent).
    fn reply_socket(&self, dst: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let mut replies = self.replies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = replies.get(&dst) {
            return Ok(Arc::clone(s));
        }
        let s = transparent(dst, Type::DGRAM)?;
        s.set_reuse_address(true)?;
        s.bind(&dst.into())?;
        let s = Arc::new(UdpSocket::from_std(s.into())?);
        if replies.len() >= MAX_REPLY_SOCKETS {
            replies.clear();
        }
        replies.insert(dst, Arc::clone(&s));
        Ok(s)
    }
}

/// The proxy's UDP sockets on `port`, IPv4 and IPv6 (transparent, bound to
/// the wildcard address, reporting each datagram's original destination),
/// in the calling thread's network namespace.
pub fn udp_sockets(port: u16) -> io::Result<Vec<std::net::UdpSocket>> {
    [IpAddr::from(Ipv4Addr::UNSPECIFIED), IpAddr::from(Ipv6Addr::UNSPECIFIED)]
        .into_iter()
        .map(|any| {
            let addr = SocketAddr::new(any, port);
            let s = transparent(addr, Type::DGRAM)?;
            if addr.is_ipv6() {
                setsockopt(&s, sockopt::Ipv6OrigDstAddr, &true)?;
            } else {
                setsockopt(&s, sockopt::Ipv4OrigDstAddr, &true)?;
            }
            s.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("binding UDP [{any}]:{port}: {e}")))?;
            Ok(s.into())
        })
        .collect()
}

/// One datagram: its bytes' length, its sender and its original destination.
fn receive(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_TRUNC)?;
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::from(std::net::SocketAddrV4::from(*s)))
            .or_else(|| a.as_sockaddr_in6().map(|s| SocketAddr::from(std::net::SocketAddrV6::from(*s))))
    });
    let mut dst = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                dst = Some(SocketAddr::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                    u16::from_be(a.sin_port),
                ));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                dst = Some(SocketAddr::new(Ipv6Addr::from(a.sin6_addr.s6_addr).into(), u16::from_be(a.sin6_port)));
            }
            _ => {}
        }
    }
    match (from, dst) {
        (Some(from), Some(dst)) => Ok((msg.bytes, from, dst)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "a datagram without its sender or original destination")),
    }
}

/// Answers the UDP queries arriving on `sock` until the runtime stops.
pub async fn serve_udp(sock: UdpSocket, dns: Arc<Dns>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let got = sock.async_io(Interest::READABLE, || receive(&sock, &mut buf)).await;
        let (n, client, dst) = match got {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if n > buf.len() {
            // Truncated (MSG_TRUNC reports the real length): not one we read whole.
            continue;
        }
        let Ok(permit) = Arc::clone(&dns.in_flight).try_acquire_owned() else {
            tracing::warn!(%client, "{MAX_IN_FLIGHT} DNS queries in flight; dropped");
            continue;
        };
        let query = buf[..n].to_vec();
        let dns = Arc::clone(&dns);
        tokio::spawn(async move {
            let answer = match dns.decide(client, dst, Proto::Udp, &query) {
                Outcome::Drop => return,
                Outcome::Answer(a) => a,
                Outcome::Refuse(asked) => dns.refuse(&asked),
                Outcome::Forward(asked) => {
                    let up = dns.upstreams.ask(client.ip(), dst, &query, &asked.query, UPSTREAM_TIMEOUT).await;
                    dns.relay(client, dst, &asked, up).await.unwrap_or_else(|servfail| servfail)
                }
            };
            drop(permit);
            let sent = match dns.reply_socket(dst) {
                Ok(s) => s.send_to(&answer, client).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(%client, destination = %dst, error = %e, "DNS answer not sent");
            }
        });
    }
}

/// Accepts DNS-over-TCP connections on `listener` until the runtime stops.
pub async fn serve_tcp(listener: TcpListener, dns: Arc<Dns>) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                let dns = Arc::clone(&dns);
                tokio::spawn(async move {
                    if let Err(e) = tcp_connection(stream, client, dns).await {
                        tracing::debug!(%client, error = %e, "DNS connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one length-prefixed message (`None` at a clean end).
async fn read_message(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_message(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("a DNS message over 65,535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

/// Serves one client's DNS-over-TCP connection: its queries in turn, the
/// allowed ones over one upstream connection opened as the client.
async fn tcp_connection(mut client: TcpStream, peer: SocketAddr, dns: Arc<Dns>) -> io::Result<()> {
    let dst = client.local_addr()?;
    let mut upstream: Option<TcpStream> = None;
    loop {
        let Some(bytes) = tokio::time::timeout(TCP_IDLE, read_message(&mut client)).await.ok().transpose()?.flatten()
        else {
            return Ok(());
        };
        let answer = match dns.decide(peer, dst, Proto::Tcp, &bytes) {
            Outcome::Drop => return Ok(()),
            Outcome::Answer(a) => a,
            Outcome::Refuse(asked) => dns.refuse(&asked),
            Outcome::Forward(asked) => {
                let up = forward_tcp(&mut upstream, (peer.ip(), dst), &bytes, &asked.query).await;
                dns.relay(peer, dst, &asked, up).await.unwrap_or_else(|servfail| {
                    // What the upstream connection carries next is unknown.
                    upstream = None;
                    servfail
                })
            }
        };
        write_message(&mut client, &answer).await?;
    }
}

/// Sends `bytes` on the upstream connection (opened as `client` when there
/// is none) and reads the next message on it, which must answer `query`:
/// it, and what it teaches.
async fn forward_tcp(
    upstream: &mut Option<TcpStream>,
    (client, dst): (IpAddr, SocketAddr),
    bytes: &[u8],
    query: &Query,
) -> io::Result<(Vec<u8>, Learnt)> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        if upstream.is_none() {
            *upstream = Some(connect_as(client, dst).await?);
        }
        let up = upstream.as_mut().expect("opened above");
        write_message(up, bytes).await?;
        let answer = read_message(up)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed"))?;
        let learnt = query.learn(&answer).map_err(io::Error::other)?;
        Ok((answer, learnt))
    })
    .await
    .map_err(|_| no_answer(dst, UPSTREAM_TIMEOUT))?
}
