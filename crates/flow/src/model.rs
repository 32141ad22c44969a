//! The flow: one observed verdict, with Hubble's field names and enum
//! values, so that `hubble observe -o json` output and ours read alike and
//! either can be filtered by the same code.
//!
//! JSON is the protobuf JSON mapping Hubble prints (original snake_case
//! field names, enums by name, `{"TCP": {…}}` for the L4 oneof). Reading is
//! lenient where protobuf JSON is: enums may be names or numbers, unknown
//! fields are ignored, absent fields take their zero value. Writing leaves
//! out zero values, as Hubble does.
//!
//! Fields that are ours and not Hubble's: [`Flow::near_misses`] (for a
//! default-deny drop, the closest rules and why they did not match),
//! [`Flow::count`] (how many packets an aggregated record stands for) and
//! [`Policy::rule`] (which rule of the policy).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Timestamp;

/// Defines a protobuf enum: variants with their wire number and their
/// protobuf name, serialised by name and read from a name or a number.
/// The first variant is the zero value; unknown values read as it.
macro_rules! proto_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $num:literal => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant = $num),+ }

        impl $name {
            /// Every value, the zero value first.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The protobuf name (`DROPPED`).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The protobuf number.
            pub fn number(self) -> i32 {
                self as i32
            }

            /// The value with protobuf number `n`.
            pub fn from_number(n: i64) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| i64::from(v.number()) == n)
            }

            /// The value named `s` (any case).
            pub fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }

            /// True for the zero value.
            pub fn is_zero(&self) -> bool {
                *self == Self::ALL[0]
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::ALL[0]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(EnumVisitor(|v: EnumValue<'_>| match v {
                    EnumValue::Name(s) => Self::from_name(s),
                    EnumValue::Number(n) => Self::from_number(n),
                }))
                .map(|v| v.unwrap_or_default())
            }
        }
    };
}

/// A protobuf enum value as JSON gives it.
enum EnumValue<'a> {
    Name(&'a str),
    Number(i64),
}

struct EnumVisitor<F>(F);

impl<'de, T, F: FnOnce(EnumValue<'_>) -> Option<T>> Visitor<'de> for EnumVisitor<F> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an enum name or number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((self.0)(EnumValue::Name(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok((self.0)(EnumValue::Number(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok((self.0)(EnumValue::Number(i64::try_from(v).unwrap_or(-1))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

proto_enum! {
    /// What happened to the packet or request.
    pub enum Verdict {
        /// No verdict.
        Unknown = 0 => "VERDICT_UNKNOWN",
        /// Passed on.
        Forwarded = 1 => "FORWARDED",
        /// Dropped; [`Flow::drop_reason_desc`] says why.
        Dropped = 2 => "DROPPED",
        /// An error while processing.
        Error = 3 => "ERROR",
        /// Audit mode: would have been dropped, was passed.
        Audit = 4 => "AUDIT",
        /// Handed to an L7 proxy.
        Redirected = 5 => "REDIRECTED",
        /// Observed at a trace point, no verdict yet.
        Traced = 6 => "TRACED",
        /// An address was translated.
        Translated = 7 => "TRANSLATED",
    }
}

proto_enum! {
    /// Ingress or egress, as seen from the endpoint whose policy applied.
    pub enum TrafficDirection {
        /// Not known.
        Unknown = 0 => "TRAFFIC_DIRECTION_UNKNOWN",
        /// Into the endpoint.
        Ingress = 1 => "INGRESS",
        /// Out of the endpoint.
        Egress = 2 => "EGRESS",
    }
}

proto_enum! {
    /// IPv4 or IPv6.
    pub enum IpVersion {
        /// No IP header.
        NotUsed = 0 => "IP_NOT_USED",
        /// IPv4.
        V4 = 1 => "IPv4",
        /// IPv6.
        V6 = 2 => "IPv6",
    }
}

proto_enum! {
    /// Which layer the flow describes.
    pub enum FlowType {
        /// Not known.
        Unknown = 0 => "UNKNOWN_TYPE",
        /// A packet (L3/L4).
        L3L4 = 1 => "L3_L4",
        /// A request or response seen by an L7 proxy.
        L7 = 2 => "L7",
        /// A socket event.
        Sock = 3 => "SOCK",
    }
}

