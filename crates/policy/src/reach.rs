//! The pod × pod × port reachability matrix (`bulkhead policy reach`).
//!
//! Each cell is the kernel's answer: the source's egress lookup and the
//! destination's ingress lookup, both against resolved policy maps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::L7Rules;
use crate::engine::Engine;
use crate::repository::Proto;
use crate::resolve::{Decision, DirectionPolicy, Verdict};

/// One cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// Allowed at L3/L4 with no L7 rule.
    Allowed,
    /// Dropped.
    Denied,
    /// Allowed at L3/L4, decided per request by an L7 proxy.
    L7,
}

impl Reach {
    /// `allowed`, `denied`, `l7`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::L7 => "l7",
        }
    }
}

/// A port to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProbePort {
    /// Protocol.
    pub proto: Proto,
    /// Port number.
    pub port: u16,
}

impl ProbePort {
    /// `80/TCP`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.port, self.proto)
    }

    /// Parses `80/TCP` (protocol defaults to TCP).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
        let port: u16 =
            port.trim().parse().map_err(|_| format!("`{s}`: port must be a number 0-65535, as in 80/TCP"))?;
        let proto = Proto::parse(proto.trim())
            .filter(|p| *p != Proto::Any)
            .ok_or_else(|| format!("`{s}`: protocol must be TCP, UDP, SCTP, ICMP or ICMPv6"))?;
        Ok(Self { proto, port })
    }
}

/// The matrix, in the JSON shape of DESIGN.md §5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReachMatrix {
    /// Ports, as `80/TCP`.
    pub ports: Vec<String>,
    /// Pods, as `namespace/name`.
    pub pods: Vec<String>,
    /// `verdicts[from][to][port]`.
    pub verdicts: BTreeMap<String, BTreeMap<String, BTreeMap<String, Reach>>>,
}

/// Combines two lookups into a cell; a redirect to rules `proxied` says no
/// proxy enforces is dropped (the datapath fails closed).
fn cell(egress: Decision<'_>, ingress: Decision<'_>, proxied: &dyn Fn(&L7Rules) -> bool) -> Reach {
    if !egress.passes() || !ingress.passes() {
        return Reach::Denied;
    }
    let redirect = |d: &Decision<'_>| match d {
        Decision::Entry(_, e) => match &e.verdict {
            Verdict::Redirect(l7) => Some(proxied(&l7.rules)),
            _ => None,
        },
        Decision::Default { .. } => None,
    };
    match (redirect(&egress), redirect(&ingress)) {
        (Some(false), _) | (_, Some(false)) => Reach::Denied,
        (Some(true), _) | (_, Some(true)) => Reach::L7,
        (None, None) => Reach::Allowed,
    }
}

/// The ports every pod serves (container ports), sorted; `80/TCP` if none.
pub fn default_ports(engine: &Engine) -> Vec<ProbePort> {
    let mut ports: Vec<ProbePort> = engine
        .pod_keys()
        .iter()
        .filter_map(|k| engine.pod(k))
        .flat_map(|(p, _)| p.ports.iter().map(|np| ProbePort { proto: Proto::expand(np.protocol)[0], port: np.port }))
        .collect();
    ports.sort();
    ports.dedup();
    if ports.is_empty() {
        ports.push(ProbePort { proto: Proto::Tcp, port: 80 });
    }
    ports
}

/// Computes the matrix over every pod the engine knows.
pub fn reach(engine: &Engine, ports: &[ProbePort]) -> ReachMatrix {
    reach_with(engine, ports, &|_| true)
}

/// [`reach`] as a node enforces it: traffic for L7 rules that `proxied`
/// says no proxy there enforces is `denied` (the datapath drops it), not
/// `l7`.
pub fn reach_with(engine: &Engine, ports: &[ProbePort], proxied: &dyn Fn(&L7Rules) -> bool) -> ReachMatrix {
    let pods = engine.pod_keys();
    let empty = DirectionPolicy::default();
    let mut verdicts = BTreeMap::new();
    for from in &pods {
        let Some((src, src_id)) = engine.pod(from) else { continue };
        let src_pol = engine.endpoint_policy(from);
        let mut row = BTreeMap::new();
        for to in &pods {
            let Some((dst, dst_id)) = engine.pod(to) else { continue };
            let dst_pol = engine.endpoint_policy(to);
            let mut cells = BTreeMap::new();
            for p in ports {
                let r = if from == to {
                    Reach::Allowed
                } else {
                    let eg = src_pol.map(|x| &x.egress).unwrap_or(&empty).lookup(
                        dst.ips.first().copied(),
                        dst_id,
                        p.proto,
                        p.port,
                    );
                    let ing = dst_pol.map(|x| &x.ingress).unwrap_or(&empty).lookup(
                        src.ips.first().copied(),
                        src_id,
                        p.proto,
                        p.port,
                    );
                    cell(eg, ing, proxied)
                };
                cells.insert(p.label(), r);
            }
            row.insert(to.clone(), cells);
        }
        verdicts.insert(from.clone(), row);
    }
    ReachMatrix { ports: ports.iter().map(ProbePort::label).collect(), pods, verdicts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ports() {
        assert_eq!(ProbePort::parse("80/TCP"), Ok(ProbePort { proto: Proto::Tcp, port: 80 }));
        assert_eq!(ProbePort::parse("53/udp"), Ok(ProbePort { proto: Proto::Udp, port: 53 }));
        assert_eq!(ProbePort::parse("8080"), Ok(ProbePort { proto: Proto::Tcp, port: 8080 }));
        assert!(ProbePort::parse("x/TCP").is_err());
        assert!(ProbePort::parse("80/GRE").is_err());
    }
}
