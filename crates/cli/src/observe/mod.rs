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
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bulkhead_api::{FlowsPage, FlowsRequest};
use bulkhead_flow::Filters;
use bulkhead_flow::model::{Flow, decode_json};
use clap::{ArgMatches, Args, ValueEnum};

use crate::live::{AgentAddr, with_details};

mod filters;
mod render;

use filters::filters;
use filters::now;
use render::Printer;

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