proto_enum! {
    /// An L7 record's kind.
    pub enum L7FlowType {
        /// Not known.
        Unknown = 0 => "UNKNOWN_L7_TYPE",
        /// A request.
        Request = 1 => "REQUEST",
        /// A response.
        Response = 2 => "RESPONSE",
        /// A sample.
        Sample = 3 => "SAMPLE",
    }
}

proto_enum! {
    /// Where a trace event was observed.
    pub enum TraceObservationPoint {
        /// Not known (also: not a trace event).
        Unknown = 0 => "UNKNOWN_POINT",
        /// Towards an L7 proxy.
        ToProxy = 1 => "TO_PROXY",
        /// Towards the host namespace.
        ToHost = 2 => "TO_HOST",
        /// Towards the host's stack.
        ToStack = 3 => "TO_STACK",
        /// Towards a tunnel.
        ToOverlay = 4 => "TO_OVERLAY",
        /// Into an endpoint.
        ToEndpoint = 101 => "TO_ENDPOINT",
        /// Out of an endpoint.
        FromEndpoint = 5 => "FROM_ENDPOINT",
        /// From an L7 proxy.
        FromProxy = 6 => "FROM_PROXY",
        /// From the host namespace.
        FromHost = 7 => "FROM_HOST",
        /// From the host's stack.
        FromStack = 8 => "FROM_STACK",
        /// From a tunnel.
        FromOverlay = 9 => "FROM_OVERLAY",
        /// From a native device.
        FromNetwork = 10 => "FROM_NETWORK",
        /// To a native device.
        ToNetwork = 11 => "TO_NETWORK",
    }
}

impl TraceObservationPoint {
    /// The sub-type a trace event carries for this point (`event_type.sub_type`):
    /// Cilium's monitor numbers, which differ from this enum's (to-endpoint
    /// is 0 there, 101 here). `None` for the unknown point.
    pub fn monitor_sub_type(self) -> Option<i32> {
        Some(match self {
            Self::Unknown => return None,
            Self::ToEndpoint => 0,
            Self::ToProxy => 1,
            Self::ToHost => 2,
            Self::ToStack => 3,
            Self::ToOverlay => 4,
            Self::FromEndpoint => 5,
            Self::FromProxy => 6,
            Self::FromHost => 7,
            Self::FromStack => 8,
            Self::FromOverlay => 9,
            Self::FromNetwork => 10,
            Self::ToNetwork => 11,
        })
    }
}

/// Cilium's monitor message types (`event_type.type`).
pub mod event_types {
    /// A dropped packet.
    pub const DROP: i32 = 1;
    /// A debug message.
    pub const DEBUG: i32 = 2;
    /// A packet capture.
    pub const CAPTURE: i32 = 3;
    /// A forwarded packet seen at a trace point.
    pub const TRACE: i32 = 4;
    /// A policy decision on a connection's first packet.
    pub const POLICY_VERDICT: i32 = 9;
    /// An L7 proxy's access log record.
    pub const L7: i32 = 129;
    /// An agent notification.
    pub const AGENT: i32 = 130;

    /// The name `--type` takes for a message type.
    pub fn name(t: i32) -> &'static str {
        match t {
            DROP => "drop",
            DEBUG => "debug",
            CAPTURE => "capture",
            TRACE => "trace",
            POLICY_VERDICT => "policy-verdict",
            L7 => "l7",
            AGENT => "agent",
            _ => "unknown",
        }
    }

    /// The message type `--type NAME` means.
    pub fn from_name(s: &str) -> Option<i32> {
        [DROP, DEBUG, CAPTURE, TRACE, POLICY_VERDICT, L7, AGENT].into_iter().find(|t| name(*t) == s)
    }
}

/// Cilium's name for a policy match type (`policy_match_type`), as
/// `hubble observe` prints it in `policy-verdict:L3-L4`.
pub fn policy_match_name(t: u32) -> &'static str {
    match t {
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        5 => "L3-Proto",
        6 => "Proto-Only",
        _ => "none",
    }
}

