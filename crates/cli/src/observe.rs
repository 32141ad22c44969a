//! `bulkhead observe`: flows from the agent (or from a file of exported
//! flows, ours or Hubble's), filtered as `hubble observe` filters them, in
//! compact, table or JSON form.
//!
//! Filters combine as Hubble's do: different flags must all match, repeats
//! of one flag are alternatives, `--pod`/`--ip`/`--label`/`--namespace`/
//! `--identity`/`--fqdn`/`--port` match either end, and `--not` turns the
//! next filter flag into an exclusion. Because `--not` depends on the
//! order of the flags, the filters are built from clap's argument indices.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bulkhead_api::{FlowsPage, FlowsRequest};
use bulkhead_flow::filter::EventTypeFilter;
use bulkhead_flow::model::{
    DropReason, Endpoint, Flow, FlowRecord, IpVersion, L7FlowType, Layer4, TcpFlags, TrafficDirection, Verdict,
    decode_json, event_types, policy_match_name,
};
use bulkhead_flow::{Filters, FlowFilter, Timestamp};
use clap::{ArgMatches, Args, ValueEnum};

use crate::live::{AgentAddr, with_details};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per flow, as `hubble observe` prints it.
    Compact,
    /// Columns: time, source, destination, type, verdict, summary.
    Table,
    /// One `{"flow":{…}}` object per line (Hubble's JSON; `--input-file` reads it back).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// On a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Filter flags, Hubble's names. Repeat a flag for alternatives.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Show the last N matching flows (default 20; with --since or
    /// --input-file, all of them; with --follow, none of the past).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Keep printing new flows as they arrive (Ctrl-C to stop).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Flows at or after this time: RFC 3339, or a duration ago (5m, 1h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Flows before this time: RFC 3339, or a duration ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Read flows from FILE instead of the agent: JSON lines (ours, or
    /// `hubble observe -o json` / Hubble exporter output; `-` for stdin), or
    /// a signed flow log (its directory or a segment file).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Compact)]
    pub output: Output,
    /// Colours in compact and table output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// Exclude flows matching the next filter flag (`--not --verdict FORWARDED`).
    #[arg(long, action = clap::ArgAction::Count, help_heading = "Filters")]
    pub not: u8,
    /// FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR.
    #[arg(long, value_name = "VERDICT", help_heading = "Filters")]
    pub verdict: Vec<String>,
    /// Flows from or to a pod: [NAMESPACE/]NAME-PREFIX, or NAMESPACE/ for all its pods.
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pub pod: Vec<String>,
    /// Flows from a pod.
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pub from_pod: Vec<String>,
    /// Flows to a pod.
    #[arg(long, value_name = "POD", help_heading = "Filters")]
    pub to_pod: Vec<String>,
    /// Flows from or to pods in a namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE", help_heading = "Filters")]
    pub namespace: Vec<String>,
    /// Flows from or to endpoints whose labels match a selector (`app=web,env in (a,b)`).
    #[arg(short = 'l', long, value_name = "SELECTOR", help_heading = "Filters")]
    pub label: Vec<String>,
    /// Flows from endpoints matching a label selector.
    #[arg(long, value_name = "SELECTOR", help_heading = "Filters")]
    pub from_label: Vec<String>,
    /// Flows to endpoints matching a label selector.
    #[arg(long, value_name = "SELECTOR", help_heading = "Filters")]
    pub to_label: Vec<String>,
    /// Flows from or to an address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    pub ip: Vec<String>,
    /// Flows from an address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    pub from_ip: Vec<String>,
    /// Flows to an address or CIDR.
    #[arg(long, value_name = "IP", help_heading = "Filters")]
    pub to_ip: Vec<String>,
    /// Flows from or to a security identity.
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub identity: Vec<u32>,
    /// Flows from a security identity.
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub from_identity: Vec<u32>,
    /// Flows to a security identity.
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub to_identity: Vec<u32>,
    /// Flows from or to a DNS name (`*` within a label: `*.example.com`).
    #[arg(long, value_name = "NAME", help_heading = "Filters")]
    pub fqdn: Vec<String>,
    /// Flows from a DNS name.
    #[arg(long, value_name = "NAME", help_heading = "Filters")]
    pub from_fqdn: Vec<String>,
    /// Flows to a DNS name.
    #[arg(long, value_name = "NAME", help_heading = "Filters")]
    pub to_fqdn: Vec<String>,
    /// Flows with this source or destination port.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    pub port: Vec<String>,
    /// Flows from this port.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    pub from_port: Vec<String>,
    /// Flows to this port.
    #[arg(long, value_name = "PORT", help_heading = "Filters")]
    pub to_port: Vec<String>,
    /// tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns, kafka.
    #[arg(long, value_name = "PROTOCOL", help_heading = "Filters")]
    pub protocol: Vec<String>,
    /// drop, policy-verdict, trace, l7 (also trace:to-endpoint, drop:POLICY_DENY, …).
    #[arg(short = 't', long = "type", value_name = "TYPE", help_heading = "Filters")]
    pub r#type: Vec<String>,
    /// ingress or egress.
    #[arg(long, value_name = "DIRECTION", help_heading = "Filters")]
    pub traffic_direction: Vec<String>,
    /// A drop reason (POLICY_DENIED, POLICY_DENY, …).
    #[arg(long, value_name = "REASON", help_heading = "Filters")]
    pub drop_reason: Vec<String>,
    /// HTTP status: a code (404) or a class (5+).
    #[arg(long, value_name = "STATUS", help_heading = "Filters")]
    pub http_status: Vec<String>,
    /// HTTP method.
    #[arg(long, value_name = "METHOD", help_heading = "Filters")]
    pub http_method: Vec<String>,
    /// HTTP path (a regular expression).
    #[arg(long, value_name = "REGEX", help_heading = "Filters")]
    pub http_path: Vec<String>,
    /// TCP flags a flow must have, comma-separated (SYN, SYN,ACK, FIN, RST…).
    #[arg(long, value_name = "FLAGS", help_heading = "Filters")]
    pub tcp_flags: Vec<String>,
    /// IP version: v4 or v6.
    #[arg(long, value_name = "VERSION", help_heading = "Filters")]
    pub ip_version: Vec<String>,
    /// Node name pattern (`*` wildcards).
    #[arg(long, value_name = "NAME", help_heading = "Filters")]
    pub node_name: Vec<String>,
    /// Only replies (true) or only non-replies (false).
    #[arg(long, value_name = "BOOL", help_heading = "Filters")]
    pub reply: Vec<bool>,
    /// Flow ids.
    #[arg(long, value_name = "UUID", help_heading = "Filters")]
    pub uuid: Vec<String>,

    #[command(flatten)]
    pub agent: AgentAddr,
}

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
pub fn filters(m: &ArgMatches, now: Timestamp, since: Option<&str>, until: Option<&str>) -> Result<Filters> {
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

fn now() -> Timestamp {
    Timestamp::from_nanos(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
    )
}

/// Runs `observe`; `m` are its argument matches (for `--not`).
pub fn run(a: ObserveArgs, m: &ArgMatches) -> Result<ExitCode> {
    let filters = filters(m, now(), a.since.as_deref(), a.until.as_deref())?;
    let color = match a.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut out = Printer { output: a.output, color, lines: 0, out: std::io::stdout().lock() };
    if let Some(path) = &a.input_file {
        return from_file(path, &filters, a.last, &mut out);
    }
    if a.follow && a.input_file.is_none() {
        return follow(&a, filters, &mut out);
    }
    let last = a.last.unwrap_or(if filters.since.is_some() { usize::MAX } else { 20 });
    let page: FlowsPage = a
        .agent
        .client()
        .post("/flows", &FlowsRequest { filters, last, after: None, wait_ms: 0 })
        .map_err(with_details)?;
    for f in &page.flows {
        if out.print(f).is_err() {
            break;
        }
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn follow(a: &ObserveArgs, filters: Filters, out: &mut Printer<'_>) -> Result<ExitCode> {
    let client = a.agent.client();
    let mut req = FlowsRequest { filters, last: a.last.unwrap_or(0), after: None, wait_ms: 0 };
    // The past first (the last N), then everything new.
    let page: FlowsPage = client.post("/flows", &req).map_err(with_details)?;
    for f in &page.flows {
        if out.print(f).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    out.flush()?;
    req.after = Some(page.next);
    req.last = usize::MAX;
    req.wait_ms = 1000;
    loop {
        let page: FlowsPage = client.post("/flows", &req).map_err(with_details)?;
        if page.missed > 0 {
            eprintln!(
                "warning: {} flows were overwritten before they could be read (raise the agent's --flow-buffer)",
                page.missed
            );
        }
        for f in &page.flows {
            if out.print(f).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        req.after = Some(page.next);
    }
}

/// Whether `path` is a flow log: its directory, or one of its segment files.
fn flow_log(path: &std::path::Path) -> Option<Vec<Vec<u8>>> {
    if path.is_dir() {
        let log = bulkhead_agent::observer::flowlog::read_log(path).ok()?;
        return Some(log.segments.into_iter().map(|(_, b)| b).collect());
    }
    let name = path.file_name()?.to_string_lossy();
    bulkhead_agent::observer::flowlog::segment_index(&name)?;
    std::fs::read(path).ok().map(|b| vec![b])
}

/// What `--last` keeps of a stream of flows: each printed as it comes, or
/// the newest N printed at the end.
struct Newest {
    keep: usize,
    kept: VecDeque<Flow>,
    /// The output went away (a closed pipe): stop.
    closed: bool,
}

impl Newest {
    fn new(last: Option<usize>) -> Self {
        Self { keep: last.unwrap_or(usize::MAX), kept: VecDeque::new(), closed: false }
    }

    fn offer(&mut self, f: Flow, out: &mut Printer<'_>) {
        if self.keep == usize::MAX {
            self.closed = self.closed || out.print(&f).is_err();
            return;
        }
        if self.kept.len() == self.keep {
            self.kept.pop_front();
        }
        self.kept.push_back(f);
    }

    fn finish(self, out: &mut Printer<'_>) -> Result<()> {
        for f in &self.kept {
            if self.closed || out.print(f).is_err() {
                break;
            }
        }
        out.finish()
    }
}

fn from_file(path: &PathBuf, filters: &Filters, last: Option<usize>, out: &mut Printer<'_>) -> Result<ExitCode> {
    let m = filters.compile().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut newest = Newest::new(last);
    let mut bad = 0usize;
    let what = if let Some(segments) = flow_log(path) {
        for seg in &segments {
            bulkhead_flow::log::read_flows(seg, |f| match f {
                Ok(f) if m.matches(&f) => newest.offer(f, out),
                Ok(_) => {}
                Err(_) => bad += 1,
            });
            if newest.closed {
                break;
            }
        }
        "record(s) did not decode (run `bulkhead flows verify` on the log)"
    } else {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?,
            ))
        };
        for (n, line) in reader.split(b'\n').enumerate() {
            let line = line.with_context(|| format!("{}: read error", path.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match decode_json(&line) {
                Ok(f) if m.matches(&f) => newest.offer(f, out),
                Ok(_) => {}
                Err(e) => {
                    bad += 1;
                    if bad <= 10 {
                        eprintln!("{}:{}: not a flow: {e}", path.display(), n + 1);
                    }
                }
            }
            if newest.closed {
                break;
            }
        }
        "line(s) were not flows"
    };
    newest.finish(out)?;
    if bad > 0 {
        eprintln!("{}: {bad} {what}", path.display());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

struct Printer<'a> {
    output: Output,
    color: bool,
    lines: usize,
    out: std::io::StdoutLock<'a>,
}

impl Printer<'_> {
    fn print(&mut self, f: &Flow) -> std::io::Result<()> {
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

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self) -> Result<()> {
        match self.flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn paint(s: &str, code: &str, on: bool) -> String {
    if on { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
}

/// `ns/pod:port (ID:n)`, or `ip:port (world)` outside the cluster.
fn endpoint(e: &Endpoint, ip: Option<std::net::IpAddr>, port: Option<u32>) -> String {
    let host = if !e.pod_name.is_empty() { e.pod() } else { ip.map_or_else(String::new, |ip| ip.to_string()) };
    let host = match (port, ip) {
        (Some(p), Some(std::net::IpAddr::V6(_))) if p != 0 && e.pod_name.is_empty() => format!("[{host}]:{p}"),
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
            let what = if l7.kind == L7FlowType::Response { "Answer" } else { "Query" };
            return format!("DNS {what} {} {}", d.query, d.qtypes.join(","));
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
    let src = endpoint(&f.source, ip.map(|i| i.source), sp);
    let dst = endpoint(&f.destination, ip.map(|i| i.destination), dp);
    match f.is_reply {
        None => (src, dst, "<>"),
        // Replies are printed from the connection's initiator, as Hubble does.
        Some(true) => (dst, src, "<-"),
        Some(false) => (src, dst, "->"),
    }
}

/// One compact line (plus indented lines naming the deciding policies).
pub fn compact(f: &Flow, color: bool) -> String {
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
pub fn table_row(f: &Flow, color: bool) -> String {
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
