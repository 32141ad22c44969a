//! How flows are printed: compact lines as `hubble observe` prints them,
//! aligned table rows, or JSON records; colours on a terminal.

use std::io::Write;

use anyhow::Result;
use bulkhead_flow::model::{
    Dns, Endpoint, Flow, FlowRecord, L7FlowType, Layer4, Verdict, event_types, policy_match_name,
};

use super::Output;

pub(super) struct Printer<'a> {
    pub(super) output: Output,
    pub(super) color: bool,
    pub(super) lines: usize,
    pub(super) out: std::io::StdoutLock<'a>,
}

impl Printer<'_> {
    pub(super) fn print(&mut self, f: &Flow) -> std::io::Result<()> {
        let text = match self.output {
            Output::Json => {
                let rec = FlowRecord { flow: f.clone(), node_name: f.node_name.clone(), time: f.time };
                serde_json::to_string(&rec).map_err(std::io::Error::other)?
            }
            Output::Compact => compact(f, self.color),
            Output::Table => {
                let mut s = String::new();
                if self.lines == 0 {
                    s.push_str(&table_header());
                    s.push('\n');
                }
                s.push_str(&table_row(f, self.color));
                s
            }
        };
        self.lines += 1;
        writeln!(self.out, "{text}")
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        match self.flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn paint(s: &str, code: &str, on: bool) -> String {
    if on { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
}

/// `ns/pod:port (ID:n)`, or `ip:port (world)` outside the cluster, named
/// by the DNS names it was learnt under when there are some (as Hubble).
fn endpoint(e: &Endpoint, ip: Option<std::net::IpAddr>, port: Option<u32>, names: &[String]) -> String {
    let named = e.pod_name.is_empty() && !names.is_empty();
    let host = if !e.pod_name.is_empty() {
        e.pod()
    } else if named {
        names.iter().map(|n| n.trim_end_matches('.')).collect::<Vec<_>>().join(",")
    } else {
        ip.map_or_else(String::new, |ip| ip.to_string())
    };
    let host = match (port, ip) {
        (Some(p), Some(std::net::IpAddr::V6(_))) if p != 0 && e.pod_name.is_empty() && !named => {
            format!("[{host}]:{p}")
        }
        (Some(p), _) if p != 0 => format!("{host}:{p}"),
        _ => host,
    };
    let reserved = e.labels.iter().find_map(|l| l.strip_prefix("reserved:"));
    match reserved {
        Some(r) if e.pod_name.is_empty() => format!("{host} ({r})"),
        _ if e.identity != 0 => format!("{host} (ID:{})", e.identity),
        _ => host,
    }
}

/// What `hubble observe` prints in the type column.
fn flow_type(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        let proto = if l7.http.is_some() {
            "http"
        } else if l7.dns.is_some() {
            "dns"
        } else if l7.kafka.is_some() {
            "kafka"
        } else {
            "l7"
        };
        return format!("{proto}-{}", l7.kind.as_str().to_ascii_lowercase());
    }
    match f.event_kind() {
        event_types::DROP => f.drop_reason_desc.description().to_string(),
        event_types::POLICY_VERDICT => {
            format!("policy-verdict:{} {}", policy_match_name(f.policy_match_type), f.traffic_direction)
        }
        event_types::TRACE => f.trace_observation_point.as_str().to_ascii_lowercase().replace('_', "-"),
        // Exported flows without an event type still say why they dropped.
        _ if !f.drop_reason_desc.is_zero() => f.drop_reason_desc.description().to_string(),
        _ => "UNKNOWN".into(),
    }
}

fn verdict(f: &Flow, color: bool) -> String {
    let pv = f.event_kind() == event_types::POLICY_VERDICT;
    let (text, code) = match f.verdict {
        Verdict::Forwarded if pv => ("ALLOWED", "32"),
        Verdict::Forwarded => ("FORWARDED", "32"),
        Verdict::Dropped if pv => ("DENIED", "31"),
        Verdict::Dropped => ("DROPPED", "31"),
        Verdict::Audit if pv => ("AUDITED", "33"),
        Verdict::Audit => ("AUDIT", "33"),
        Verdict::Redirected => ("REDIRECTED", "34"),
        v => (v.as_str(), "35"),
    };
    paint(text, code, color)
}

fn summary(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        if let Some(h) = &l7.http {
            return match l7.kind {
                L7FlowType::Response => {
                    format!("{} {} {} {} ({}ms)", h.protocol, h.code, h.method, h.url, l7.latency_ns / 1_000_000)
                }
                _ => format!("{} {} {}", h.protocol, h.method, h.url),
            };
        }
        if let Some(d) = &l7.dns {
            // As Hubble: `DNS Answer "1.2.3.4" TTL: 30 (Proxy name. A)`.
            let asked = format!("{} {}", d.query, d.qtypes.join(","));
            return match (l7.kind, d.rcode) {
                (L7FlowType::Response, 0) => {
                    format!("DNS Answer \"{}\" TTL: {} (Proxy {asked})", d.ips.join(","), d.ttl)
                }
                (L7FlowType::Response, rcode) => format!(
                    "DNS Answer RCode: {} (Proxy {asked})",
                    Dns::rcode_name(rcode).map_or_else(|| rcode.to_string(), str::to_owned)
                ),
                _ => format!("DNS Query {asked}"),
            };
        }
        if let Some(k) = &l7.kafka {
            return format!("Kafka {} {} topic {}", k.api_key, k.api_version, k.topic);
        }
    }
    match &f.l4 {
        Some(Layer4::Tcp(t)) => format!("TCP Flags: {}", t.flags.map(|f| f.names().join(", ")).unwrap_or_default()),
        Some(Layer4::Udp(_)) => "UDP".into(),
        Some(Layer4::Sctp(_)) => "SCTP".into(),
        Some(Layer4::IcmpV4(i)) => format!("ICMPv4 {}", icmp_name(4, i.kind)),
        Some(Layer4::IcmpV6(i)) => format!("ICMPv6 {}", icmp_name(6, i.kind)),
        None => String::new(),
    }
}

