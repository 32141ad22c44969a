//! The DNS proxy on the seed lab (root), on real queries to the lab's DNS
//! (dnsmasq in the kube-dns pod): a pod whose egress DNS rules cover its
//! resolver has each query decided by name — allowed ones reach the
//! resolver from the pod's own address and their answers (NXDOMAIN too)
//! come back as they are, over UDP and TCP, IPv4 and IPv6; denied ones get
//! REFUSED and never reach the resolver; malformed ones get FORMERR or
//! nothing; a resolver that fails gives SERVFAIL. toFQDNs on the seed: the
//! payment processor reaches `api.stripe.com` (a lab ExternalHost) on 443
//! from its first connection after the lookup, nothing it did not resolve,
//! and keeps what it learnt across `kill -9` of the agent and the proxy.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use bulkhead_datapath::netns;
use bulkhead_lab::dns::{self, Answer, RecordType, ResponseCode, Transport};
use bulkhead_lab::wait_until;
use support::{Lab, privileged, repo};

/// payment-processor may ask kube-dns (UDP and TCP 53) for
/// `backend.production` and for names under `kube-system` only.
const DNS_NAMES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns-names, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: payment-processor}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: backend.production
        - matchPattern: "*.kube-system"
"#;

const CLIENT: &str = "production/payment-processor";
const RESOLVER: &str = "kube-system/kube-dns";

fn apply(lab: &Lab, yaml: &str) {
    let file = std::env::temp_dir().join(format!("bulkhead-{}-{}.yaml", lab.name, std::process::id()));
    std::fs::write(&file, yaml).expect("write policy");
    lab.ok(&["apply", "-f", file.to_str().expect("path")]);
    let _ = std::fs::remove_file(&file);
}

/// The raw answer to `bytes` sent from `pod` to the resolver's `ip`.
fn exchange(lab: &Lab, pod: &str, ip: IpAddr, bytes: &[u8], transport: Transport) -> std::io::Result<Vec<u8>> {
    netns::run_in(&lab.netns(pod), || dns::exchange(SocketAddr::new(ip, 53), bytes, transport, Duration::from_secs(3)))
        .expect("pod netns")
}

/// `pod` asks the resolver at `ip` for `name` (`qtype`).
fn ask(lab: &Lab, pod: &str, ip: IpAddr, name: &str, qtype: RecordType, transport: Transport) -> Answer {
    let bytes = dns::query(name, qtype, 0x4242).expect("query");
    let answer = exchange(lab, pod, ip, &bytes, transport)
        .unwrap_or_else(|e| panic!("{pod} asking {ip} for {name} {qtype} over {transport:?}: {e}"));
    let a = dns::read_answer(&answer).expect("an answer");
    assert_eq!(a.id, 0x4242, "the answer carries the query's ID");
    a
}

fn dns_log(lab: &Lab) -> String {
    std::fs::read_to_string(format!("/run/bulkhead/{}/dnsmasq.log", lab.name)).unwrap_or_default()
}

