//! The structures shared with the C programs (`bpf/bulkhead.h`), byte for
//! byte. Each has a size assertion here and in C; [`LAYOUT_VERSION`] is
//! part of the pin path, so maps of another layout are never reused.

use std::net::{IpAddr, Ipv6Addr};

use bulkhead_flow::model::DropReason;

/// Bumped with every change to a shared structure or map definition.
pub const LAYOUT_VERSION: u32 = 4;

/// Policy map level: the peer's address.
pub const LEVEL_ADDRESS: u8 = 0;
/// Policy map level: the peer's identity.
pub const LEVEL_IDENTITY: u8 = 1;
/// Policy map level: any peer.
pub const LEVEL_ANY: u8 = 2;
/// Bits of a policy key fixed for every entry (level, proto, peer).
pub const POLICY_FIXED_BITS: u32 = (4 + 16) * 8;
/// Capacity of one slot's policy trie (`BH_POLICY_SLOT_MAX_ENTRIES`).
pub const POLICY_SLOT_MAX_ENTRIES: u32 = 1 << 20;

/// Policy value `match`: the entry covers every protocol.
pub const MATCH_ALL_PROTOCOLS: u8 = 0;
/// Policy value `match`: the entry covers a whole protocol.
pub const MATCH_PROTOCOL: u8 = 1;
/// Policy value `match`: the entry covers a port or port range.
pub const MATCH_PORT: u8 = 2;

/// Policy verdict: pass.
pub const VERDICT_ALLOW: u8 = 1;
/// Policy verdict: drop.
pub const VERDICT_DENY: u8 = 2;
/// Policy verdict: hand to the L7 proxy.
pub const VERDICT_REDIRECT: u8 = 3;

/// Direction index: traffic entering the endpoint.
pub const DIR_INGRESS: usize = 0;
/// Direction index: traffic leaving the endpoint.
pub const DIR_EGRESS: usize = 1;

/// Endpoint flag: would-be drops pass and are reported as AUDIT.
pub const EP_AUDIT: u32 = 1 << 0;
/// Endpoint flag: an ingress lookup miss drops.
pub const EP_DEFAULT_DENY_INGRESS: u32 = 1 << 1;
/// Endpoint flag: an egress lookup miss drops.
pub const EP_DEFAULT_DENY_EGRESS: u32 = 1 << 2;

/// Why a packet was forwarded or dropped (`BH_REASON_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum Reason {
    /// Not dropped.
    Forwarded = 0,
    /// No entry allowed it and the direction is default-deny (Hubble: POLICY_DENIED).
    PolicyDenied = 1,
    /// An explicit deny entry (Hubble: POLICY_DENY).
    PolicyDeny = 2,
    /// A bad or truncated header.
    InvalidPacket = 3,
    /// A later fragment whose first fragment was not seen.
    FragUnknown = 4,
    /// Neither IPv4, IPv6 nor ARP.
    UnknownL3 = 5,
    /// A redirect to an L7 proxy that is not running.
    ProxyUnavailable = 6,
    /// The interface has a program but no endpoint entry, or the
    /// endpoint's policy for the direction is not loaded (it did not fit).
    EpNotReady = 7,
    /// The conntrack table refused a new entry.
    CtFull = 8,
    /// A packet leaving a pod with a source address that is not the pod's.
    InvalidSourceIp = 9,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 10] = [
        Reason::Forwarded,
        Reason::PolicyDenied,
        Reason::PolicyDeny,
        Reason::InvalidPacket,
        Reason::FragUnknown,
        Reason::UnknownL3,
        Reason::ProxyUnavailable,
        Reason::EpNotReady,
        Reason::CtFull,
        Reason::InvalidSourceIp,
    ];

    /// The reason with this number.
    pub fn from_u8(n: u8) -> Option<Reason> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// Hubble's drop reason for it (none for `Forwarded`).
    pub fn drop_reason(self) -> DropReason {
        match self {
            Self::Forwarded => DropReason::UNKNOWN,
            Self::PolicyDenied => DropReason::POLICY_DENIED,
            Self::PolicyDeny => DropReason::POLICY_DENY,
            Self::InvalidPacket => DropReason::INVALID_PACKET,
            Self::FragUnknown => DropReason::FRAGMENT_NOT_FOUND,
            Self::UnknownL3 => DropReason::UNSUPPORTED_L3_PROTOCOL,
            Self::ProxyUnavailable => DropReason::SOCKET_LOOKUP_FAILED,
            Self::EpNotReady => DropReason::ENDPOINT_NOT_READY,
            Self::CtFull => DropReason::CT_MAP_INSERTION_FAILED,
            Self::InvalidSourceIp => DropReason::INVALID_SOURCE_IP,
        }
    }

    /// `FORWARDED`, or Hubble's `drop_reason_desc` name (a test keeps the
    /// two spellings equal).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "FORWARDED",
            Self::PolicyDenied => "POLICY_DENIED",
            Self::PolicyDeny => "POLICY_DENY",
            Self::InvalidPacket => "INVALID_PACKET_DROPPED",
            Self::FragUnknown => "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
            Self::UnknownL3 => "UNSUPPORTED_L3_PROTOCOL",
            Self::ProxyUnavailable => "SOCKET_LOOKUP_FAILED",
            Self::EpNotReady => "DROP_EP_NOT_READY",
            Self::CtFull => "CT_MAP_INSERTION_FAILED",
            Self::InvalidSourceIp => "INVALID_SOURCE_IP",
        }
    }
}

