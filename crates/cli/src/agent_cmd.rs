//! `bulkhead agent`: runs the node agent in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulkhead_datapath::sync::Overflow;
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyOverflow {
    /// Deny everything in that direction until a policy fits: a change
    /// meant to close something never leaves it open.
    FailClosed,
    /// Keep enforcing the previous policy (what a tightening change meant
    /// to close stays open meanwhile).
    KeepPrevious,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the agent keeps its state (applied objects, endpoints, audit settings).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bulkhead")]
    pub state_dir: PathBuf,
    /// The API socket (HTTP/JSON, mode 0600).
    #[arg(long, value_name = "PATH", env = "BULKHEAD_SOCKET", default_value = bulkhead_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The bpf filesystem directory for pinned programs, maps and links.
    #[arg(long, value_name = "DIR", default_value = bulkhead_datapath::Datapath::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
    /// The network namespace holding the host side of pod interfaces
    /// (default: the agent's own; `bulkhead lab` runs its node in one).
    #[arg(long, value_name = "PATH")]
    pub node_netns: Option<PathBuf>,
    /// Memory for recent flows that `observe` can look back over
    /// (`64Mi`, `512Ki`, or bytes); the oldest are overwritten first.
    #[arg(long, value_name = "SIZE", default_value = "64Mi", value_parser = parse_size)]
    pub flow_buffer: u64,
    /// The node's name in flows (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Where the signed flow log goes (default: STATE_DIR/flows).
    #[arg(long, value_name = "DIR")]
    pub flow_log_dir: Option<PathBuf>,
    /// Keep no flow log.
    #[arg(long, conflicts_with = "flow_log_dir")]
    pub no_flow_log: bool,
    /// Start a new flow-log segment past this size.
    #[arg(long, value_name = "SIZE", default_value = "64Mi", value_parser = parse_size)]
    pub flow_log_segment: u64,
    /// Delete the oldest segments while the log exceeds this.
    #[arg(long, value_name = "SIZE", default_value = "1Gi", value_parser = parse_size)]
    pub flow_log_max_size: u64,
    /// Delete segments last written longer ago than this (`7d`, `12h`).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub flow_log_max_age: std::time::Duration,
    /// Sign the flow log's chain (and fsync it) this often.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub flow_log_checkpoint: std::time::Duration,
    /// Serve Prometheus metrics (/metrics) and the service map (/) here.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9962", conflicts_with = "no_web")]
    pub web_listen: std::net::SocketAddr,
    /// Serve neither metrics nor the service map.
    #[arg(long)]
    pub no_web: bool,
    /// Entries one endpoint policy (per direction) may hold in the kernel
    /// (like Cilium's --bpf-policy-map-max); see --policy-overflow for what
    /// happens to a policy that needs more.
    #[arg(long, value_name = "N", default_value_t = bulkhead_datapath::abi::POLICY_SLOT_MAX_ENTRIES)]
    pub policy_map_max_entries: u32,
    /// What an endpoint's direction does while its new policy does not fit
    /// its map. Either way `apply` fails naming the endpoint, `endpoint list`
    /// shows it not-ready and bulkhead_policy_load_failures counts it.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = PolicyOverflow::FailClosed)]
    pub policy_overflow: PolicyOverflow,
    /// The L7 proxy's port: connections an L7 rule covers are handed to
    /// it (`bulkhead proxy --http-port`). 0: no proxy; they are dropped
    /// (PROXY_UNAVAILABLE), as they are while the proxy is not running.
    #[arg(long, value_name = "PORT", default_value_t = crate::proxy_cmd::DEFAULT_HTTP_PORT)]
    pub proxy_http_port: u16,
    /// The DNS proxy's port (UDP and TCP): queries a DNS rule covers are
    /// handed to it (`bulkhead proxy --dns-port`). 0: none; they are dropped.
    #[arg(long, value_name = "PORT", default_value_t = crate::proxy_cmd::DEFAULT_DNS_PORT)]
    pub proxy_dns_port: u16,
    /// The proxy's control socket: the agent sends it every endpoint's L7
    /// rules, and waits for it to take a change before `apply` returns.
    #[arg(long, value_name = "PATH", default_value = crate::proxy_cmd::DEFAULT_CONTROL)]
    pub proxy_control: PathBuf,
    /// The shortest time, in seconds, an address learnt from a DNS answer
    /// is kept (a shorter TTL counts as this); past its TTL it still stays
    /// while a connection to it is open.
    #[arg(long, value_name = "SECONDS", default_value_t = bulkhead_agent::fqdn::DEFAULT_MIN_TTL)]
    pub tofqdns_min_ttl: u32,
    /// Addresses kept per DNS name at most; a new one pushes out the one
    /// expiring first.
    #[arg(long, value_name = "N", default_value_t = bulkhead_agent::fqdn::DEFAULT_MAX_PER_NAME)]
    pub tofqdns_endpoint_max_ip_per_hostname: usize,
    /// (name, address) pairs learnt from DNS answers kept on the node at
    /// most; past it the pairs expiring first go.
    #[arg(long, value_name = "N", default_value_t = bulkhead_agent::fqdn::DEFAULT_MAX_TOTAL)]
    pub tofqdns_max_addresses: usize,
    /// An organisation's rules for policies (`bulkhead.io/v1alpha1
    /// Guardrails`, as `policy lint --guardrails` reads them): an apply that
    /// would break one more of them is refused with the findings, and
    /// nothing changes. Read once at start; an invalid file stops the agent.
    #[arg(long, value_name = "FILE")]
    pub guardrails: Option<PathBuf>,
    /// Log filter (tracing's syntax: info, debug, bulkhead_agent=debug, …).
    #[arg(long, value_name = "FILTER", env = "BULKHEAD_LOG", default_value = "info")]
    pub log: String,
}

