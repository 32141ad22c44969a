use super::*;
use bulkhead_policy::yaml::{self, Node};

/// A YAML node as the JSON the apiserver would hold (kubectl's conversion:
/// unquoted integers, booleans and nulls typed, everything else a string).
fn to_json(n: &Node) -> Value {
    match &n.value {
        yaml::Value::Null => Value::Null,
        yaml::Value::Scalar { text, quoted: true } => Value::String(text.clone()),
        yaml::Value::Scalar { text, quoted: false } => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" | "~" | "" => Value::Null,
            t => t.parse::<i64>().map_or_else(|_| Value::String(t.into()), Value::from),
        },
        yaml::Value::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        yaml::Value::Map(entries) => Value::Object(entries.iter().map(|(k, v)| (k.text.clone(), to_json(v))).collect()),
    }
}

fn request(kind: &str, namespace: &str, object: Value) -> Value {
    json!({"uid": "u-1", "kind": {"group": "cilium.io", "version": "v2", "kind": kind}, "operation": "CREATE", "namespace": namespace, "object": object})
}

#[test]
fn every_corpus_object_is_answered_as_validate_judges_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/corpus");
    let files =
        crate::inputs::expand(&[root.join("cilium-examples"), root.join("cilium-cli-connectivity"), root.join("seed")])
            .expect("corpus");
    let (mut admitted, mut denied) = (0, 0);
    for file in files.iter().filter(|f| !f.ends_with("MANIFEST.json")) {
        let text = std::fs::read_to_string(file).expect("read");
        // What `policy validate FILE` says, by line.
        let mut sink = Sink::new("f");
        let _ = decode_str(&text, &DecodeOptions::default(), &mut sink);
        let Ok(docs) = yaml::parse_documents(&text) else { continue };
        let starts: Vec<usize> = docs.iter().map(|d| d.pos.line).collect();
        for (i, doc) in docs.iter().enumerate() {
            let kind = doc.get("kind").and_then(Node::as_str).unwrap_or_default();
            if !KINDS.contains(&kind) {
                continue;
            }
            let end = starts.get(i + 1).copied().unwrap_or(usize::MAX);
            let errors: Vec<&Diagnostic> = sink
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error && (starts[i]..end).contains(&d.line))
                .collect();
            let object = to_json(doc);
            let ns = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let v = decide(&request(kind, &ns, object), &[]);
            let at = format!("{} document {i}", file.display());
            assert_eq!(v.allowed, errors.is_empty(), "{at}: validate says {errors:?}; the webhook {v:?}");
            for e in errors {
                assert!(v.message.contains(&one_line(e)), "{at}: `{}` missing from {:?}", one_line(e), v.message);
            }
            if v.allowed { admitted += 1 } else { denied += 1 }
        }
    }
    // The library's examples validate; the as-published seed does not.
    assert!(admitted > 60 && denied >= 2, "admitted {admitted}, denied {denied}");
}

#[test]
fn reviews_answer_with_the_uid_and_deny_with_field_and_fix() {
    let object = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [{"toEntities": ["all"]}]}
    });
    let body = |req: Value| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}).to_string()
    };
    // Valid, no guardrails: allowed.
    let r = review(body(request("CiliumNetworkPolicy", "shop", object.clone())).as_bytes(), &[]).expect("review");
    assert_eq!(r["response"], json!({"uid": "u-1", "allowed": true}));
    assert_eq!((r["apiVersion"].as_str(), r["kind"].as_str()), (Some("admission.k8s.io/v1"), Some("AdmissionReview")));
    // Against guardrails forbidding `all`: 403 with the rule, guardrail and fix.
    let mut sink = Sink::new("g.yaml");
    let g = bulkhead_policy::api::decode::decode_guardrails(
        "apiVersion: bulkhead.io/v1alpha1\nkind: Guardrails\nmetadata: {name: org}\nspec: {forbidEntityAll: true}\n",
        &mut sink,
    );
    let r = review(body(request("CiliumNetworkPolicy", "shop", object.clone())).as_bytes(), &g).expect("review");
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(r["response"]["status"]["code"], 403);
    let msg = r["response"]["status"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with(
            "CiliumNetworkPolicy shop/p breaks the guardrails: spec.egress[0].toEntities: allows `toEntities: [all]`"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("[Guardrails org spec.forbidEntityAll (g.yaml:1)]") && msg.contains("(fix: name the peers"),
        "{msg}"
    );
    // Invalid: 400 with every field path and fix; warnings are passed on.
    let mut bad = object.clone();
    bad["spec"]["egress"][0] = json!({"toPorts": [{"ports": [{"port": 80}]}]});
    bad["metadata"]["labelz"] = json!({});
    let r = review(body(request("CiliumNetworkPolicy", "shop", bad)).as_bytes(), &[]).expect("review");
    assert_eq!(r["response"]["status"]["code"], 400);
    let msg = r["response"]["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains("spec.egress[0].toPorts[0].ports[0].port: port must be a string")
            && msg.contains("(fix: quote it"),
        "{msg}"
    );
    assert!(r["response"]["warnings"][0].as_str().is_some_and(|w| w.contains("metadata.labelz")), "{r}");
    // Deletes and other kinds pass; what is not an AdmissionReview is an error.
    let del =
        json!({"uid": "u-2", "kind": {"kind": "CiliumNetworkPolicy"}, "operation": "DELETE", "oldObject": object});
    assert_eq!(review(body(del).as_bytes(), &g).expect("review")["response"]["allowed"], true);
    let pod = request("Pod", "shop", json!({"apiVersion": "v1", "kind": "Pod"}));
    assert_eq!(review(body(pod).as_bytes(), &g).expect("review")["response"]["allowed"], true);
    assert!(review(b"{\"kind\": \"AdmissionReview\"}", &[]).is_err_and(|e| e.contains("admission.k8s.io/v1")));
    assert!(review(b"not json", &[]).is_err_and(|e| e.starts_with("not JSON")));
}