/// Counter slots: a pair (ingress, egress) per reason, then lost events.
pub const COUNTER_SLOTS: u32 = Reason::ALL.len() as u32 * 2 + 1;
/// The counter slot of events the ring buffer had no room for.
pub const COUNTER_LOST_EVENTS: u32 = Reason::ALL.len() as u32 * 2;

/// An address as the maps hold it: IPv6, or IPv4-mapped IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct Addr(pub [u8; 16]);

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Self(v6.octets()),
        }
    }
}

impl From<Addr> for IpAddr {
    fn from(a: Addr) -> Self {
        let v6 = Ipv6Addr::from(a.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// An ipcache value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct IpcacheValue {
    /// The identity of the prefix.
    pub identity: u32,
}

/// Addresses an endpoint may send from (`BH_EP_MAX_ADDRS`).
pub const EP_MAX_ADDRS: usize = 4;

/// The slot of a direction whose policy could not be loaded: the
/// direction drops everything (`BH_SLOT_NOT_READY`).
pub const SLOT_NOT_READY: u32 = 0;

/// An endpoint, keyed by its host-side interface index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Endpoint {
    /// The agent's endpoint id.
    pub id: u32,
    /// The endpoint's identity.
    pub identity: u32,
    /// `EP_*` flags.
    pub flags: u32,
    /// Policy slot per direction (`DIR_INGRESS`, `DIR_EGRESS`), or
    /// [`SLOT_NOT_READY`].
    pub slot: [u32; 2],
    /// How many of `addrs` are set.
    pub naddrs: u32,
    /// The only source addresses its packets may carry.
    pub addrs: [Addr; EP_MAX_ADDRS],
}

/// A policy key without its prefix length (aya's `lpm_trie::Key` adds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct PolicyKeyData {
    /// `LEVEL_*`.
    pub level: u8,
    /// IP protocol number; 0 for protocol-wide entries.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// The peer address, or the identity big-endian in the first 4 bytes.
    pub peer: Addr,
    /// The port (ICMP: type), big-endian.
    pub port: [u8; 2],
    /// Zero.
    pub pad2: [u8; 2],
}

/// A policy value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PolicyValue {
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `MATCH_*`: what the entry's key covers (for the match type flows report).
    pub r#match: u8,
    /// The L7 proxy port of a redirect.
    pub proxy_port: u16,
    /// The agent's reference for the deciding rules.
    pub rule: u32,
}

/// A conntrack key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct CtKey {
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Source port (network order bytes).
    pub sport: [u8; 2],
    /// Destination port (network order bytes).
    pub dport: [u8; 2],
    /// IP protocol.
    pub proto: u8,
    /// Direction at the enforcement point.
    pub dir: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// The enforcement point's interface.
    pub ifindex: u32,
}