/// Logs to stderr with tracing's filter syntax.
pub fn init_logging(filter: &str) -> Result<()> {
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("--log {filter}: {e} (try info or debug)"))?;
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

pub fn run(a: AgentArgs) -> Result<ExitCode> {
    init_logging(&a.log)?;
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the agent loads eBPF programs and must run as root");
    }
    let flow_log = (!a.no_flow_log).then(|| bulkhead_agent::observer::flowlog::FlowLogConfig {
        dir: a.flow_log_dir.clone().unwrap_or_else(|| a.state_dir.join("flows")),
        segment_bytes: a.flow_log_segment,
        max_bytes: a.flow_log_max_size,
        max_age: a.flow_log_max_age,
        checkpoint_every: a.flow_log_checkpoint,
    });
    let guardrails = match &a.guardrails {
        Some(path) => crate::inputs::load_guardrails(path)?,
        None => Vec::new(),
    };
    let node_name = a.node_name.unwrap_or_else(|| {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "node".into())
    });
    bulkhead_agent::run(bulkhead_agent::Config {
        state_dir: a.state_dir,
        socket: a.socket,
        pin_root: a.pin_root,
        node_netns: a.node_netns,
        flow_buffer_bytes: usize::try_from(a.flow_buffer).unwrap_or(usize::MAX),
        node_name,
        flow_log,
        web_listen: (!a.no_web).then_some(a.web_listen),
        policy_map_entries: a.policy_map_max_entries,
        proxy: (a.proxy_http_port != 0 || a.proxy_dns_port != 0).then_some(bulkhead_agent::config::ProxyConfig {
            http_port: a.proxy_http_port,
            dns_port: a.proxy_dns_port,
            control: a.proxy_control,
        }),
        fqdn: bulkhead_agent::fqdn::Limits {
            min_ttl: a.tofqdns_min_ttl,
            max_per_name: a.tofqdns_endpoint_max_ip_per_hostname.max(1),
            max_total: a.tofqdns_max_addresses.max(1),
        },
        guardrails,
        policy_overflow: match a.policy_overflow {
            PolicyOverflow::FailClosed => Overflow::FailClosed,
            PolicyOverflow::KeepPrevious => Overflow::KeepPrevious,
        },
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `64Mi`, `512Ki`, `1Gi`, `10M`, or bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let scale: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return Err(format!("`{s}`: use bytes or a suffix: Ki, Mi, Gi (or K, M, G)")),
    };
    n.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).ok_or_else(|| format!("`{s}` is not a size (e.g. 64Mi)"))
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    bulkhead_flow::time::parse_duration(s)
        .map(std::time::Duration::from_nanos)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 500ms, 30s, 12h, 7d)"))
}