#[test]
fn dns_rules_decide_each_query_and_allowed_answers_pass_through() {
    if !privileged("dns_rules_decide_each_query_and_allowed_answers_pass_through") {
        return;
    }
    let lab = Lab::up("dns", &repo().join("examples/seed/cluster.yaml"), &[]);
    apply(&lab, DNS_NAMES);
    let client_v4 = lab.ip(CLIENT, true);
    let backend = [lab.ip("production/backend", true), lab.ip("production/backend", false)];

    for v4 in [true, false] {
        let resolver = lab.ip(RESOLVER, v4);
        for transport in [Transport::Udp, Transport::Tcp] {
            let at = format!("{resolver} over {transport:?}");
            // Allowed, in any case: the resolver's answer as it is.
            for (name, qtype, want) in [
                ("backend.production", RecordType::A, backend[0]),
                ("BACKEND.Production.", RecordType::AAAA, backend[1]),
            ] {
                let a = ask(&lab, CLIENT, resolver, name, qtype, transport);
                assert_eq!(
                    (a.rcode, a.addrs.as_slice()),
                    (ResponseCode::NoError, &[want][..]),
                    "{name} {qtype} at {at}"
                );
            }
            // Allowed, and the resolver does not know it: its NXDOMAIN.
            let a = ask(&lab, CLIENT, resolver, "nothing.kube-system", RecordType::A, transport);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "nothing.kube-system at {at}");
            // Denied: REFUSED, by the proxy.
            let a = ask(&lab, CLIENT, resolver, "frontend.production", RecordType::A, transport);
            assert_eq!((a.rcode, a.addrs.len()), (ResponseCode::Refused, 0), "frontend.production at {at}");
        }
    }
    // The resolver saw the allowed queries from the client's own address,
    // and never a denied one.
    let log = dns_log(&lab);
    assert!(log.contains(&format!("query[A] backend.production from {client_v4}")), "dnsmasq log:\n{log}");
    assert!(log.contains("query[AAAA] BACKEND.Production from fd00:b::1:30"), "dnsmasq log:\n{log}");
    assert!(!log.contains("frontend.production"), "a denied query reached the resolver:\n{log}");

    // Malformed: no header, nothing back; a header but no question, FORMERR
    // with the client's ID; neither reaches the resolver.
    let resolver = lab.ip(RESOLVER, true);
    assert!(exchange(&lab, CLIENT, resolver, b"\x12\x34\x01", Transport::Udp).is_err(), "an answer to 3 bytes");
    let no_question = [0xbe, 0xef, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = exchange(&lab, CLIENT, resolver, &no_question, transport).expect("an answer");
        let a = dns::read_answer(&a).expect("a DNS answer");
        assert_eq!((a.id, a.rcode), (0xbeef, ResponseCode::FormErr), "over {transport:?}");
    }
    let log_after = dns_log(&lab);
    assert_eq!(log_after.lines().count(), log.lines().count(), "a malformed query reached the resolver");

    // Each query and answer is an L7 flow naming the DNS rule: the one that
    // allowed it, or for a denied one the rule that came closest.
    let flows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["observe", "--type", "l7", "--last", "200", "-o", "json"];
        a.extend_from_slice(args);
        wait_until("DNS flows", Duration::from_secs(5), || !lab.ok(&a).trim().is_empty()).expect("flows");
        lab.ok(&a)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("flow JSON")["flow"].clone())
            .collect()
    };
    let allowed = flows(&["--verdict", "FORWARDED"]);
    let answer = allowed
        .iter()
        .find(|f| f["l7"]["type"] == "RESPONSE" && f["l7"]["dns"]["query"] == "backend.production.")
        .expect("an allowed answer's flow");
    assert_eq!(answer["l7"]["dns"]["ips"][0], backend[0].to_string(), "{answer}");
    assert_eq!(answer["l7"]["dns"]["observation_source"], "proxy");
    assert_eq!(answer["egress_allowed_by"][0]["name"], "dns-names", "{answer}");
    assert_eq!(answer["destination"]["pod_name"], "payment-processor", "an answer goes to the client: {answer}");
    let denied = flows(&["--verdict", "DROPPED"]);
    let refused = denied
        .iter()
        .find(|f| f["l7"]["type"] == "RESPONSE" && f["l7"]["dns"]["query"] == "frontend.production.")
        .expect("a refused answer's flow");
    assert_eq!(refused["l7"]["dns"]["rcode"], 5, "REFUSED: {refused}");
    assert_eq!(refused["near_misses"][0]["policy"]["name"], "dns-names", "{refused}");
    let summary = lab.ok(&["observe", "--type", "l7", "--verdict", "DROPPED", "--last", "1", "--color", "never"]);
    assert!(summary.contains("DNS Answer RCode: Query Refused (Proxy frontend.production. A)"), "{summary}");
    // Metrics count queries and answers by rcode and verdict, and time them.
    let text = lab.metrics();
    assert!(
        text.lines().any(|l| l.starts_with("bulkhead_dns_responses_total{rcode=\"Query Refused\"")
            && l.contains("verdict=\"DROPPED\"")),
        "{text}"
    );
    assert!(text.contains("bulkhead_dns_proxy_latency_seconds_count"), "{text}");

    // A pod without DNS rules asks the resolver directly (not proxied).
    let a = ask(&lab, "production/frontend", resolver, "frontend.production", RecordType::A, Transport::Udp);
    assert_eq!(a.rcode, ResponseCode::NoError);

    // The resolver stops: an allowed query gets SERVFAIL from the proxy.
    let pid = std::fs::read_to_string(format!("/run/bulkhead/{}/dnsmasq.pid", lab.name)).expect("dnsmasq pid");
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill dnsmasq");
    bulkhead_lab::wait_until("dnsmasq exits", Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .expect("dnsmasq gone");
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = ask(&lab, CLIENT, resolver, "backend.production", RecordType::A, transport);
        assert_eq!(a.rcode, ResponseCode::ServFail, "over {transport:?}");
    }
}

