//! `bulkhead`: the command-line interface.

#[cfg(feature = "node")]
mod agent_cmd;
mod explain;
#[cfg(feature = "node")]
mod flows_cmd;
mod inputs;
#[cfg(feature = "node")]
mod lab;
#[cfg(feature = "node")]
mod live;
#[cfg(feature = "node")]
mod observe;
mod policy_cmd;
#[cfg(feature = "node")]
mod proxy_cmd;
#[cfg(feature = "node")]
mod webhook;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Identity-based micro-segmentation for Kubernetes-style workloads.
///
/// bulkhead reads the CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
/// NetworkPolicy YAML you already have and tells you what it means: what is
/// allowed, what is dropped, and which rule decided, offline (`policy`) or
/// enforced in the kernel by the agent on a node (`agent`, `apply`, …), for
/// example the local lab of network-namespace pods (`lab`). A build without
/// default features has only the offline `policy validate|lint|trace|reach`.
#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, trace and explain policies offline; `policy get` reads an
    /// endpoint's policy back from the kernel.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Run the node agent in the foreground (root): it enforces what is
    /// applied to it on the pods the CNI plugin registers.
    #[cfg(feature = "node")]
    Agent(agent_cmd::AgentArgs),
    /// Run the L7 proxy in the foreground (root): it decides every request
    /// on a connection an L7 rule covers, with the rules the agent sends it.
    ///
    /// Example: bulkhead proxy --node-netns /run/netns/node
    #[cfg(feature = "node")]
    Proxy(proxy_cmd::ProxyArgs),
    /// Serve a Kubernetes validating admission webhook over HTTPS: every
    /// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
    /// NetworkPolicy is checked as `policy validate` and `policy lint
    /// --guardrails` check it, and denied with the field path and the fix.
    ///
    /// Example: bulkhead webhook --tls-cert-file tls.crt --tls-private-key-file tls.key
    ///   --guardrails examples/guardrails/guardrails.yaml (ValidatingWebhookConfiguration:
    ///   examples/guardrails/webhook.yaml)
    #[cfg(feature = "node")]
    Webhook(webhook::WebhookArgs),
    /// Create or update Namespaces, Pods and policies in the agent; their
    /// enforcement reaches the kernel before this returns.
    ///
    /// Example: bulkhead apply -f examples/seed/policies -n production
    #[cfg(feature = "node")]
    Apply(live::ApplyArgs),
    /// Delete the objects the files name.
    #[cfg(feature = "node")]
    Delete(live::ApplyArgs),
    /// Local endpoints (pods with an interface on this node).
    #[cfg(feature = "node")]
    #[command(subcommand)]
    Endpoint(live::EndpointCommand),
    /// Security identities.
    #[cfg(feature = "node")]
    #[command(subcommand)]
    Identity(live::IdentityCommand),
    /// Names learnt from DNS answers (what toFQDNs selects).
    #[cfg(feature = "node")]
    #[command(subcommand)]
    Fqdn(live::FqdnCommand),
    /// The agent's health, pid and counts.
    #[cfg(feature = "node")]
    Status(live::StatusArgs),
    /// The service map's address: a page of the node's workloads and the
    /// flows between them, colour-coded by verdict, each edge listing the
    /// rules behind it. The address carries a token (new at each agent
    /// start) that only the API socket hands out.
    #[cfg(feature = "node")]
    Ui(live::StatusArgs),
    /// Flows: every verdict with the workloads and the policy behind it,
    /// filtered as `hubble observe` filters (live, or from exported files).
    ///
    /// Examples: bulkhead observe --verdict DROPPED -n production;
    /// bulkhead observe -f --to-pod production/backend --not --verdict FORWARDED;
    /// bulkhead observe --input-file flows.json --http-status 5+
    #[cfg(feature = "node")]
    Observe(Box<observe::ObserveArgs>),
    /// The signed flow log: its public key, and verification of a log.
    #[cfg(feature = "node")]
    #[command(subcommand)]
    Flows(flows_cmd::FlowsCommand),
    /// Audit mode, globally, per namespace or per endpoint: would-be drops
    /// pass and are reported with verdict AUDIT.
    ///
    /// Example: bulkhead audit on -n staging; bulkhead audit inherit -n staging
    #[cfg(feature = "node")]
    Audit(live::AuditArgs),
    /// A local cluster of network-namespace pods with the agent enforcing on
    /// them: up, exec, probe, down (root).
    #[cfg(feature = "node")]
    Lab(lab::LabArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        #[cfg(feature = "node")]
        Command::Agent(a) => agent_cmd::run(a),
        #[cfg(feature = "node")]
        Command::Proxy(a) => proxy_cmd::run(a),
        #[cfg(feature = "node")]
        Command::Webhook(a) => webhook::run(a),
        #[cfg(feature = "node")]
        Command::Apply(a) => live::apply(a, false),
        #[cfg(feature = "node")]
        Command::Delete(a) => live::apply(a, true),
        #[cfg(feature = "node")]
        Command::Endpoint(live::EndpointCommand::List(a)) => live::endpoints(a),
        #[cfg(feature = "node")]
        Command::Identity(live::IdentityCommand::List(a)) => live::identities(a),
        #[cfg(feature = "node")]
        Command::Fqdn(live::FqdnCommand::Cache(live::FqdnCacheCommand::List(a))) => live::fqdn_cache(a),
        #[cfg(feature = "node")]
        Command::Status(a) => live::status(a),
        #[cfg(feature = "node")]
        Command::Ui(a) => live::ui(a),
        #[cfg(feature = "node")]
        Command::Observe(a) => match matches.subcommand_matches("observe") {
            Some(m) => observe::run(*a, m),
            None => Err(anyhow::anyhow!("observe: no arguments")),
        },
        #[cfg(feature = "node")]
        Command::Flows(cmd) => flows_cmd::run(cmd),
        #[cfg(feature = "node")]
        Command::Audit(a) => live::audit(a),
        #[cfg(feature = "node")]
        Command::Lab(a) => lab::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
