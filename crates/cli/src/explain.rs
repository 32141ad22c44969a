//! `policy trace` and `policy reach`: load inputs, run the engine, print.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bulkhead_policy::api::Object;
use bulkhead_policy::api::decode::DecodeOptions;
use bulkhead_policy::engine::Engine;
use bulkhead_policy::reach::{ProbePort, Reach, ReachMatrix, default_ports, reach as reach_matrix};
use bulkhead_policy::trace::{HttpProbe, Target, TraceRequest, TraceResult, trace as run_trace};

use crate::inputs;
use crate::policy_cmd::{Inputs, Output, ReachArgs, ReachOutput, TraceArgs};

/// Loads cluster and policies; any invalid input is an error (nothing is
/// evaluated against a half-read policy set).
fn load_engine(i: &Inputs) -> Result<(Engine, usize)> {
    let opts = DecodeOptions { default_namespace: i.namespace.clone() };
    let cluster = inputs::load(std::slice::from_ref(&i.cluster), &opts)?;
    let policies = inputs::load(&i.policies, &opts)?;
    let mut failed = false;
    for d in cluster.diagnostics.iter().chain(&policies.diagnostics) {
        eprintln!("{d}");
        failed |= d.severity == bulkhead_policy::diag::Severity::Error;
    }
    if failed {
        bail!("invalid input (see above); fix it, or check it with `bulkhead policy validate`");
    }
    let mut objects: Vec<Object> = cluster.objects.into_iter().filter(|o| !matches!(o, Object::Policy(_))).collect();
    let npol = policies.objects.iter().filter(|o| matches!(o, Object::Policy(_))).count();
    let named = || i.policies.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    if npol == 0 && !policies.objects.is_empty() {
        // Namespaces or Pods where policies were expected: a mix-up of the
        // two arguments, not a cluster without policies.
        bail!("no policies in {}, only Namespaces and Pods: those go to --cluster", named());
    }
    if npol == 0 {
        // An empty list, as `kubectl get cnp -A -o yaml` prints on a cluster
        // without policies: nothing is enforced.
        eprintln!("note: no policies in {}: nothing is enforced, every connection is allowed", named());
    }
    objects.extend(policies.objects.into_iter().filter(|o| matches!(o, Object::Policy(_))));
    Ok((Engine::from_objects(objects), npol))
}

pub fn trace(a: TraceArgs) -> Result<ExitCode> {
    let (mut engine, _) = load_engine(&a.inputs)?;
    let port = ProbePort::parse(&a.port).map_err(anyhow::Error::msg).context("--port")?;
    let to = match (a.to, a.to_ip, a.to_fqdn) {
        (Some(p), None, None) => Target::Pod(p),
        (None, Some(ip), None) => Target::Ip(ip),
        (None, None, Some(n)) => Target::Fqdn(n),
        _ => bail!("give exactly one of --to NS/POD, --to-ip IP or --to-fqdn NAME"),
    };
    let probing =
        a.http_method.is_some() || a.http_path.is_some() || a.http_host.is_some() || !a.http_header.is_empty();
    let http = probing.then(|| HttpProbe {
        method: a.http_method.unwrap_or_else(|| "GET".into()),
        path: a.http_path.unwrap_or_else(|| "/".into()),
        host: a.http_host.unwrap_or_default(),
        headers: a.http_header,
    });
    let req = TraceRequest { from: a.from, to, port, http };
    #[allow(unused_mut)]
    let mut result = run_trace(&mut engine, &req)?;
    #[cfg(feature = "node")]
    if let Target::Fqdn(name) = &req.to {
        result.notes.extend(crate::live::fqdn_notes(name));
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Text => print!("{}", render_trace(&result)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Human-readable trace.
pub fn render_trace(r: &TraceResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} → {} on {}: {}", r.from, r.to, r.port, r.verdict.to_uppercase());
    let _ = writeln!(s, "  identities: {} → {}", r.from_identity, r.to_identity);
    for d in [Some(&r.egress), r.ingress.as_ref()].into_iter().flatten() {
        let _ = writeln!(s, "  {} of {}: {} — {}", d.direction, d.endpoint, d.verdict, d.reason);
        for rr in &d.decided_by {
            let _ = writeln!(s, "      by {rr}");
        }
        if !d.near_misses.is_empty() {
            let _ = writeln!(s, "      closest rules that did not match:");
            for m in &d.near_misses {
                let _ = writeln!(s, "      - {}: {}", m.rule, m.why);
            }
        }
    }
    if let Some(l7) = &r.l7 {
        let _ = writeln!(s, "  L7: {l7}");
    }
    for n in &r.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}

pub fn reach(a: ReachArgs) -> Result<ExitCode> {
    let (engine, npol) = load_engine(&a.inputs)?;
    let ports = if a.ports.is_empty() {
        default_ports(&engine)
    } else {
        a.ports
            .iter()
            .map(|p| ProbePort::parse(p).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()
            .context("--ports")?
    };
    let m = reach_matrix(&engine, &ports);
    match a.output {
        ReachOutput::Json => println!("{}", serde_json::to_string_pretty(&m)?),
        ReachOutput::Table => {
            print!("{}", render_matrix(&m));
            let mut errors = Vec::new();
            for k in engine.pod_keys() {
                if let Some(p) = engine.endpoint_policy(&k) {
                    for e in p.ingress.errors.iter().chain(&p.egress.errors) {
                        errors.push(format!("{k}: {e}"));
                    }
                }
            }
            errors.dedup();
            for e in errors {
                println!("conflict: {e}");
            }
            println!("{} pods, {} policies; rows are sources, columns destinations.", m.pods.len(), npol);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One grid per port: `.` allowed, `X` denied, `7` decided by an L7 proxy.
pub fn render_matrix(m: &ReachMatrix) -> String {
    grids(&m.pods, &m.ports, "(. allowed   X denied   7 allowed, L7 decides per request)", |from, to, port| {
        match m.verdicts.get(from).and_then(|r| r.get(to)).and_then(|c| c.get(port)) {
            Some(Reach::Allowed) => ".",
            Some(Reach::Denied) => "X",
            Some(Reach::L7) => "7",
            None => "?",
        }
        .to_string()
    })
}

/// One pod × pod grid per port (rows are sources, columns destinations,
/// numbered), each headed by the port and `legend`; `cell` draws a cell.
pub fn grids(pods: &[String], ports: &[String], legend: &str, cell: impl Fn(&str, &str, &str) -> String) -> String {
    let mut s = String::new();
    let width = pods.iter().map(String::len).max().unwrap_or(0).max(4);
    for port in ports {
        let _ = writeln!(s, "{port}   {legend}");
        let _ = write!(s, "{:>w$}  ", "from \\ to", w = width + 4);
        for i in 0..pods.len() {
            let _ = write!(s, "{:>3}", i + 1);
        }
        s.push('\n');
        for (i, from) in pods.iter().enumerate() {
            let _ = write!(s, "{:>2}. {from:<width$}  ", i + 1);
            for to in pods {
                let _ = write!(s, "{:>3}", cell(from, to, port));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}
