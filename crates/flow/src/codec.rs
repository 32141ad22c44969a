//! The flow log's binary flow encoding: compact records that reference
//! definitions made earlier in the same segment.
//!
//! Most of a flow's bytes are its two endpoints (labels) and the policies
//! that decided it, and these repeat from flow to flow. So the writer
//! defines each endpoint, policy list, near-miss list and string once per
//! segment (a definition record) and a flow record names them by number:
//! a flow is about a hundred bytes instead of a kilobyte of JSON, and
//! decoding one shares the definitions (`Arc`s) instead of parsing them
//! again. Definitions restart with every segment, so a segment decodes on
//! its own after retention removed the ones before it.
//!
//! Integers are LEB128, strings are a length and UTF-8 bytes. Decoding
//! checks every length and reference and never panics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::model::{
    Drift, DropReason, Endpoint, EventType, Flow, FlowType, Icmp, Ip, IpVersion, Layer4, Layer7, NearMiss,
    NetworkInterface, Policy, Ports, Tcp, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict, Workload,
};
use crate::time::Timestamp;

/// Bytes that are not a record this codec wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The record ends before a field does.
    #[error("the record ends inside a field")]
    Truncated,
    /// A number, tag or string that no writer produces.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A reference to a definition the segment does not hold (yet).
    #[error("{0} {1} is not defined before its use")]
    Undefined(&'static str, u64),
}

const DEF_ENDPOINT: u8 = 1;
const DEF_POLICIES: u8 = 2;
const DEF_MISSES: u8 = 3;
const DEF_STRING: u8 = 4;