/// Hubble's drop reasons: the number, the enum name, and the words Hubble
/// prints for it. The ones bulkhead's datapath produces are named as
/// constants on [`DropReason`].
const DROP_REASONS: &[(u32, &str, &str)] = &[
    (0, "DROP_REASON_UNKNOWN", "Unknown drop reason"),
    (130, "INVALID_SOURCE_MAC", "Invalid source mac"),
    (131, "INVALID_DESTINATION_MAC", "Invalid destination mac"),
    (132, "INVALID_SOURCE_IP", "Invalid source ip"),
    (133, "POLICY_DENIED", "Policy denied"),
    (134, "INVALID_PACKET_DROPPED", "Invalid packet"),
    (135, "CT_TRUNCATED_OR_INVALID_HEADER", "CT: Truncated or invalid header"),
    (136, "CT_MISSING_TCP_ACK_FLAG", "CT: Missing TCP ACK flag"),
    (137, "CT_UNKNOWN_L4_PROTOCOL", "CT: Unknown L4 protocol"),
    (138, "CT_CANNOT_CREATE_ENTRY_FROM_PACKET", "CT: Can't create entry from packet"),
    (139, "UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    (140, "MISSED_TAIL_CALL", "Missed tail call"),
    (141, "ERROR_WRITING_TO_PACKET", "Error writing to packet"),
    (142, "UNKNOWN_L4_PROTOCOL", "Unknown L4 protocol"),
    (143, "UNKNOWN_ICMPV4_CODE", "Unknown ICMPv4 code"),
    (144, "UNKNOWN_ICMPV4_TYPE", "Unknown ICMPv4 type"),
    (145, "UNKNOWN_ICMPV6_CODE", "Unknown ICMPv6 code"),
    (146, "UNKNOWN_ICMPV6_TYPE", "Unknown ICMPv6 type"),
    (147, "ERROR_RETRIEVING_TUNNEL_KEY", "Error retrieving tunnel key"),
    (148, "ERROR_RETRIEVING_TUNNEL_OPTIONS", "Error retrieving tunnel options"),
    (149, "INVALID_GENEVE_OPTION", "Invalid Geneve option"),
    (150, "UNKNOWN_L3_TARGET_ADDRESS", "Unknown L3 target address"),
    (151, "STALE_OR_UNROUTABLE_IP", "Stale or unroutable IP"),
    (152, "NO_MATCHING_LOCAL_CONTAINER_FOUND", "No matching local container found"),
    (153, "ERROR_WHILE_CORRECTING_L3_CHECKSUM", "Error while correcting L3 checksum"),
    (154, "ERROR_WHILE_CORRECTING_L4_CHECKSUM", "Error while correcting L4 checksum"),
    (155, "CT_MAP_INSERTION_FAILED", "CT: Map insertion failed"),
    (156, "INVALID_IPV6_EXTENSION_HEADER", "Invalid IPv6 extension header"),
    (157, "IP_FRAGMENTATION_NOT_SUPPORTED", "IP fragmentation not supported"),
    (158, "SERVICE_BACKEND_NOT_FOUND", "Service backend not found"),
    (160, "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"),
    (161, "FAILED_TO_INSERT_INTO_PROXYMAP", "Failed to insert into proxymap"),
    (162, "REACHED_EDT_RATE_LIMITING_DROP_HORIZON", "Reached EDT rate-limiting drop horizon"),
    (163, "UNKNOWN_CONNECTION_TRACKING_STATE", "Unknown connection tracking state"),
    (164, "LOCAL_HOST_IS_UNREACHABLE", "Local host is unreachable"),
    (
        165,
        "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
        "No configuration available to perform policy decision",
    ),
    (166, "UNSUPPORTED_L2_PROTOCOL", "Unsupported L2 protocol"),
    (167, "NO_MAPPING_FOR_NAT_MASQUERADE", "No mapping for NAT masquerade"),
    (168, "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", "Unsupported protocol for NAT masquerade"),
    (169, "FIB_LOOKUP_FAILED", "FIB lookup failed"),
    (170, "ENCAPSULATION_TRAFFIC_IS_PROHIBITED", "Encapsulation traffic is prohibited"),
    (171, "INVALID_IDENTITY", "Invalid identity"),
    (172, "UNKNOWN_SENDER", "Unknown sender"),
    (173, "NAT_NOT_NEEDED", "NAT not needed"),
    (174, "IS_A_CLUSTERIP", "Is a ClusterIP"),
    (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", "First logical datagram fragment not found"),
    (176, "FORBIDDEN_ICMPV6_MESSAGE", "Forbidden ICMPv6 message"),
    (177, "DENIED_BY_LB_SRC_RANGE_CHECK", "Denied by LB src range check"),
    (178, "SOCKET_LOOKUP_FAILED", "Socket lookup failed"),
    (179, "SOCKET_ASSIGN_FAILED", "Socket assign failed"),
    (180, "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", "Proxy redirection not supported for protocol"),
    (181, "POLICY_DENY", "Policy denied by denylist"),
    (182, "VLAN_FILTERED", "VLAN traffic disallowed by VLAN filter"),
    (183, "INVALID_VNI", "Incorrect VNI from VTEP"),
    (184, "INVALID_TC_BUFFER", "Failed to update or lookup TC buffer"),
    (185, "NO_SID", "No SID was found for the IP address"),
    (186, "MISSING_SRV6_STATE", "SRv6 state was removed during tail call"),
    (187, "NAT46", "L3 translation from IPv4 to IPv6 failed (NAT46)"),
    (188, "NAT64", "L3 translation from IPv6 to IPv4 failed (NAT64)"),
    (189, "AUTH_REQUIRED", "Authentication required"),
    (190, "CT_NO_MAP_FOUND", "No conntrack map found"),
    (191, "SNAT_NO_MAP_FOUND", "No nat map found"),
    (192, "INVALID_CLUSTER_ID", "Invalid ClusterID"),
    (193, "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", "Unsupported packet protocol for DSR encapsulation"),
    (194, "NO_EGRESS_GATEWAY", "No egress gateway found"),
    (196, "TTL_EXCEEDED", "TTL exceeded"),
    (197, "NO_NODE_ID", "No node ID found"),
    (202, "DROP_HOST_NOT_READY", "Host datapath not ready"),
    (203, "DROP_EP_NOT_READY", "Endpoint policy program not available"),
];

/// Why a packet was dropped: Hubble's `DropReason` (a number with a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DropReason(pub u32);

impl DropReason {
    /// No reason (not a drop).
    pub const UNKNOWN: Self = Self(0);
    /// A packet left a pod with a source address that is not the pod's.
    pub const INVALID_SOURCE_IP: Self = Self(132);
    /// No policy entry allowed it and the direction is default-deny.
    pub const POLICY_DENIED: Self = Self(133);
    /// A bad or truncated header.
    pub const INVALID_PACKET: Self = Self(134);
    /// Neither IPv4, IPv6 nor ARP.
    pub const UNSUPPORTED_L3_PROTOCOL: Self = Self(139);
    /// A conntrack entry could not be created.
    pub const CT_MAP_INSERTION_FAILED: Self = Self(155);
    /// A later fragment whose first fragment was not seen.
    pub const FRAGMENT_NOT_FOUND: Self = Self(175);
    /// A redirect to an L7 proxy whose socket is not there (the proxy is
    /// not running): as Cilium reports a failed proxy socket lookup.
    pub const SOCKET_LOOKUP_FAILED: Self = Self(178);
    /// An explicit deny rule.
    pub const POLICY_DENY: Self = Self(181);
    /// The interface has no endpoint, or the endpoint no loaded policy.
    pub const ENDPOINT_NOT_READY: Self = Self(203);

    fn entry(self) -> Option<&'static (u32, &'static str, &'static str)> {
        DROP_REASONS.iter().find(|(n, _, _)| *n == self.0)
    }

    /// The enum name (`POLICY_DENIED`), or the number for one Hubble does
    /// not define.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        self.entry().map_or_else(|| self.0.to_string().into(), |e| e.1.into())
    }

    /// What Hubble prints for it (`Policy denied`).
    pub fn description(self) -> &'static str {
        self.entry().map_or("Unknown drop reason", |e| e.2)
    }

    /// The reason named `s` (any case), or given as a number.
    pub fn from_name(s: &str) -> Option<Self> {
        if let Ok(n) = s.parse::<u32>() {
            return Some(Self(n));
        }
        DROP_REASONS.iter().find(|(_, name, _)| name.eq_ignore_ascii_case(s)).map(|e| Self(e.0))
    }

    /// Every reason Hubble defines.
    pub fn all() -> impl Iterator<Item = Self> {
        DROP_REASONS.iter().map(|e| Self(e.0))
    }

    /// True for "no reason".
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for DropReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.entry() {
            Some(e) => s.serialize_str(e.1),
            None => s.serialize_u32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for DropReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnumVisitor(|v: EnumValue<'_>| match v {
            EnumValue::Name(s) => Self::from_name(s),
            EnumValue::Number(n) => u32::try_from(n).ok().map(Self),
        }))
        .map(Option::unwrap_or_default)
    }
}

