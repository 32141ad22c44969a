//! Enforcement over time: policy updates under traffic are atomic per
//! endpoint, and the programs keep enforcing while no agent runs and after
//! a new one adopts the pinned state (root; see tests/support).

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_datapath::abi::{EVENT_DROP, RawEvent};
use bulkhead_datapath::sync::PolicySync;
use bulkhead_datapath::{Datapath, netns};
use bulkhead_lab::probe::{Outcome, Probe, probe_from};
use bulkhead_lab::{uninterrupted, wait_until};
use bulkhead_policy::repository::Proto;
use support::{Lab, privileged};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: t}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: t, labels: {app: client}},
   status: {podIP: 198.18.50.1, podIPs: [{ip: 198.18.50.1}, {ip: "fd00:b::50:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: t, labels: {app: server}},
   status: {podIP: 198.18.50.2, podIPs: [{ip: 198.18.50.2}, {ip: "fd00:b::50:2"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: vault, namespace: t, labels: {app: vault}},
   status: {podIP: 198.18.50.3, podIPs: [{ip: 198.18.50.3}, {ip: "fd00:b::50:3"}]}}
"#;

/// Both versions allow client → server UDP 7000 (on one port, then on a
/// range of them) and deny client → vault UDP 7000 (by default deny,
/// then by an explicit deny); they differ elsewhere.
const V1: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}, {port: "80", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: vault, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: vault}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: server}}]
"#;

const V2: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [client, other]}]}]
    toPorts: [{ports: [{port: "6000", endPort: 7100, protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: vault, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: vault}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

/// A UDP echo server on port 7000 (both families) in a pod; counts what it
/// received until `stop`. Returns once its socket is bound.
fn udp_echo(pod_ns: PathBuf, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    // A dual-stack socket: IPv4 peers arrive as mapped addresses.
    let s = netns::run_in(&pod_ns, || UdpSocket::bind("[::]:7000")).expect("pod netns").expect("bind echo");
    std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_millis(5))).expect("timeout");
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                received.fetch_add(1, Ordering::Relaxed);
                let _ = s.send_to(&buf[..n], from);
            }
        }
    })
}

/// Drops the datapath reported on traffic to or from `addrs`.
fn drops_touching(events: &[RawEvent], addrs: &[IpAddr]) -> Vec<RawEvent> {
    events
        .iter()
        .filter(|e| e.kind == EVENT_DROP && (addrs.contains(&e.saddr.into()) || addrs.contains(&e.daddr.into())))
        .copied()
        .collect()
}

/// Sends one datagram from a new socket (a new flow, so the policy is
/// consulted for every one) in a loop until `stop`; counts answers and
/// silences.
fn udp_flows(
    pod_ns: PathBuf,
    dst: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    silent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        netns::run_in(&pod_ns, || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let d = dst[i % dst.len()];
                i += 1;
                let bind: SocketAddr = if d.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
                let s = UdpSocket::bind(bind).expect("bind");
                s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
                s.connect(SocketAddr::new(d, 7000)).expect("connect");
                s.send(b"x").expect("send");
                let mut buf = [0u8; 8];
                match uninterrupted(|| s.recv(&mut buf)) {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(_) => silent.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
        .expect("enter pod namespace");
    })
}

