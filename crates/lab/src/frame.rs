//! Hand-made frames for tests that must send what a normal socket would
//! not: spoofed source addresses, malformed headers, fragments, many IPv6
//! extension headers, SCTP (which this kernel cannot originate), frames
//! too large for one page. Sent with [`crate::probe::RawLink`] from a
//! pod's interface, so they meet the datapath exactly as a compromised
//! pod's would.
//!
//! Only what the datapath and the kernel's forwarding look at is filled
//! in: the IPv4 header checksum (the kernel drops a bad one), not the L4
//! checksums (nothing on the way checks them; captures see the frame).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// IP protocol numbers the tests use.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// The MAC address of `ifname` in the network namespace at `ns`.
pub fn mac_of(ns: &Path, ifname: &str) -> std::io::Result<[u8; 6]> {
    let name = ifname.to_string();
    bulkhead_datapath::netns::run_in(ns, move || {
        nix::ifaddrs::getifaddrs()?
            .filter(|i| i.interface_name == name)
            .find_map(|i| i.address.and_then(|a| a.as_link_addr().and_then(|l| l.addr())))
            .ok_or_else(|| std::io::Error::other(format!("{name} has no link-layer address")))
    })?
}

/// The Internet checksum of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header's fields that tests vary.
#[derive(Debug, Clone, Copy)]
pub struct V4 {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Identification: tests use it as a marker to find the frame again.
    pub id: u16,
    /// Flags and fragment offset.
    pub frag: u16,
    /// Header length in 32-bit words (5 without options).
    pub ihl: u8,
    /// A total length other than the true one.
    pub tot_len: Option<u16>,
}

impl V4 {
    /// A plain header: no fragmenting, no options.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16) -> Self {
        Self { src, dst, proto, id, frag: 0, ihl: 5, tot_len: None }
    }
}

/// Ethernet addresses for frames from one interface to its peer.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Destination MAC (the host side of the pod's veth).
    pub dst_mac: [u8; 6],
    /// Source MAC (the pod's interface).
    pub src_mac: [u8; 6],
}

impl Frame {
    /// An Ethernet frame.
    pub fn eth(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 packet carrying `l4`.
    pub fn ipv4(&self, h: V4, l4: &[u8]) -> Vec<u8> {
        self.eth(0x0800, &ipv4_packet(h, l4))
    }

    /// An IPv6 packet; `next` is the first header after the fixed one.
    /// The flow label carries `mark`, for tests to find the frame again.
    pub fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, next: u8, mark: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x60, 0];
        b.extend_from_slice(&mark.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.push(next);
        b.push(64);
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(payload);
        self.eth(0x86dd, &b)
    }

    /// An ARP request from `sender` (IP and this frame's MAC) for `target`.
    pub fn arp_request(&self, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&self.src_mac);
        a.extend_from_slice(&sender.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        Frame { dst_mac: [0xff; 6], src_mac: self.src_mac }.eth(0x0806, &a)
    }
}

/// An IPv4 header and `l4`, without the Ethernet header (as an ICMP error
/// quotes the packet it is about).
pub fn ipv4_packet(h: V4, l4: &[u8]) -> Vec<u8> {
    let hlen = usize::from(h.ihl.max(5)) * 4;
    let mut b = vec![0u8; hlen];
    b[0] = 0x40 | h.ihl;
    let len = h.tot_len.unwrap_or((hlen + l4.len()) as u16);
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b[4..6].copy_from_slice(&h.id.to_be_bytes());
    b[6..8].copy_from_slice(&h.frag.to_be_bytes());
    b[8] = 64;
    b[9] = h.proto;
    b[12..16].copy_from_slice(&h.src.octets());
    b[16..20].copy_from_slice(&h.dst.octets());
    let c = checksum(&b);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.extend_from_slice(l4);
    b
}

/// An ICMP (IPv4) error of `kind` and `code` quoting `quoted` (an IPv4
/// header and the first bytes of what followed it).
pub fn icmp_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut e = vec![kind, code, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(quoted);
    e
}

/// An ICMPv6 neighbour solicitation for `target`.
pub fn neighbour_solicitation(target: Ipv6Addr) -> Vec<u8> {
    let mut n = vec![135, 0, 0, 0, 0, 0, 0, 0];
    n.extend_from_slice(&target.octets());
    n
}

/// An IPv6 fragment header: `next` after it, the offset in 8-byte units,
/// whether more fragments follow, and the fragment id.
pub fn fragment_header(next: u8, offset: u16, more: bool, id: u32) -> [u8; 8] {
    let fo = (offset << 3) | u16::from(more);
    let mut h = [next, 0, 0, 0, 0, 0, 0, 0];
    h[2..4].copy_from_slice(&fo.to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h
}

/// The IPv4 marker of a captured frame (its identification), if it is IPv4.
pub fn v4_id(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 20 && frame[12..14] == [0x08, 0x00]).then(|| u16::from_be_bytes([frame[18], frame[19]]))
}

/// The IPv6 marker of a captured frame (the low 16 bits of its flow label).
pub fn v6_mark(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && frame[12..14] == [0x86, 0xdd]).then(|| u16::from_be_bytes([frame[16], frame[17]]))
}

/// A TCP SYN (a 20-byte header).
pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t
}

/// A UDP header and `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An ICMP (or, with `v6`, ICMPv6) echo request.
pub fn echo_request(v6: bool, id: u16) -> Vec<u8> {
    let mut e = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(&[0, 1]);
    e
}

/// An SCTP common header and an INIT chunk (its checksum is not checked on the way).
pub fn sctp_init(sport: u16, dport: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0; 8]); // verification tag, checksum
    s.extend_from_slice(&[1, 0, 0, 20, 0xb1, 0x1b, 0xe4, 0xd0, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
    s
}

/// `n` IPv6 destination-options headers (8 bytes each, PadN) in front of
/// `payload`, whose protocol is `last`; the first header's number is
/// [`proto::DSTOPTS`] (or `last` when `n` is 0).
pub fn ext_headers(n: usize, last: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 * n + payload.len());
    for i in 0..n {
        let next = if i + 1 == n { last } else { proto::DSTOPTS };
        b.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    b.extend_from_slice(payload);
    b
}
