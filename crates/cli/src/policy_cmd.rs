//! `bulkhead policy …`: validate, trace, reach.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulkhead_policy::api::decode::DecodeOptions;
use clap::{Args, Subcommand, ValueEnum};

use crate::inputs;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files; report every error with file:line:col, the field
    /// path, and a fix where one is obvious. Exits 1 when anything is invalid.
    Validate(ValidateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or directories (recursed; .yaml, .yml, .json); `-` reads stdin.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none (like kubectl -n).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate(a) => validate(a),
    }
}

fn validate(a: ValidateArgs) -> Result<ExitCode> {
    let opts = DecodeOptions { default_namespace: a.namespace };
    let loaded = inputs::load(&a.paths, &opts)?;
    let errors = loaded.errors();
    match a.output {
        Output::Json => {
            let v = serde_json::json!({
                "valid": errors == 0,
                "files": loaded.files,
                "objects": loaded.objects.len(),
                "diagnostics": loaded.diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            for d in &loaded.diagnostics {
                println!("{d}");
            }
            let warnings = loaded.diagnostics.len() - errors;
            if errors == 0 {
                println!("{} file(s), {} object(s): valid{}", loaded.files, loaded.objects.len(), if warnings > 0 { format!(" ({warnings} warning(s))") } else { String::new() });
            } else {
                println!("{} file(s): {errors} error(s), {warnings} warning(s)", loaded.files);
            }
        }
    }
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
