//! Golden tests of the CLI's table, text and JSON output on the seed
//! scenario. `UPDATE_GOLDEN=1 cargo test -p bulkhead --test golden` rewrites
//! the expected files; review the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Runs `bulkhead ARGS` from the workspace root; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_bulkhead")).args(args).current_dir(root()).output().expect("bulkhead runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, want, "output differs from {}", path.display());
}

const SEED: [&str; 5] = ["--cluster", "examples/seed/cluster.yaml", "--policies", "examples/seed/policies", "-n"];

fn seed(cmd: &[&str], extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    v.extend(SEED.iter().map(|s| s.to_string()));
    v.push("production".into());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_owned(args: Vec<String>) -> (i32, String, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

#[test]
fn reach_table() {
    let (code, out, err) = run_owned(seed(&["policy", "reach"], &[]));
    assert_eq!(code, 0, "{err}");
    golden("seed-reach.txt", &out);
}

#[test]
fn reach_json_has_the_design_shape() {
    let (code, out, err) = run_owned(seed(&["policy", "reach"], &["--ports", "8080/TCP,53/UDP", "-o", "json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ports"], serde_json::json!(["8080/TCP", "53/UDP"]));
    assert_eq!(v["verdicts"]["production/frontend"]["production/backend"]["8080/TCP"], "l7");
    assert_eq!(v["verdicts"]["staging/debug-tools"]["production/backend"]["8080/TCP"], "denied");
    assert_eq!(v["verdicts"]["production/payment-processor"]["kube-system/kube-dns"]["53/UDP"], "l7");
    assert_eq!(v["verdicts"]["production/backend"]["production/backend"]["8080/TCP"], "allowed");
    golden("seed-reach.json", &out);
}

#[test]
fn trace_allowed_by_l7_rule() {
    let (code, out, err) = run_owned(seed(
        &["policy", "trace"],
        &[
            "--from",
            "production/frontend",
            "--to",
            "production/backend",
            "--port",
            "8080/TCP",
            "--http-method",
            "GET",
            "--http-path",
            "/api/v1/products/7",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    golden("trace-frontend-backend.txt", &out);
}

#[test]
fn trace_l7_refusal() {
    let (code, out, err) = run_owned(seed(
        &["policy", "trace"],
        &[
            "--from",
            "production/frontend",
            "--to",
            "production/backend",
            "--port",
            "8080/TCP",
            "--http-method",
            "DELETE",
            "--http-path",
            "/api/v1/products/7",
            "-o",
            "json",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "denied");
    assert!(v["l7"].as_str().is_some_and(|s| s.contains("403")), "{out}");
}

#[test]
fn trace_denied_names_the_closest_rule() {
    let (code, out, err) = run_owned(seed(
        &["policy", "trace"],
        &["--from", "staging/debug-tools", "--to", "production/backend", "--port", "8080/TCP", "-o", "json"],
    ));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "denied");
    assert_eq!(v["ingress"]["near_misses"][0]["rule"]["name"], "restrict-backend-api");
    golden("trace-debug-backend.json", &out);
}

#[test]
fn trace_fqdn() {
    let args = |name: &str| {
        seed(&["policy", "trace"], &["--from", "production/payment-processor", "--to-fqdn", name, "--port", "443/TCP"])
    };
    let (code, out, _) = run_owned(args("api.stripe.com"));
    assert_eq!(code, 0);
    assert!(out.starts_with("production/payment-processor → api.stripe.com on 443/TCP: ALLOWED"), "{out}");
    let (_, out, _) = run_owned(args("evil.example.com"));
    assert!(out.contains(": DENIED"), "{out}");
    golden("trace-fqdn-denied.txt", &out);
}

#[test]
fn validate_as_published_fails_with_fixes() {
    let (code, out, _) = run(&["policy", "validate", "../shared/corpus/seed/as-published"]);
    assert_eq!(code, 1);
    golden("validate-as-published.txt", &out);
}

#[test]
fn validate_json() {
    let (code, out, _) = run(&["policy", "validate", "-n", "production", "-o", "json", "examples/seed/policies"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["objects"], 2);
}

#[test]
fn errors_are_clear() {
    let (code, _, err) = run_owned(seed(
        &["policy", "trace"],
        &["--from", "production/nope", "--to", "production/backend", "--port", "80/TCP"],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("no pod `production/nope`"), "{err}");
    let (code, _, err) = run_owned(seed(
        &["policy", "trace"],
        &["--from", "production/frontend", "--to", "production/backend", "--port", "80/XYZ"],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("protocol must be"), "{err}");
    let (code, _, err) = run(&["policy", "validate", "does/not/exist.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("no such file"), "{err}");
}