fn put_u(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i(out: &mut Vec<u8>, v: i64) {
    put_u(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_s(out: &mut Vec<u8>, s: &str) {
    put_u(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_list(out: &mut Vec<u8>, v: &[String]) {
    put_u(out, v.len() as u64);
    for s in v {
        put_s(out, s);
    }
}

fn put_policy(out: &mut Vec<u8>, p: &Policy) {
    put_s(out, &p.name);
    put_s(out, &p.namespace);
    put_list(out, &p.labels);
    put_u(out, p.revision);
    put_s(out, &p.kind);
    put_s(out, &p.rule);
}

/// A read position in a record.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(CodecError::Truncated)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Invalid("number"))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.u()?).map_err(|_| CodecError::Invalid("32-bit number"))
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        let u = self.u()?;
        let v = ((u >> 1) as i64) ^ -((u & 1) as i64);
        i32::try_from(v).map_err(|_| CodecError::Invalid("32-bit number"))
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.0.split_first().ok_or(CodecError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn s(&mut self) -> Result<String, CodecError> {
        let n = usize::try_from(self.u()?).map_err(|_| CodecError::Invalid("length"))?;
        let b = self.bytes(n)?;
        std::str::from_utf8(b).map(str::to_string).map_err(|_| CodecError::Invalid("UTF-8 string"))
    }

    fn count(&mut self) -> Result<usize, CodecError> {
        // Every element takes at least one byte: a larger count is a lie.
        let n = usize::try_from(self.u()?).map_err(|_| CodecError::Invalid("count"))?;
        if n > self.0.len() {
            return Err(CodecError::Truncated);
        }
        Ok(n)
    }

    fn list(&mut self) -> Result<Vec<String>, CodecError> {
        let n = self.count()?;
        (0..n).map(|_| self.s()).collect()
    }

    fn policy(&mut self) -> Result<Policy, CodecError> {
        Ok(Policy {
            name: self.s()?,
            namespace: self.s()?,
            labels: self.list()?,
            revision: self.u()?,
            kind: self.s()?,
            rule: self.s()?,
        })
    }

    fn ip(&mut self, v6: bool) -> Result<IpAddr, CodecError> {
        Ok(if v6 {
            let b: [u8; 16] = self.bytes(16)?.try_into().map_err(|_| CodecError::Truncated)?;
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            let b: [u8; 4] = self.bytes(4)?.try_into().map_err(|_| CodecError::Truncated)?;
            IpAddr::V4(Ipv4Addr::from(b))
        })
    }
}

/// The number of shared list `v` in `defined` (0 for an empty list, else
/// its definition's number + 1), defining it first if this segment has not.
fn define_list<T>(
    defined: &mut HashMap<usize, (Arc<[T]>, u64)>,
    v: &Arc<[T]>,
    kind: u8,
    defs: &mut Vec<Vec<u8>>,
    put: impl Fn(&mut Vec<u8>, &T),
) -> u64 {
    if v.is_empty() {
        return 0;
    }
    if let Some((_, id)) = defined.get(&(v.as_ptr() as usize)) {
        return id + 1;
    }
    let id = defined.len() as u64;
    let mut d = vec![kind];
    put_u(&mut d, v.len() as u64);
    for x in v.iter() {
        put(&mut d, x);
    }
    defs.push(d);
    defined.insert(v.as_ptr() as usize, (Arc::clone(v), id));
    id + 1
}

/// Definitions already written in this segment, keyed by the address of
/// the shared value (flows share their endpoints' and policies' `Arc`s);
/// each entry holds its value, so the address cannot be reused for another
/// while it is a key.
#[derive(Debug, Default)]
pub struct Encoder {
    endpoints: HashMap<usize, (Arc<Endpoint>, u64)>,
    policies: HashMap<usize, (Arc<[Policy]>, u64)>,
    misses: HashMap<usize, (Arc<[NearMiss]>, u64)>,
    strings: HashMap<String, u64>,
}

impl Encoder {
    /// An encoder for a new segment (no definitions yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every definition (a new segment starts).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn endpoint(&mut self, e: &Arc<Endpoint>, defs: &mut Vec<Vec<u8>>) -> u64 {
        if let Some((_, id)) = self.endpoints.get(&(Arc::as_ptr(e) as usize)) {
            return *id;
        }
        let id = self.endpoints.len() as u64;
        let mut d = vec![DEF_ENDPOINT];
        put_u(&mut d, e.id.into());
        put_u(&mut d, e.identity.into());
        put_s(&mut d, &e.cluster_name);
        put_s(&mut d, &e.namespace);
        put_list(&mut d, &e.labels);
        put_s(&mut d, &e.pod_name);
        put_u(&mut d, e.workloads.len() as u64);
        for w in &e.workloads {
            put_s(&mut d, &w.name);
            put_s(&mut d, &w.kind);
        }
        defs.push(d);
        self.endpoints.insert(Arc::as_ptr(e) as usize, (Arc::clone(e), id));
        id
    }

    /// 0 for none, else the definition's number + 1.
    fn policies(&mut self, p: &Arc<[Policy]>, defs: &mut Vec<Vec<u8>>) -> u64 {
        define_list(&mut self.policies, p, DEF_POLICIES, defs, put_policy)
    }

    fn misses(&mut self, m: &Arc<[NearMiss]>, defs: &mut Vec<Vec<u8>>) -> u64 {
        define_list(&mut self.misses, m, DEF_MISSES, defs, |d, x| {
            put_policy(d, &x.policy);
            put_s(d, &x.reason);
        })
    }

    fn string(&mut self, s: &str, defs: &mut Vec<Vec<u8>>) -> u64 {
        if let Some(id) = self.strings.get(s) {
            return *id;
        }
        let id = self.strings.len() as u64;
        let mut d = vec![DEF_STRING];
        d.extend_from_slice(s.as_bytes());
        defs.push(d);
        self.strings.insert(s.to_string(), id);
        id
    }

    /// Encodes `f`: the definitions it needs first (each a record of its
    /// own, pushed to `defs`), then the flow's own bytes into `out`.
    pub fn encode(&mut self, f: &Flow, defs: &mut Vec<Vec<u8>>, out: &mut Vec<u8>) {
        let src = self.endpoint(&f.source, defs);
        let dst = self.endpoint(&f.destination, defs);
        let node = self.string(&f.node_name, defs);
        let pols = [&f.egress_allowed_by, &f.ingress_allowed_by, &f.egress_denied_by, &f.ingress_denied_by]
            .map(|p| self.policies(p, defs));
        let misses = self.misses(&f.near_misses, defs);
        let iface = f.interface.as_ref().map(|i| (i.index, self.string(&i.name, defs)));
        out.extend_from_slice(&f.time.as_nanos().to_le_bytes());
        match uuid_bytes(&f.uuid) {
            Some(b) => {
                out.push(1);
                out.extend_from_slice(&b);
            }
            None => {
                out.push(0);
                put_s(out, &f.uuid);
            }
        }
        out.push(f.verdict.number() as u8);
        put_u(out, f.drop_reason.into());
        put_u(out, f.drop_reason_desc.0.into());
        out.push(f.flow_type.number() as u8);
        out.push(f.traffic_direction.number() as u8);
        put_u(out, f.trace_observation_point.number() as u64);
        out.push(match f.is_reply {
            Some(false) => 0,
            Some(true) => 1,
            None => 2,
        });
        put_u(out, f.policy_match_type.into());
        match f.event_type {
            Some(e) => {
                out.push(1);
                put_i(out, e.kind.into());
                put_i(out, e.sub_type.into());
            }
            None => out.push(0),
        }
        put_u(out, f.proxy_port.into());
        put_u(out, f.count);
        match &f.ip {
            None => out.push(0),
            Some(ip) => {
                let v6 = ip.source.is_ipv6() || ip.destination.is_ipv6();
                out.push(if v6 { 6 } else { 4 } | if ip.encrypted { 0x80 } else { 0 });
                out.push(ip.ip_version.number() as u8);
                for a in [ip.source, ip.destination] {
                    match (a, v6) {
                        (IpAddr::V4(a), false) => out.extend_from_slice(&a.octets()),
                        (IpAddr::V4(a), true) => out.extend_from_slice(&a.to_ipv6_mapped().octets()),
                        (IpAddr::V6(a), _) => out.extend_from_slice(&a.octets()),
                    }
                }
            }
        }
        match &f.l4 {
            None => out.push(0),
            Some(Layer4::Tcp(t)) => {
                out.push(if t.flags.is_some() { 1 } else { 6 });
                put_u(out, t.source_port.into());
                put_u(out, t.destination_port.into());
                let fl = t.flags.unwrap_or_default();
                put_u(out, u64::from(fl.bits()));
            }
            Some(Layer4::Udp(p)) => {
                out.push(2);
                put_u(out, p.source_port.into());
                put_u(out, p.destination_port.into());
            }
            Some(Layer4::Sctp(p)) => {
                out.push(5);
                put_u(out, p.source_port.into());
                put_u(out, p.destination_port.into());
            }
            Some(Layer4::IcmpV4(i)) | Some(Layer4::IcmpV6(i)) => {
                out.push(if matches!(f.l4, Some(Layer4::IcmpV4(_))) { 3 } else { 4 });
                put_u(out, i.kind.into());
                put_u(out, i.code.into());
            }
        }
        put_u(out, src);
        put_u(out, dst);
        put_u(out, node);
        for p in pols {
            put_u(out, p);
        }
        put_u(out, misses);
        match iface {
            None => out.push(0),
            Some((index, name)) => {
                out.push(1);
                put_u(out, index.into());
                put_u(out, name);
            }
        }
        put_list(out, &f.source_names);
        put_list(out, &f.destination_names);
        // L7 records are rare beside packets and their shape grows with the
        // proxies: kept as JSON inside the record.
        match &f.l7 {
            None => out.push(0),
            Some(l7) => {
                out.push(1);
                let json = serde_json::to_string(l7).unwrap_or_default();
                put_s(out, &json);
            }
        }
        // Last and only when there is one: a flow's record is as before.
        if let Some(d) = &f.drift {
            out.push(1);
            put_s(out, &d.kind);
            put_s(out, &d.what);
            put_u(out, d.repair_ns);
        }
    }
}

/// The 16 bytes of a canonical UUID (`8-4-4-4-12` lower-case hex).
fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|i| b[*i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|c| *c != b'-').collect();
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn uuid_string(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 15)] as char);
    }
    s
}

