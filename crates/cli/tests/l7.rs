//! The L7 proxy on the seed lab (root): the seed's HTTP rule decided per
//! request on real traffic, IPv4 and IPv6 — allowed requests reach the
//! backend, others get Cilium's 403, normalized bypass attempts neither
//! slip past nor are refused when they mean an allowed path, smuggling
//! shapes are refused with 400 and nothing after them reaches the server;
//! the proxy's rules survive the agent's `kill -9` with no failed request,
//! and its own `kill -9` fails closed until it is back.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_datapath::netns;
use bulkhead_lab::wait_until;
use support::{Lab, privileged, repo};

fn seed_lab(tag: &str) -> Lab {
    let lab = Lab::up(tag, &repo().join("examples/seed/cluster.yaml"), &[]);
    let policies = repo().join("examples/seed/policies");
    lab.ok(&["apply", "-f", policies.to_str().expect("path"), "-n", "production"]);
    lab
}

/// `bulkhead apply` of `yaml` (through a file of the lab's own): its output.
fn apply(lab: &Lab, yaml: &str) -> String {
    let file = std::env::temp_dir().join(format!("bulkhead-{}-{}.yaml", lab.name, std::process::id()));
    std::fs::write(&file, yaml).expect("write policy");
    let out = lab.ok(&["apply", "-f", file.to_str().expect("path")]);
    let _ = std::fs::remove_file(&file);
    out
}

/// `curl` from `pod` to `url` with `args`: (status, body); status 0 when
/// no response came.
fn curl(lab: &Lab, pod: &str, args: &[&str], url: &str) -> (u16, String) {
    let mut a = vec!["exec", pod, "--", "curl", "-s", "-m", "3", "--path-as-is", "-w", "\n%{http_code}"];
    a.extend_from_slice(args);
    a.push(url);
    let out = lab.lab(&a);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn backend(lab: &Lab, v4: bool) -> String {
    match lab.ip("production/backend", v4) {
        IpAddr::V4(a) => format!("http://{a}:8080"),
        IpAddr::V6(a) => format!("http://[{a}]:8080"),
    }
}

/// What the backend's responder says it was asked (it echoes the method
/// and path it received).
fn served(body: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (v["method"].as_str().unwrap_or("").into(), v["path"].as_str().unwrap_or("").into())
}

#[test]
fn the_seed_http_rule_is_enforced_per_request_on_both_families() {
    if !privileged("the_seed_http_rule_is_enforced_per_request_on_both_families") {
        return;
    }
    let lab = seed_lab("l7rule");
    for v4 in [true, false] {
        let b = backend(&lab, v4);
        // The rule's own request.
        let (code, body) = curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/products?id=7"));
        assert_eq!(code, 200, "{b}: {body}");
        assert_eq!(served(&body), ("GET".into(), "/api/v1/products".into()));
        // Another method, another path: Cilium's answer.
        for (args, path) in [(&["-X", "POST", "-d", "x=1"][..], "/api/v1/products"), (&[][..], "/admin")] {
            let (code, body) = curl(&lab, "production/frontend", args, &format!("{b}{path}"));
            assert_eq!((code, body.as_str()), (403, "Access denied\r\n"), "{b}{path} {args:?}");
        }
        // Bypass attempts mean what they say after normalization.
        for (path, want) in [
            ("/api/v1/../admin", 403),
            ("/api/v1/products/../../../admin", 403),
            ("/api/v1/%2e%2e/admin", 403),
            ("/api//v1/products", 200),
            ("/api/v1/%70roducts", 200),
            ("/api/./v1/products", 200),
            ("/api/v1%2F..%2Fadmin", 400),
            ("/api/v1/products%00", 400),
        ] {
            let (code, body) = curl(&lab, "production/frontend", &[], &format!("{b}{path}"));
            assert_eq!(code, want, "{b}{path}: {body}");
            if want == 200 {
                // The server sees the normal form the rule decided.
                assert_eq!(served(&body).1, "/api/v1/products", "{path}");
            }
        }
        // Another pod has no L3/L4 allow: it never reaches the proxy.
        let (code, _) = curl(&lab, "staging/debug-tools", &["-m", "1"], &format!("{b}/api/v1/products"));
        assert_eq!(code, 0, "debug-tools got an answer from {b}");
    }
    let status = lab.json(&["status", "-o", "json"]);
    assert!(status["drops"]["POLICY_DENIED INGRESS"].as_u64().unwrap_or(0) > 0, "{status}");

    // Every request and response is an L7 flow naming the rule: the one
    // that allowed it, or for a denied one the rule that came closest.
    let b = backend(&lab, true);
    curl(&lab, "production/frontend", &["-H", "Authorization: Bearer s3cret"], &format!("{b}/api/v1/products"));
    curl(&lab, "production/frontend", &["-X", "DELETE"], &format!("{b}/api/v1/products"));
    let flows = |args: &[&str]| lab.l7_flows(50, args);
    let allowed = flows(&["--http-method", "GET", "--http-path", "/api/v1/products", "--verdict", "FORWARDED"]);
    let request = allowed.iter().rev().find(|f| f["l7"]["type"] == "REQUEST").expect("the allowed request's flow");
    assert_eq!(request["ingress_allowed_by"][0]["name"], "restrict-backend-api", "{request}");
    assert_eq!(request["source"]["pod_name"], "frontend");
    assert_eq!(request["destination"]["pod_name"], "backend");
    let headers = request["l7"]["http"]["headers"].as_array().expect("headers");
    assert!(
        headers.iter().any(|h| h["key"] == "authorization" && h["value"] == "HUBBLE_REDACTED"),
        "the credential left the proxy: {headers:?}"
    );
    assert!(!request.to_string().contains("s3cret"));
    let response = allowed.iter().rev().find(|f| f["l7"]["type"] == "RESPONSE").expect("its response's flow");
    assert_eq!(response["l7"]["http"]["code"], 200);
    assert!(response["l7"]["latency_ns"].as_u64().unwrap_or(0) > 0, "{response}");
    assert_eq!(response["is_reply"], true);
    let denied = flows(&["--http-method", "DELETE", "--verdict", "DROPPED"]);
    let request = denied.iter().rev().find(|f| f["l7"]["type"] == "REQUEST").expect("the denied request's flow");
    assert_eq!(request["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(request["near_misses"][0]["policy"]["name"], "restrict-backend-api", "{request}");
    assert!(flows(&["--http-status", "403"]).iter().any(|f| f["l7"]["http"]["method"] == "DELETE"));
}

/// The frontend's own egress rule on the backend's port (`PATH` allowed).
fn frontend_egress(path: &str) -> String {
    r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-out, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "PATH"}]}}]
