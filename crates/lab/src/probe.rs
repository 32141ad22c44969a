//! Real probes between pods: does a packet get through?
//!
//! A probe counts as *reached* when the destination's kernel answered at
//! all — a TCP handshake or reset, a UDP echo or an ICMP port-unreachable,
//! an ICMP echo reply — because policy is about whether packets arrive,
//! not whether something listens. It counts as *dropped* when nothing came
//! back before the timeout. Probes run on threads inside the source pod's
//! network namespace (see `bulkhead_datapath::netns`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_policy::repository::Proto;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

/// One probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol: TCP, UDP, ICMP or ICMPv6 (echo).
    pub proto: Proto,
    /// Destination port (ignored for ICMP).
    pub port: u16,
    /// An L7 proxy decides it: a UDP probe, or a TCP one to port 53, is a
    /// DNS query whose answer's rcode is read; another TCP probe sends
    /// `GET /` once connected and reads the response's status.
    pub l7: bool,
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The destination answered.
    Reached,
    /// An HTTP probe's request was answered with this status.
    Http(u16),
    /// An L7 DNS probe's query was answered with this rcode.
    Dns(u8),
    /// Nothing came back in time.
    Dropped,
    /// The probe could not be sent.
    Error(String),
}

/// Sends one probe from the calling thread's network namespace.
pub fn probe(p: Probe, timeout: Duration) -> Outcome {
    let r = match p.proto {
        Proto::Tcp if p.l7 && p.port == 53 => return dns(p, crate::dns::Transport::Tcp, timeout),
        Proto::Udp if p.l7 => return dns(p, crate::dns::Transport::Udp, timeout),
        Proto::Tcp if p.l7 => return http(p, timeout),
        Proto::Tcp => tcp(p, timeout),
        Proto::Udp => udp(p, timeout),
        Proto::Icmp | Proto::Icmpv6 => echo(p, timeout),
        other => Err(io::Error::other(format!("cannot probe {}", other.as_str()))),
    };
    match r {
        Ok(true) => Outcome::Reached,
        Ok(false) => Outcome::Dropped,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// Sends `probes` from inside the namespace at `netns` on `parallel`
/// threads; outcomes in the same order.
pub fn probe_from(netns: &Path, probes: &[Probe], timeout: Duration, parallel: usize) -> io::Result<Vec<Outcome>> {
    let chunk = probes.len().div_ceil(parallel.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    bulkhead_datapath::netns::run_in(netns, || c.iter().map(|p| probe(*p, timeout)).collect())
                })
            })
            .collect();
        let mut out: Vec<Outcome> = Vec::with_capacity(probes.len());
        for h in handles {
            let part: Vec<Outcome> = h.join().map_err(|_| io::Error::other("probe thread panicked"))??;
            out.extend(part);
        }
        Ok(out)
    })
}

fn domain(ip: IpAddr) -> Domain {
    if ip.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }
}

