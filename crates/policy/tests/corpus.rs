//! Walks testdata/corpus (copied from upstream; see its README): every file validates, or is rejected for the
//! reason the corpus README documents, with a message that says so.

use std::path::{Path, PathBuf};

use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::diag::{Severity, Sink};

fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/corpus");
    assert!(p.is_dir(), "the policy corpus is missing at {}", p.display());
    p
}

fn validate(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable corpus file");
    let mut sink = Sink::new(&path.display().to_string());
    decode_str(&text, &DecodeOptions::default(), &mut sink);
    sink.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(ToString::to_string).collect()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("corpus dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "json"))
            && !p.ends_with("MANIFEST.json")
        {
            out.push(p);
        }
    }
}

/// Files the corpus README documents as invalid, with a phrase the error must contain.
const EXPECTED_REJECTIONS: &[(&str, &[&str])] = &[
    ("host/allow-extended-protocols.yaml", &["protocol `VRRP` is not accepted by Cilium 1.17"]),
    (
        "l3/match-expressions/and-statement.yaml",
        &["`in` is not a valid operator: operators are case-sensitive (fix: `In`)"],
    ),
    ("l3/match-expressions/or-statement.yaml", &["`in` is not a valid operator"]),
    ("l3/entities/from_nodes.yaml", &["missing field `apiVersion` (found `apiversion`"]),
    ("host/lock-down-ingress.yaml", &["REMOVE_ME_AFTER_DOUBLE_CHECKING_PORTS", "valid port name"]),
];

#[test]
fn cilium_examples_validate_or_fail_for_their_documented_reason() {
    let root = corpus();
    let mut all = Vec::new();
    files(&root.join("cilium-examples"), &mut all);
    files(&root.join("cilium-cli-connectivity"), &mut all);
    assert!(all.len() >= 60, "corpus has {} files", all.len());
    for f in &all {
        let rel = f.strip_prefix(root.join("cilium-examples")).unwrap_or(f).display().to_string();
        let errors = validate(f);
        match EXPECTED_REJECTIONS.iter().find(|(p, _)| *p == rel) {
            Some((_, phrases)) => {
                assert!(!errors.is_empty(), "{rel} must be rejected");
                for phrase in *phrases {
                    assert!(
                        errors.iter().any(|e| e.contains(phrase)),
                        "{rel}: no error mentions {phrase:?}: {errors:#?}"
                    );
                }
            }
            None => assert!(errors.is_empty(), "{rel} must validate: {errors:#?}"),
        }
    }
}

#[test]
fn seed_policies_validate() {
    for name in ["allow-stripe-api-only.yaml", "restrict-backend-api.yaml"] {
        let errors = validate(&corpus().join("seed").join(name));
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

#[test]
fn seed_as_published_is_rejected_with_fixes() {
    let dir = corpus().join("seed/as-published");
    let dns = validate(&dir.join("allow-stripe-api-only.yaml"));
    let want = [
        "7:13: apiVersion: wrong apiVersion for CiliumNetworkPolicy: `cilium.io` lacks the version (fix: apiVersion: cilium.io/v2)",
        "24:11: spec.egress[0].toPorts[0].rules.dns[0].pattern: unknown field `pattern` (fix: did you mean `matchPattern`?",
        "25:11: spec.egress[0].toPorts[0].rules.dns[0].mode: unknown field `mode`",
    ];
    for w in want {
        assert!(dns.iter().any(|e| e.contains(w)), "missing {w:?} in {dns:#?}");
    }
    let http = validate(&dir.join("restrict-backend-api.yaml"));
    assert_eq!(http.len(), 1, "{http:#?}");
    assert!(http[0].contains("4:13: apiVersion:") && http[0].contains("fix: apiVersion: cilium.io/v2"), "{http:#?}");
}

/// The agent stores applied objects as JSON: every object of the corpus
/// (and of the seed cluster) comes back from its JSON form unchanged.
#[test]
fn every_object_round_trips_through_json() {
    let root = corpus();
    let mut all = Vec::new();
    files(&root, &mut all);
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/cluster.yaml"));
    let mut n = 0;
    for f in &all {
        let text = std::fs::read_to_string(f).expect("readable corpus file");
        let mut sink = Sink::new(&f.display().to_string());
        for o in decode_str(&text, &DecodeOptions::default(), &mut sink) {
            let json = serde_json::to_string(&o).expect("serialises");
            let back: bulkhead_policy::api::Object =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}: {json}", f.display()));
            assert_eq!(back, o, "{}", f.display());
            n += 1;
        }
    }
    assert!(n >= 80, "only {n} objects");
}