/// A conntrack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct CtValue {
    /// Monotonic nanoseconds of the last packet (refreshed each second).
    pub last_seen: u64,
    /// The policy slot that allowed the flow.
    pub slot: u32,
    /// The deciding rule reference.
    pub rule: u32,
    /// `BH_CT_*` flags.
    pub flags: u8,
    /// Zero.
    pub pad: u8,
    /// The port (ICMP: type) the policy was asked about.
    pub policy_port: u16,
    /// Packets of the connection, both directions.
    pub packets: u32,
}

/// A conntrack entry whose connection has seen a reply (`BH_CT_SEEN_REPLY`).
pub const CT_SEEN_REPLY: u8 = 1 << 0;
/// A conntrack entry admitted only because its endpoint was in audit mode
/// (`BH_CT_AUDITED`).
pub const CT_AUDITED: u8 = 1 << 4;
/// A conntrack entry of a connection the L7 proxy opened for a client
/// (`BH_CT_FROM_PROXY`).
pub const CT_FROM_PROXY: u8 = 1 << 6;

/// `TCP`, `UDP`, … for an IP protocol number (0: every protocol).
pub fn proto_name(n: u8) -> String {
    match n {
        0 => "ANY".into(),
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// The clock the programs stamp conntrack entries and events with
/// (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), in nanoseconds; `None` when it
/// cannot be read.
pub fn ktime_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    u64::try_from(std::time::Duration::from(t).as_nanos()).ok()
}

/// How long a conntrack entry lives without packets, in nanoseconds, as
/// `ct_timeout` in `bpf/bulkhead.c` says (TCP 6 h, 10 s once closing;
/// anything else 60 s).
pub fn ct_timeout_ns(proto: u8, flags: u8) -> u64 {
    const SEC: u64 = 1_000_000_000;
    const TCP: u8 = 6;
    const CLOSING: u8 = 1 << 1;
    match (proto, flags & CLOSING != 0) {
        (TCP, false) => 21_600 * SEC,
        (TCP, true) => 10 * SEC,
        _ => 60 * SEC,
    }
}

/// A per-CPU counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Event kind: a drop.
pub const EVENT_DROP: u8 = 1;
/// Event kind: the policy verdict on a flow's first packet.
pub const EVENT_POLICY_VERDICT: u8 = 2;
/// Event kind: a tracked connection's first reply, or its first FIN or RST one way.
pub const EVENT_TRACE: u8 = 3;

/// Event `is_reply`: not a reply.
pub const REPLY_NO: u8 = 0;
/// Event `is_reply`: a reply.
pub const REPLY_YES: u8 = 1;
/// Event `is_reply`: not known (the packet did not parse).
pub const REPLY_UNKNOWN: u8 = 2;

/// What the ring buffer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RawEvent {
    /// Monotonic nanoseconds.
    pub time: u64,
    /// `EVENT_*`.
    pub kind: u8,
    /// 1 forwarded, 2 dropped, 3 audit, 4 redirected.
    pub verdict: u8,
    /// A [`Reason`] number.
    pub reason: u8,
    /// 0 ingress, 1 egress.
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// The policy level that decided, 255 for none.
    pub level: u8,
    /// `REPLY_*`.
    pub is_reply: u8,
    /// `MATCH_*` of the entry that decided.
    pub r#match: u8,
    /// The interface.
    pub ifindex: u32,
    /// The endpoint id.
    pub endpoint: u32,
    /// Source identity.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// The deciding rule reference.
    pub rule: u32,
    /// Packet length.
    pub len: u32,
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Source port (network order bytes).
    pub sport: [u8; 2],
    /// Destination port (network order bytes).
    pub dport: [u8; 2],
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Zero.
    pub pad2: u8,
    /// Packets it stands for: repeats of an aggregated drop, or the packets
    /// of a connection a FIN or RST closes.
    pub count: u32,
    /// Zero.
    pub pad3: u32,
}

impl RawEvent {
    /// Reads an event from ring-buffer bytes; `None` when too short.
    pub fn decode(bytes: &[u8]) -> Option<RawEvent> {
        if bytes.len() < size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: RawEvent is repr(C) plain data valid for every bit
        // pattern, the slice holds at least size_of::<RawEvent>() bytes,
        // and read_unaligned copes with any alignment.
        #[expect(unsafe_code, reason = "reading a plain-data struct from ring-buffer bytes")]
        let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) };
        Some(ev)
    }
}

