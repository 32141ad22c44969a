//! Hubble's enums (protobuf enums, written by name and read from a name or
//! a number), its monitor event types and policy match type names.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
pub(super) enum EnumValue<'a> {
    Name(&'a str),
    Number(i64),
}

pub(super) struct EnumVisitor<F>(pub(super) F);

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
