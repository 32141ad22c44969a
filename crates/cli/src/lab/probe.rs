//! `lab probe`: real probes between every pod pair, beside what the
//! policies say (the agent's engine), with every difference marked, and
//! the kernel's own account of why (its events) grouped by policy.
//!
//! A cell is `allowed` when every address family got through and `denied`
//! when none did; a pod pair whose families disagree is a difference. On
//! an `l7` cell the probe is an HTTP `GET /` (a DNS query on UDP, and on
//! TCP port 53), which the L7 proxy decides: the cell is `l7-denied` when
//! the proxy answered 403 (REFUSED) and `l7-allowed` when the request
//! reached the server; a connection that does not get through is a
//! difference (L3/L4 allows it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use bulkhead_api::client::Client;
use bulkhead_api::{FlowsPage, FlowsRequest};
use bulkhead_datapath::netns;
use bulkhead_flow::filter::EventTypeFilter;
use bulkhead_flow::model::{Flow, TrafficDirection, Verdict};
use bulkhead_flow::{Filters, FlowFilter, Timestamp};
use bulkhead_lab::probe::{Outcome, Probe, probe_from};
use bulkhead_policy::reach::{ProbePort, Reach, ReachMatrix};
use bulkhead_policy::repository::Proto;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::LabState;
use crate::live::{urlencode, with_details};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeOutput {
    /// One grid per port, then the differences and the reasons.
    Table,
    /// The `policy reach` shape with observed `verdicts`, plus `expected` and `differences`.
    Json,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Ports to probe, comma-separated (default: every container port in the cluster).
    #[arg(long, value_name = "80/TCP,53/UDP", value_delimiter = ',')]
    pub ports: Vec<String>,
    /// How long a probe waits for an answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 400)]
    pub timeout_ms: u64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ProbeOutput::Table)]
    pub output: ProbeOutput,
    /// Probe one name instead of the matrix: resolve it from this pod
    /// (NAMESPACE/POD) through the pod's resolver, as the pod would, then
    /// connect to each address on --ports.
    ///
    /// Example: bulkhead lab probe --from production/payment-processor --to-name api.stripe.com --ports 443/TCP
    #[arg(long, value_name = "NAMESPACE/POD", requires = "to_name")]
    pub from: Option<String>,
    /// The name to resolve and probe (with --from).
    #[arg(long, value_name = "NAME", requires = "from")]
    pub to_name: Option<String>,
}

/// What probing one name saw.
#[derive(Debug, Serialize)]
struct NameProbe {
    from: String,
    name: String,
    /// Per query type (A, AAAA): the rcode, or the error.
    answers: BTreeMap<String, String>,
    /// Per address and port: reached, dropped, or an L7 outcome.
    results: Vec<NameResult>,
}

#[derive(Debug, Serialize)]
struct NameResult {
    addr: IpAddr,
    port: String,
    outcome: Outcome,
}

