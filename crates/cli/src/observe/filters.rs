//! Hubble's filter building from `observe`'s flags: different flags must
//! all match, repeats of one flag are alternatives, flags that match either
//! end make a second filter, and `--not` turns the next filter flag into an
//! exclusion (by clap's argument indices, since order matters).

use anyhow::Result;
use bulkhead_flow::filter::EventTypeFilter;
use bulkhead_flow::model::{DropReason, IpVersion, TcpFlags, TrafficDirection, Verdict};
use bulkhead_flow::{Filters, FlowFilter, Timestamp};
use clap::ArgMatches;

/// One side of Hubble's filter building: `left` gets the flags, `right`
/// exists once a flag that matches either end has been seen.
#[derive(Default)]
struct Tracker {
    left: FlowFilter,
    right: Option<FlowFilter>,
    used: bool,
}

impl Tracker {
    fn both(&mut self, f: impl Fn(&mut FlowFilter)) {
        self.used = true;
        f(&mut self.left);
        if let Some(r) = &mut self.right {
            f(r);
        }
    }

    fn either(&mut self, src: impl Fn(&mut FlowFilter), dst: impl Fn(&mut FlowFilter)) {
        self.used = true;
        let right = self.right.get_or_insert_with(|| self.left.clone());
        dst(right);
        src(&mut self.left);
    }

    fn filters(self) -> Vec<FlowFilter> {
        if !self.used {
            return Vec::new();
        }
        std::iter::once(self.left).chain(self.right).collect()
    }
}

fn bad(flag: &str, value: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!("--{flag} {value}: {why}")
}

/// Applies one filter flag occurrence.
fn apply(t: &mut Tracker, flag: &str, v: &str) -> Result<()> {
    let s = v.to_string();
    match flag {
        "verdict" => {
            let verdict = Verdict::from_name(v).ok_or_else(|| {
                bad(flag, v, "expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED")
            })?;
            t.both(|f| f.verdict.push(verdict));
        }
        "pod" => t.either(|f| f.source_pod.push(s.clone()), |f| f.destination_pod.push(s.clone())),
        "from_pod" => t.both(|f| f.source_pod.push(s.clone())),
        "to_pod" => t.both(|f| f.destination_pod.push(s.clone())),
        "namespace" => {
            let ns = format!("{v}/");
            t.either(|f| f.source_pod.push(ns.clone()), |f| f.destination_pod.push(ns.clone()));
        }
        "label" => t.either(|f| f.source_label.push(s.clone()), |f| f.destination_label.push(s.clone())),
        "from_label" => t.both(|f| f.source_label.push(s.clone())),
        "to_label" => t.both(|f| f.destination_label.push(s.clone())),
        "ip" => t.either(|f| f.source_ip.push(s.clone()), |f| f.destination_ip.push(s.clone())),
        "from_ip" => t.both(|f| f.source_ip.push(s.clone())),
        "to_ip" => t.both(|f| f.destination_ip.push(s.clone())),
        "identity" | "from_identity" | "to_identity" => {
            let id: u32 = v.parse().map_err(|_| bad(flag, v, "an identity is a number"))?;
            match flag {
                "identity" => t.either(|f| f.source_identity.push(id), |f| f.destination_identity.push(id)),
                "from_identity" => t.both(|f| f.source_identity.push(id)),
                _ => t.both(|f| f.destination_identity.push(id)),
            }
        }
        "fqdn" => t.either(|f| f.source_fqdn.push(s.clone()), |f| f.destination_fqdn.push(s.clone())),
        "from_fqdn" => t.both(|f| f.source_fqdn.push(s.clone())),
        "to_fqdn" => t.both(|f| f.destination_fqdn.push(s.clone())),
        "port" => t.either(|f| f.source_port.push(s.clone()), |f| f.destination_port.push(s.clone())),
        "from_port" => t.both(|f| f.source_port.push(s.clone())),
        "to_port" => t.both(|f| f.destination_port.push(s.clone())),
        "protocol" => t.both(|f| f.protocol.push(s.clone())),
        "type" => {
            let e = EventTypeFilter::parse(v).map_err(|e| anyhow::anyhow!("--type: {e}"))?;
            t.both(|f| f.event_type.push(e));
        }
        "traffic_direction" => {
            let d = TrafficDirection::from_name(v)
                .filter(|d| *d != TrafficDirection::Unknown)
                .ok_or_else(|| bad(flag, v, "expected ingress or egress"))?;
            t.both(|f| f.traffic_direction.push(d));
        }
        "drop_reason" => {
            let r = DropReason::from_name(v).ok_or_else(|| {
                bad(flag, v, "not a drop reason (POLICY_DENIED, POLICY_DENY, INVALID_PACKET_DROPPED, …)")
            })?;
            t.both(|f| f.drop_reason_desc.push(r));
        }
        "http_status" => t.both(|f| f.http_status_code.push(s.clone())),
        "http_method" => t.both(|f| f.http_method.push(s.clone())),
        "http_path" => t.both(|f| f.http_path.push(s.clone())),
        "tcp_flags" => {
            let mut bits = 0u8;
            for name in v.split(',').map(str::trim) {
                let bit = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .ok_or_else(|| bad(flag, v, "flags are FIN, SYN, RST, PSH, ACK, URG, ECE, CWR"))?;
                bits |= 1 << bit;
            }
            let flags = TcpFlags::from_byte(bits);
            t.both(|f| f.tcp_flags.push(flags));
        }
        "ip_version" => {
            let ver = match v.to_ascii_lowercase().as_str() {
                "v4" | "4" | "ipv4" => IpVersion::V4,
                "v6" | "6" | "ipv6" => IpVersion::V6,
                _ => return Err(bad(flag, v, "expected v4 or v6")),
            };
            t.both(|f| f.ip_version.push(ver));
        }
        "node_name" => t.both(|f| f.node_name.push(s.clone())),
        "reply" => {
            let r: bool = v.parse().map_err(|_| bad(flag, v, "expected true or false"))?;
            t.both(|f| f.reply.push(r));
        }
        "uuid" => t.both(|f| f.uuid.push(s.clone())),
        _ => {}
    }
    Ok(())
}