/// The definitions read so far in a segment.
#[derive(Debug, Default)]
pub struct Decoder {
    endpoints: Vec<Arc<Endpoint>>,
    policies: Vec<Arc<[Policy]>>,
    misses: Vec<Arc<[NearMiss]>>,
    strings: Vec<Arc<str>>,
}

impl Decoder {
    /// A decoder for a new segment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a definition record.
    pub fn define(&mut self, payload: &[u8]) -> Result<(), CodecError> {
        let (&kind, body) = payload.split_first().ok_or(CodecError::Truncated)?;
        let mut c = Cursor(body);
        match kind {
            DEF_ENDPOINT => {
                let id = c.u32()?;
                let identity = c.u32()?;
                let cluster_name = c.s()?;
                let namespace = c.s()?;
                let labels = c.list()?;
                let pod_name = c.s()?;
                let n = c.count()?;
                let workloads =
                    (0..n).map(|_| Ok(Workload { name: c.s()?, kind: c.s()? })).collect::<Result<_, _>>()?;
                self.endpoints.push(Arc::new(Endpoint {
                    id,
                    identity,
                    cluster_name,
                    namespace,
                    labels,
                    pod_name,
                    workloads,
                }));
            }
            DEF_POLICIES => {
                let n = c.count()?;
                let v: Vec<Policy> = (0..n).map(|_| c.policy()).collect::<Result<_, _>>()?;
                self.policies.push(v.into());
            }
            DEF_MISSES => {
                let n = c.count()?;
                let v: Vec<NearMiss> =
                    (0..n).map(|_| Ok(NearMiss { policy: c.policy()?, reason: c.s()? })).collect::<Result<_, _>>()?;
                self.misses.push(v.into());
            }
            DEF_STRING => {
                let s = std::str::from_utf8(body).map_err(|_| CodecError::Invalid("UTF-8 string"))?;
                self.strings.push(Arc::from(s));
                return Ok(());
            }
            _ => return Err(CodecError::Invalid("definition kind")),
        }
        if !c.0.is_empty() {
            return Err(CodecError::Invalid("definition length"));
        }
        Ok(())
    }