"#
    .replace("PATH", path)
}

#[test]
fn both_ends_rules_are_enforced_and_a_change_is_in_force_when_apply_returns() {
    if !privileged("both_ends_rules_are_enforced_and_a_change_is_in_force_when_apply_returns") {
        return;
    }
    let lab = seed_lab("l7both");
    let apply = |path: &str| apply(&lab, &frontend_egress(path));
    // The client's egress allows only inventory; the server's ingress allows
    // products and inventory: a request passes only when both allow it.
    apply("/api/v1/inventory.*");
    for v4 in [true, false] {
        let b = backend(&lab, v4);
        assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/inventory")).0, 200, "{b}");
        assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/products")).0, 403, "{b}");
        // Egress allows nothing here, ingress too: still denied.
        assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/admin")).0, 403, "{b}");
    }
    let out =
        lab.ok(&["observe", "--type", "l7", "--http-path", "/api/v1/products", "--verdict", "DROPPED", "-o", "json"]);
    let flow: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a denied products request")).expect("flow JSON");
    assert_eq!(flow["flow"]["near_misses"][0]["policy"]["name"], "frontend-out", "the client's rule denied it: {flow}");
    assert_eq!(flow["flow"]["traffic_direction"], "EGRESS");

    // A change is in the proxy when apply returns: the very next request
    // sees it, both ways.
    for _ in 0..5 {
        apply("/api/v1/products");
        let b = backend(&lab, true);
        assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/products")).0, 200);
        apply("/api/v1/inventory.*");
        assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/products")).0, 403);
    }
}

