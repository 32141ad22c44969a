//! Hubble's drop reasons: a number with a name, as the datapath reports
//! them and Hubble prints them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::enums::{EnumValue, EnumVisitor};

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