#[test]
fn policy_updates_under_traffic_are_atomic_per_endpoint() {
    if !privileged("policy_updates_under_traffic_are_atomic_per_endpoint") {
        return;
    }
    let mut lab = Lab::up("u", CLUSTER, V1);
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..5).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // Every drop the datapath reports is collected as it happens (the ring
    // buffer would overflow over a run this long if nobody read it).
    let mut reader = lab.dp().take_events().expect("event reader");
    let ns = |k: &str| netns::named(&lab.pods[k].netns);
    let server_ips = lab.pods["t/server"].ips.clone();
    let drops = {
        let (stop, server_ips) = (stop.clone(), server_ips.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                reader.wait(Duration::from_millis(50), |e| batch.push(e)).expect("events");
                seen.extend(drops_touching(&batch, &server_ips));
            }
            let mut batch = Vec::new();
            while reader.wait(Duration::from_millis(50), |e| batch.push(e)).expect("events") > 0 {}
            seen.extend(drops_touching(&batch, &server_ips));
            seen
        })
    };
    let servers = [
        udp_echo(ns("t/server"), stop.clone(), counters[0].clone()),
        udp_echo(ns("t/vault"), stop.clone(), counters[1].clone()),
    ];
    let allowed = udp_flows(ns("t/client"), server_ips.clone(), stop.clone(), counters[2].clone(), counters[3].clone());
    let denied_silent = Arc::new(AtomicU64::new(0));
    let denied = udp_flows(
        ns("t/client"),
        lab.pods["t/vault"].ips.clone(),
        stop.clone(),
        counters[4].clone(),
        denied_silent.clone(),
    );
    let started = Instant::now();
    for i in 0..100 {
        let text = if i % 2 == 0 { V2 } else { V1 };
        lab.replace_policies(text);
        let (c, sv, v) = (&lab.pods["t/client"], &lab.pods["t/server"], &lab.pods["t/vault"]);
        for k in 0..2 {
            assert!(lab.expected("t/client", "t/server", c.ips[k], sv.ips[k], Proto::Udp, 7000), "premise: both allow");
            assert!(!lab.expected("t/client", "t/vault", c.ips[k], v.ips[k], Proto::Udp, 7000), "premise: both deny");
        }
        // Pacing: each version is live long enough for new flows to meet it.
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for h in [allowed, denied].into_iter().chain(servers) {
        h.join().expect("traffic thread");
    }
    let drops = drops.join().expect("event thread");
    let lost = lab.dp().view().counters().expect("counters").lost_events;
    let load = |i: usize| counters[i].load(Ordering::Relaxed);
    eprintln!(
        "100 updates in {:.2} s: allowed flow {} answered / {} unanswered; denied flow {} answered / {} dropped; \
         vault received {}; datapath drops of allowed traffic: {}",
        elapsed.as_secs_f64(),
        load(2),
        load(3),
        load(4),
        denied_silent.load(Ordering::Relaxed),
        load(1),
        drops.len()
    );
    assert!(load(2) > 200, "too little traffic to mean anything: {}", load(2));
    // The datapath's own account, which scheduling on a busy machine cannot
    // blur: not one packet both versions allow was dropped (every drop is
    // reported, and none was lost), ...
    assert_eq!(lost, 0, "events were lost, so drops could be missed");
    assert!(drops.is_empty(), "packets both versions allow were dropped: {drops:?}");
    // ... and not one packet both versions deny was delivered.
    assert!(denied_silent.load(Ordering::Relaxed) > 0, "the denied flow sent nothing");
    assert_eq!(load(1), 0, "packets both versions deny reached the vault");
    assert_eq!(load(4), 0);
}

