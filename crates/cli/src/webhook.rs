//! `bulkhead webhook`: a Kubernetes validating admission webhook for
//! CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy.
//!
//! The apiserver POSTs an `admission.k8s.io/v1 AdmissionReview` over HTTPS
//! (TLS by rustls, the certificate the ValidatingWebhookConfiguration's
//! `caBundle` trusts) to `/validate`; the webhook decodes the object with
//! the same validator as `policy validate` and checks it against the
//! Guardrails as `policy lint --guardrails` does ([`review`], pure), and
//! answers allowed, or denied with every field path, message and fix
//! (warnings go back as the response's `warnings`, which kubectl prints).
//! An AdmissionReview holds one object, so only what its text says is
//! judged: `requireDefaultDeny`, which needs the cluster's pods, is left to
//! the agent and `policy lint --cluster`. See `examples/guardrails/webhook.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bulkhead_policy::api::Guardrails;
use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::diag::{Diagnostic, Severity, Sink};
use bulkhead_policy::engine::Engine;
use bulkhead_policy::lint::{Finding, guardrails};
use clap::Args;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// The kinds the webhook validates; anything else is let through.
const KINDS: [&str; 3] = ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"];

/// The largest AdmissionReview read (an object and its old version, each
/// at most the apiserver's 1.5 MiB).
const MAX_BODY: usize = 4 << 20;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Where to serve HTTPS (`/validate`, and `/healthz` for probes).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM), signed by what the
    /// ValidatingWebhookConfiguration's `caBundle` holds; its names must
    /// include the Service's DNS name the apiserver calls.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_private_key_file: PathBuf,
    /// The organisation's Guardrails (as `policy lint --guardrails`): an
    /// object that breaks one is denied with the findings.
    #[arg(long, value_name = "FILE")]
    pub guardrails: Option<PathBuf>,
}

/// What the webhook answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Admitted.
    pub allowed: bool,
    /// The HTTP-like code of a denial (400 invalid, 403 against the guardrails).
    pub code: u16,
    /// Why it was denied: every error, with field path and fix.
    pub message: String,
    /// Warnings for the user (kubectl prints them).
    pub warnings: Vec<String>,
}

impl Verdict {
    fn allow(warnings: Vec<String>) -> Self {
        Self { allowed: true, code: 200, message: String::new(), warnings }
    }
}

/// The AdmissionReview answering `body` (an `admission.k8s.io/v1
/// AdmissionReview` with a `request`), or why `body` is not one.
pub fn review(body: &[u8], guardrails: &[Guardrails]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["apiVersion"] != "admission.k8s.io/v1" || v["kind"] != "AdmissionReview" {
        return Err("expected an admission.k8s.io/v1 AdmissionReview (admissionReviewVersions: [v1])".into());
    }
    let request = &v["request"];
    let uid = request["uid"].as_str().ok_or("the AdmissionReview has no request.uid")?;
    let verdict = decide(request, guardrails);
    let mut response = json!({"uid": uid, "allowed": verdict.allowed});
    if !verdict.allowed {
        response["status"] = json!({"code": verdict.code, "message": verdict.message});
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings);
    }
    Ok(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
}

