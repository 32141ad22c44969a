//! Restart without a gap (root): `kill -9` the agent under traffic, run
//! with no agent, start a new one on the same state and pins. An
//! established allowed TCP connection loses nothing, new allowed flows keep
//! being answered, a denied peer never gets a packet through, and the new
//! agent reconciles (its endpoints are ready and a policy change applies).

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bulkhead_datapath::netns;
use bulkhead_lab::probe::{Outcome, Probe, probe_from};
use bulkhead_lab::{uninterrupted, wait_until};
use bulkhead_policy::repository::Proto;
use support::{Lab, privileged};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: t}}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: t, labels: {app: client}}
  status: {podIPs: [{ip: 198.18.70.1}, {ip: "fd00:b::70:1"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: t, labels: {app: server}}
  spec: {containers: [{name: s, ports: [{name: echo, containerPort: 5001}, {name: udp-echo, containerPort: 5002, protocol: UDP}]}]}
  status: {podIPs: [{ip: 198.18.70.2}, {ip: "fd00:b::70:2"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: vault, namespace: t, labels: {app: vault}}
  spec: {containers: [{name: v, ports: [{name: echo, containerPort: 5001}, {name: udp-echo, containerPort: 5002, protocol: UDP}]}]}
  status: {podIPs: [{ip: 198.18.70.3}, {ip: "fd00:b::70:3"}]}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "5001", protocol: TCP}, {port: "5002", protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: vault, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: vault}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: server}}]
"#;

/// Lets the client reach the vault's TCP echo port too.
const POLICY_OPEN_VAULT: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: vault, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: vault}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: server}}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "5001", protocol: TCP}]}]
"#;

#[derive(Default)]
struct Counts {
    echoed: AtomicU64,
    stream_errors: AtomicU64,
    allowed_sent: AtomicU64,
    allowed_answered: AtomicU64,
    denied_sent: AtomicU64,
    denied_answered: AtomicU64,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn kill_9_the_agent_under_traffic_and_start_it_again() {
    if !privileged("kill_9_the_agent_under_traffic_and_start_it_again") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cluster = write(&dir, "cluster.yaml", CLUSTER);
    let policy = write(&dir, "policy.yaml", POLICY);
    let lab = Lab::up("restart", &cluster, &["--policies", policy.to_str().expect("path")]);
    let client_ns = lab.netns("t/client");
    let server = lab.ip("t/server", true);
    let vault = lab.ip("t/vault", true);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    // Every drop the datapath counts (the counters are pinned: they survive
    // the agent), before any traffic.
    let dropped = || -> u64 {
        let st = lab.json(&["status", "-o", "json"]);
        st["drops"].as_object().expect("drops").values().filter_map(serde_json::Value::as_u64).sum()
    };
    let drops_before = dropped();
    let threads = traffic(&client_ns, server, vault, &stop, &counts);
    // Traffic of every kind under way: the stream, allowed and denied flows.
    let flowing = |echoes: u64, flows: u64| {
        let (e0, a0, d0) = (
            counts.echoed.load(Ordering::Relaxed),
            counts.allowed_sent.load(Ordering::Relaxed),
            counts.denied_sent.load(Ordering::Relaxed),
        );
        wait_until("traffic", Duration::from_secs(20), || {
            counts.echoed.load(Ordering::Relaxed) >= e0 + echoes
                && counts.allowed_sent.load(Ordering::Relaxed) >= a0 + flows
                && counts.denied_sent.load(Ordering::Relaxed) >= d0 + flows
        })
        .expect("the stream and new flows running");
    };
    flowing(20, 20);
    let before = counts.echoed.load(Ordering::Relaxed);

    // kill -9 and keep going with no agent.
    let old = lab.state()["agent_pid"].as_i64().expect("agent pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    wait_until("the agent gone", Duration::from_secs(10), || {
        support::run(&lab.socket, &["status"]).status.code() != Some(0)
    })
    .expect("kill -9");
    flowing(20, 20);
    let during = counts.echoed.load(Ordering::Relaxed);
    assert!(during > before + 20, "the stream kept flowing with no agent ({before} → {during})");