/// A connection from `pod` to the backend's 8080 (IPv4).
fn connect(lab: &Lab, pod: &str) -> TcpStream {
    let dst = SocketAddr::new(lab.ip("production/backend", true), 8080);
    let s = netns::run_in(&lab.netns(pod), || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
        .expect("pod netns")
        .unwrap_or_else(|e| panic!("connect to {dst}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s
}

/// Everything the peer sends until it closes (or goes quiet).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(responses: &str) -> Vec<u16> {
    responses.split("HTTP/1.1 ").skip(1).filter_map(|r| r.get(..3)?.parse().ok()).collect()
}

#[test]
fn pipelined_and_smuggled_requests_reach_the_server_exactly_as_allowed() {
    if !privileged("pipelined_and_smuggled_requests_reach_the_server_exactly_as_allowed") {
        return;
    }
    let lab = seed_lab("l7smug");
    // Pipelined: allowed, denied, allowed — answered in order on one
    // connection, the denied one by the proxy.
    let mut s = connect(&lab, "production/frontend");
    s.write_all(
        b"GET /api/v1/products HTTP/1.1\r\nHost: backend\r\n\r\n\
          DELETE /api/v1/products HTTP/1.1\r\nHost: backend\r\n\r\n\
          GET /api/v1/inventory/3 HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let got = read_all(&mut s);
    assert_eq!(statuses(&got), [200, 403, 200], "{got}");
    let paths: Vec<&str> = got.match_indices("\"path\":\"").map(|(i, m)| &got[i + m.len()..]).collect();
    assert!(paths[0].starts_with("/api/v1/products\"") && paths[1].starts_with("/api/v1/inventory/3\""), "{got}");

    // Smuggling shapes: refused with 400 and the connection closed; the
    // request hidden behind them never reaches the server.
    for smuggle in [
        "POST /api/v1/products HTTP/1.1\r\nHost: backend\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: backend\r\n\r\n",
        "GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\n",
        "GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nHost: admin\r\n\r\n",
        "GET http://admin/api/v1/products HTTP/1.1\r\nHost: backend\r\n\r\n",
    ] {
        let mut s = connect(&lab, "production/frontend");
        s.write_all(smuggle.as_bytes()).expect("write");
        let got = read_all(&mut s);
        assert_eq!(statuses(&got), [400], "{smuggle:?} answered {got:?}");
        assert!(!got.contains("\"pod\""), "{smuggle:?} reached the server: {got}");
    }

    // Expect: 100-continue on a request the rules deny: 403 before the
    // body is sent, then the connection closes.
    let mut s = connect(&lab, "production/frontend");
    s.write_all(
        b"POST /api/v1/products HTTP/1.1\r\nHost: backend\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("write");
    let got = read_all(&mut s);
    assert_eq!(statuses(&got), [403], "{got}");
    assert!(got.contains("connection: close"), "{got}");
}

/// Requests from the frontend on fresh connections, counted, until stopped.
fn load(lab: &Lab, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let ns = lab.netns("production/frontend");
    let dst = SocketAddr::new(lab.ip("production/backend", true), 8080);
    std::thread::spawn(move || {
        netns::run_in(&ns, || {
            while !stop.load(Ordering::Relaxed) {
                let answered = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).ok().and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    s.write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n").ok()?;
                    Some(statuses(&read_all(&mut s)) == [200])
                });
                let counter = if answered == Some(true) { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .expect("frontend netns");
    })
}

#[test]
fn the_proxy_outlives_the_agent_and_fails_closed_when_it_dies() {
    if !privileged("the_proxy_outlives_the_agent_and_fails_closed_when_it_dies") {
        return;
    }
    let lab = seed_lab("l7kill");
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let worker = load(&lab, Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
    wait_until("requests answered", Duration::from_secs(5), || ok.load(Ordering::Relaxed) >= 20).expect("load");

    // kill -9 of the agent under load: the proxy keeps its rules; not one
    // request fails.
    let agent = lab.state()["agent_pid"].as_i64().expect("agent pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), nix::sys::signal::Signal::SIGKILL).expect("kill agent");
    let before = ok.load(Ordering::Relaxed);
    wait_until("requests answered with no agent", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) >= before + 200
    })
    .expect("load");
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("load thread");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the agent was dead ({} ok)",
        ok.load(Ordering::Relaxed)
    );
    let log = std::env::temp_dir().join(format!("bulkhead-l7kill-agent-{}.log", std::process::id()));
    let mut agent = lab.spawn_agent(&[], &log);

    // kill -9 of the proxy: L7 connections fail closed (no request reaches
    // the server unchecked), and succeed again within a second of its restart.
    let args = lab.kill_proxy();
    let b = backend(&lab, true);
    let (code, body) = curl(&lab, "production/frontend", &["-m", "1"], &format!("{b}/api/v1/products"));
    assert_eq!(code, 0, "answered with the proxy dead: {body}");
    let (code, body) = curl(&lab, "production/frontend", &["-m", "1"], &format!("{b}/admin"));
    assert_eq!(code, 0, "answered with the proxy dead: {body}");
    let dropped = lab.json(&["status", "-o", "json"])["drops"]["SOCKET_LOOKUP_FAILED INGRESS"].as_u64().unwrap_or(0)
        + lab.json(&["status", "-o", "json"])["drops"]["SOCKET_LOOKUP_FAILED EGRESS"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "the kernel counts the connections it could not hand over");

    let mut proxy = support::restart_proxy(&args);
    let started = Instant::now();
    let mut answered = None;
    while started.elapsed() < Duration::from_secs(3) {
        if curl(&lab, "production/frontend", &["-m", "1"], &format!("{b}/api/v1/products")).0 == 200 {
            answered = Some(started.elapsed());
            break;
        }
    }
    let took = answered.expect("no answer within 3 s of the proxy's restart");
    assert!(took < Duration::from_secs(1), "new connections succeeded {took:?} after the proxy's restart");
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_file(&log);
}

const PAYMENTS_GRPC: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: payments-grpc, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: payment-processor}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}], rules: {http: [{method: POST, path: /bulkhead.Payments/Charge}]}}]
"#;

