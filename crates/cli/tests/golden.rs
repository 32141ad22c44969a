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
fn reach_with_an_empty_policy_list_allows_everything() {
    let args = |policies: &str| {
        let v = ["policy", "reach", "--cluster", "examples/seed/cluster.yaml", "--policies", policies];
        v.iter().chain(&["--ports", "8080/TCP", "-o", "json"]).map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let (code, out, err) = run_owned(args("crates/cli/tests/fixtures/no-policies.yaml"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no policies in crates/cli/tests/fixtures/no-policies.yaml"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let verdicts = v["verdicts"].as_object().expect("verdicts");
    assert_eq!(verdicts.len(), 5, "{out}");
    for row in verdicts.values() {
        for cell in row.as_object().expect("row").values() {
            assert_eq!(cell["8080/TCP"], "allowed", "{out}");
        }
    }
    // Pods where policies belong is a mix-up, not an empty policy set.
    let (code, _, err) = run_owned(args("examples/seed/cluster.yaml"));
    assert_eq!(code, 2);
    assert!(err.contains("only Namespaces and Pods: those go to --cluster"), "{err}");
}

/// `policy trace` of an HTTP request from the seed's frontend to its
/// backend on 8080, with `extra` arguments.
fn trace_http(method: &str, path: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "--from",
        "production/frontend",
        "--to",
        "production/backend",
        "--port",
        "8080/TCP",
        "--http-method",
        method,
        "--http-path",
        path,
    ];
    args.extend_from_slice(extra);
    run_owned(seed(&["policy", "trace"], &args))
}

#[test]
fn trace_allowed_by_l7_rule() {
    let (code, out, err) = trace_http("GET", "/api/v1/products/7", &[]);
    assert_eq!(code, 0, "{err}");
    golden("trace-frontend-backend.txt", &out);
}

#[test]
fn trace_l7_refusal() {
    let (code, out, err) = trace_http("DELETE", "/api/v1/products/7", &["-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "denied");
    assert!(v["l7"].as_str().is_some_and(|s| s.contains("403")), "{out}");
}

/// `--http-path` is matched as the proxy would forward it (l7::path): the
/// seed's rule allows `/api/v1/products.*`, which the raw text
/// `/api/v1/products/../../admin` matches too; normalized, it is `/api/admin`.
#[test]
fn trace_matches_the_normalized_path() {
    for (path, verdict, says) in [
        ("/api//v1/products", "allowed", "(normalized to /api/v1/products) allowed by the rule"),
        ("/api/v1/%70roducts", "allowed", "(normalized to /api/v1/products) allowed by the rule"),
        (
            "/api/v1/products/../../admin",
            "denied",
            "(normalized to /api/admin) matches none of the 2 HTTP rule(s): 403",
        ),
        ("/api/v1/products%2F..%2F..%2Fadmin", "denied", "refused before any rule: 400 Bad Request: an encoded `%2F`"),
    ] {
        let (code, out, err) = trace_http("GET", path, &["-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["verdict"], verdict, "{path}: {out}");
        assert!(v["l7"].as_str().is_some_and(|s| s.contains(says)), "{path}: {out}");
    }
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
    let (code, out, _) = run(&["policy", "validate", "testdata/corpus/seed/as-published"]);
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
fn lint_seed() {
    let args =
        ["policy", "lint", "--cluster", "examples/seed/cluster.yaml", "-n", "production", "examples/seed/policies"];
    let (code, out, err) = run(&args);
    assert_eq!(code, 1, "findings exit 1: {out}{err}");
    golden("lint-seed.txt", &out);
    let (code, out, _) = run(&[&args[..], &["-o", "json"]].concat());
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (v["clean"].as_bool(), v["cluster"].as_bool(), v["policies"].as_u64()),
        (Some(false), Some(true), Some(2))
    );
    let findings = v["findings"].as_array().expect("findings");
    assert!(
        findings.iter().all(|f| f["check"].is_string() && f["message"].is_string() && f["fix"].is_string()),
        "{out}"
    );
}

#[test]
fn lint_exit_codes_fit_ci() {
    let dir = "crates/cli/tests/fixtures/lint-clean";
    let (code, out, err) =
        run(&["policy", "lint", "--cluster", &format!("{dir}/cluster.yaml"), &format!("{dir}/policies.yaml")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 policy object(s) linted against 2 pod(s): no findings"), "{out}");
    // Without the cluster, only the text is judged (and here it is fine).
    let (code, out, _) = run(&["policy", "lint", &format!("{dir}/policies.yaml")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from their text alone"), "{out}");
    // The example guardrails on the seed: its namespaces lack a default
    // deny; a guardrails file with a typo is invalid input.
    let (code, out, _) = run(&[
        "policy",
        "lint",
        "--guardrails",
        "examples/guardrails/guardrails.yaml",
        "--cluster",
        "examples/seed/cluster.yaml",
        "-n",
        "production",
        "examples/seed/policies",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("namespace staging: guardrail: ")
            && out.contains("Guardrails org-baseline spec.requireDefaultDeny"),
        "{out}"
    );
    let (code, _, err) = run(&[
        "policy",
        "lint",
        "--guardrails",
        "crates/cli/tests/fixtures/bad-guardrails.yaml",
        &format!("{dir}/policies.yaml"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("spec.forbidEntityAl")
            && err.contains("did you mean `forbidEntityAll`")
            && err.contains("nothing checked"),
        "{err}"
    );
    // Invalid input: 2, with validate's diagnostics, and nothing linted.
    let (code, out, err) = run(&["policy", "lint", "testdata/corpus/seed/as-published"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty() && err.contains("nothing linted") && err.contains("(fix: "), "{err}");
}

#[test]
fn lint_answers_every_corpus_file_as_validate_judges_it() {
    // Every file of the corpus: valid ones lint (0 or 1), invalid ones exit 2.
    let mut files = Vec::new();
    let mut dirs =
        vec![root().join("testdata/corpus/cilium-examples"), root().join("testdata/corpus/cilium-cli-connectivity")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("corpus dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
                && !p.ends_with("MANIFEST.json")
            {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 60, "{} corpus files", files.len());
    let mut findings = 0;
    for f in &files {
        let f = f.to_str().expect("utf-8 path");
        let (valid, _, _) = run(&["policy", "validate", f]);
        let (linted, out, err) = run(&["policy", "lint", f]);
        match valid {
            0 => assert!(linted == 0 || linted == 1, "{f}: lint exited {linted}: {out}{err}"),
            _ => assert_eq!(linted, 2, "{f}: invalid, yet lint exited {linted}: {out}{err}"),
        }
        findings += usize::from(linted == 1);
    }
    // The library's examples include `toEntities: [world]` and the like.
    assert!(findings > 5, "{findings} corpus files with findings");
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

/// `observe --input-file` is part of the node build (flows), not of the
/// offline policy commands a featureless build has.
#[cfg(feature = "node")]
mod observe {
    use super::*;

    // ---- observe: exported flows read offline (`--input-file`) ----

    const FLOWS: &str = "crates/cli/tests/golden/flows.jsonl";

    fn observe(extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["observe", "--input-file", FLOWS, "--color", "never"];
        args.extend_from_slice(extra);
        run(&args)
    }

    #[test]
    fn observe_compact_and_table() {
        let (code, out, err) = observe(&[]);
        assert_eq!(code, 0, "{err}");
        golden("observe-compact.txt", &out);
        let (code, out, err) = observe(&["-o", "table"]);
        assert_eq!(code, 0, "{err}");
        golden("observe-table.txt", &out);
    }

    #[test]
    fn observe_json_is_one_hubble_record_per_line_and_reads_back() {
        let (code, out, err) = observe(&["--verdict", "DROPPED", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        golden("observe-dropped.jsonl", &out);
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
            assert_eq!(v["flow"]["verdict"], "DROPPED", "{line}");
            assert_eq!(v["time"], v["flow"]["time"]);
        }
        // What -o json prints, --input-file reads: the same flows come back.
        let tmp = std::env::temp_dir().join(format!("bulkhead-observe-{}.jsonl", std::process::id()));
        std::fs::write(&tmp, &out).expect("write");
        let (code, again, err) = run(&["observe", "--input-file", tmp.to_str().expect("path"), "-o", "json"]);
        let _ = std::fs::remove_file(&tmp);
        assert_eq!(code, 0, "{err}");
        assert_eq!(again, out);
    }

    /// The flows of the fixture (by the last digits of their uuid) that each
    /// combination of filters lets through. The fixture: 0/1 frontend → kube-dns
    /// 8080/TCP allowed at egress/ingress, 2 a reply kube-dns → debug-tools,
    /// 3 debug-tools → backend denied (POLICY_DENIED), 4 payment-processor →
    /// debug-tools 53/UDP (IPv6) denied, 5/6 L7 redirects dropped
    /// (SOCKET_LOOKUP_FAILED), 7 frontend → backend 53/UDP allowed (IPv6),
    /// 8–10 HTTP request, 200 response, 403 response, 11 a DNS query.
    #[test]
    fn observe_filters_combine_as_hubbles_do() {
        let cases: &[(&[&str], &[u32])] = &[
            (&["--verdict", "DROPPED"], &[3, 4, 5, 6, 10]),
            (&["--verdict", "dropped"], &[3, 4, 5, 6, 10]),
            (&["--pod", "production/backend"], &[3, 5, 7, 8, 9, 10]),
            (&["--from-pod", "staging/"], &[3]),
            (&["--to-pod", "production/backend", "--not", "--verdict", "FORWARDED"], &[3, 5]),
            (&["--type", "drop"], &[3, 4, 5, 6]),
            (&["--type", "policy-verdict"], &[0, 1, 7]),
            (&["--type", "trace"], &[2]),
            (&["--type", "trace:from-endpoint"], &[2]),
            (&["--type", "l7"], &[8, 9, 10, 11]),
            (&["--type", "drop:POLICY_DENIED", "--not", "--protocol", "udp"], &[3]),
            (&["--protocol", "udp"], &[4, 6, 7, 11]),
            (&["--protocol", "http"], &[8, 9, 10]),
            (&["--protocol", "dns"], &[11]),
            (&["-l", "app=frontend"], &[0, 1, 5, 7, 8, 9, 10]),
            (&["--from-label", "k8s:app=frontend", "--to-label", "app=backend"], &[5, 7, 8]),
            (&["--http-status", "4+"], &[10]),
            (&["--http-method", "get"], &[8, 9]),
            (&["--http-path", "^/api/v1/products$"], &[8, 9]),
            (&["--fqdn", "*.stripe.com"], &[11]),
            (&["-n", "staging"], &[2, 3, 4]),
            (&["--identity", "260"], &[2, 3, 4]),
            (&["--port", "53"], &[4, 6, 7, 11]),
            (&["--traffic-direction", "egress"], &[0, 4, 6, 7, 11]),
            (&["--drop-reason", "SOCKET_LOOKUP_FAILED"], &[5, 6]),
            (&["--since", "2026-12-03T08:13:29Z", "--until", "2026-12-03T08:13:31Z"], &[9, 10]),
            (&["--last", "2"], &[11, 12]),
            (&["--ip-version", "v6"], &[4, 6, 7]),
            (&["--tcp-flags", "SYN"], &[0, 1, 3, 5]),
            (&["--not", "--pod", "production/"], &[2, 12]),
            (&["--type", "agent"], &[12]),
            (&["--verdict", "DROPPED", "--verdict", "FORWARDED", "--pod", "kube-system/"], &[0, 1, 2, 6, 11]),
            (&["--from-ip", "198.18.0.0/15", "--to-port", "8080"], &[0, 1, 3, 5, 8]),
        ];
        for (args, want) in cases {
            let mut a = args.to_vec();
            a.extend_from_slice(&["-o", "json"]);
            let (code, out, err) = observe(&a);
            assert_eq!(code, 0, "{args:?}: {err}");
            let got: Vec<u32> = out
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json");
                    let uuid = v["flow"]["uuid"].as_str().expect("uuid").to_string();
                    uuid.rsplit('-').next().and_then(|n| n.parse().ok()).expect("numbered uuid")
                })
                .collect();
            assert_eq!(&got, want, "observe {}", args.join(" "));
        }
    }

    #[test]
    fn observe_reads_hubbles_own_export() {
        let (code, out, err) =
            run(&["observe", "--input-file", "testdata/corpus/hubble/export-sample-flows.jsonl", "--color", "never"]);
        assert_eq!(code, 0, "{err}");
        golden("observe-hubble.txt", &out);
        let (code, out, _) = run(&[
            "observe",
            "--input-file",
            "testdata/corpus/hubble/export-sample-flows.jsonl",
            "--from-pod",
            "default/xwing",
            "--drop-reason",
            "POLICY_DENIED",
            "-o",
            "json",
        ]);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("deathstar"), "{out}");
    }

    #[test]
    fn observe_bad_input_says_what_and_where() {
        for (args, says) in [
            (&["--not"][..], "--not must be followed by a filter flag"),
            (&["--verdict", "MAYBE"], "--verdict MAYBE: expected FORWARDED, DROPPED"),
            (&["--http-status", "4x"], "http_status_code `4x`: expected a code (404) or a class (4+)"),
            (&["-l", "app in (a,"], "label selector"),
            (&["--since", "yesterday"], "--since: `yesterday` is neither an RFC 3339 time"),
        ] {
            let (code, _, err) = observe(args);
            assert_eq!(code, 2, "{args:?}");
            assert!(err.contains(says), "{args:?}: {err}");
        }
        let tmp = std::env::temp_dir().join(format!("bulkhead-badflows-{}.jsonl", std::process::id()));
        let good = std::fs::read_to_string(root().join(FLOWS)).expect("fixture");
        std::fs::write(&tmp, format!("{}not json\n", good.lines().next().expect("a line").to_owned() + "\n"))
            .expect("write");
        let (code, out, err) = run(&["observe", "--input-file", tmp.to_str().expect("path"), "--color", "never"]);
        let _ = std::fs::remove_file(&tmp);
        assert_eq!(code, 1, "a line that is no flow is an error");
        assert!(err.contains(":2: not a flow"), "{err}");
        assert_eq!(out.lines().count(), 1, "the good line is still shown: {out}");
    }
}

/// `--http-header` reaches `headers` and `headerMatches`, and the answer
/// says what each mismatch action would do — as the proxy does (the same
/// example policy as `l7.rs` `header_matches_decide_and_fix…`).
#[test]
fn trace_http_headers_and_header_match_actions() {
    let trace = |headers: &[&str]| {
        let mut args =
            vec!["policy", "trace", "--cluster", "examples/seed/cluster.yaml", "--policies", "examples/seed/policies"];
        args.push("examples/header-matches/team-headers.yaml");
        args.extend(["-n", "production", "--from", "production/frontend", "--to", "production/backend"]);
        args.extend(["--port", "8080/TCP", "--http-path", "/team/7"]);
        for h in headers {
            args.extend(["--http-header", h]);
        }
        run(&args)
    };
    let (code, out, err) = trace(&["X-Tenant: acme", "x-team: red"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"headerMatches: X-Team ("red") replaced with "blue", X-Trace (absent) "on" added"#),
        "{out}"
    );
    let (code, out, _) = trace(&["X-Team: blue"]);
    assert_eq!(code, 0);
    assert!(out.contains("403"), "no X-Tenant: the rule does not match: {out}");
    let (code, _, err) = trace(&["X-Tenant"]);
    assert_eq!(code, 2);
    assert!(err.contains("write it as `Name: value`"), "{err}");
}
