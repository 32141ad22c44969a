//! `bulkhead`: the command-line interface.

mod explain;
mod inputs;
mod policy_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Identity-based micro-segmentation for Kubernetes-style workloads.
///
/// bulkhead reads the CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
/// NetworkPolicy YAML you already have and tells you what it means: what is
/// allowed, what is dropped, and which rule decided. (Kernel enforcement by
/// the agent comes next; these commands need no agent and no root.)
#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, trace and explain policies offline (no agent, no root).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
