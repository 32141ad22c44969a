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
    /// Trace one connection: the verdict, the deciding policies and rules,
    /// or, when nothing allowed it, the closest rules and why they missed.
    ///
    /// Example: bulkhead policy trace --cluster cluster.yaml --policies policies/
    ///   --from production/frontend --to production/backend --port 8080/TCP
    ///   --http-method GET --http-path /api/v1/products
    Trace(TraceArgs),
    /// Print the pod × pod × port reachability matrix.
    ///
    /// Each cell is what the kernel would do: the source's egress policy and
    /// the destination's ingress policy, both looked up. `l7` means allowed
    /// at L3/L4 and decided per request by an L7 proxy.
    Reach(ReachArgs),
    /// An endpoint's policy as the kernel holds it, read back from the
    /// maps (needs the agent): every entry with its verdict and rules.
    #[cfg(feature = "node")]
    Get(crate::live::PolicyGetArgs),
}

#[derive(Debug, Args)]
pub struct Inputs {
    /// Cluster state: Namespace and Pod objects (`kubectl get ns,pods -A -o yaml` works unchanged).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// Policy files or directories (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy).
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub policies: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none (like kubectl -n).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Source pod, NAMESPACE/POD.
    #[arg(long, value_name = "NS/POD")]
    pub from: String,
    /// Destination pod, NAMESPACE/POD.
    #[arg(long, value_name = "NS/POD", group = "target")]
    pub to: Option<String>,
    /// Destination address (a pod's, or one outside the cluster).
    #[arg(long, value_name = "IP", group = "target")]
    pub to_ip: Option<std::net::IpAddr>,
    /// Destination DNS name outside the cluster (matched by toFQDNs).
    #[arg(long, value_name = "NAME", group = "target")]
    pub to_fqdn: Option<String>,
    /// Port and protocol, e.g. 8080/TCP, 53/UDP, 8/ICMP (ICMP type).
    #[arg(long, value_name = "N/PROTO")]
    pub port: String,
    /// HTTP method to check against L7 rules.
    #[arg(long, value_name = "M")]
    pub http_method: Option<String>,
    /// HTTP request target (path and query) to check against L7 rules. It is
    /// normalized first, as the proxy forwards it: dot segments removed,
    /// slashes merged, escapes of unreserved characters decoded; an encoded
    /// `/`, `\` or NUL is refused with 400 (docs/semantics.md, "HTTP paths").
    #[arg(long, value_name = "P")]
    pub http_path: Option<String>,
    /// HTTP Host header to check against L7 rules.
    #[arg(long, value_name = "H")]
    pub http_host: Option<String>,
    /// An HTTP header to check against L7 rules' `headers` and
    /// `headerMatches`, as `Name: value`; repeat for more. The answer says
    /// what each `headerMatches` mismatch action would do.
    #[arg(long, value_name = "NAME: VALUE", value_parser = parse_http_header)]
    pub http_header: Vec<(String, String)>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReachOutput {
    /// One grid per port.
    Table,
    /// `{"ports":[…],"pods":[…],"verdicts":{from:{to:{port:verdict}}}}`.
    Json,
}

#[derive(Debug, Args)]
pub struct ReachArgs {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Ports to check, comma-separated (default: every container port in the cluster).
    #[arg(long, value_name = "80/TCP,53/UDP", value_delimiter = ',')]
    pub ports: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ReachOutput::Table)]
    pub output: ReachOutput,
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
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate(a) => validate(a),
        PolicyCommand::Trace(a) => crate::explain::trace(a),
        PolicyCommand::Reach(a) => crate::explain::reach(a),
        #[cfg(feature = "node")]
        PolicyCommand::Get(a) => crate::live::policy_get(a),
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
                println!(
                    "{} file(s), {} object(s): valid{}",
                    loaded.files,
                    loaded.objects.len(),
                    if warnings > 0 { format!(" ({warnings} warning(s))") } else { String::new() }
                );
            } else {
                println!("{} file(s): {errors} error(s), {warnings} warning(s)", loaded.files);
            }
        }
    }
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--http-header`: `Name: value`, the name an HTTP token, the value one a
/// header can carry.
fn parse_http_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or_else(|| format!("{s:?}: write it as `Name: value`"))?;
    let name = name.trim();
    bulkhead_policy::l7::validate_header_name(name).map_err(|e| e.to_string())?;
    let value = value.trim();
    bulkhead_policy::l7::validate_header_value(value).map_err(|e| e.to_string())?;
    Ok((name.to_ascii_lowercase(), value.to_owned()))
}