#[test]
fn enforcement_continues_without_the_agent_and_a_new_one_adopts_it() {
    if !privileged("enforcement_continues_without_the_agent") {
        return;
    }
    let mut lab = Lab::up("r", CLUSTER, V1);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let vault_received = Arc::new(AtomicU64::new(0));
    let ns = |k: &str| netns::named(&lab.pods[k].netns);
    let server = udp_echo(ns("t/server"), stop.clone(), received.clone());
    let vault = udp_echo(ns("t/vault"), stop.clone(), vault_received.clone());
    // A long-lived allowed stream: one UDP flow, many packets.
    let server_ip = lab.pods["t/server"].ips[0];
    let client_ip = lab.pods["t/client"].ips[0];
    let socket = netns::run_in(&ns("t/client"), || UdpSocket::bind("0.0.0.0:0")).expect("netns").expect("bind");
    let stream_port = socket.local_addr().expect("local address").port();
    let (unanswered, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stream = {
        let (stop, unanswered, sent) = (stop.clone(), unanswered.clone(), sent.clone());
        std::thread::spawn(move || {
            socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
            socket.connect(SocketAddr::new(server_ip, 7000)).expect("connect");
            let mut buf = [0u8; 8];
            while !stop.load(Ordering::Relaxed) {
                socket.send(b"y").expect("send");
                sent.fetch_add(1, Ordering::Relaxed);
                if uninterrupted(|| socket.recv(&mut buf)).is_err() {
                    unanswered.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let flowing = |more: u64| {
        let from = sent.load(Ordering::Relaxed);
        wait_until("the stream flowing", Duration::from_secs(10), || sent.load(Ordering::Relaxed) >= from + more)
            .expect("traffic");
    };
    flowing(20);

    // The agent goes away: its maps, programs and sync state are dropped.
    // Only the pins remain.
    let dp = lab.dp.take().expect("open");
    drop(dp);
    lab.sync = PolicySync::default();
    flowing(50);
    let client = ns("t/client");
    let vault_ip = lab.pods["t/vault"].ips[0];
    let denied = probe_from(
        &client,
        &[Probe { dst: vault_ip, proto: Proto::Udp, port: 7000, l7: false }],
        Duration::from_millis(300),
        1,
    )
    .expect("probe");
    assert_eq!(denied, vec![Outcome::Dropped], "a denied flow passed while no agent ran");
    let allowed = probe_from(
        &client,
        &[Probe { dst: server_ip, proto: Proto::Udp, port: 7000, l7: false }],
        Duration::from_secs(1),
        1,
    )
    .expect("probe");
    assert_eq!(allowed, vec![Outcome::Reached], "an allowed new flow dropped while no agent ran");

    // A new agent adopts the pins, re-attaches (swapping its programs into
    // the pinned links) and reconciles.
    let mut dp = Datapath::open(&lab.pin_root.0).expect("reopen");
    assert_eq!(dp.view().endpoints().expect("endpoints").len(), 3, "the endpoints survived");
    // An endpoint the old agent left that the new one does not load.
    let stale = bulkhead_datapath::abi::Endpoint { id: 99, identity: 2, slot: [1, 2], ..Default::default() };
    dp.set_endpoint(u32::MAX, &stale).expect("stale endpoint");
    lab.sync = PolicySync::adopt(&dp).expect("adopt");
    netns::run_in(&lab.node.path(), || {
        for link in lab.pods.values() {
            dp.attach(&link.host_if, link.ifindex).expect("re-attach");
        }
    })
    .expect("enter node namespace");
    lab.dp = Some(dp);
    lab.load();
    let left: Vec<u32> = lab.dp().view().endpoints().expect("endpoints").into_iter().map(|(i, _)| i).collect();
    assert!(!left.contains(&u32::MAX) && left.len() == 3, "adoption kept endpoints nobody loads: {left:?}");
    flowing(50);
    // The new agent's policy: the old entries are gone after the grace.
    lab.sync.collect_retired(lab.dp.as_mut().expect("open"), true).expect("collect");
    let vault_before = vault_received.load(Ordering::Relaxed);
    let (diffs, [pass, drop]) =
        lab.differences(&[(Proto::Udp, 7000), (Proto::Tcp, 80), (Proto::Icmp, 0)], Duration::from_millis(300));
    assert!(
        diffs.is_empty(),
        "after adoption, {} of {} probes differ:\n{}",
        diffs.len(),
        pass + drop,
        diffs.join("\n")
    );

    stop.store(true, Ordering::Relaxed);
    for h in [stream, server, vault] {
        h.join().expect("traffic thread");
    }
    // The datapath's own account of the stream across both agents and the
    // time between them (the pinned ring buffer kept every event): not one
    // of its packets was dropped, either way.
    let mut reader = lab.dp().take_events().expect("event reader");
    let mut events = Vec::new();
    while reader.wait(Duration::from_millis(50), |e| events.push(e)).expect("events") > 0 {}
    let stream_drops: Vec<RawEvent> = drops_touching(&events, &[server_ip])
        .into_iter()
        .filter(|e| {
            let (sp, dp) = (u16::from_be_bytes(e.sport), u16::from_be_bytes(e.dport));
            let a = (IpAddr::from(e.saddr), sp, IpAddr::from(e.daddr), dp);
            a == (client_ip, stream_port, server_ip, 7000) || a == (server_ip, 7000, client_ip, stream_port)
        })
        .collect();
    eprintln!(
        "stream: {} sent, {} unanswered across the restart, {} dropped by the datapath",
        sent.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed),
        stream_drops.len()
    );
    assert!(sent.load(Ordering::Relaxed) > 100);
    assert_eq!(
        lab.dp().view().counters().expect("counters").lost_events,
        0,
        "events were lost, so drops could be missed"
    );
    assert!(stream_drops.is_empty(), "the established allowed flow lost packets across the restart: {stream_drops:?}");
    assert_eq!(vault_before, 0, "the vault received denied packets");
}