const _: () = assert!(size_of::<Addr>() == 16);
const _: () = assert!(size_of::<aya::maps::lpm_trie::Key<Addr>>() == 20);
const _: () = assert!(size_of::<Endpoint>() == 88);
const _: () = assert!(size_of::<aya::maps::lpm_trie::Key<PolicyKeyData>>() == 28);
const _: () = assert!(size_of::<PolicyValue>() == 8);
const _: () = assert!(size_of::<CtKey>() == 44);
const _: () = assert!(size_of::<CtValue>() == 24);
const _: () = assert!(size_of::<RawEvent>() == 88);

macro_rules! plain_data {
    ($($t:ty),*) => {$(
        // SAFETY: a repr(C) struct of integers and byte arrays with no
        // implicit padding (the size assertions above pin the layout), so
        // every bit pattern is a valid value.
        #[expect(unsafe_code, reason = "aya::Pod marks types that may be copied to and from maps")]
        unsafe impl aya::Pod for $t {}
    )*};
}
plain_data!(Addr, IpcacheValue, Endpoint, PolicyKeyData, PolicyValue, CtKey, CtValue, Counter, RawEvent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_mapped_form() {
        for ip in ["198.18.1.10", "fd00:b::10", "::1", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().expect("literal");
            assert_eq!(IpAddr::from(Addr::from(ip)), ip);
        }
    }

    #[test]
    fn reasons_number_like_the_c_header() {
        let header = include_str!("../../../bpf/bulkhead.h");
        for r in Reason::ALL {
            let c_name = match r {
                Reason::Forwarded => "FORWARDED",
                Reason::PolicyDenied => "POLICY_DENIED",
                Reason::PolicyDeny => "POLICY_DENY",
                Reason::InvalidPacket => "INVALID_PACKET",
                Reason::FragUnknown => "FRAG_UNKNOWN",
                Reason::UnknownL3 => "UNKNOWN_L3",
                Reason::ProxyUnavailable => "PROXY_UNAVAILABLE",
                Reason::EpNotReady => "EP_NOT_READY",
                Reason::CtFull => "CT_FULL",
                Reason::InvalidSourceIp => "INVALID_SOURCE_IP",
            };
            let needle = format!("#define BH_REASON_{c_name} {}", r as u8);
            assert!(header.contains(&needle), "bulkhead.h lacks `{needle}`");
        }
        assert!(header.contains(&format!("#define BH_REASON_MAX {}", Reason::ALL.len())));
        for r in &Reason::ALL[1..] {
            assert_eq!(r.as_str(), r.drop_reason().name(), "{r:?}");
        }
        assert!(header.contains(&format!("#define BH_LAYOUT_VERSION {LAYOUT_VERSION}")));
        assert!(header.contains("#define BH_POLICY_SLOT_MAX_ENTRIES (1 << 20)"));
        assert!(header.contains(&format!("#define BH_EP_MAX_ADDRS {EP_MAX_ADDRS}")));
        assert!(header.contains(&format!("#define BH_SLOT_NOT_READY {SLOT_NOT_READY}")));
    }

    #[test]
    fn conntrack_timeouts_match_the_programs() {
        let c = include_str!("../../../bpf/bulkhead.c");
        let sec = 1_000_000_000;
        for (define, proto, flags) in
            [("CT_TCP_TIMEOUT", 6, 0), ("CT_TCP_CLOSING_TIMEOUT", 6, 2), ("CT_OTHER_TIMEOUT", 17, 0)]
        {
            let needle = format!("#define {define} ({} * NS_PER_SEC)", ct_timeout_ns(proto, flags) / sec);
            assert!(c.contains(&needle), "bulkhead.c lacks `{needle}`");
        }
        assert!(c.contains("#define NS_PER_SEC 1000000000ULL"));
        let h = include_str!("../../../bpf/bulkhead.h");
        assert!(h.contains("#define BH_CT_CLOSING (1u << 1)"));
        assert!(h.contains(&format!("#define BH_CT_SEEN_REPLY (1u << {})", CT_SEEN_REPLY.trailing_zeros())));
        assert!(h.contains(&format!("#define BH_CT_AUDITED (1u << {})", CT_AUDITED.trailing_zeros())));
        assert!(h.contains(&format!("#define BH_CT_FROM_PROXY (1u << {})", CT_FROM_PROXY.trailing_zeros())));
    }
}
