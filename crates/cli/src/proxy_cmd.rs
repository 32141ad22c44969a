//! `bulkhead proxy`: runs the L7 proxy in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use bulkhead_policy::l7::EscapedSlashes;
use clap::{Args, ValueEnum};

/// The control socket both the proxy and the agent default to.
pub const DEFAULT_CONTROL: &str = "/run/bulkhead/proxy.sock";
/// The HTTP proxy's port both default to.
pub const DEFAULT_HTTP_PORT: u16 = 15001;
/// The DNS proxy's port both default to.
pub const DEFAULT_DNS_PORT: u16 = 15053;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Slashes {
    /// Answer 400: servers disagree on whether `%2F` separates segments.
    Refuse,
    /// Decode `%2F` and `%5C` to `/` before normalizing (Envoy's
    /// UNESCAPE_AND_FORWARD; Cilium redirects the client to that path).
    Unescape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reject {
    /// REFUSED: the server will not answer this client.
    Refused,
    /// NXDOMAIN: the name does not exist.
    #[value(name = "nameError")]
    NameError,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The port the datapath hands L7 connections to (the agent's
    /// --proxy-http-port names the same).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_HTTP_PORT)]
    pub http_port: u16,
    /// The port the datapath hands DNS queries to, UDP and TCP (the
    /// agent's --proxy-dns-port names the same).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_DNS_PORT)]
    pub dns_port: u16,
    /// The answer to a query no DNS rule allows (Cilium's
    /// --tofqdns-dns-reject-response-code).
    #[arg(long, value_enum, value_name = "CODE", default_value_t = Reject::Refused)]
    pub dns_reject_response_code: Reject,
    /// How long an allowed DNS answer is held at most, waiting for the
    /// agent to put its addresses in the kernel (so that the client's first
    /// connection to them is not dropped); past it, the answer is released
    /// and counted (Cilium's --tofqdns-proxy-response-max-delay, 100ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::agent_cmd::parse_duration)]
    pub tofqdns_proxy_response_max_delay: std::time::Duration,
    /// The unix socket (mode 0600) the agent writes rules to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
    /// The network namespace holding the host side of pod interfaces (the
    /// agent's --node-netns; default: the proxy's own).
    #[arg(long, value_name = "PATH")]
    pub node_netns: Option<PathBuf>,
    /// What an encoded slash (`%2F`, `%5C`) in a request path does.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Slashes::Refuse)]
    pub escaped_slashes: Slashes,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Log filter (tracing's syntax: info, debug, bulkhead_proxy=debug, …).
    #[arg(long, value_name = "FILTER", env = "BULKHEAD_LOG", default_value = "info")]
    pub log: String,
}

pub fn run(a: ProxyArgs) -> Result<ExitCode> {
    crate::agent_cmd::init_logging(&a.log)?;
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("the proxy opens transparent sockets (IP_TRANSPARENT) and must run as root");
    }
    if let Some(ns) = &a.node_netns {
        // The whole process moves, before any thread exists: every socket
        // the proxy opens is the node's.
        bulkhead_datapath::netns::enter(ns).with_context(|| format!("--node-netns {}", ns.display()))?;
    }
    bulkhead_proxy::run(bulkhead_proxy::Config {
        http_port: a.http_port,
        dns_port: a.dns_port,
        dns_nxdomain: a.dns_reject_response_code == Reject::NameError,
        dns_hold: a.tofqdns_proxy_response_max_delay,
        control: a.control,
        escaped_slashes: match a.escaped_slashes {
            Slashes::Refuse => EscapedSlashes::Refuse,
            Slashes::Unescape => EscapedSlashes::Unescape,
        },
        threads: a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1)),
        reporter_init: Some(|| bulkhead_datapath::sched::lower_this_thread(bulkhead_datapath::sched::REPORTER_NICE)),
    })
    .with_context(|| format!("proxy on ports {} (HTTP) and {} (DNS)", a.http_port, a.dns_port))?;
    Ok(ExitCode::SUCCESS)
}