fn icmp_name(v: u8, t: u32) -> String {
    match (v, t) {
        (4, 0) | (6, 129) => "EchoReply".into(),
        (4, 8) | (6, 128) => "EchoRequest".into(),
        (4, 3) | (6, 1) => "DestinationUnreachable".into(),
        (4, 11) | (6, 3) => "TimeExceeded".into(),
        (6, 2) => "PacketTooBig".into(),
        (6, 133) => "RouterSolicitation".into(),
        (6, 134) => "RouterAdvertisement".into(),
        (6, 135) => "NeighborSolicitation".into(),
        (6, 136) => "NeighborAdvertisement".into(),
        _ => format!("type {t}"),
    }
}

/// What bulkhead adds to a line: who decided, how many packets.
fn extras(f: &Flow) -> Vec<String> {
    let mut out = Vec::new();
    let names = |v: &[bulkhead_flow::model::Policy]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    for (what, v) in [
        ("egress allowed by", &f.egress_allowed_by),
        ("ingress allowed by", &f.ingress_allowed_by),
        ("egress denied by", &f.egress_denied_by),
        ("ingress denied by", &f.ingress_denied_by),
    ] {
        if !v.is_empty() {
            out.push(format!("{what} {}", names(v)));
        }
    }
    for m in f.near_misses.iter() {
        out.push(format!("closest: {}: {}", m.policy, m.reason));
    }
    out
}

fn ends(f: &Flow) -> (String, String, &'static str) {
    let (sp, dp) = f.ports().map_or((None, None), |(s, d)| (Some(s), Some(d)));
    let ip = f.ip.as_ref();
    let src = endpoint(&f.source, ip.map(|i| i.source), sp, &f.source_names);
    let dst = endpoint(&f.destination, ip.map(|i| i.destination), dp, &f.destination_names);
    match f.is_reply {
        None => (src, dst, "<>"),
        // Replies are printed from the connection's initiator, as Hubble does.
        Some(true) => (dst, src, "<-"),
        Some(false) => (src, dst, "->"),
    }
}

/// An agent's drift record: what changed behind its back, put right.
fn drift(f: &Flow, color: bool) -> Option<String> {
    let d = f.drift.as_ref()?;
    let ms = d.repair_ns as f64 / 1e6;
    Some(format!("{} {}: {} (put right in {ms:.1} ms)", paint("DRIFT", "35", color), d.kind, d.what))
}

/// One compact line (plus indented lines naming the deciding policies).
pub(super) fn compact(f: &Flow, color: bool) -> String {
    if let Some(d) = drift(f, color) {
        return format!("{}: {d}", f.time.stamp_milli());
    }
    let (a, b, arrow) = ends(f);
    let count = if f.count > 1 { format!(" ×{}", f.count) } else { String::new() };
    let mut s = format!(
        "{}: {a} {arrow} {b} {} {}{count} ({})",
        f.time.stamp_milli(),
        flow_type(f),
        verdict(f, color),
        summary(f)
    );
    for x in extras(f) {
        s.push_str("\n    ");
        s.push_str(&paint(&x, "2", color));
    }
    s
}

fn table_header() -> String {
    format!("{:<19}  {:<44}  {:<44}  {:<30}  {:<10}  SUMMARY", "TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT")
}

/// One table row.
pub(super) fn table_row(f: &Flow, color: bool) -> String {
    if let Some(d) = drift(f, color) {
        return format!("{:<19}  {d}", f.time.stamp_milli());
    }
    let (a, b, _) = ends(f);
    let v = verdict(f, false);
    let pad = 10usize.saturating_sub(v.chars().count());
    let v = format!("{}{}", verdict(f, color), " ".repeat(pad));
    let mut summary = summary(f);
    let x = extras(f);
    if !x.is_empty() {
        summary = format!("{summary}; {}", x.join("; "));
    }
    format!("{:<19}  {a:<44}  {b:<44}  {:<30}  {v}  {summary}", f.time.stamp_milli(), flow_type(f))
}
