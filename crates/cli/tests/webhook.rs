//! `bulkhead webhook` over real HTTPS: a certificate made with openssl, the
//! webhook serving it, and AdmissionReview bodies POSTed with curl trusting
//! only that certificate — admitted, denied as invalid (400) and denied by
//! the guardrails (403), each with what the apiserver passes to the user.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// The webhook, stopped when dropped (also when the test fails).
struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("runs");
    assert!(out.status.success() || cmd.get_program() == "curl", "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn admission_reviews_over_https_are_answered_as_validate_and_the_guardrails_say() {
    let dir = std::env::temp_dir().join(format!("bulkhead-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=bulkhead-webhook", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert-file"])
        .arg(&cert)
        .arg("--tls-private-key-file")
        .arg(&key)
        .arg("--guardrails")
        .arg(repo.join("examples/guardrails/guardrails.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bulkhead webhook");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("its address");
    let _webhook = Webhook(child);
    let url = first.split_whitespace().find(|w| w.starts_with("https://")).expect("an https:// address").to_string();
    assert!(url.ends_with("/validate") && first.contains("(1 guardrails)"), "{first}");

    let post = |cacert: Option<&PathBuf>, review: &Value| -> Result<Value, String> {
        let body = dir.join("review.json");
        std::fs::write(&body, review.to_string()).expect("write");
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-H", "Content-Type: application/json", "--data-binary"]);
        curl.arg(format!("@{}", body.display())).arg(&url);
        if let Some(ca) = cacert {
            curl.arg("--cacert").arg(ca);
        }
        let out = run(&mut curl);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let review = |uid: &str, object: Value| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": uid, "kind": {"group": "cilium.io", "version": "v2", "kind": object["kind"]},
            "operation": "CREATE", "namespace": "production", "object": object}})
    };
    let policy = |spec: Value| {
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "backend", "namespace": "production"}, "spec": spec})
    };

    // TLS is real: a client that does not trust the certificate gets nowhere.
    let ok = policy(json!({"endpointSelector": {"matchLabels": {"app": "backend"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
            "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}]}]}));
    let e = post(None, &review("u-0", ok.clone())).expect_err("an untrusted certificate");
    assert!(e.contains("certificate"), "{e}");

    // Valid and within the guardrails: admitted, the uid echoed.
    let r = post(Some(&cert), &review("u-1", ok)).expect("a review");
    assert_eq!(r["response"], json!({"uid": "u-1", "allowed": true}), "{r}");

    // Invalid: denied 400 with the field path and the fix, as validate says.
    let bad = policy(json!({"endpointSelector": {"matchLabels": {"app": "backend"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}], "toPorts": [{"ports": [{"port": 8080}]}]}]}));
    let r = post(Some(&cert), &review("u-2", bad)).expect("a review");
    assert_eq!(
        (r["response"]["allowed"].as_bool(), r["response"]["status"]["code"].as_u64()),
        (Some(false), Some(400)),
        "{r}"
    );
    let msg = r["response"]["status"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("spec.ingress[0].toPorts[0].ports[0].port: port must be a string")
            && msg.contains("fix: quote it"),
        "{msg}"
    );

    // Valid but against the guardrails (8080 without L7 rules): denied 403.
    let open = policy(json!({"endpointSelector": {"matchLabels": {"app": "backend"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}));
    let r = post(Some(&cert), &review("u-3", open)).expect("a review");
    assert_eq!(
        (r["response"]["uid"].as_str(), r["response"]["status"]["code"].as_u64()),
        (Some("u-3"), Some(403)),
        "{r}"
    );
    let msg = r["response"]["status"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("spec.ingress[0].toPorts[0]: allows 8080/TCP from its peers without L7 rules"), "{msg}");
    assert!(msg.contains("Guardrails org-baseline spec.requireL7"), "{msg}");

    // Not an AdmissionReview: a 400 that says what is expected.
    let status = run(Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--data-binary", "{\"kind\": \"Pod\"}", "--cacert"])
        .arg(&cert)
        .arg(&url));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.ends_with("\n400") && text.contains("admission.k8s.io/v1 AdmissionReview"), "{text}");
    let health =
        run(Command::new("curl").args(["-sS", "--cacert"]).arg(&cert).arg(url.replace("/validate", "/healthz")));
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    let _ = std::fs::remove_dir_all(&dir);
}