    fn endpoint(&self, id: u64) -> Result<Arc<Endpoint>, CodecError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.endpoints.get(i))
            .cloned()
            .ok_or(CodecError::Undefined("endpoint", id))
    }

    fn policies(&self, id: u64) -> Result<Arc<[Policy]>, CodecError> {
        if id == 0 {
            return Ok(Arc::from([]));
        }
        usize::try_from(id - 1)
            .ok()
            .and_then(|i| self.policies.get(i))
            .cloned()
            .ok_or(CodecError::Undefined("policy list", id))
    }

    fn string(&self, id: u64) -> Result<&str, CodecError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.strings.get(i))
            .map(|s| &**s)
            .ok_or(CodecError::Undefined("string", id))
    }

    /// Reads a flow record.
    pub fn flow(&self, payload: &[u8]) -> Result<Flow, CodecError> {
        let mut c = Cursor(payload);
        let time =
            Timestamp::from_nanos(u64::from_le_bytes(c.bytes(8)?.try_into().map_err(|_| CodecError::Truncated)?));
        let uuid = match c.byte()? {
            1 => uuid_string(c.bytes(16)?),
            0 => c.s()?,
            _ => return Err(CodecError::Invalid("uuid tag")),
        };
        let verdict = Verdict::from_number(c.byte()?.into()).ok_or(CodecError::Invalid("verdict"))?;
        let drop_reason = c.u32()?;
        let drop_reason_desc = DropReason(c.u32()?);
        let flow_type = FlowType::from_number(c.byte()?.into()).ok_or(CodecError::Invalid("flow type"))?;
        let traffic_direction =
            TrafficDirection::from_number(c.byte()?.into()).ok_or(CodecError::Invalid("traffic direction"))?;
        let trace_observation_point = TraceObservationPoint::from_number(i64::try_from(c.u()?).unwrap_or(-1))
            .ok_or(CodecError::Invalid("observation point"))?;
        let is_reply = match c.byte()? {
            0 => Some(false),
            1 => Some(true),
            2 => None,
            _ => return Err(CodecError::Invalid("reply flag")),
        };
        let policy_match_type = c.u32()?;
        let event_type = match c.byte()? {
            0 => None,
            1 => Some(EventType { kind: c.i32()?, sub_type: c.i32()? }),
            _ => return Err(CodecError::Invalid("event type tag")),
        };
        let proxy_port = c.u32()?;
        let count = c.u()?;
        let ip = match c.byte()? {
            0 => None,
            tag if matches!(tag & 0x7f, 4 | 6) => {
                let ip_version = IpVersion::from_number(c.byte()?.into()).ok_or(CodecError::Invalid("IP version"))?;
                let v6 = tag & 0x7f == 6;
                let source = c.ip(v6)?;
                let destination = c.ip(v6)?;
                let unmap = |a: IpAddr| match a {
                    IpAddr::V6(v) if ip_version == IpVersion::V4 => v.to_ipv4_mapped().map_or(a, IpAddr::V4),
                    a => a,
                };
                Some(Ip {
                    source: unmap(source),
                    destination: unmap(destination),
                    ip_version,
                    encrypted: tag & 0x80 != 0,
                })
            }
            _ => return Err(CodecError::Invalid("IP tag")),
        };
        let port = |c: &mut Cursor<'_>| -> Result<u32, CodecError> { c.u32() };
        let l4 = match c.byte()? {
            0 => None,
            tag @ (1 | 6) => {
                let (s, d) = (port(&mut c)?, port(&mut c)?);
                let bits = u16::try_from(c.u()?).map_err(|_| CodecError::Invalid("TCP flags"))?;
                Some(Layer4::Tcp(Tcp {
                    source_port: s,
                    destination_port: d,
                    flags: (tag == 1).then(|| TcpFlags::from_bits(bits)),
                }))
            }
            2 => Some(Layer4::Udp(Ports { source_port: port(&mut c)?, destination_port: port(&mut c)? })),
            5 => Some(Layer4::Sctp(Ports { source_port: port(&mut c)?, destination_port: port(&mut c)? })),
            3 => Some(Layer4::IcmpV4(Icmp { kind: c.u32()?, code: c.u32()? })),
            4 => Some(Layer4::IcmpV6(Icmp { kind: c.u32()?, code: c.u32()? })),
            _ => return Err(CodecError::Invalid("L4 tag")),
        };
        let source = self.endpoint(c.u()?)?;
        let destination = self.endpoint(c.u()?)?;
        let node_name = self.string(c.u()?)?.to_string();
        let egress_allowed_by = self.policies(c.u()?)?;
        let ingress_allowed_by = self.policies(c.u()?)?;
        let egress_denied_by = self.policies(c.u()?)?;
        let ingress_denied_by = self.policies(c.u()?)?;
        let near_misses = match c.u()? {
            0 => Arc::from([]),
            id => usize::try_from(id - 1)
                .ok()
                .and_then(|i| self.misses.get(i))
                .cloned()
                .ok_or(CodecError::Undefined("near-miss list", id))?,
        };
        let interface = match c.byte()? {
            0 => None,
            1 => Some(NetworkInterface { index: c.u32()?, name: self.string(c.u()?)?.to_string() }),
            _ => return Err(CodecError::Invalid("interface tag")),
        };
        let source_names = c.list()?;
        let destination_names = c.list()?;
        let l7 = match c.byte()? {
            0 => None,
            1 => Some(serde_json::from_str::<Layer7>(&c.s()?).map_err(|_| CodecError::Invalid("L7 record"))?),
            _ => return Err(CodecError::Invalid("L7 tag")),
        };
        let drift = match c.0.first() {
            None => None,
            Some(1) => {
                c.byte()?;
                Some(Drift { kind: c.s()?, what: c.s()?, repair_ns: c.u()? })
            }
            Some(_) => return Err(CodecError::Invalid("drift tag")),
        };
        if !c.0.is_empty() {
            return Err(CodecError::Invalid("record length"));
        }
        Ok(Flow {
            time,
            uuid,
            verdict,
            drop_reason,
            ip,
            l4,
            source,
            destination,
            flow_type,
            node_name,
            source_names,
            destination_names,
            l7,
            event_type,
            traffic_direction,
            policy_match_type,
            trace_observation_point,
            drop_reason_desc,
            is_reply,
            interface,
            proxy_port,
            egress_allowed_by,
            ingress_allowed_by,
            egress_denied_by,
            ingress_denied_by,
            near_misses,
            count,
            drift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dns, Http, L7FlowType, decode_json};

    fn fixture() -> Vec<Flow> {
        include_str!("../../cli/tests/golden/flows.jsonl")
            .lines()
            .chain(include_str!("../../../testdata/corpus/hubble/export-sample-flows.jsonl").lines())
            .map(|l| decode_json(l.as_bytes()).expect("fixture flow"))
            .collect()
    }

    fn round_trip(flows: &[Flow]) -> (Vec<Flow>, usize) {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let mut bytes = 0;
        for f in flows {
            let (mut defs, mut rec) = (Vec::new(), Vec::new());
            enc.encode(f, &mut defs, &mut rec);
            for d in &defs {
                dec.define(d).expect("definition decodes");
                bytes += d.len();
            }
            bytes += rec.len();
            out.push(dec.flow(&rec).expect("flow decodes"));
        }
        (out, bytes)
    }

    #[test]
    fn every_field_survives() {
        let mut flows = fixture();
        let mut odd = flows[0].clone();
        odd.uuid = "not-a-uuid".into();
        odd.source_names = vec!["a.example.com.".into()];
        odd.l4 = Some(Layer4::Tcp(Tcp { source_port: 1, destination_port: 2, flags: None }));
        odd.interface = Some(NetworkInterface { index: 7, name: "veth1".into() });
        odd.l7 = Some(Layer7 {
            kind: L7FlowType::Response,
            latency_ns: 5,
            dns: Some(Dns { query: "x.".into(), ips: vec!["1.2.3.4".into()], ..Dns::default() }),
            http: Some(Http { code: 500, ..Http::default() }),
            ..Layer7::default()
        });
        odd.event_type = Some(EventType { kind: -3, sub_type: 9 });
        flows.push(odd);
        flows.push(Flow::drift(
            Timestamp::from_nanos(1),
            "node".into(),
            Drift { kind: "conntrack-unallowed".into(), what: "conntrack TCP a -> b".into(), repair_ns: 2_500_000 },
        ));
        let (back, _) = round_trip(&flows);
        assert_eq!(back, flows);
    }

    #[test]
    fn a_flow_without_a_drift_record_is_encoded_as_before() {
        // Records written before drift records existed end after the L7
        // part; they still decode, and a flow without one ends there still.
        let mut f = fixture().remove(0);
        f.l7 = None;
        let mut enc = Encoder::new();
        let (mut defs, mut rec) = (Vec::new(), Vec::new());
        enc.encode(&f, &mut defs, &mut rec);
        assert_eq!(rec.last(), Some(&0), "the L7 tag is the last byte");
        let mut with = f.clone();
        with.drift = Some(Drift::default());
        let (mut defs2, mut rec2) = (Vec::new(), Vec::new());
        Encoder::new().encode(&with, &mut defs2, &mut rec2);
        assert_eq!(rec2[..rec.len()], rec[..], "a drift record only adds to the end");
    }

    #[test]
    fn repeated_endpoints_and_policies_are_defined_once() {
        let f = fixture().remove(3);
        let many = vec![f; 100];
        let (_, bytes) = round_trip(&many);
        let json = serde_json::to_vec(&many[0]).expect("json").len() * 100;
        assert!(bytes * 5 < json, "{bytes} bytes binary vs {json} JSON");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = Decoder::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = dec.define(&bytes);
            let _ = dec.flow(&bytes);
        }
        assert_eq!(dec.flow(&[]), Err(CodecError::Truncated));
    }
}
