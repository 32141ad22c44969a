//! `bulkhead policy …`: validate, trace, reach, lint.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulkhead_policy::api::Object;
use bulkhead_policy::api::decode::DecodeOptions;
use bulkhead_policy::engine::Engine;
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
    /// Find what valid policies do that their author may not mean.
    ///
    /// From the text alone: allows broader than they look (`toEntities:
    /// [all]`, `world`, `0.0.0.0/0`, empty selectors, rules that name no
    /// peer). With --cluster, each rule is resolved on every pod it selects
    /// and compared with the others: rules that select no pod, peers that
    /// match nobody, rules another rule shadows, allows a deny takes back, L7
    /// rules another rule bypasses, namespaces without a default deny. Each
    /// finding names the rule (file:line and field path), the other rule,
    /// and the fix. With --guardrails, each rule of the organisation's
    /// Guardrails broken is a finding too. Exits 0 when clean, 1 with
    /// findings, 2 when an input is invalid (as `validate` reports it).
    ///
    /// Example: bulkhead policy lint --cluster examples/seed/cluster.yaml -n production examples/seed/policies
    Lint(LintArgs),
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

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Policy files or directories (recursed; .yaml, .yml, .json); `-` reads stdin.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Cluster state (Namespaces and Pods; `kubectl get ns,pods -A -o yaml`
    /// works unchanged) to judge the policies against. Without it only
    /// what the text says is judged.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// An organisation's rules for policies (`bulkhead.io/v1alpha1
    /// Guardrails`: forbidIngressFromWorld, requireDefaultDeny,
    /// forbidEntityAll, minCIDRPrefixLength, requireL7); each rule broken is
    /// a finding. The agent (`--guardrails`) and `bulkhead webhook` check
    /// the same file the same way.
    #[arg(long, value_name = "FILE")]
    guardrails: Option<PathBuf>,
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
        PolicyCommand::Lint(a) => lint(a),
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

fn lint(a: LintArgs) -> Result<ExitCode> {
    let opts = DecodeOptions { default_namespace: a.namespace };
    let mut loaded = inputs::load(&a.paths, &opts)?;
    if let Some(c) = &a.cluster {
        let cluster = inputs::load(std::slice::from_ref(c), &opts)?;
        loaded.diagnostics.extend(cluster.diagnostics);
        loaded.objects.extend(cluster.objects);
    }
    let guardrails = match &a.guardrails {
        Some(path) => match inputs::load_guardrails(path) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{e:#}");
                return Ok(ExitCode::from(2));
            }
        },
        None => Vec::new(),
    };
    let errors = loaded.errors();
    if errors > 0 {
        // Nothing is judged from a set that is not what was meant.
        for d in &loaded.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("{errors} error(s): nothing linted (fix them first; `bulkhead policy validate` says the same)");
        return Ok(ExitCode::from(2));
    }
    let policies = loaded.objects.iter().filter(|o| matches!(o, Object::Policy(_))).count();
    let pods = loaded.objects.iter().filter(|o| matches!(o, Object::Pod(_))).count();
    let mut engine = Engine::from_objects(loaded.objects);
    let findings = bulkhead_policy::lint::lint(&mut engine, a.cluster.is_some(), &guardrails);
    match a.output {
        Output::Json => {
            let v = serde_json::json!({
                "clean": findings.is_empty(),
                "policies": policies,
                "pods": pods,
                "cluster": a.cluster.is_some(),
                "warnings": loaded.diagnostics,
                "findings": findings,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            for d in &loaded.diagnostics {
                eprintln!("{d}");
            }
            for f in &findings {
                println!("{f}\n");
            }
            let against = match &a.cluster {
                Some(_) => format!(" against {pods} pod(s)"),
                None => " (from their text alone: --cluster FILE also checks selectors, shadowing, denies, L7 and default deny)".into(),
            };
            match findings.len() {
                0 => println!("{policies} policy object(s) linted{against}: no findings"),
                n => println!("{n} finding(s) in {policies} policy object(s) linted{against}"),
            }
        }
    }
    Ok(if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
