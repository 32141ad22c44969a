//! Real probes between pods: does a packet get through?
//!
//! A probe counts as *reached* when the destination's kernel answered at
//! all — a TCP handshake or reset, a UDP echo or an ICMP port-unreachable,
//! an ICMP echo reply — because policy is about whether packets arrive,
//! not whether something listens. It counts as *dropped* when nothing came
//! back before the timeout. Probes run on threads inside the source pod's
//! network namespace (see [`crate::netns`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

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
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The destination answered.
    Reached,
    /// Nothing came back in time.
    Dropped,
    /// The probe could not be sent.
    Error(String),
}

/// Sends one probe from the calling thread's network namespace.
pub fn probe(p: Probe, timeout: Duration) -> Outcome {
    let r = match p.proto {
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
            .map(|c| s.spawn(move || crate::netns::run_in(netns, || c.iter().map(|p| probe(*p, timeout)).collect())))
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

/// A UDP probe's payload: a well-formed DNS query (id 0xb1b1, one
/// question, `probe.bulkhead. A`), so that a DNS server answers it as an
/// echo server does.
const PAYLOAD: [u8; 32] = [
    0xb1, 0xb1, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header: RD, QDCOUNT 1
    5, b'p', b'r', b'o', b'b', b'e', 8, b'b', b'u', b'l', b'k', b'h', b'e', b'a', b'd', 0, // probe.bulkhead.
    0x00, 0x01, 0x00, 0x01, // QTYPE A, QCLASS IN
];

fn udp(p: Probe, timeout: Duration) -> io::Result<bool> {
    let s = Socket::new(domain(p.dst), Type::DGRAM, Some(Protocol::UDP))?;
    s.connect(&SocketAddr::new(p.dst, p.port).into())?;
    s.set_read_timeout(Some(timeout))?;
    s.send(&PAYLOAD)?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    match s.recv(&mut buf) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => Ok(false),
        Err(e) => Err(e),
    }
}

/// ICMP echo through a ping socket (the namespace's `ping_group_range`
/// must include root's group; the lab sets it).
fn echo(p: Probe, timeout: Duration) -> io::Result<bool> {
    let (proto, ty) = if p.dst.is_ipv4() { (Protocol::ICMPV4, 8u8) } else { (Protocol::ICMPV6, 128u8) };
    let s = Socket::new(domain(p.dst), Type::DGRAM, Some(proto))?;
    s.connect(&SocketAddr::new(p.dst, 0).into())?;
    s.set_read_timeout(Some(timeout))?;
    s.send(&[ty, 0, 0, 0, 0, 0, 0, 1])?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    match s.recv(&mut buf) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => Ok(false),
        Err(e) => Err(e),
    }
}