/// Hubble's `CiliumEventType`: the monitor message type and sub-type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventType {
    /// [`event_types`]: 1 drop, 4 trace, 9 policy verdict, 129 L7.
    #[serde(rename = "type", skip_serializing_if = "is_zero_i32")]
    pub kind: i32,
    /// Drop: the drop reason; trace: the observation point.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub sub_type: i32,
}

/// Addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// IPv4 or IPv6.
    #[serde(rename = "ipVersion", default)]
    pub ip_version: IpVersion,
    /// Whether the packet was encrypted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub encrypted: bool,
}

/// TCP header flags.
#[expect(clippy::struct_excessive_bools, reason = "one bool per TCP flag, as Hubble's TCPFlags")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpFlags {
    /// FIN.
    #[serde(rename = "FIN", skip_serializing_if = "is_false")]
    pub fin: bool,
    /// SYN.
    #[serde(rename = "SYN", skip_serializing_if = "is_false")]
    pub syn: bool,
    /// RST.
    #[serde(rename = "RST", skip_serializing_if = "is_false")]
    pub rst: bool,
    /// PSH.
    #[serde(rename = "PSH", skip_serializing_if = "is_false")]
    pub psh: bool,
    /// ACK.
    #[serde(rename = "ACK", skip_serializing_if = "is_false")]
    pub ack: bool,
    /// URG.
    #[serde(rename = "URG", skip_serializing_if = "is_false")]
    pub urg: bool,
    /// ECE.
    #[serde(rename = "ECE", skip_serializing_if = "is_false")]
    pub ece: bool,
    /// CWR.
    #[serde(rename = "CWR", skip_serializing_if = "is_false")]
    pub cwr: bool,
    /// NS.
    #[serde(rename = "NS", skip_serializing_if = "is_false")]
    pub ns: bool,
}

