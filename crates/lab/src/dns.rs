//! DNS queries from a lab pod (call these inside its network namespace):
//! one question to one server over UDP or TCP, as a stub resolver asks,
//! and raw bytes for malformed ones.

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

pub use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Message, Query};
pub use hickory_proto::rr::RecordType;
use hickory_proto::rr::{Name, RData};

/// The transport a query goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One datagram each way.
    Udp,
    /// A connection, each message behind its two-byte length.
    Tcp,
}

/// A query for `name` (`qtype`), recursion desired, with message ID `id`.
pub fn query(name: &str, qtype: RecordType, id: u16) -> io::Result<Vec<u8>> {
    let name =
        Name::from_ascii(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: {e}")))?;
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, qtype));
    m.to_vec().map_err(io::Error::other)
}

/// Sends `bytes` to `server` and waits up to `timeout` for one message
/// back (the first datagram from `server`; the first length-prefixed
/// message on TCP).
pub fn exchange(server: SocketAddr, bytes: &[u8], transport: Transport, timeout: Duration) -> io::Result<Vec<u8>> {
    match transport {
        Transport::Udp => {
            let any: IpAddr = if server.is_ipv6() { [0u16; 8].into() } else { [0u8; 4].into() };
            let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
            s.connect(server)?;
            s.set_read_timeout(Some(timeout))?;
            s.send(bytes)?;
            let mut buf = vec![0u8; 65_535];
            let n = crate::uninterrupted(|| s.recv(&mut buf))?;
            buf.truncate(n);
            Ok(buf)
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            let len = u16::try_from(bytes.len()).map_err(|_| io::Error::other("a message over 65,535 bytes"))?;
            s.write_all(&[&len.to_be_bytes()[..], bytes].concat())?;
            let mut len = [0u8; 2];
            crate::uninterrupted(|| s.read_exact(&mut len))?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            crate::uninterrupted(|| s.read_exact(&mut buf))?;
            Ok(buf)
        }
    }
}

/// What an answer says, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its message ID.
    pub id: u16,
    /// Its response code.
    pub rcode: ResponseCode,
    /// The A and AAAA addresses among its answers.
    pub addrs: Vec<IpAddr>,
    /// The CNAME targets among its answers.
    pub cnames: Vec<String>,
    /// The lowest TTL among its answers.
    pub ttl: Option<u32>,
}

/// Reads an answer.
pub fn read_answer(bytes: &[u8]) -> io::Result<Answer> {
    let m = Message::from_vec(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut addrs = Vec::new();
    let mut cnames = Vec::new();
    for r in &m.answers {
        match &r.data {
            RData::A(a) => addrs.push(IpAddr::V4(a.0)),
            RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
            RData::CNAME(c) => cnames.push(c.0.to_ascii()),
            _ => {}
        }
    }
    let ttl = m.answers.iter().map(|r| r.ttl).min();
    Ok(Answer { id: m.metadata.id, rcode: m.metadata.response_code, addrs, cnames, ttl })
}

/// Asks `server` for `name` (`qtype`) over `transport`: its answer.
pub fn resolve(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    transport: Transport,
    timeout: Duration,
) -> io::Result<Answer> {
    let id = u16::try_from(std::process::id() % 65_536).unwrap_or(1);
    let a = read_answer(&exchange(server, &query(name, qtype, id)?, transport, timeout)?)?;
    if a.id != id {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("answer ID {} for query ID {id}", a.id)));
    }
    Ok(a)
}