#[test]
fn http2_and_grpc_requests_are_decided_per_stream() {
    if !privileged("http2_and_grpc_requests_are_decided_per_stream") {
        return;
    }
    let lab = seed_lab("l7h2");
    apply(&lab, PAYMENTS_GRPC);
    let frontend = lab.netns("production/frontend");
    let h2 = |dst: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]| {
        netns::run_in(&frontend, || {
            bulkhead_lab::h2client::request(dst, method, path, headers, b"", Duration::from_secs(3))
        })
        .expect("frontend netns")
        .unwrap_or_else(|e| panic!("{method} {dst}{path}: {e}"))
    };
    for v4 in [true, false] {
        let backend = SocketAddr::new(lab.ip("production/backend", v4), 8080);
        // HTTP/2 with prior knowledge: each stream decided on its own.
        let a = h2(backend, "GET", "/api/v1/products?page=2", &[]);
        assert_eq!(a.status, 200, "{backend}");
        assert_eq!(served(&String::from_utf8_lossy(&a.body)), ("GET".into(), "/api/v1/products".into()));
        let a = h2(backend, "GET", "/api//v1/%70roducts", &[]);
        assert_eq!((a.status, served(&String::from_utf8_lossy(&a.body)).1.as_str()), (200, "/api/v1/products"));
        for (method, path) in
            [("DELETE", "/api/v1/products"), ("GET", "/admin"), ("GET", "/api/v1/products/../../admin")]
        {
            let a = h2(backend, method, path, &[]);
            assert_eq!((a.status, a.body.as_slice()), (403, &b"Access denied\r\n"[..]), "{method} {path}");
        }
        assert_eq!(h2(backend, "GET", "/api/v1%2F..%2Fadmin", &[]).status, 400);
        // Upgrade from HTTP/1.1 (curl --http2 asks with `Upgrade: h2c`): the
        // first answer comes on stream 1, the next requests are streams,
        // each decided.
        let (products, admin) = (format!("http://{backend}/api/v1/products"), format!("http://{backend}/admin"));
        let out = lab.lab(&[
            "exec",
            "production/frontend",
            "--",
            "curl",
            "-s",
            "-m",
            "3",
            "--http2",
            "-w",
            "%{http_version} %{http_code}\n",
            "-o",
            "/dev/null",
            &products,
            "-o",
            "/dev/null",
            &admin,
            "-o",
            "/dev/null",
            &products,
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200\n2 403\n2 200\n", "{backend}");

        // gRPC, written as Cilium users write it (POST /package.Service/Method).
        let payments = SocketAddr::new(lab.ip("production/payment-processor", v4), 9090);
        let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
        let a = h2(payments, "POST", "/bulkhead.Payments/Charge", &grpc);
        assert_eq!((a.status, a.grpc_status()), (200, Some(0)), "{a:?}");
        assert!(String::from_utf8_lossy(&a.body).contains("/bulkhead.Payments/Charge"), "the service saw the call");
        let a = h2(payments, "POST", "/bulkhead.Payments/Refund", &grpc);
        assert_eq!((a.status, a.grpc_status()), (200, Some(7)), "PERMISSION_DENIED: {a:?}");
        assert!(a.body.is_empty() && a.trailers.is_empty(), "trailers-only: {a:?}");
        assert_eq!(a.headers.get("grpc-message").and_then(|v| v.to_str().ok()), Some("Access%20denied%0D%0A"));
    }
    let out = lab.ok(&["observe", "--type", "l7", "--http-path", "/bulkhead.Payments/Refund", "-o", "json"]);
    let flow: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("the denied call's flow")).expect("JSON");
    assert_eq!(flow["flow"]["l7"]["http"]["protocol"], "HTTP/2");
    assert_eq!(flow["flow"]["verdict"], "DROPPED");
    assert_eq!(flow["flow"]["near_misses"][0]["policy"]["name"], "payments-grpc");
}