fn tcp(p: Probe, timeout: Duration) -> io::Result<bool> {
    let s = Socket::new(domain(p.dst), Type::STREAM, Some(Protocol::TCP))?;
    s.set_linger(Some(Duration::ZERO))?;
    match s.connect_timeout(&SocketAddr::new(p.dst, p.port).into(), timeout) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Connects, sends `GET /` and reads the status line: `Http(status)`;
/// `Reached` when the connection was made but no HTTP answer came.
fn http(p: Probe, timeout: Duration) -> Outcome {
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + timeout;
    let s = match Socket::new(domain(p.dst), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let dst = SocketAddr::new(p.dst, p.port);
    match s.connect_timeout(&dst.into(), timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Outcome::Reached,
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => return Outcome::Dropped,
        Err(e) => return Outcome::Error(e.to_string()),
    }
    let mut stream: std::net::TcpStream = s.into();
    let request =
        format!("GET / HTTP/1.1\r\nhost: {dst}\r\nuser-agent: bulkhead-lab-probe\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Outcome::Reached;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(2).any(|w| w == b"\r\n") && got.len() < 256 {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let status = std::str::from_utf8(&got)
        .ok()
        .and_then(|t| t.strip_prefix("HTTP/1.1 ").or_else(|| t.strip_prefix("HTTP/1.0 ")))
        .and_then(|t| t.get(..3)?.parse().ok());
    status.map_or(Outcome::Reached, Outcome::Http)
}

/// A UDP probe's payload: a well-formed DNS query (id 0xb1b1, one
/// question, `probe.bulkhead. A`), so that a DNS server answers it as an
/// echo server does.
const PAYLOAD: [u8; 32] = [
    0xb1, 0xb1, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header: RD, QDCOUNT 1
    5, b'p', b'r', b'o', b'b', b'e', 8, b'b', b'u', b'l', b'k', b'h', b'e', b'a', b'd', 0, // probe.bulkhead.
    0x00, 0x01, 0x00, 0x01, // QTYPE A, QCLASS IN
];

/// Sends the probe's DNS query over `transport`: `Dns(rcode)` for an
/// answer, `Dropped` when none came (or the connection was not made),
/// `Reached` for something else.
fn dns(p: Probe, transport: crate::dns::Transport, timeout: Duration) -> Outcome {
    match crate::dns::exchange(SocketAddr::new(p.dst, p.port), &PAYLOAD, transport, timeout) {
        Ok(answer) if answer.len() >= 12 && answer[..2] == PAYLOAD[..2] => Outcome::Dns(answer[3] & 0x0f),
        Ok(_) => Outcome::Reached,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Outcome::Reached,
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => Outcome::Dropped,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

fn udp(p: Probe, timeout: Duration) -> io::Result<bool> {
    let s = Socket::new(domain(p.dst), Type::DGRAM, Some(Protocol::UDP))?;
    s.connect(&SocketAddr::new(p.dst, p.port).into())?;
    s.send(&PAYLOAD)?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    match recv_within(&s, &mut buf, Instant::now() + timeout) {
        Ok(got) => Ok(got.is_some()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(e),
    }
}

/// ICMP echo through a ping socket (the namespace's `ping_group_range`
/// must include root's group; the lab sets it).
fn echo(p: Probe, timeout: Duration) -> io::Result<bool> {
    let (proto, ty) = if p.dst.is_ipv4() { (Protocol::ICMPV4, 8u8) } else { (Protocol::ICMPV6, 128u8) };
    let s = Socket::new(domain(p.dst), Type::DGRAM, Some(proto))?;
    s.connect(&SocketAddr::new(p.dst, 0).into())?;
    s.send(&[ty, 0, 0, 0, 0, 0, 0, 1])?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    Ok(recv_within(&s, &mut buf, Instant::now() + timeout)?.is_some())
}

/// Receives one datagram or frame on `sock` before `deadline`: `None` when
/// the deadline passes first. A signal that interrupts the wait (a socket
/// with a receive timeout is never restarted, whatever `SA_RESTART` says)
/// only resumes it, with the time that is left.
fn recv_within(sock: &Socket, buf: &mut [std::mem::MaybeUninit<u8>], deadline: Instant) -> io::Result<Option<usize>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// A raw Ethernet socket on one interface of the calling thread's network
/// namespace: sends frames exactly as given (malformed ones, SCTP, which
/// this kernel cannot originate) and captures what arrives, before any
/// protocol stack looks at it.
pub struct RawLink {
    sock: Socket,
}

/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;

impl RawLink {
    /// Opens the interface `ifname`.
    pub fn open(ifname: &str) -> io::Result<RawLink> {
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|e| io::Error::other(format!("{ifname}: {e}")))?;
        let proto = Protocol::from(i32::from(ETH_P_ALL.to_be()));
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(proto))?;
        let ll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_ALL.to_be(),
            sll_ifindex: i32::try_from(ifindex).map_err(io::Error::other)?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let mut storage = socket2::SockAddrStorage::zeroed();
        // SAFETY: sockaddr_ll is one of this platform's sockaddr types and
        // fits in the storage (view_as asserts the size); the length given
        // to SockAddr::new is exactly the bytes initialised.
        #[expect(unsafe_code, reason = "socket2 has no safe constructor for link-layer addresses")]
        let addr = unsafe {
            *storage.view_as::<libc::sockaddr_ll>() = ll;
            socket2::SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        sock.bind(&addr)?;
        Ok(RawLink { sock })
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = self.sock.send(frame)?;
        if n == frame.len() { Ok(()) } else { Err(io::Error::other(format!("sent {n} of {} bytes", frame.len()))) }
    }

    /// Every frame received until `deadline` passes, for which `keep` holds.
    pub fn capture(&self, timeout: Duration, keep: impl Fn(&[u8]) -> bool) -> io::Result<Vec<Vec<u8>>> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while let Some(n) = recv_within(&self.sock, &mut buf, end)? {
            // SAFETY: recv initialised the first n bytes.
            #[expect(unsafe_code, reason = "socket2 receives into uninitialised memory")]
            let frame: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
            if keep(&frame) {
                out.push(frame);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::sync::mpsc;

    use nix::sys::pthread::{pthread_kill, pthread_self};
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

    use super::*;

    extern "C" fn nothing(_: libc::c_int) {}

    /// A signal that lands while a probe waits for its answer (CI saw one
    /// fail a capture with EINTR) neither fails the probe nor cuts it short.
    #[test]
    fn a_signal_during_a_probe_only_resumes_the_wait() {
        let handler = SigAction::new(SigHandler::Handler(nothing), SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handler does nothing, which is async-signal-safe.
        #[expect(unsafe_code, reason = "installing a signal handler is unsafe")]
        unsafe {
            sigaction(Signal::SIGUSR1, &handler).expect("sigaction");
        }
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = server.local_addr().expect("address").port();
        let (tx, rx) = mpsc::channel();
        let prober = std::thread::spawn(move || {
            tx.send(pthread_self()).expect("send");
            probe(
                Probe { dst: IpAddr::V4(Ipv4Addr::LOCALHOST), proto: Proto::Udp, port, l7: false },
                Duration::from_secs(10),
            )
        });
        let thread = rx.recv().expect("prober");
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).expect("the probe's datagram");
        // The probe is now waiting for the answer; interrupt it, more than once.
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(50));
            pthread_kill(thread, Signal::SIGUSR1).expect("signal");
        }
        server.send_to(&buf[..n], from).expect("answer");
        assert_eq!(prober.join().expect("prober"), Outcome::Reached);
    }
}
