//! IP prefixes (`10.0.0.0/8`, `fd00:b::/64`) and containment.
//!
//! Small and ours: policy needs parse, normalise, contain and the
//! longest-prefix match over the prefixes a policy set names; no arithmetic
//! beyond that.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A normalised IP prefix: host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IP address or prefix (expected e.g. 10.0.0.0/8 or fd00::/64)")]
    BadAddress(String),
    /// The length part is not a number within the family's width.
    #[error("prefix length `{0}` is not a number from 0 to {1}")]
    BadLength(String, u8),
}

impl Cidr {
    /// A prefix from an address and a length (host bits are cleared).
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let max = Self::max_len(&addr);
        let len = len.min(max);
        Self { addr: mask(addr, len), len }
    }

    /// The single-address prefix of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self::new(addr, Self::max_len(&addr))
    }

    fn max_len(addr: &IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for /0 (a whole family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True for IPv4 prefixes.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The first address of the prefix.
    pub fn first(&self) -> IpAddr {
        self.addr
    }

    /// The last address of the prefix.
    pub fn last(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => {
                IpAddr::V4((u32::from(v4) | u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0)).into())
            }
            IpAddr::V6(v6) => {
                IpAddr::V6((u128::from(v6) | u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0)).into())
            }
        }
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains_ip(other.addr)
    }

    /// Whether the text had host bits set (`10.0.0.1/8`): it parses, but the
    /// author probably meant something else.
    pub fn parse_strict(s: &str) -> Result<(Self, bool), CidrError> {
        let (ip_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(ip_text).map_err(|_| CidrError::BadAddress(s.to_string()))?;
        let max = Self::max_len(&addr);
        let len = match len_text {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(CidrError::BadLength(l.to_string(), max)),
            },
        };
        let cidr = Self::new(addr, len);
        Ok((cidr, cidr.addr != addr))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_strict(s).map(|(c, _)| c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn parse_and_normalise() {
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("198.18.0.1").to_string(), "198.18.0.1/32");
        assert_eq!(c("fd00:b::1/64").to_string(), "fd00:b::/64");
        assert!(Cidr::parse_strict("10.1.2.3/8").expect("valid").1);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn first_and_last() {
        assert_eq!(c("198.18.0.0/30").last().to_string(), "198.18.0.3");
        assert_eq!(c("198.18.0.7/32").last().to_string(), "198.18.0.7");
        assert_eq!(c("0.0.0.0/0").last().to_string(), "255.255.255.255");
        assert_eq!(c("fd00:b::/64").last().to_string(), "fd00:b::ffff:ffff:ffff:ffff");
        assert_eq!(c("fd00:b::/64").first().to_string(), "fd00:b::");
    }

    #[test]
    fn containment() {
        assert!(c("10.0.0.0/8").contains(&c("10.96.0.0/12")));
        assert!(!c("10.96.0.0/12").contains(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").contains_ip("192.0.2.1".parse().expect("ip")));
        assert!(!c("0.0.0.0/0").contains_ip("::1".parse().expect("ip")));
    }
}
