//! `lab respond` (internal): a lab pod's container ports, served by
//! [`bulkhead_lab::respond`] inside the pod's network namespace.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use bulkhead_lab::respond::{Port, serve};
use clap::Args;

#[derive(Debug, Args)]
pub struct RespondArgs {
    /// The pod (`namespace/name`), named in answers.
    #[arg(long)]
    pub pod: String,
    /// Ports as PORT/PROTOCOL/NAME, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ports: Vec<String>,
}

pub fn run(a: RespondArgs) -> Result<ExitCode> {
    let ports = a.ports.iter().map(|s| Port::parse(s)).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow!(e))?;
    serve(a.pod, ports.into_iter().flatten().collect())?;
    Ok(ExitCode::SUCCESS)
}