/// Every filter flag, by its argument id.
const FILTER_FLAGS: &[&str] = &[
    "verdict",
    "pod",
    "from_pod",
    "to_pod",
    "namespace",
    "label",
    "from_label",
    "to_label",
    "ip",
    "from_ip",
    "to_ip",
    "identity",
    "from_identity",
    "to_identity",
    "fqdn",
    "from_fqdn",
    "to_fqdn",
    "port",
    "from_port",
    "to_port",
    "protocol",
    "type",
    "traffic_direction",
    "drop_reason",
    "http_status",
    "http_method",
    "http_path",
    "tcp_flags",
    "ip_version",
    "node_name",
    "reply",
    "uuid",
];

/// Builds the filters from the command line, in the order given.
pub(super) fn filters(m: &ArgMatches, now: Timestamp, since: Option<&str>, until: Option<&str>) -> Result<Filters> {
    let mut occurrences: Vec<(usize, &str, String)> = Vec::new();
    for flag in FILTER_FLAGS {
        let (Some(idx), Some(raw)) = (m.indices_of(flag), m.get_raw(flag)) else { continue };
        for (i, v) in idx.zip(raw) {
            occurrences.push((i, flag, v.to_string_lossy().into_owned()));
        }
    }
    occurrences.sort_by_key(|o| o.0);
    // A count flag has a default, which has an index of its own: only the
    // occurrences given count.
    let nots: Vec<usize> = match m.get_count("not") {
        0 => Vec::new(),
        _ => m.indices_of("not").map(Iterator::collect).unwrap_or_default(),
    };
    // `--not` negates the first filter flag after it.
    let mut negated = vec![false; occurrences.len()];
    for n in &nots {
        match occurrences.iter().position(|o| o.0 > *n) {
            Some(i) if !negated[i] => negated[i] = true,
            _ => anyhow::bail!("--not must be followed by a filter flag (e.g. --not --verdict FORWARDED)"),
        }
    }
    let (mut allow, mut deny) = (Tracker::default(), Tracker::default());
    for ((_, flag, v), neg) in occurrences.iter().zip(negated) {
        apply(if neg { &mut deny } else { &mut allow }, flag, v)?;
    }
    let time = |flag: &str, s: Option<&str>| -> Result<Option<Timestamp>> {
        s.map(|s| Timestamp::parse_relative(s, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))).transpose()
    };
    let f = Filters {
        allow: allow.filters(),
        deny: deny.filters(),
        since: time("since", since)?,
        until: time("until", until)?,
    };
    f.compile().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(f)
}

pub(super) fn now() -> Timestamp {
    Timestamp::from_nanos(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
    )
}