#[test]
fn header_matches_decide_and_fix_what_is_forwarded_on_both_protocols() {
    if !privileged("header_matches_decide_and_fix_what_is_forwarded_on_both_protocols") {
        return;
    }
    let lab = seed_lab("l7hm");
    let example = repo().join("examples/header-matches/team-headers.yaml");
    lab.ok(&["apply", "-f", example.to_str().expect("path")]);
    let sent = ["X-Tenant: acme", "X-Team: red", "X-Debug: on", "X-Audit: 0"].map(|h| ["-H", h]).concat();
    for (v4, protocol) in [(true, "--http1.1"), (false, "--http1.1"), (true, "--http2-prior-knowledge")] {
        let b = backend(&lab, v4);
        let mut args = vec![protocol];
        args.extend(&sent);
        let (code, body) = curl(&lab, "production/frontend", &args, &format!("{b}/team/7"));
        assert_eq!(code, 200, "{b} {protocol}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        // X-Tenant matched; X-Team replaced, X-Trace added, X-Debug (a
        // wrong value) deleted, X-Audit logged and left as sent.
        assert_eq!(
            v["headers"],
            serde_json::json!({"x-tenant": "acme", "x-team": "blue", "x-trace": "on", "x-audit": "0"}),
            "{b} {protocol}"
        );
        // Without X-Tenant (a headerMatches entry with no mismatch action)
        // the rule does not match.
        let (code, _) = curl(&lab, "production/frontend", &[protocol, "-H", "X-Team: blue"], &format!("{b}/team/7"));
        assert_eq!(code, 403, "{b} {protocol}");
    }
    let log = std::fs::read_to_string(format!("/run/bulkhead/{}/proxy.log", lab.name)).expect("the proxy's log");
    assert!(
        log.lines().any(|l| l.contains("headerMatches mismatch") && l.contains("X-Audit") && l.contains("action=Log")),
        "the LOG mismatch is in the proxy's log"
    );
}

const RATE_LIMITS: &str = r#"
apiVersion: bulkhead.io/v1alpha1
kind: RateLimit
metadata: {name: products-rl, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080"}]}]
    LIMIT
---
apiVersion: bulkhead.io/v1alpha1
kind: RateLimit
metadata: {name: payments-rl, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: payment-processor}}
  ingress:
  - toPorts: [{ports: [{port: grpc}]}]
    requestsPerSecond: 1
    burst: 2
"#;

/// One response from a keep-alive connection: (status, head, body).
fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (status, head, body);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&buf).into_owned(), String::new()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn rate_limits_answer_429_and_grpc_8_per_source_identity_and_show_in_flows_and_metrics() {
    if !privileged("rate_limits_answer_429_and_grpc_8_per_source_identity_and_show_in_flows_and_metrics") {
        return;
    }
    let lab = seed_lab("l7rl");
    let apply = |limit: &str| apply(&lab, &RATE_LIMITS.replace("LIMIT", limit));
    let out = apply("requestsPerSecond: 1\n    burst: 3");
    assert!(out.contains("products-rl"), "apply names what it applied: {out}");

    // HTTP/1.1 on one keep-alive connection: the burst, then 429 with
    // Retry-After, the connection kept; the rules still come first.
    let get = b"GET /api/v1/products HTTP/1.1\r\nHost: backend\r\n\r\n";
    let mut s = connect(&lab, "production/frontend");
    let mut codes = Vec::new();
    for _ in 0..5 {
        s.write_all(get).expect("write");
        let (code, head, body) = read_response(&mut s);
        if code == 429 {
            assert!(head.to_ascii_lowercase().contains("\r\nretry-after: 1"), "{head}");
            assert_eq!(body, "Too many requests\r\n");
        }
        codes.push(code);
    }
    assert_eq!(codes, [200, 200, 200, 429, 429], "burst 3 at 1/s");
    s.write_all(b"DELETE /api/v1/products HTTP/1.1\r\nHost: backend\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).0, 403, "a denied request is denied, not counted as limited");
    // The bucket is the frontend's identity's, whatever its address.
    let v6 = backend(&lab, false);
    assert_eq!(curl(&lab, "production/frontend", &[], &format!("{v6}/api/v1/products")).0, 429);
    std::thread::sleep(Duration::from_millis(1100));
    s.write_all(get).expect("write");
    assert_eq!(read_response(&mut s).0, 200, "a second refills one token");
    drop(s);

    // gRPC to a pod whose ingress no policy enforces: limited all the
    // same, per source identity (RESOURCE_EXHAUSTED, trailers-only).
    let call = |pod: &str| {
        let payments = SocketAddr::new(lab.ip("production/payment-processor", true), 9090);
        let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
        netns::run_in(&lab.netns(pod), || {
            bulkhead_lab::h2client::request(
                payments,
                "POST",
                "/bulkhead.Payments/Charge",
                &grpc,
                b"",
                Duration::from_secs(3),
            )
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("gRPC from {pod}: {e}"))
    };
    let got: Vec<Option<u32>> = (0..3).map(|_| call("production/frontend").grpc_status()).collect();
    assert_eq!(got, [Some(0), Some(0), Some(8)], "burst 2, then RESOURCE_EXHAUSTED");
    let a = call("production/frontend");
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty() && a.trailers.is_empty(), "trailers-only: {a:?}");
    assert_eq!(a.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(call("staging/debug-tools").grpc_status(), Some(0), "another identity has its own bucket");

    // maxConcurrentRequests: a request counts until its response is
    // relayed; a body still arriving holds it.
    apply("maxConcurrentRequests: 1");
    let mut slow = connect(&lab, "production/frontend");
    slow.write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\n\r\nab").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    let b = backend(&lab, true);
    assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/products")).0, 429, "one in flight");
    slow.write_all(b"cd").expect("write");
    assert_eq!(read_response(&mut slow).0, 200);
    assert_eq!(curl(&lab, "production/frontend", &[], &format!("{b}/api/v1/products")).0, 200, "it completed");

    // Flows name the RateLimit; metrics count by it.
    let out = lab.ok(&["observe", "--type", "l7", "--http-status", "429", "-o", "json"]);
    assert!(out.lines().count() >= 3, "the 429 responses: {out}");
    let out =
        lab.ok(&["observe", "--type", "l7", "--verdict", "DROPPED", "--http-path", "/api/v1/products", "-o", "json"]);
    let denied: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["flow"].clone()).collect();
    let limited = denied
        .iter()
        .find(|f| f["l7"]["type"] == "REQUEST" && f["ingress_denied_by"][0]["name"] == "products-rl")
        .unwrap_or_else(|| panic!("a request flow denied by products-rl: {out}"));
    assert_eq!(limited["ingress_denied_by"][0]["kind"], "RateLimit", "{limited}");
    assert_eq!(limited["traffic_direction"], "INGRESS");
    let text = lab.metrics();
    for (name, at_least) in [("products-rl", 4), ("payments-rl", 2)] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(r#"bulkhead_http_rate_limited_total{{namespace="production",name="{name}"}}"#))
            })
            .unwrap_or_else(|| panic!("no rate-limited counter for {name}:\n{text}"));
        let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(n >= at_least, "{line}");
    }
}
