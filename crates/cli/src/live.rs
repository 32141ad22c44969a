//! Commands that talk to a running agent: apply, delete, endpoint,
//! identity, policy get, status, observe, audit.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulkhead_api::client::{Client, ClientError};
use bulkhead_api::{
    ApplyRequest, ApplyResponse, AuditRequest, AuditScope, AuditSettings, EndpointInfo, IdentityInfo, PolicyDump,
    SourceFile, Status,
};
use clap::{Args, Subcommand, ValueEnum};

use crate::inputs;

/// How to reach the agent.
#[derive(Debug, Clone, Args)]
pub struct AgentAddr {
    /// The agent's API socket.
    #[arg(long, value_name = "PATH", env = "BULKHEAD_SOCKET", default_value = bulkhead_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl AgentAddr {
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }
}

/// An agent error with every diagnostic behind it, one per line.
pub fn with_details(e: ClientError) -> anyhow::Error {
    match &e {
        ClientError::Refused { body, .. } if !body.details.is_empty() => {
            anyhow::anyhow!("{}\n{}", body.details.join("\n"), body.error)
        }
        _ => anyhow::Error::new(e),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    /// Aligned columns.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextOutput {
    /// Human-readable text.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files or directories (recursed; .yaml, .yml, .json); `-` reads stdin.
    /// Namespaces, Pods, CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies, NetworkPolicies.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none (like kubectl -n).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Validate and report what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = TextOutput::Text)]
    pub output: TextOutput,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Every local endpoint: pod, identity, addresses, enforcement, state.
    List(ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum FqdnCommand {
    /// The names this node learnt from DNS answers its proxy allowed.
    #[command(subcommand)]
    Cache(FqdnCacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum FqdnCacheCommand {
    /// Every learnt (name, address): when it expires, the identity it has,
    /// the endpoints that looked it up. toFQDNs selectors select these.
    ///
    /// Example: bulkhead fqdn cache list --endpoint production/payment-processor
    List(FqdnListArgs),
}

#[derive(Debug, Args)]
pub struct FqdnListArgs {
    /// Only what this endpoint (NAMESPACE/POD) looked up.
    #[arg(long, value_name = "NAMESPACE/POD")]
    pub endpoint: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Every identity with its labels and the pods that have it.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Args)]
pub struct PolicyGetArgs {
    /// The endpoint: NAMESPACE/POD, an endpoint id, or a container id.
    pub endpoint: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = TextOutput::Text)]
    pub output: TextOutput,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditMode {
    /// Would-be drops pass and are reported with verdict AUDIT.
    On,
    /// Enforce.
    Off,
    /// Remove this scope's setting: the wider scope decides.
    Inherit,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The mode.
    #[arg(value_enum)]
    pub mode: AuditMode,
    /// Only this namespace.
    #[arg(short = 'n', long, conflicts_with = "endpoint")]
    pub namespace: Option<String>,
    /// Only this endpoint (NAMESPACE/POD).
    #[arg(long, value_name = "NS/POD")]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub agent: AgentAddr,
}

pub fn apply(a: ApplyArgs, delete: bool) -> Result<ExitCode> {
    let files = inputs::read(&a.files)?.into_iter().map(|(name, text)| SourceFile { name, text }).collect::<Vec<_>>();
    let req = ApplyRequest { files, namespace: a.namespace, dry_run: a.dry_run };
    let path = if delete { "/delete" } else { "/apply" };
    let resp: ApplyResponse = a.agent.client().post(path, &req).map_err(with_details)?;
    if a.output == TextOutput::Json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print!("{}", render_apply(&resp, a.dry_run));
    }
    Ok(if resp.enforcement.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn render_apply(r: &ApplyResponse, dry_run: bool) -> String {
    let mut s = String::new();
    let suffix = if dry_run { " (dry run)" } else { "" };
    for w in &r.warnings {
        let _ = writeln!(s, "{w}");
    }
    for (list, verb) in [
        (&r.created, "created"),
        (&r.configured, "configured"),
        (&r.unchanged, "unchanged"),
        (&r.deleted, "deleted"),
        (&r.not_found, "not found"),
    ] {
        for o in list {
            let _ = writeln!(s, "{o} {verb}{suffix}");
        }
    }
    let e = &r.enforcement;
    if !dry_run && (e.endpoints_updated > 0 || e.slots_written > 0) {
        let _ = writeln!(
            s,
            "enforced: {} endpoint(s) updated, {} policy slot(s) with {} map entries written, in {:.1} ms",
            e.endpoints_updated,
            e.slots_written,
            e.entries_written,
            e.elapsed_us as f64 / 1000.0
        );
    }
    for f in &e.failed {
        let _ = writeln!(s, "error: {}: {}", f.endpoint, f.summary());
    }
    for n in &r.not_enforced {
        let _ = writeln!(s, "not enforced yet: {n}");
    }
    s
}

pub fn endpoints(a: ListArgs) -> Result<ExitCode> {
    let eps: Vec<EndpointInfo> = a.agent.client().get("/endpoints").map_err(with_details)?;
    if a.output == ListOutput::Json {
        println!("{}", serde_json::to_string_pretty(&eps)?);
        return Ok(ExitCode::SUCCESS);
    }
    let on = |b: bool| if b { "Enabled" } else { "Disabled" };
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.pod.clone(),
                e.identity.to_string(),
                on(e.ingress_enforced).into(),
                on(e.egress_enforced).into(),
                if e.audit { "on".into() } else { "off".into() },
                e.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                e.host_if.clone(),
                e.state.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ENDPOINT", "POD", "IDENTITY", "INGRESS", "EGRESS", "AUDIT", "IPS", "INTERFACE", "STATE"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn identities(a: ListArgs) -> Result<ExitCode> {
    let ids: Vec<IdentityInfo> = a.agent.client().get("/identities").map_err(with_details)?;
    if a.output == ListOutput::Json {
        println!("{}", serde_json::to_string_pretty(&ids)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = ids
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                if i.pods.is_empty() { "-".into() } else { i.pods.join(",") },
                short_labels(&i.labels),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "PODS", "LABELS"], &rows));
    Ok(ExitCode::SUCCESS)
}

/// What a running agent (at `BULKHEAD_SOCKET` or the default socket) has
/// learnt about `name`, for `policy trace --to-fqdn`: nothing when no agent
/// answers.
pub fn fqdn_notes(name: &str) -> Vec<String> {
    let socket =
        std::env::var_os("BULKHEAD_SOCKET").map_or_else(|| PathBuf::from(bulkhead_api::DEFAULT_SOCKET), PathBuf::from);
    let client = Client::new(&socket).with_timeout(std::time::Duration::from_secs(1));
    let Ok(rows) = client.get::<Vec<bulkhead_api::FqdnCacheEntry>>("/fqdn/cache") else { return Vec::new() };
    let want = bulkhead_policy::l7::normalize_name(name);
    let known: Vec<String> = rows
        .iter()
        .filter(|r| r.name == want)
        .map(|r| {
            let left = seconds_left(r.expires).map_or_else(|| "expired, in use".into(), |s| format!("expires in {s}s"));
            format!("{} (identity {}, {left}, looked up by {})", r.addr, r.identity, r.endpoints.join(", "))
        })
        .collect();
    if known.is_empty() {
        vec![format!(
            "the agent at {} has learnt no address for {want}: until a pod's lookup passes the DNS proxy, its addresses are world's",
            socket.display()
        )]
    } else {
        vec![format!("the agent at {} has learnt {want}: {}", socket.display(), known.join("; "))]
    }
}

/// Seconds until unix second `expires` (`None`: past; a learnt address
/// then stays only while a connection uses it).
fn seconds_left(expires: u64) -> Option<u64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    expires.checked_sub(now)
}

pub fn fqdn_cache(a: FqdnListArgs) -> Result<ExitCode> {
    let q = a.endpoint.as_ref().map(|e| format!("?endpoint={}", urlencode(e))).unwrap_or_default();
    let rows: Vec<bulkhead_api::FqdnCacheEntry> =
        a.agent.client().get(&format!("/fqdn/cache{q}")).map_err(with_details)?;
    if a.output == ListOutput::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.addr.to_string(),
                seconds_left(r.expires).map_or_else(|| "expired, in use".into(), |s| format!("in {s}s")),
                r.identity.to_string(),
                r.endpoints.join(","),
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("no names learnt (they come from DNS answers the proxy allows under a DNS rule)");
    }
    print!("{}", table(&["NAME", "ADDRESS", "EXPIRES", "IDENTITY", "ENDPOINTS"], &rows));
    Ok(ExitCode::SUCCESS)
}

pub fn policy_get(a: PolicyGetArgs) -> Result<ExitCode> {
    let q = format!("/policy?endpoint={}", urlencode(&a.endpoint));
    let d: PolicyDump = a.agent.client().get(&q).map_err(with_details)?;
    if a.output == ListOutput::Json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("endpoint {} (identity {}), entries as the kernel holds them:", d.endpoint, d.identity);
    for (name, dir) in [("INGRESS", &d.ingress), ("EGRESS", &d.egress)] {
        println!();
        println!(
            "{name} (slot {}): {}",
            dir.slot,
            if dir.default_deny { "default deny" } else { "no policy selects this direction: all allowed" }
        );
        let rows: Vec<Vec<String>> = dir
            .entries
            .iter()
            .map(|e| {
                let peer = e.peer.clone().unwrap_or_else(|| "any".into());
                let port = match (e.protocol.as_str(), e.port, e.end_port) {
                    ("ANY", _, _) | (_, 0, 65535) => "*".to_string(),
                    (_, lo, hi) if lo == hi => lo.to_string(),
                    (_, lo, hi) => format!("{lo}-{hi}"),
                };
                vec![
                    e.verdict.clone(),
                    e.level.clone(),
                    peer,
                    e.protocol.clone(),
                    port,
                    e.rules.join("; "),
                    short_labels(&e.peer_labels),
                ]
            })
            .collect();
        print!("{}", table(&["VERDICT", "LEVEL", "PEER", "PROTO", "PORT", "RULES", "PEER LABELS"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead ui`.
pub fn ui(a: StatusArgs) -> Result<ExitCode> {
    let u: bulkhead_api::UiAddress = a.agent.client().get("/ui").map_err(with_details)?;
    if a.output == TextOutput::Json {
        println!("{}", serde_json::to_string_pretty(&u)?);
    } else {
        println!("{}", u.url);
        eprintln!(
            "Open it in a browser on this machine (or through an SSH tunnel). The token in it lets the \n\
             browser read flows until the agent restarts: keep it as private as the API socket."
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let s: Status = a.agent.client().get("/status").map_err(with_details)?;
    if a.output == TextOutput::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render_status(&s, &a.agent.socket));
    }
    Ok(if s.healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn render_status(s: &Status, socket: &std::path::Path) -> String {
    let mut o = String::new();
    let c = &s.counts;
    let _ = writeln!(
        o,
        "agent:      {} (pid {}, version {}, up {} s)",
        if s.healthy { "Ok" } else { "Failing" },
        s.pid,
        s.version,
        s.uptime_s
    );
    let _ = writeln!(o, "socket:     {}", socket.display());
    let _ = writeln!(o, "state:      {}", s.state_dir);
    let _ = writeln!(o, "pins:       {}", s.pin_dir);
    let _ = writeln!(o, "node netns: {}", s.node_netns);
    let _ = writeln!(o, "objects:    {} policies, {} namespaces, {} pods", c.policies, c.namespaces, c.pods);
    let _ =
        writeln!(o, "endpoints:  {} ({} not ready), {} identities", c.endpoints, s.endpoints_not_ready, c.identities);
    let _ = writeln!(
        o,
        "kernel:     {} ipcache prefixes, {} policy slots, {} conntrack entries",
        c.ipcache, c.policy_slots, c.conntrack
    );
    let _ = writeln!(o, "audit:      {}", render_audit(&s.audit));
    let p = &s.protection;
    let _ = match p.mode.as_str() {
        "bpf-lsm" => writeln!(
            o,
            "protection: BPF LSM guard: other processes refused writable maps, programs and links ({} refused)",
            p.refused
        ),
        _ => writeln!(o, "protection: none — {}", p.reason),
    };
    let _ = writeln!(o, "drift:      {} differences put right (removed pins, tampered map entries)", p.repaired);
    let _ = writeln!(o, "forwarded:  {} packets", s.forwarded);
    if s.drops.is_empty() {
        let _ = writeln!(o, "drops:      none");
    }
    for (k, n) in &s.drops {
        let _ = writeln!(o, "drops:      {n} {k}");
    }
    let f = &s.flows;
    let _ = writeln!(
        o,
        "flows:      {} seen, {} kept for observe ({} of {} MiB)",
        f.seen,
        f.buffered,
        f.buffer_bytes >> 20,
        f.buffer_max_bytes >> 20
    );
    let _ = writeln!(
        o,
        "lost:       {} in the kernel ring, {} L7 events from the proxy, {} not logged ({} old flows evicted from the buffer)",
        f.lost.datapath_ring, f.lost.l7_proxy, f.lost.flow_log, f.evicted
    );
    if !f.log_dir.is_empty() {
        let _ = writeln!(o, "flow log:   {} ({} records, signed up to {})", f.log_dir, f.log_written, f.log_checkpoint);
    }
    if let Some(e) = &f.log_error {
        let _ = writeln!(o, "flow log:   STOPPED: {e}");
    }
    if !f.web.is_empty() {
        let _ = writeln!(o, "web:        {}metrics; the service map: bulkhead ui", f.web);
    }
    for p in s.programs.iter().filter(|p| p.run_count > 0) {
        let _ = writeln!(
            o,
            "program:    {} {:.0} ns per packet over {} packets",
            p.name,
            p.run_time_ns as f64 / p.run_count as f64,
            p.run_count
        );
    }
    o
}

fn render_audit(a: &AuditSettings) -> String {
    let mut parts = vec![format!("global {}", if a.global { "on" } else { "off" })];
    parts.extend(a.namespaces.iter().map(|(n, v)| format!("namespace {n} {}", if *v { "on" } else { "off" })));
    parts.extend(a.endpoints.iter().map(|(n, v)| format!("endpoint {n} {}", if *v { "on" } else { "off" })));
    parts.join(", ")
}

pub fn audit(a: AuditArgs) -> Result<ExitCode> {
    let scope = match (&a.namespace, &a.endpoint) {
        (Some(n), _) => AuditScope::Namespace(n.clone()),
        (_, Some(e)) => AuditScope::Endpoint(e.clone()),
        _ => AuditScope::Global,
    };
    let enabled = match a.mode {
        AuditMode::On => Some(true),
        AuditMode::Off => Some(false),
        AuditMode::Inherit => None,
    };
    let s: AuditSettings = a.agent.client().put("/audit", &AuditRequest { scope, enabled }).map_err(with_details)?;
    println!("audit: {}", render_audit(&s));
    Ok(ExitCode::SUCCESS)
}

/// Labels for a table: without the namespace-label and cluster copies
/// Cilium adds (`io.cilium.k8s.*`; `-o json` has them all).
fn short_labels(labels: &[String]) -> String {
    labels.iter().filter(|l| !l.contains(":io.cilium.k8s.")).cloned().collect::<Vec<_>>().join(" ")
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let mut s = String::new();
    let line = |cells: Vec<&str>, s: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<width$}  ", width = w[i]);
            }
        }
        s.push('\n');
    };
    line(header.to_vec(), &mut s);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut s);
    }
    s
}

/// Percent-encodes a query value.
pub fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
