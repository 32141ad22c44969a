//! `bulkhead`: the command-line interface.

mod agent_cmd;
mod explain;
mod inputs;
mod lab;
mod live;
mod policy_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Identity-based micro-segmentation for Kubernetes-style workloads.
///
/// bulkhead reads the CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
/// NetworkPolicy YAML you already have and tells you what it means: what is
/// allowed, what is dropped, and which rule decided, offline (`policy`) or
/// enforced in the kernel by the agent on a node (`agent`, `apply`, …), for
/// example the local lab of network-namespace pods (`lab`).
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
    Agent(agent_cmd::AgentArgs),
    /// Create or update Namespaces, Pods and policies in the agent; their
    /// enforcement reaches the kernel before this returns.
    ///
    /// Example: bulkhead apply -f examples/seed/policies -n production
    Apply(live::ApplyArgs),
    /// Delete the objects the files name.
    Delete(live::ApplyArgs),
    /// Local endpoints (pods with an interface on this node).
    #[command(subcommand)]
    Endpoint(live::EndpointCommand),
    /// Security identities.
    #[command(subcommand)]
    Identity(live::IdentityCommand),
    /// The agent's health, pid and counts.
    Status(live::StatusArgs),
    /// Recent datapath events: drops and first-packet policy verdicts.
    Observe(live::ObserveArgs),
    /// Audit mode, globally, per namespace or per endpoint: would-be drops
    /// pass and are reported with verdict AUDIT.
    ///
    /// Example: bulkhead audit on -n staging; bulkhead audit inherit -n staging
    Audit(live::AuditArgs),
    /// A local cluster of network-namespace pods with the agent enforcing on
    /// them: up, exec, probe, down (root).
    Lab(lab::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Agent(a) => agent_cmd::run(a),
        Command::Apply(a) => live::apply(a, false),
        Command::Delete(a) => live::apply(a, true),
        Command::Endpoint(live::EndpointCommand::List(a)) => live::endpoints(a),
        Command::Identity(live::IdentityCommand::List(a)) => live::identities(a),
        Command::Status(a) => live::status(a),
        Command::Observe(a) => live::observe(a),
        Command::Audit(a) => live::audit(a),
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