    // A new agent on the same state and pins (spawn_agent waits until it answers).
    let mut agent = lab.spawn_agent(&[], &dir.join("agent2.log"));
    flowing(20, 20);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("traffic thread");
    }
    let c = &counts;
    let (echoed, errors) = (c.echoed.load(Ordering::Relaxed), c.stream_errors.load(Ordering::Relaxed));
    let (a_sent, a_ans) = (c.allowed_sent.load(Ordering::Relaxed), c.allowed_answered.load(Ordering::Relaxed));
    let (d_sent, d_ans) = (c.denied_sent.load(Ordering::Relaxed), c.denied_answered.load(Ordering::Relaxed));
    let drops = dropped() - drops_before;
    eprintln!(
        "stream: {echoed} echoes, {errors} errors; new allowed flows {a_ans}/{a_sent} answered; denied {d_ans}/{d_sent} \
         answered; the datapath dropped {drops}"
    );
    assert_eq!(errors, 0, "the established connection lost nothing");
    assert!(echoed > during, "the stream continued after the restart");
    // The datapath's own count, which a slow answer cannot blur: every
    // packet it dropped was one of the denied flow's (at most one drop per
    // datagram sent to the vault), so no allowed packet was dropped, before,
    // without or after the agent.
    assert!(drops <= d_sent, "{drops} drops for {d_sent} denied datagrams: allowed packets were dropped");
    assert!(drops > 0, "the denied flow was dropped by the datapath");
    assert!(a_sent > 50 && a_ans * 10 >= a_sent * 9, "new allowed flows were answered: {a_ans}/{a_sent}");
    assert_eq!(d_ans, 0, "no denied packet got through");
    assert!(d_sent > 50);

    // The new agent holds the same endpoints, ready, and enforces a change.
    let st = lab.json(&["status", "-o", "json"]);
    assert_eq!(st["pid"], agent.id());
    assert_eq!(st["counts"]["endpoints"], 3);
    assert_eq!(st["endpoints_not_ready"], 0);
    let probe = |port| {
        probe_from(
            &client_ns,
            &[Probe { dst: vault, proto: Proto::Tcp, port, l7: false }],
            Duration::from_millis(800),
            1,
        )
        .expect("probe")
        .remove(0)
    };
    assert_eq!(probe(5001), Outcome::Dropped);
    let open = write(&dir, "open.yaml", POLICY_OPEN_VAULT);
    let out = lab.ok(&["apply", "-f", open.to_str().expect("path")]);
    assert!(out.contains("CiliumNetworkPolicy t/vault configured"), "{out}");
    assert_eq!(probe(5001), Outcome::Reached);

    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait();
    let (lab_name, socket) = (lab.name.clone(), lab.socket.clone());
    drop(lab);
    support::assert_gone(&lab_name, &socket);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client's traffic: one long TCP echo stream to the server, a new
/// UDP flow to the server every 10 ms, and UDP to the vault (denied).
fn traffic(
    ns: &Path,
    server: IpAddr,
    vault: IpAddr,
    stop: &Arc<AtomicBool>,
    c: &Arc<Counts>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut out = Vec::new();
    let (ns1, stop1, c1) = (ns.to_owned(), Arc::clone(stop), Arc::clone(c));
    out.push(std::thread::spawn(move || {
        netns::run_in(&ns1, || {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(server, 5001), Duration::from_secs(3)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
            let mut n: u64 = 0;
            while !stop1.load(Ordering::Relaxed) {
                let msg = format!("{n:016}").into_bytes();
                let mut back = vec![0u8; msg.len()];
                if s.write_all(&msg).and_then(|()| s.read_exact(&mut back)).is_err() || back != msg {
                    c1.stream_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                c1.echoed.fetch_add(1, Ordering::Relaxed);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .expect("client netns");
    }));
    for (dst, allowed) in [(server, true), (vault, false)] {
        let (ns2, stop2, c2) = (ns.to_owned(), Arc::clone(stop), Arc::clone(c));
        out.push(std::thread::spawn(move || {
            netns::run_in(&ns2, || {
                while !stop2.load(Ordering::Relaxed) {
                    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                    s.set_read_timeout(Some(Duration::from_millis(if allowed { 1000 } else { 20 }))).expect("timeout");
                    s.send_to(b"x", SocketAddr::new(dst, 5002)).expect("send");
                    let (sent, answered) = if allowed {
                        (&c2.allowed_sent, &c2.allowed_answered)
                    } else {
                        (&c2.denied_sent, &c2.denied_answered)
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if uninterrupted(|| s.recv(&mut [0u8; 8])).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .expect("client netns");
        }));
    }
    out
}