impl TcpFlags {
    /// From the TCP header's flags byte (FIN is bit 0).
    pub fn from_byte(b: u8) -> Self {
        Self {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            psh: b & 0x08 != 0,
            ack: b & 0x10 != 0,
            urg: b & 0x20 != 0,
            ece: b & 0x40 != 0,
            cwr: b & 0x80 != 0,
            ns: false,
        }
    }

    /// The flags as bits: the TCP header's flags byte (FIN is bit 0), and
    /// NS as bit 8.
    pub fn bits(&self) -> u16 {
        [self.fin, self.syn, self.rst, self.psh, self.ack, self.urg, self.ece, self.cwr, self.ns]
            .iter()
            .enumerate()
            .fold(0, |b, (i, set)| if *set { b | (1 << i) } else { b })
    }

    /// From [`TcpFlags::bits`].
    pub fn from_bits(b: u16) -> Self {
        Self { ns: b & 0x100 != 0, ..Self::from_byte(b as u8) }
    }

    /// The flags that are set, by name, in header order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.syn, "SYN"),
            (self.fin, "FIN"),
            (self.rst, "RST"),
            (self.psh, "PSH"),
            (self.ack, "ACK"),
            (self.urg, "URG"),
            (self.ece, "ECE"),
            (self.cwr, "CWR"),
            (self.ns, "NS"),
        ]
        .into_iter()
        .filter_map(|(set, n)| set.then_some(n))
        .collect()
    }
}

/// TCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tcp {
    /// Source port.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub source_port: u32,
    /// Destination port.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub destination_port: u32,
    /// Header flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

/// UDP or SCTP ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ports {
    /// Source port.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub source_port: u32,
    /// Destination port.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub destination_port: u32,
}

/// ICMP type and code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Icmp {
    /// Type.
    #[serde(rename = "type", skip_serializing_if = "is_zero_u32")]
    pub kind: u32,
    /// Code.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub code: u32,
}

/// The L4 header (Hubble's `Layer4` oneof).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer4 {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    /// UDP.
    #[serde(rename = "UDP")]
    Udp(Ports),
    /// ICMP for IPv4.
    #[serde(rename = "ICMPv4")]
    IcmpV4(Icmp),
    /// ICMP for IPv6.
    #[serde(rename = "ICMPv6")]
    IcmpV6(Icmp),
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp(Ports),
}

impl Layer4 {
    /// `(source, destination)` ports; none for ICMP.
    pub fn ports(&self) -> Option<(u32, u32)> {
        match self {
            Self::Tcp(t) => Some((t.source_port, t.destination_port)),
            Self::Udp(p) | Self::Sctp(p) => Some((p.source_port, p.destination_port)),
            Self::IcmpV4(_) | Self::IcmpV6(_) => None,
        }
    }

