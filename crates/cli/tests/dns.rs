//! The DNS proxy on the seed lab (root), on real queries to the lab's DNS
//! (dnsmasq in the kube-dns pod): a pod whose egress DNS rules cover its
//! resolver has each query decided by name — allowed ones reach the
//! resolver from the pod's own address and their answers (NXDOMAIN too)
//! come back as they are, over UDP and TCP, IPv4 and IPv6; denied ones get
//! REFUSED and never reach the resolver; malformed ones get FORMERR or
//! nothing; a resolver that fails gives SERVFAIL.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bulkhead_datapath::netns;
use bulkhead_lab::dns::{self, Answer, RecordType, ResponseCode, Transport};
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
