//! The network and transport parts of a flow: event type, addresses, the
//! L4 header (TCP with its flags, UDP, SCTP, ICMP).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::enums::IpVersion;
use super::{is_false, is_zero_i32, is_zero_u32};

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