/// `--from POD --to-name NAME`: resolve through the pod's resolver, then
/// probe every address on every port.
fn probe_name(st: &LabState, from: &str, name: &str, a: &ProbeArgs) -> Result<ExitCode> {
    use bulkhead_lab::dns::{RecordType, Transport, resolve};
    let pod = st.pod(from)?;
    let Some(server) = st.dns else { bail!("lab `{}` has no DNS", st.name) };
    let ports: Vec<ProbePort> = if a.ports.is_empty() {
        vec![ProbePort { proto: Proto::Tcp, port: 80 }]
    } else {
        a.ports
            .iter()
            .map(|p| ProbePort::parse(p).map_err(|e| anyhow::anyhow!("--ports {p}: {e}")))
            .collect::<Result<_>>()?
    };
    let timeout = Duration::from_millis(a.timeout_ms.max(1000));
    let ns = netns::named(&pod.netns);
    let mut answers = BTreeMap::new();
    let mut addrs = Vec::new();
    for qtype in [RecordType::A, RecordType::AAAA] {
        let got = netns::run_in(&ns, || {
            resolve(std::net::SocketAddr::new(server, 53), name, qtype, Transport::Udp, timeout)
        })?;
        match got {
            Ok(ans) => {
                answers.insert(qtype.to_string(), ans.rcode.to_string());
                addrs.extend(ans.addrs);
            }
            Err(e) => {
                answers.insert(qtype.to_string(), format!("no answer ({e})"));
            }
        }
    }
    let probes: Vec<Probe> = addrs
        .iter()
        .flat_map(|d| ports.iter().map(|p| Probe { dst: *d, proto: p.proto, port: p.port, l7: false }))
        .collect();
    let outcomes = probe_from(&ns, &probes, Duration::from_millis(a.timeout_ms), 4)?;
    let results: Vec<NameResult> = probes
        .iter()
        .zip(outcomes)
        .map(|(p, outcome)| NameResult { addr: p.dst, port: format!("{}/{}", p.port, p.proto.as_str()), outcome })
        .collect();
    let report = NameProbe { from: from.into(), name: name.into(), answers, results };
    if a.output == ProbeOutput::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let asked: Vec<String> = report.answers.iter().map(|(t, r)| format!("{t} {r}")).collect();
        println!("{from} resolves {name} through {server}: {}", asked.join(", "));
        for r in &report.results {
            let what = match &r.outcome {
                Outcome::Reached => "reached".to_string(),
                Outcome::Dropped => "dropped".to_string(),
                other => format!("{other:?}"),
            };
            println!("  {} {} -> {what}", r.addr, r.port);
        }
        if report.results.is_empty() {
            println!("  no address to probe");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `grid[from][to][port]`.
type Grid<T> = BTreeMap<String, BTreeMap<String, BTreeMap<String, T>>>;

/// One observed cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Seen {
    Allowed,
    Denied,
    /// The L7 rules let the probe's request through.
    L7Allowed,
    /// The L7 rules denied the probe's request (403).
    L7Denied,
    /// Address families disagreed.
    Mixed,
    /// Not probed (a pod to itself, or a protocol the lab cannot send).
    Skipped,
}

#[derive(Debug, Serialize)]
struct Difference {
    from: String,
    to: String,
    port: String,
    expected: Reach,
    observed: Seen,
    /// Per family: `198.18.1.10 -> 198.18.1.20: reached`.
    detail: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    ports: Vec<String>,
    pods: Vec<String>,
    verdicts: Grid<Seen>,
    expected: Grid<Reach>,
    differences: Vec<Difference>,
    /// What the kernel reported for the probes, grouped: verdict, reason,
    /// direction and rules, with the probes each covers.
    reasons: Vec<ReasonGroup>,
    probes: usize,
}

#[derive(Serialize)]
struct ReasonGroup {
    /// The endpoint whose policy decided (the source for egress, the destination for ingress).
    endpoint: String,
    verdict: String,
    drop_reason_desc: Option<String>,
    traffic_direction: String,
    policies: Vec<String>,
    probes: Vec<String>,
}

struct Sent {
    from: String,
    to: String,
    port: String,
    src: IpAddr,
    dst: IpAddr,
    probe: Probe,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The rcode the DNS proxy answers a denied query with (by default).
const DNS_REFUSED: u8 = 5;

pub fn run(name: &str, a: ProbeArgs) -> Result<ExitCode> {
    let st = LabState::require(name)?;
    if let (Some(from), Some(to)) = (&a.from, &a.to_name) {
        return probe_name(&st, from, to, &a);
    }
    let client = Client::new(&st.socket);
    let q = a.ports.iter().map(|p| urlencode(p)).collect::<Vec<_>>().join(",");
    let expected: ReachMatrix = client.get(&format!("/reach?ports={q}")).map_err(with_details)?;
    let pods: Vec<String> = expected.pods.iter().filter(|k| st.pods.iter().any(|p| &p.key == *k)).cloned().collect();
    if pods.len() < 2 {
        bail!("the lab has fewer than two pods; nothing to probe");
    }
    let ports: Vec<(String, ProbePort)> = expected
        .ports
        .iter()
        .map(|l| ProbePort::parse(l).map(|p| (l.clone(), p)).map_err(|e| anyhow::anyhow!(e)))
        .collect::<Result<_>>()?;

    let l7 = |from: &str, to: &str, label: &str| {
        expected.verdicts.get(from).and_then(|r| r.get(to)).and_then(|c| c.get(label)) == Some(&Reach::L7)
    };
    // What to send, per source pod.
    let mut sent: BTreeMap<String, Vec<Sent>> = BTreeMap::new();
    for from in &pods {
        let src = st.pod(from)?;
        for to in pods.iter().filter(|t| *t != from) {
            let dst = st.pod(to)?;
            for (label, p) in &ports {
                for (s, d) in src.ips.iter().zip(&dst.ips).filter(|(s, d)| s.is_ipv4() == d.is_ipv4()) {
                    let proto = match (p.proto, d) {
                        (Proto::Icmp, IpAddr::V6(_)) | (Proto::Icmpv6, IpAddr::V4(_)) | (Proto::Sctp, _) => continue,
                        (pr, _) => pr,
                    };
                    sent.entry(from.clone()).or_default().push(Sent {
                        from: from.clone(),
                        to: to.clone(),
                        port: label.clone(),
                        src: *s,
                        dst: *d,
                        probe: Probe { dst: *d, proto, port: p.port, l7: l7(from, to, label) },
                    });
                }
            }
        }
    }
    let total: usize = sent.values().map(Vec::len).sum();
    if a.output == ProbeOutput::Table {
        eprintln!("probing: {total} probes between {} pods on {} port(s)…", pods.len(), ports.len());
    }
    let since = now_ns();
    let timeout = Duration::from_millis(a.timeout_ms);
    let results: Vec<(&Sent, Outcome)> = std::thread::scope(|sc| {
        let handles: Vec<_> = sent
            .iter()
            .map(|(from, list)| {
                let ns =
                    netns::named(&st.pods.iter().find(|p| &p.key == from).map(|p| p.netns.clone()).unwrap_or_default());
                sc.spawn(move || {
                    let probes: Vec<Probe> = list.iter().map(|s| s.probe).collect();
                    let got = probe_from(&ns, &probes, timeout, 16)?;
                    Ok::<_, std::io::Error>(list.iter().zip(got).collect::<Vec<_>>())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))?.map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    // The kernel's verdicts of this run: drops and first-packet verdicts,
    // at most a few per probe.
    let decisions = ["drop", "policy-verdict"].map(|t| EventTypeFilter::parse(t).expect("a known event type"));
    let req = FlowsRequest {
        filters: Filters {
            allow: vec![FlowFilter { event_type: decisions.to_vec(), ..FlowFilter::default() }],
            since: Some(Timestamp::from_nanos(since)),
            ..Filters::default()
        },
        last: total * 6 + 64,
        ..FlowsRequest::default()
    };
    let page: FlowsPage = client.post("/flows", &req).map_err(with_details)?;
    let events: Vec<&Flow> = page.flows.iter().map(|f| &**f).collect();

    // (from, to, port) → each family's probe and what it saw.
    type Cells<'a> = BTreeMap<(String, String, String), Vec<(&'a Sent, Seen)>>;
    let mut by_cell: Cells = BTreeMap::new();
    for (s, outcome) in &results {
        let seen = match outcome {
            Outcome::Reached => Seen::Allowed,
            Outcome::Dropped => Seen::Denied,
            // The proxy's answer to a denied request or query.
            Outcome::Http(403) | Outcome::Dns(DNS_REFUSED) => Seen::L7Denied,
            Outcome::Http(_) | Outcome::Dns(_) => Seen::L7Allowed,
            Outcome::Error(e) => bail!("probe {} -> {} {}: {e}", s.from, s.to, s.port),
        };
        by_cell.entry((s.from.clone(), s.to.clone(), s.port.clone())).or_default().push((s, seen));
    }
    let mut verdicts: Grid<Seen> = BTreeMap::new();
    let mut differences = Vec::new();
    for from in &pods {
        for to in &pods {
            for (label, _) in &ports {
                let cell = by_cell.get(&(from.clone(), to.clone(), label.clone()));
                let seen = match cell.map(Vec::as_slice) {
                    None | Some([]) => Seen::Skipped,
                    Some([(_, first), rest @ ..]) if rest.iter().all(|(_, r)| r == first) => *first,
                    Some(_) => Seen::Mixed,
                };
                verdicts.entry(from.clone()).or_default().entry(to.clone()).or_default().insert(label.clone(), seen);
                let want = expected.verdicts.get(from).and_then(|r| r.get(to)).and_then(|c| c.get(label)).copied();
                let Some(want) = want else { continue };
                let ok = matches!(
                    (want, seen),
                    (_, Seen::Skipped)
                        | (Reach::Allowed, Seen::Allowed)
                        | (Reach::Denied, Seen::Denied)
                        | (Reach::L7, Seen::L7Allowed | Seen::L7Denied)
                );
                if !ok {
                    differences.push(Difference {
                        from: from.clone(),
                        to: to.clone(),
                        port: label.clone(),
                        expected: want,
                        observed: seen,
                        detail: cell
                            .map(|v| {
                                v.iter()
                                    .map(|(s, r)| {
                                        let what = match r {
                                            Seen::Allowed => "reached",
                                            Seen::Denied => "dropped",
                                            Seen::L7Allowed => "GET / or DNS query answered by the server",
                                            Seen::L7Denied => {
                                                "GET / or DNS query denied by the L7 proxy (403, REFUSED)"
                                            }
                                            Seen::Mixed | Seen::Skipped => "?",
                                        };
                                        format!("{} -> {}: {what}", s.src, s.dst)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                }
            }
        }
    }
    let reasons = group_reasons(&results, &events);
    let report = Report {
        ports: ports.iter().map(|(l, _)| l.clone()).collect(),
        pods: pods.clone(),
        verdicts,
        expected: expected.verdicts.clone(),
        differences,
        reasons,
        probes: total,
    };
    match a.output {
        ProbeOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ProbeOutput::Table => print!("{}", render(&report)),
    }
    Ok(if report.differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The flows that decided a probe: a drop if there was one, else the
/// first-packet verdicts (egress at the source, ingress at the destination).
fn deciding<'a>(s: &Sent, flows: &[&'a Flow]) -> Vec<&'a Flow> {
    let proto = match s.probe.proto {
        Proto::Icmp => "ICMPv4",
        p => p.as_str(),
    };
    let matches = |f: &&&Flow| {
        f.ip.as_ref().is_some_and(|ip| ip.source == s.src && ip.destination == s.dst)
            && f.is_reply != Some(true)
            && f.l4.as_ref().is_some_and(|l4| l4.name().eq_ignore_ascii_case(proto))
            && (matches!(s.probe.proto, Proto::Icmp | Proto::Icmpv6)
                || f.ports().is_some_and(|(_, d)| d == u32::from(s.probe.port)))
    };
    let mine: Vec<&Flow> = flows.iter().filter(matches).copied().collect();
    if let Some(d) = mine.iter().rev().find(|f| f.verdict == Verdict::Dropped) {
        return vec![*d];
    }
    let mut out: Vec<&Flow> = Vec::new();
    for dir in [TrafficDirection::Egress, TrafficDirection::Ingress] {
        if let Some(f) = mine.iter().rev().find(|f| f.traffic_direction == dir) {
            out.push(f);
        }
    }
    out
}

fn group_reasons(results: &[(&Sent, Outcome)], flows: &[&Flow]) -> Vec<ReasonGroup> {
    type Key = (String, String, Option<String>, String, Vec<String>);
    let mut groups: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for (s, _) in results {
        for f in deciding(s, flows) {
            let policies: Vec<String> = f.deciding_policies().map(ToString::to_string).collect();
            let reason = (!f.drop_reason_desc.is_zero()).then(|| f.drop_reason_desc.name().into_owned());
            // Default allow is the same story for every pod; name none.
            let endpoint = match (f.traffic_direction, policies.is_empty() && reason.is_none()) {
                (_, true) => String::new(),
                (TrafficDirection::Egress, _) => s.from.clone(),
                _ => s.to.clone(),
            };
            let key =
                (endpoint, f.verdict.as_str().to_string(), reason, f.traffic_direction.as_str().to_string(), policies);
            let label = format!("{} -> {} {}", s.from, s.to, s.port);
            let list = groups.entry(key).or_default();
            if list.last() != Some(&label) {
                list.push(label);
            }
        }
    }
    let mut v: Vec<ReasonGroup> = groups
        .into_iter()
        .map(|((endpoint, verdict, drop_reason_desc, traffic_direction, policies), mut probes)| {
            probes.dedup();
            ReasonGroup { endpoint, verdict, drop_reason_desc, traffic_direction, policies, probes }
        })
        .collect();
    v.sort_by(|a, b| (a.verdict != "DROPPED", &a.endpoint).cmp(&(b.verdict != "DROPPED", &b.endpoint)));
    v
}

fn render(r: &Report) -> String {
    let legend = "(. allowed   X dropped   7 L7 rules denied the probe's GET / (403)   + L7 rules allowed it   !x differs from the policy   - not probed)";
    let mut s = crate::explain::grids(&r.pods, &r.ports, legend, |from, to, port| {
        let seen = r.verdicts.get(from).and_then(|x| x.get(to)).and_then(|c| c.get(port)).copied();
        let want = r.expected.get(from).and_then(|x| x.get(to)).and_then(|c| c.get(port)).copied();
        let differs = r.differences.iter().any(|d| d.from == from && d.to == to && d.port == port);
        match (seen, want) {
            (Some(Seen::Skipped) | None, _) if from == to => ".",
            (Some(Seen::Skipped) | None, _) => "-",
            (Some(Seen::L7Denied), _) if !differs => "7",
            (Some(Seen::L7Allowed), _) if !differs => "+",
            (Some(Seen::Allowed), _) if !differs => ".",
            (Some(Seen::Denied), _) if !differs => "X",
            (Some(Seen::Allowed), _) => "!.",
            (Some(Seen::Denied), _) => "!X",
            (Some(Seen::L7Denied), _) => "!7",
            (Some(Seen::L7Allowed), _) => "!+",
            (Some(Seen::Mixed), _) => "!~",
        }
        .to_string()
    });
    if r.differences.is_empty() {
        let _ = writeln!(s, "{} probes: every one as the policies say.", r.probes);
    } else {
        let _ = writeln!(s, "{} probes, {} difference(s) from the policies:", r.probes, r.differences.len());
        for d in &r.differences {
            let _ = writeln!(
                s,
                "  {} -> {} {}: policy says {}, observed {} ({})",
                d.from,
                d.to,
                d.port,
                d.expected.as_str(),
                serde_json::to_value(d.observed).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                d.detail.join("; ")
            );
        }
    }
    let _ = writeln!(s, "\nwhy, as the kernel reported it:");
    for g in &r.reasons {
        let reason = g.drop_reason_desc.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
        let by = if g.policies.is_empty() {
            match g.drop_reason_desc.as_deref() {
                Some("POLICY_DENIED") => "no rule allows it (default deny)".to_string(),
                None => "(no policy selects this direction)".to_string(),
                Some(_) => String::new(),
            }
        } else {
            format!("by {}", g.policies.join("; "))
        };
        let shown: Vec<&String> = g.probes.iter().take(4).collect();
        let more = g.probes.len().saturating_sub(shown.len());
        let at = if g.endpoint.is_empty() {
            g.traffic_direction.clone()
        } else {
            format!("{} of {}", g.traffic_direction, g.endpoint)
        };
        let _ = writeln!(
            s,
            "  {}{reason} at {at} {by}: {}{}",
            g.verdict,
            shown.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }
    s
}
