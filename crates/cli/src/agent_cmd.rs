//! `bulkhead agent`: runs the node agent in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the agent keeps its state (applied objects, endpoints, audit settings).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bulkhead")]
    pub state_dir: PathBuf,
    /// The API socket (HTTP/JSON, mode 0600).
    #[arg(long, value_name = "PATH", env = "BULKHEAD_SOCKET", default_value = bulkhead_agent::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The bpf filesystem directory for pinned programs, maps and links.
    #[arg(long, value_name = "DIR", default_value = bulkhead_datapath::Datapath::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
    /// The network namespace holding the host side of pod interfaces
    /// (default: the agent's own; `bulkhead lab` runs its node in one).
    #[arg(long, value_name = "PATH")]
    pub node_netns: Option<PathBuf>,
    /// How many datapath events `observe` can look back over.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub event_buffer: usize,
    /// Entries one endpoint policy (per direction) may hold in the kernel;
    /// a policy that needs more is refused and the endpoint keeps its
    /// previous one (like Cilium's --bpf-policy-map-max).
    #[arg(long, value_name = "N", default_value_t = bulkhead_datapath::abi::POLICY_SLOT_MAX_ENTRIES)]
    pub policy_map_max_entries: u32,
    /// Log filter (tracing's syntax: info, debug, bulkhead_agent=debug, …).
    #[arg(long, value_name = "FILTER", env = "BULKHEAD_LOG", default_value = "info")]
    pub log: String,
}

pub fn run(a: AgentArgs) -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log)
        .map_err(|e| anyhow::anyhow!("--log {}: {e} (try info or debug)", a.log))?;
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the agent loads eBPF programs and must run as root");
    }
    bulkhead_agent::run(bulkhead_agent::Config {
        state_dir: a.state_dir,
        socket: a.socket,
        pin_root: a.pin_root,
        node_netns: a.node_netns,
        event_capacity: a.event_buffer,
        policy_map_entries: a.policy_map_max_entries,
    })?;
    Ok(ExitCode::SUCCESS)
}
