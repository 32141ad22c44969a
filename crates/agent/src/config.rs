//! What the agent is started with, and what its requests fail with.

use std::path::PathBuf;

use bulkhead_datapath::DatapathError;
use bulkhead_datapath::sync::Overflow;

use crate::store::StoreError;

/// Where the agent keeps things and how it behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory (`state.json`, `agent.lock`).
    pub state_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// The bpf filesystem directory for pins.
    pub pin_root: PathBuf,
    /// The network namespace that holds the host side of pod interfaces
    /// (`None`: the agent's own).
    pub node_netns: Option<PathBuf>,
    /// Bytes of recent flows `observe` can look back over.
    pub flow_buffer_bytes: usize,
    /// The node's name in flows.
    pub node_name: String,
    /// The signed flow log (`None`: no log).
    pub flow_log: Option<crate::observer::flowlog::FlowLogConfig>,
    /// Where metrics and the service map are served over HTTP (`None`: not served).
    pub web_listen: Option<std::net::SocketAddr>,
    /// Entries one policy (one direction of one endpoint policy) may hold
    /// in the kernel; a policy that needs more is refused.
    pub policy_map_entries: u32,
    /// What an endpoint's direction does while its policy does not fit.
    pub policy_overflow: Overflow,
    /// The L7 proxy (`None`: none; L7 connections are dropped).
    pub proxy: Option<ProxyConfig>,
    /// How long and how many addresses learnt from DNS answers are kept.
    pub fqdn: crate::fqdn::Limits,
    /// The organisation's rules for policies: an apply that would break
    /// one more of them is refused.
    pub guardrails: Vec<bulkhead_policy::api::Guardrails>,
}

/// Where the L7 proxy listens and takes its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The HTTP proxy's port in the node's network namespace.
    pub http_port: u16,
    /// The DNS proxy's port there (UDP and TCP; 0: none, and DNS rules drop).
    pub dns_port: u16,
    /// Its control socket.
    pub control: PathBuf,
}

/// What a request can fail with; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The input is invalid; nothing changed.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Every diagnostic.
        details: Vec<String>,
    },
    /// No such endpoint or object.
    #[error("{0}")]
    NotFound(String),
    /// The request needs something that is not there yet.
    #[error("{0}")]
    Conflict(String),
    /// The kernel refused.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The state directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A network namespace or interface could not be used.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The agent is stopping, or its writer stopped.
    #[error("the agent is not taking changes: {0}")]
    Stopped(String),
}

impl AgentError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid { .. } => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Datapath(DatapathError::Full { .. }) => 507,
            Self::Stopped(_) => 503,
            _ => 500,
        }
    }

    /// The diagnostics behind an invalid request.
    pub fn details(&self) -> Vec<String> {
        match self {
            Self::Invalid { details, .. } => details.clone(),
            _ => Vec::new(),
        }
    }

    /// A bad request with no diagnostics.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid { message: message.into(), details: Vec::new() }
    }
}
