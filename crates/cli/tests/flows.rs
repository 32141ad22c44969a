//! Flows end to end on a live lab (root): `observe` (filters, `--follow`),
//! the Prometheus endpoint checked by `promtool`, the signed flow log
//! (verified while the agent runs, after a clean stop, after `kill -9`
//! mid-write, and against 1,000 random mutations), and the service map in
//! headless Chromium, clicked.

mod support;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_agent::observer::flowlog::read_log;
use bulkhead_flow::log::{decode_segment, mutate::mutate, parse_public_key};
use support::{Lab, bulkhead, privileged, repo};

/// Lets every pod reach kube-dns on 53: an L3/L4 allow, so that flows name
/// the policy that allowed them (the seed's own rules are all L7).
const ALLOW_DNS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: allow-dns}
spec:
  endpointSelector: {matchLabels: {k8s-app: kube-dns}}
  ingress:
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]}]
"#;

fn tools_present(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    let missing: Vec<&str> =
        ["/usr/bin/promtool", "/usr/bin/chromium"].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: {} missing (scripts/deps.sh installs them)", missing.join(", "));
    eprintln!("skipping {test}: {} missing (bash scripts/test.sh installs them)", missing.join(", "));
    false
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("one JSON flow per line")).collect()
}

/// `GET url` over plain HTTP/1.0 (the agent's web server is on localhost).
fn http_get(url: &str) -> String {
    let (head, body) = http_request(url, None, &[]);
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

/// A GET of `url` with its own Host header (`host`, else the URL's) and
/// `headers`: (status line and headers, body).
fn http_request(url: &str, host: Option<&str>, headers: &[&str]) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent's web server");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n{extra}\r\n", host.unwrap_or(addr)).expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// The value of the sample `line_prefix` (a metric with its labels).
fn sample(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

fn agent_pid(lab: &Lab) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(lab.state()["agent_pid"].as_i64().expect("agent pid") as i32)
}

fn wait_gone(pid: nix::unistd::Pid) {
    let end = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() {
        // The lab's agent is not our child: it is reaped elsewhere, and a
        // zombie counts as gone.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        assert!(Instant::now() < end, "agent {pid} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify(dir: &Path, key: &str) -> (bool, serde_json::Value) {
    let out = Command::new(bulkhead())
        .args(["flows", "verify", dir.to_str().expect("path"), "--key", key, "-o", "json"])
        .output()
        .expect("flows verify");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

#[test]
fn observe_metrics_and_the_signed_flow_log() {
    if !tools_present("observe_metrics_and_the_signed_flow_log") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-flows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let allow_dns = dir.join("allow-dns.yaml");
    std::fs::write(&allow_dns, ALLOW_DNS).expect("write");
    let lab = Lab::up("flows", &repo().join("examples/seed/cluster.yaml"), &[]);
    lab.ok(&["apply", "-f", repo().join("examples/seed/policies").to_str().expect("path"), "-n", "production"]);
    lab.ok(&["apply", "-f", allow_dns.to_str().expect("path")]);

    // A follower started before the traffic sees it arrive.
    let mut follow = Command::new(bulkhead())
        .args(["observe", "-f", "--to-pod", "production/backend", "--verdict", "DROPPED", "-o", "json"])
        .env("BULKHEAD_SOCKET", &lab.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("observe -f");
    let followed = {
        let out = follow.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };
    // The probe runs until the follower prints (it may not be following yet
    // when the first runs); three rounds at most.
    let mut first = None;
    for _ in 0..3 {
        let probe = lab.lab(&["probe", "--ports", "8080/TCP,80/TCP,53/UDP", "-o", "json"]);
        assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stdout));
        if let Ok(line) = followed.recv_timeout(Duration::from_secs(5)) {
            first = Some(line);
            break;
        }
    }
    let first = first.expect("observe -f printed a new flow");
    let _ = follow.kill();
    let _ = follow.wait();
    let f: serde_json::Value = serde_json::from_str(&first).expect("json");
    assert_eq!(f["flow"]["verdict"], "DROPPED");
    assert_eq!(f["flow"]["destination"]["pod_name"], "backend");

    // Default deny names the closest rule and why it did not match.
    let drops = lines(&lab.ok(&[
        "observe",
        "--from-pod",
        "staging/debug-tools",
        "--to-pod",
        "production/backend",
        "--to-port",
        "8080",
        "--last",
        "100",
        "-o",
        "json",
    ]));
    let denied = drops.iter().map(|d| &d["flow"]).find(|f| f["drop_reason_desc"] == "POLICY_DENIED").expect("a drop");
    assert_eq!(denied["verdict"], "DROPPED");
    assert_eq!(denied["traffic_direction"], "INGRESS");
    assert_eq!(denied["event_type"]["type"], 1);
    assert_eq!(denied["event_type"]["sub_type"], 133);
    assert_eq!(denied["drop_reason"], 133);
    assert!(denied["uuid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(denied["source"]["labels"].as_array().is_some_and(|l| l.iter().any(|l| l == "k8s:app=debug-tools")));
    assert_eq!(denied["destination"]["namespace"], "production");
    let miss = &denied["near_misses"][0];
    assert_eq!(miss["policy"]["name"], "restrict-backend-api");
    assert_eq!(miss["policy"]["rule"], "spec.ingress[0]");
    assert!(miss["reason"].as_str().is_some_and(|r| r.contains("app=frontend")), "{miss}");
    // An allow names its policy; an L7 redirect is decided by the proxy, whose flow names the rule.
    let allowed = lines(&lab.ok(&[
        "observe",
        "--to-pod",
        "kube-system/kube-dns",
        "--to-port",
        "53",
        "--type",
        "policy-verdict",
        "--traffic-direction",
        "ingress",
        "--last",
        "5",
        "-o",
        "json",
    ]));
    let a = &allowed.last().expect("an allowed DNS flow")["flow"];
    assert_eq!(a["verdict"], "FORWARDED");
    assert_eq!(a["ingress_allowed_by"][0]["name"], "allow-dns");
    assert_eq!(a["ingress_allowed_by"][0]["kind"], "CiliumClusterwideNetworkPolicy");
    assert!(a["policy_match_type"].as_u64().is_some_and(|m| m > 0), "{a}");
    // The DNS rule's redirect: the DNS proxy decided the probe's query, an
    // L7 flow naming the rule.
    let dns = lines(&lab.ok(&["observe", "--type", "l7", "--from-pod", "production/payment-processor", "-o", "json"]));
    let query = dns
        .iter()
        .find(|f| f["flow"]["l7"]["dns"]["query"] == "probe.bulkhead.")
        .expect("the probe's DNS query, decided by the DNS proxy");
    assert_eq!(query["flow"]["egress_allowed_by"][0]["name"], "allow-stripe-api-only", "{query}");
    // The HTTP rule's: the proxy decided the probe's GET / (denied), an L7 flow.
    let l7 = lines(&lab.ok(&["observe", "--type", "l7", "--to-pod", "production/backend", "-o", "json"]));
    let denied =
        l7.iter().find(|f| f["flow"]["verdict"] == "DROPPED").expect("the probe's request, denied by the proxy");
    assert_eq!(denied["flow"]["near_misses"][0]["policy"]["name"], "restrict-backend-api");
    // A connection's state changes are traces with packet counts.
    let traces = lines(&lab.ok(&["observe", "--type", "trace", "--reply", "true", "--last", "5", "-o", "json"]));
    assert!(!traces.is_empty(), "first replies are reported");
    let compact = lab.ok(&["observe", "--from-pod", "staging/debug-tools", "--verdict", "DROPPED", "--last", "3"]);
    assert!(
        compact.contains("Policy denied DROPPED")
            && compact.contains("closest: CiliumNetworkPolicy production/restrict-backend-api"),
        "{compact}"
    );

    // Metrics: promtool accepts the text, and the families count what happened.
    let status = lab.json(&["status", "-o", "json"]);
    let web = status["flows"]["web"].as_str().expect("web address").to_string();
    assert!(status["flows"]["seen"].as_u64().unwrap_or(0) > 100, "{status}");
    assert_eq!(status["flows"]["lost"], serde_json::json!({"datapath_ring": 0, "flow_log": 0, "l7_proxy": 0}));
    let metrics = http_get(&format!("{web}metrics"));
    let m = dir.join("metrics.txt");
    std::fs::write(&m, &metrics).expect("write");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&m).expect("metrics"))
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for (prefix, min) in [
        (r#"bulkhead_drop_total{reason="POLICY_DENIED",direction="INGRESS"}"#, 1.0),
        (r#"bulkhead_dns_queries_total{rcode="",qtypes="A",ips_returned="0",verdict="FORWARDED"}"#, 1.0),
        (r#"bulkhead_http_requests_total{method="GET",protocol="HTTP/1.1",reporter="server",verdict="DROPPED"}"#, 1.0),
        (r#"bulkhead_flows_processed_total{type="drop",subtype="",verdict="DROPPED"}"#, 1.0),
        (r#"bulkhead_flows_processed_total{type="policy-verdict",subtype="",verdict="FORWARDED"}"#, 1.0),
        (r#"bulkhead_policy_verdicts_total{action="deny",match="none",direction="ingress"}"#, 1.0),
        (r#"bulkhead_policy_implementation_delay_seconds_count{source="apply"}"#, 2.0),
        (r#"bulkhead_policy_implementation_delay_seconds_count{source="endpoint"}"#, 5.0),
        (r#"bulkhead_forward_total{direction="EGRESS"}"#, 1.0),
        (r#"bulkhead_endpoints"#, 5.0),
    ] {
        let v = sample(&metrics, prefix).unwrap_or_else(|| panic!("no `{prefix}` in\n{metrics}"));
        assert!(v >= min, "{prefix} = {v}");
    }
    assert_eq!(sample(&metrics, r#"bulkhead_lost_events_total{source="datapath_ring"}"#), Some(0.0));
    assert!(sample(&metrics, r#"bulkhead_bpf_map_pressure{map_name="bh_ct"}"#).is_some_and(|p| p > 0.0 && p < 1.0));

    // The signed flow log: intact while the agent runs, intact and fully
    // signed after a clean stop.
    let key = lab.ok(&["flows", "key", "-q"]).trim().to_string();
    assert!(parse_public_key(&key).is_some(), "{key}");
    let log_dir = PathBuf::from(format!("/run/bulkhead/{}/agent/flows", lab.name));
    let (ok, report) = verify(&log_dir, &key);
    assert!(ok, "{report}");
    let pid = agent_pid(&lab);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("stop the agent");
    wait_gone(pid);
    let (ok, report) = verify(&log_dir, &key);
    assert!(ok && report["unsigned_tail"] == 0, "{report}");
    let flows_logged = report["flows"].as_u64().expect("flows");
    assert!(flows_logged >= status["flows"]["seen"].as_u64().unwrap_or(0), "every flow was logged: {report}");

    // 1,000 random mutations of this real log: every one is detected.
    let image = read_log(&log_dir).expect("read the log");
    let pk = parse_public_key(&key).expect("key");
    assert!(image.verify(Some(&pk)).ok());
    let mut seed = 0x5EED_F10E_u64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n.max(1) as u64) as usize
    };
    let mut done = 0;
    while done < 1000 {
        let mut img = image.clone();
        let Some(what) = mutate(&mut img, &mut rand) else { continue };
        if img == image {
            continue;
        }
        done += 1;
        assert!(!img.verify(Some(&pk)).ok(), "mutation {done} went unnoticed: {what}");
    }

    // kill -9 while flows are being written: the log still verifies.
    let agent = lab.spawn_agent(&["--flow-log-checkpoint", "5s"], &dir.join("agent2.log"));
    let writer = {
        let (ns, dst) = (lab.netns("staging/debug-tools"), lab.ip("production/backend", true));
        std::thread::spawn(move || {
            // Distinct tuples: each one a drop report, so the log is busy.
            let probes: Vec<bulkhead_lab::probe::Probe> = (0..3000)
                .map(|i| bulkhead_lab::probe::Probe {
                    dst,
                    proto: bulkhead_policy::repository::Proto::Udp,
                    port: 20_000 + i,
                    l7: false,
                })
                .collect();
            let _ = bulkhead_lab::probe::probe_from(&ns, &probes, Duration::from_millis(1), 4);
        })
    };
    // Kill it once it is writing records (and well before the next checkpoint).
    let written = || lab.json(&["status", "-o", "json"])["flows"]["log_written"].as_u64().unwrap_or(0);
    let w0 = written();
    bulkhead_lab::wait_until("the log being written", Duration::from_secs(20), || written() > w0 + 200)
        .expect("records written");
    let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let mut agent = agent;
    let _ = agent.wait();
    let _ = writer.join();
    let (ok, report) = verify(&log_dir, &key);
    assert!(ok, "after kill -9: {report}");
    assert!(report["unsigned_tail"].as_u64().unwrap_or(0) > 0, "records written after the last checkpoint: {report}");
    // A write cut in the middle of a record, as a crash inside write(2)
    // can leave it: that record is reported lost, the rest verifies.
    let image = read_log(&log_dir).expect("read");
    let (last_index, last_bytes) = image.segments.last().expect("a segment").clone();
    let (records, _) = decode_segment(&last_bytes);
    let last = records.last().expect("a record");
    let seg_path = log_dir.join(format!("flows-{last_index:010}.log"));
    let cut = last.offset + 4 + last.body.len() / 2;
    std::fs::OpenOptions::new().write(true).open(&seg_path).expect("segment").set_len(cut as u64).expect("truncate");
    let (ok, report) = verify(&log_dir, &key);
    assert!(ok, "a torn last record is a loss, not tampering: {report}");
    assert_eq!(report["incomplete"], serde_json::json!([last.seq]), "{report}");
    // A new agent continues the log after the torn record and closes it cleanly.
    let mut agent = lab.spawn_agent(&[], &dir.join("agent3.log"));
    lab.lab(&["probe", "--ports", "80/TCP"]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("stop");
    let _ = agent.wait();
    let text = Command::new(bulkhead())
        .args(["flows", "verify", log_dir.to_str().expect("path"), "--key", &key])
        .output()
        .expect("verify");
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.status.success() && out.contains("intact") && out.contains(&format!("record {} was cut off", last.seq)),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_service_map_in_headless_chromium() {
    if !tools_present("the_service_map_in_headless_chromium") {
        return;
    }
    let lab = Lab::up("map", &repo().join("examples/seed/cluster.yaml"), &[]);
    lab.ok(&["apply", "-f", repo().join("examples/seed/policies").to_str().expect("path"), "-n", "production"]);
    let probe = lab.lab(&["probe", "--ports", "8080/TCP,80/TCP", "-o", "json"]);
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stdout));
    let web = lab.json(&["status", "-o", "json"])["flows"]["web"].as_str().expect("web").to_string();
    let url = lab.json(&["ui", "-o", "json"])["url"].as_str().expect("ui url").to_string();
    let token = url.split_once("?token=").expect("a token in the address").1.to_string();
    assert!(url.starts_with(&web), "{url} is served where status says ({web})");

    // Flows are as private as the API socket: no token, a wrong one, or a
    // name someone else's DNS controls (rebinding) are all refused.
    let addr = web.trim_start_matches("http://").trim_end_matches('/').to_string();
    let port = addr[addr.rfind(':').expect("port") + 1..].to_string();
    let bearer = format!("Authorization: Bearer {token}");
    for (what, path, host, headers) in [
        ("no token", "api/map".to_string(), None, vec![]),
        ("no token, an edge", "api/edge?from=a&to=b".to_string(), None, vec![]),
        ("a wrong token", "api/map?token=00000000000000000000000000000000".into(), None, vec![]),
        ("a wrong bearer", "api/map".into(), None, vec!["Authorization: Bearer ffffffffffffffffffffffffffffffff"]),
        ("a rebound DNS name", "api/map".into(), Some(format!("rebind.example:{port}")), vec![bearer.as_str()]),
        ("a rebound DNS name, the page", String::new(), Some(format!("rebind.example:{port}")), vec![]),
    ] {
        let (head, body) = http_request(&format!("{web}{path}"), host.as_deref(), &headers);
        assert!(head.starts_with("HTTP/1.0 403") || head.starts_with("HTTP/1.1 403"), "{what}: {head}\n{body}");
        assert!(body.contains("bulkhead ui"), "{what}: the refusal says what to do: {body}");
    }
    let (head, body) = http_request(&format!("{web}api/map?token={token}"), None, &[]);
    assert!(head.contains(" 200 ") && !head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    assert!(body.contains("production/backend"), "{body}");
    let (head, body) = http_request(&format!("{web}api/map"), Some(&format!("localhost:{port}")), &[&bearer]);
    assert!(
        head.contains(" 200 ") && body.contains("production/backend"),
        "the bearer token, as the page sends it: {head}"
    );
    // The page itself holds no data and needs no token.
    let (head, body) = http_request(&web, None, &[]);
    assert!(head.contains(" 200 ") && !body.contains("production/backend"), "{head}");
    assert!(http_get(&format!("{web}metrics")).contains("bulkhead_endpoints"), "metrics need no token");

    let mut b = support::browser::Browser::open(&url, 1500, 800);
    b.wait_for("document.querySelectorAll('[data-node-id]').length >= 5", Duration::from_secs(20));
    let nodes = b.eval("[...document.querySelectorAll('[data-node-id]')].map(n => n.dataset.nodeId).sort()");
    assert_eq!(
        nodes,
        serde_json::json!([
            "kube-system/kube-dns",
            "production/backend",
            "production/frontend",
            "production/payment-processor",
            "staging/debug-tools"
        ])
    );
    let namespaces = b.eval("[...document.querySelectorAll('[data-namespace]')].map(n => n.dataset.namespace).sort()");
    assert_eq!(namespaces, serde_json::json!(["kube-system", "production", "staging"]));
    let edge = |b: &mut support::browser::Browser, id: &str| {
        b.eval(&format!(
            "(e => e && {{dropped: +e.dataset.dropped, forwarded: +e.dataset.forwarded, colour: e.querySelector('path.line').getAttribute('stroke')}})(document.querySelector('[data-edge=\"{id}\"]'))"
        ))
    };
    let lateral = edge(&mut b, "staging/debug-tools->production/backend");
    // Each attempt counts once, where it was decided (the backend's ingress):
    // the source's egress verdict does not make it look half allowed.
    assert!(
        lateral["dropped"].as_u64().unwrap_or(0) > 0 && lateral["forwarded"] == 0 && lateral["colour"] == "var(--drop)",
        "{lateral}"
    );
    let open = edge(&mut b, "staging/debug-tools->production/frontend");
    assert!(
        open["forwarded"].as_u64().unwrap_or(0) > 0 && open["dropped"] == 0 && open["colour"] == "var(--ok)",
        "{open}"
    );

    // Clicking the edge lists its flows with the rules behind them.
    b.eval("document.querySelector('[data-edge=\"staging/debug-tools->production/backend\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))");
    let text = b.wait_for(
        "document.querySelectorAll('#side .flow').length > 0 && document.getElementById('side').innerText",
        Duration::from_secs(10),
    );
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("staging/debug-tools → production/backend"), "{text}");
    assert!(text.contains("DROPPED (POLICY_DENIED)"), "{text}");
    assert!(text.contains("closest: CiliumNetworkPolicy production/restrict-backend-api spec.ingress[0]"), "{text}");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/service-map.png");
    b.screenshot(&shot);
    eprintln!("service map screenshot: {}", shot.display());
}