/// The verdict on one AdmissionReview `request`.
pub fn decide(request: &Value, guardrails: &[Guardrails]) -> Verdict {
    let kind = request["kind"]["kind"].as_str().unwrap_or_default();
    let object = &request["object"];
    if request["operation"] == "DELETE" || object.is_null() {
        return Verdict::allow(Vec::new());
    }
    if !KINDS.contains(&kind) {
        return Verdict::allow(vec![format!("bulkhead validates {} only; {kind} was not checked", KINDS.join(", "))]);
    }
    let namespace = request["namespace"].as_str().unwrap_or("default");
    let name = object["metadata"]["name"].as_str().or(request["name"].as_str()).unwrap_or("?");
    let what = match kind {
        "CiliumClusterwideNetworkPolicy" => format!("{kind} {name}"),
        _ => format!("{kind} {namespace}/{name}"),
    };
    let text = serde_json::to_string_pretty(object).unwrap_or_default();
    let mut sink = Sink::new(&what);
    let objects = decode_str(&text, &DecodeOptions { default_namespace: namespace.into() }, &mut sink);
    let (errors, warnings): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
        sink.diagnostics.iter().partition(|d| d.severity == Severity::Error);
    let warnings: Vec<String> = warnings.into_iter().map(one_line).collect();
    if !errors.is_empty() {
        let list: Vec<String> = errors.into_iter().map(one_line).collect();
        return Verdict {
            allowed: false,
            code: 400,
            message: format!("{what} is invalid: {}", list.join("; ")),
            warnings,
        };
    }
    let engine = Engine::from_objects(objects);
    let findings: Vec<Finding> = guardrails.iter().flat_map(|g| guardrails::check(g, &engine, false)).collect();
    if findings.is_empty() {
        return Verdict::allow(warnings);
    }
    let list: Vec<String> = findings.iter().map(finding_line).collect();
    Verdict {
        allowed: false,
        code: 403,
        message: format!("{what} breaks the guardrails: {}", list.join("; ")),
        warnings,
    }
}

/// A diagnostic without its position (the object was JSON the apiserver
/// made): `spec.egress[0].toPorts: message (fix: …)`.
fn one_line(d: &Diagnostic) -> String {
    let mut s = if d.path.is_empty() { d.message.clone() } else { format!("{}: {}", d.path, d.message) };
    if let Some(fix) = &d.fix {
        s.push_str(&format!(" (fix: {fix})"));
    }
    s
}

/// A finding in one line: `spec.ingress[0].fromEntities: message [Guardrails …] (fix: …)`.
fn finding_line(f: &Finding) -> String {
    let at = f.rule.as_ref().map_or_else(String::new, |p| format!("{}: ", p.rule.rule));
    let by = f.guardrail.as_deref().map_or_else(String::new, |g| format!(" [{g}]"));
    format!("{at}{}{by} (fix: {})", f.message, f.fix)
}

pub fn run(a: WebhookArgs) -> Result<ExitCode> {
    crate::agent_cmd::init_logging("info")?;
    let guardrails = match &a.guardrails {
        Some(path) => crate::inputs::load_guardrails(path)?,
        None => Vec::new(),
    };
    let tls = tls_config(&a.tls_cert_file, &a.tls_private_key_file)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let guardrails = Arc::new(guardrails);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
        let at = listener.local_addr()?;
        // One line scripts (and the tests) read for the address.
        println!(
            "bulkhead webhook: serving AdmissionReview on https://{at}/validate ({} guardrails)",
            guardrails.len()
        );
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, guardrails) = (acceptor.clone(), Arc::clone(&guardrails));
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
                };
                let service = hyper::service::service_fn(move |req| handle(req, Arc::clone(&guardrails)));
                let io = hyper_util::rt::TokioIo::new(tls);
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    })
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("--tls-cert-file {}: {e} (a PEM certificate chain)", cert.display()))?;
    if chain.is_empty() {
        bail!("--tls-cert-file {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--tls-private-key-file {}: {e} (a PEM private key)", key.display()))?;
    // ring, already in the build: aws-lc-rs (rustls' post-quantum default)
    // would add cmake and a large C build to every machine's install.
    #[allow(deprecated, reason = "rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and the private key do not go together")
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(req: Request<Incoming>, guardrails: Arc<Vec<Guardrails>>) -> Result<Reply, std::convert::Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, text, "ok\n"),
        (&Method::POST, "/validate") => match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => match review(&body.to_bytes(), &guardrails) {
                Ok(v) => {
                    let allowed = v["response"]["allowed"].as_bool().unwrap_or(false);
                    tracing::info!(uid = %v["response"]["uid"], allowed, message = %v["response"]["status"]["message"], "reviewed");
                    reply(StatusCode::OK, "application/json", v.to_string())
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, text, format!("{e}\n")),
            },
            Err(e) => reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                text,
                format!("reading the request: {e} (at most {MAX_BODY} bytes)\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, text, "POST an AdmissionReview to /validate\n"),
    })
}

#[cfg(test)]
mod tests;