    /// `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, `SCTP`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "TCP",
            Self::Udp(_) => "UDP",
            Self::IcmpV4(_) => "ICMPv4",
            Self::IcmpV6(_) => "ICMPv6",
            Self::Sctp(_) => "SCTP",
        }
    }
}

/// A workload that owns an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// Its name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its kind (`Deployment`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// One end of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    /// The agent's endpoint id (local endpoints only).
    #[serde(rename = "ID", skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    /// The security identity.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub identity: u32,
    /// The cluster.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    /// The pod's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The identity's labels, `source:key=value`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The pod.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Owners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
}

impl Endpoint {
    /// `namespace/pod`, or empty for an endpoint outside the cluster.
    pub fn pod(&self) -> String {
        match (self.namespace.is_empty(), self.pod_name.is_empty()) {
            (_, true) => String::new(),
            (true, false) => self.pod_name.clone(),
            (false, false) => format!("{}/{}", self.namespace, self.pod_name),
        }
    }
}

/// A policy that decided a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Its name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its namespace (none for clusterwide policies).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Cilium's policy labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The policy repository's revision.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub revision: u64,
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`, `NetworkPolicy`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Ours: which rule (`spec.ingress[0]`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule: String,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        match self.namespace.is_empty() {
            true => write!(f, " {}", self.name)?,
            false => write!(f, " {}/{}", self.namespace, self.name)?,
        }
        if !self.rule.is_empty() {
            write!(f, " {}", self.rule)?;
        }
        Ok(())
    }
}

/// A rule that came close to allowing a dropped flow, and what did not match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NearMiss {
    /// The rule.
    pub policy: Policy,
    /// What did not match (`wrong port: allows 8080/TCP`, …).
    pub reason: String,
}

/// An HTTP header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpHeader {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
}

/// An HTTP request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Http {
    /// Status code (responses).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub code: u32,
    /// Method.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// `HTTP/1.1`, `HTTP/2`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
}

/// A DNS query or answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// The name looked up (`example.com.`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// Addresses in the answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// TTL of the answer.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// CNAMEs in the answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// Where it was observed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub observation_source: String,
    /// Response code.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub rcode: u32,
    /// Query types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qtypes: Vec<String>,
    /// Answer record types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
}

/// A Kafka request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kafka {
    /// Error code.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub error_code: i32,
    /// API version.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub api_version: i32,
    /// API key (`produce`, `fetch`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_key: String,
    /// Correlation id.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub correlation_id: i32,
    /// Topic.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub topic: String,
}

/// What an L7 proxy saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Layer7 {
    /// Request, response or sample.
    #[serde(rename = "type", skip_serializing_if = "L7FlowType::is_zero")]
    pub kind: L7FlowType,
    /// Response latency.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub latency_ns: u64,
    /// DNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    /// Kafka.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Kafka>,
}

/// The interface a flow was observed on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    /// Index.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub index: u32,
    /// Name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// One flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Flow {
    /// When.
    #[serde(skip_serializing_if = "Timestamp::is_zero")]
    pub time: Timestamp,
    /// A unique id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    /// What happened.
    pub verdict: Verdict,
    /// The drop reason's number (Hubble keeps it beside the name).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub drop_reason: u32,
    /// Addresses.
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    /// Ports, flags, ICMP type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    /// Where it came from.
    pub source: Arc<Endpoint>,
    /// Where it went.
    pub destination: Arc<Endpoint>,
    /// L3/L4 or L7.
    #[serde(rename = "Type", skip_serializing_if = "FlowType::is_zero")]
    pub flow_type: FlowType,
    /// The node that observed it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// DNS names of the source address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_names: Vec<String>,
    /// DNS names of the destination address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_names: Vec<String>,
    /// What an L7 proxy saw (L7 flows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<Layer7>,
    /// The monitor event it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    /// Ingress or egress of the endpoint whose policy applied.
    #[serde(skip_serializing_if = "TrafficDirection::is_zero")]
    pub traffic_direction: TrafficDirection,
    /// Which kind of policy entry matched (Cilium's numbering: 1 L3 only,
    /// 2 L3+L4, 3 L4 only, 4 all, 5 L3+protocol, 6 protocol only).
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub policy_match_type: u32,
    /// Where a trace event was observed.
    #[serde(skip_serializing_if = "TraceObservationPoint::is_zero")]
    pub trace_observation_point: TraceObservationPoint,
    /// Why it was dropped.
    #[serde(skip_serializing_if = "DropReason::is_zero")]
    pub drop_reason_desc: DropReason,
    /// A reply of a connection (unknown when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    /// The interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<NetworkInterface>,
    /// The L7 proxy's port, for redirected flows.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub proxy_port: u32,
    /// Policies that allowed it on egress.
    #[serde(skip_serializing_if = "is_empty")]
    pub egress_allowed_by: Arc<[Policy]>,
    /// Policies that allowed it on ingress.
    #[serde(skip_serializing_if = "is_empty")]
    pub ingress_allowed_by: Arc<[Policy]>,
    /// Deny policies that dropped it on egress.
    #[serde(skip_serializing_if = "is_empty")]
    pub egress_denied_by: Arc<[Policy]>,
    /// Deny policies that dropped it on ingress.
    #[serde(skip_serializing_if = "is_empty")]
    pub ingress_denied_by: Arc<[Policy]>,
    /// Ours: for a default-deny drop, the rules that came closest and why
    /// they did not match.
    #[serde(skip_serializing_if = "is_empty")]
    pub near_misses: Arc<[NearMiss]>,
    /// Ours: the packets this record stands for when more than one (the
    /// datapath aggregated repeats of a drop, or a closing connection's
    /// packets); 0 (absent) means one.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub count: u64,
}

impl Flow {
    /// The monitor message type (`event_type.type`), 0 when absent.
    pub fn event_kind(&self) -> i32 {
        self.event_type.map_or(0, |e| e.kind)
    }

    /// `(source, destination)` ports, when the protocol has them.
    pub fn ports(&self) -> Option<(u32, u32)> {
        self.l4.as_ref().and_then(Layer4::ports)
    }

    /// The policies that decided it, in Hubble's four fields' order.
    pub fn deciding_policies(&self) -> impl Iterator<Item = &Policy> {
        self.egress_allowed_by
            .iter()
            .chain(self.ingress_allowed_by.iter())
            .chain(self.egress_denied_by.iter())
            .chain(self.ingress_denied_by.iter())
    }

    /// A rough size in memory, for byte-bounded buffers: the struct plus
    /// what its strings and lists hold (endpoints count in full even when
    /// shared, which errs on the safe side).
    pub fn approx_size(&self) -> usize {
        fn ep(e: &Endpoint) -> usize {
            std::mem::size_of::<Endpoint>()
                + e.namespace.len()
                + e.pod_name.len()
                + e.cluster_name.len()
                + e.labels.iter().map(|l| l.len() + 24).sum::<usize>()
        }
        fn pol(p: &[Policy]) -> usize {
            p.iter()
                .map(|p| std::mem::size_of::<Policy>() + p.name.len() + p.namespace.len() + p.kind.len() + p.rule.len())
                .sum()
        }
        std::mem::size_of::<Self>()
            + self.uuid.len()
            + self.node_name.len()
            + ep(&self.source)
            + ep(&self.destination)
            + pol(&self.egress_allowed_by)
            + pol(&self.ingress_allowed_by)
            + pol(&self.egress_denied_by)
            + pol(&self.ingress_denied_by)
            + self.near_misses.iter().map(|n| pol(std::slice::from_ref(&n.policy)) + n.reason.len()).sum::<usize>()
            + self.l7.as_ref().map_or(0, |_| 256)
    }
}

/// One line of `hubble observe -o json` (and of our `-o json`): the flow,
/// wrapped, as Hubble's `GetFlowsResponse` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRecord {
    /// The flow.
    pub flow: Flow,
    /// The node that observed it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// When.
    #[serde(skip_serializing_if = "Timestamp::is_zero")]
    pub time: Timestamp,
}

/// Decodes one JSON line: a `{"flow": …}` record as Hubble prints and
/// exports it, or a bare flow object.
pub fn decode_json(line: &[u8]) -> Result<Flow, serde_json::Error> {
    #[derive(Deserialize)]
    struct Wrapped {
        flow: Option<Flow>,
        #[serde(default)]
        node_name: String,
    }
    match serde_json::from_slice::<Wrapped>(line)? {
        Wrapped { flow: Some(mut flow), node_name } => {
            if flow.node_name.is_empty() {
                flow.node_name = node_name;
            }
            Ok(flow)
        }
        // No "flow" key: the line is a flow itself.
        Wrapped { flow: None, .. } => serde_json::from_slice(line),
    }
}

fn is_empty<T>(v: &Arc<[T]>) -> bool {
    v.is_empty()
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../testdata/corpus/hubble/export-sample-flows.jsonl");

    #[test]
    fn hubble_export_samples_read() {
        let flows: Vec<Flow> = SAMPLE.lines().map(|l| decode_json(l.as_bytes()).expect("sample decodes")).collect();
        assert_eq!(flows.len(), 2);
        let f = &flows[1];
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason_desc, DropReason::POLICY_DENIED);
        assert_eq!(f.source.pod_name, "xwing");
        assert_eq!(f.destination.pod(), "default/deathstar-7848d6c4d5-th9v2");
        assert_eq!(f.ports(), Some((44916, 80)));
        assert_eq!(f.node_name, "kind-kind/kind-worker");
        let Some(Layer4::Tcp(t)) = f.l4 else { panic!("TCP") };
        assert_eq!(t.flags.map(|f| f.names()), Some(vec!["SYN"]));
        assert_eq!(f.time.to_string(), "2023-08-21T12:12:18.510175415Z");
        let Some(Layer4::IcmpV6(i)) = flows[0].l4 else { panic!("ICMPv6") };
        assert_eq!(i.kind, 133);
        assert_eq!(flows[0].drop_reason_desc.name(), "INVALID_SOURCE_IP");
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let f = Flow {
            time: Timestamp::from_nanos(1_796_237_550_123_456_789),
            uuid: "8b0f4a2e-1b7a-4c55-9d6e-0a1b2c3d4e5f".into(),
            verdict: Verdict::Dropped,
            drop_reason: 133,
            ip: Some(Ip {
                source: "198.18.3.10".parse().expect("ip"),
                destination: "198.18.1.20".parse().expect("ip"),
                ip_version: IpVersion::V4,
                encrypted: false,
            }),
            l4: Some(Layer4::Tcp(Tcp {
                source_port: 40000,
                destination_port: 8080,
                flags: Some(TcpFlags::from_byte(0x02)),
            })),
            source: Arc::new(Endpoint {
                identity: 260,
                namespace: "staging".into(),
                pod_name: "debug-tools".into(),
                labels: vec!["k8s:app=debug-tools".into()],
                ..Endpoint::default()
            }),
            destination: Arc::new(Endpoint { id: 2, identity: 257, ..Endpoint::default() }),
            flow_type: FlowType::L3L4,
            event_type: Some(EventType { kind: event_types::DROP, sub_type: 133 }),
            traffic_direction: TrafficDirection::Ingress,
            drop_reason_desc: DropReason::POLICY_DENIED,
            is_reply: Some(false),
            near_misses: Arc::from([NearMiss {
                policy: Policy {
                    name: "restrict-backend-api".into(),
                    namespace: "production".into(),
                    kind: "CiliumNetworkPolicy".into(),
                    rule: "spec.ingress[0]".into(),
                    ..Policy::default()
                },
                reason: "peer lacks app=frontend".into(),
            }]),
            count: 3,
            ..Flow::default()
        };
        let text = serde_json::to_string(&FlowRecord { flow: f.clone(), ..FlowRecord::default() }).expect("json");
        assert!(text.contains(r#""drop_reason_desc":"POLICY_DENIED""#), "{text}");
        assert!(text.contains(r#""Type":"L3_L4""#), "{text}");
        assert!(text.contains(r#""IP":{"source":"198.18.3.10","destination":"198.18.1.20","ipVersion":"IPv4"}"#));
        assert!(text.contains(r#""l4":{"TCP":{"source_port":40000,"destination_port":8080,"flags":{"SYN":true}}}"#));
        assert!(text.contains(r#""event_type":{"type":1,"sub_type":133}"#), "{text}");
        assert_eq!(decode_json(text.as_bytes()).expect("decodes"), f);
    }

    #[test]
    fn enums_read_names_and_numbers_and_tolerate_unknown_values() {
        let f: Flow = serde_json::from_str(
            r#"{"verdict":2,"drop_reason_desc":181,"traffic_direction":"EGRESS","Type":"NOT_A_TYPE","extra":1}"#,
        )
        .expect("lenient");
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason_desc, DropReason::POLICY_DENY);
        assert_eq!(f.traffic_direction, TrafficDirection::Egress);
        assert_eq!(f.flow_type, FlowType::Unknown);
        assert_eq!(DropReason(999).to_string(), "999");
        assert_eq!(DropReason::from_name("policy_denied"), Some(DropReason::POLICY_DENIED));
        assert_eq!(Verdict::from_name("audit"), Some(Verdict::Audit));
    }
}