/// A TCP connection from `pod` to `dst` (1.5 s to connect).
fn connect(lab: &Lab, pod: &str, dst: SocketAddr) -> std::io::Result<TcpStream> {
    netns::run_in(&lab.netns(pod), || TcpStream::connect_timeout(&dst, Duration::from_millis(1500))).expect("pod netns")
}

/// `bytes` sent on `s` come back (the lab's TCP responders echo).
fn echoes(s: &mut TcpStream, bytes: &[u8]) -> bool {
    let mut back = vec![0u8; bytes.len()];
    s.set_read_timeout(Some(Duration::from_secs(3))).is_ok()
        && s.write_all(bytes).is_ok()
        && bulkhead_lab::uninterrupted(|| s.read_exact(&mut back)).is_ok()
        && back == bytes
}

/// The addresses `fqdn cache list` shows for `name` (looked up by `endpoint`).
fn cached_for(lab: &Lab, name: &str, endpoint: &str) -> Vec<IpAddr> {
    let out = support::run(&lab.socket, &["fqdn", "cache", "list", "--endpoint", endpoint, "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == name)
        .filter_map(|r| r["addr"].as_str()?.parse().ok())
        .collect()
}

fn cached(lab: &Lab, name: &str) -> Vec<IpAddr> {
    cached_for(lab, name, CLIENT)
}

#[test]
fn to_fqdns_admits_what_the_pod_resolved_from_its_first_connection_and_survives_restarts() {
    if !privileged("to_fqdns_admits_what_the_pod_resolved_from_its_first_connection_and_survives_restarts") {
        return;
    }
    let lab = Lab::up("fqdn", &repo().join("examples/seed/cluster.yaml"), &[]);
    let policies = repo().join("examples/seed/policies");
    lab.ok(&["apply", "-f", policies.to_str().expect("path"), "-n", "production"]);
    let resolver = lab.ip(RESOLVER, true);
    let stripe: [IpAddr; 2] = ["198.18.100.10".parse().expect("ip"), "fd00:b::100:10".parse().expect("ip")];
    let evil: [IpAddr; 2] = ["198.18.100.66".parse().expect("ip"), "fd00:b::100:66".parse().expect("ip")];

    // Never resolved: the address is world's, and toFQDNs does not cover it.
    for ip in stripe {
        assert!(connect(&lab, CLIENT, SocketAddr::new(ip, 443)).is_err(), "{ip}:443 before any lookup");
    }
    // Resolved: the very first connection after the answer gets through,
    // on both families; port 80 on the same host does not.
    for (qtype, want) in [(RecordType::A, stripe[0]), (RecordType::AAAA, stripe[1])] {
        let a = ask(&lab, CLIENT, resolver, "api.stripe.com", qtype, Transport::Udp);
        assert_eq!((a.rcode, a.addrs.as_slice()), (ResponseCode::NoError, &[want][..]));
        let mut s = connect(&lab, CLIENT, SocketAddr::new(want, 443))
            .unwrap_or_else(|e| panic!("the first connection to {want}:443 after the lookup: {e}"));
        assert!(echoes(&mut s, b"charge"), "{want}:443 answers");
        assert!(connect(&lab, CLIENT, SocketAddr::new(want, 80)).is_err(), "{want}:80 is not in the rule");
    }
    // `lab probe` by name: resolved through the pod's resolver, then probed.
    let out =
        lab.lab(&["probe", "--from", CLIENT, "--to-name", "api.stripe.com", "--ports", "443/TCP,80/TCP", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(report["answers"]["A"], "No Error", "{report}");
    let outcome = |addr: IpAddr, port: &str| {
        report["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["addr"] == addr.to_string() && r["port"] == port)
            .map(|r| r["outcome"].clone())
    };
    for ip in stripe {
        assert_eq!(outcome(ip, "443/TCP"), Some("reached".into()), "{report}");
        assert_eq!(outcome(ip, "80/TCP"), Some("dropped".into()), "{report}");
    }
    // The brief's DNS rule lets every name resolve, but toFQDNs covers only
    // *.stripe.com: evil.example.com resolves and stays unreachable.
    let a = ask(&lab, CLIENT, resolver, "evil.example.com", RecordType::A, Transport::Udp);
    assert_eq!(a.addrs, [evil[0]]);
    assert!(connect(&lab, CLIENT, SocketAddr::new(evil[0], 443)).is_err(), "evil.example.com:443");
    // The answer was held until the kernel had its addresses, and said so.
    let text = lab.metrics();
    let held = text
        .lines()
        .find(|l| l.starts_with("bulkhead_dns_held_answer_wait_seconds_count{released=\"enforced\"}"))
        .unwrap_or_else(|| panic!("no held answers counted:\n{text}"));
    assert!(held.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) >= 2, "{held}");
    assert!(!text.contains("released=\"timeout\""), "an answer was released before its addresses were enforced");
    // Flows to a learnt address name it, and `--to-fqdn` finds them.
    let out = lab.ok(&["observe", "--to-fqdn", "*.stripe.com", "--last", "50", "-o", "json"]);
    assert!(out.contains("\"destination_names\":[\"api.stripe.com\"]"), "{out}");
    let out =
        lab.ok(&["observe", "--to-fqdn", "api.stripe.com", "--verdict", "DROPPED", "--last", "5", "--color", "never"]);
    assert!(out.contains("-> api.stripe.com:80 (world)"), "{out}");

    // `policy trace --to-fqdn` says what the running agent learnt.
    let seed = repo().join("examples/seed");
    let trace = lab.ok(&[
        "policy",
        "trace",
        "--cluster",
        seed.join("cluster.yaml").to_str().expect("path"),
        "--policies",
        seed.join("policies").to_str().expect("path"),
        "-n",
        "production",
        "--from",
        CLIENT,
        "--to-fqdn",
        "API.stripe.com",
        "--port",
        "443/TCP",
    ]);
    assert!(trace.contains("ALLOWED") || trace.contains("allowed"), "{trace}");
    assert!(trace.contains("has learnt api.stripe.com.: 198.18.100.10 (identity"), "{trace}");

    // What the node learnt, and who looked it up (on disk too).
    assert_eq!(cached(&lab, "api.stripe.com."), [stripe[0], stripe[1]]);
    assert!(cached_for(&lab, "api.stripe.com.", "production/frontend").is_empty());
    let disk = std::fs::read_to_string(format!("/run/bulkhead/{}/agent/fqdn.json", lab.name)).expect("fqdn.json");
    assert!(disk.contains("api.stripe.com.") && disk.contains("198.18.100.10"), "{disk}");

    // An open connection to a learnt address, across kill -9 of the agent:
    // it keeps working, and the restarted agent restores what was learnt
    // (a new connection needs no new lookup).
    let mut open = connect(&lab, CLIENT, SocketAddr::new(stripe[0], 443)).expect("open connection");
    assert!(echoes(&mut open, b"before"));
    let agent = lab.state()["agent_pid"].as_i64().expect("agent pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), nix::sys::signal::Signal::SIGKILL).expect("kill agent");
    wait_until("the agent gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{agent}")).exists())
        .expect("kill");
    assert!(echoes(&mut open, b"no agent"), "the open connection broke with the agent");
    let log = std::env::temp_dir().join(format!("bulkhead-fqdn-agent-{}.log", std::process::id()));
    let mut agent = lab.spawn_agent(&[], &log);
    wait_until("the agent back", Duration::from_secs(15), || {
        support::run(&lab.socket, &["status", "-o", "json"]).status.success()
    })
    .expect("agent");
    assert!(echoes(&mut open, b"agent again"), "the open connection broke when the agent came back");
    let mut fresh = connect(&lab, CLIENT, SocketAddr::new(stripe[0], 443)).expect("a new connection after the restart");
    assert!(echoes(&mut fresh, b"restored"));
    drop(fresh);

    // kill -9 of the proxy: the open connection is not the proxy's; lookups
    // work again once it is back.
    let args = lab.kill_proxy();
    assert!(echoes(&mut open, b"no proxy"), "the open connection broke with the proxy");
    let mut proxy = support::restart_proxy(&args);
    wait_until("lookups through the restarted proxy", Duration::from_secs(5), || {
        let bytes = dns::query("api.stripe.com", RecordType::A, 7).expect("query");
        exchange(&lab, CLIENT, resolver, &bytes, Transport::Udp).is_ok()
    })
    .expect("the proxy answers again");

    // Past its TTL an address stays while the connection is open, and goes
    // once it is closed (the minimum TTL is 5 s, a closing connection's
    // entry 10 s).
    std::thread::sleep(Duration::from_secs(6));
    assert!(cached(&lab, "api.stripe.com.").contains(&stripe[0]), "expired while a connection used it");
    assert!(echoes(&mut open, b"still"));
    drop(open);
    wait_until("the address expires", Duration::from_secs(40), || {
        !cached(&lab, "api.stripe.com.").contains(&stripe[0])
    })
    .expect("expiry");
    assert!(connect(&lab, CLIENT, SocketAddr::new(stripe[0], 443)).is_err(), "reachable after its name expired");
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_file(&log);
}
