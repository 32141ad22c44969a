//! Isolation against a compromised pod, on real packets (root): each test
//! tries to break one isolation claim the way an attacker inside a pod
//! would, and fails if the packets get through.
//!
//! - a pod cannot borrow another pod's identity by sending with its
//!   address (IPv4, IPv6, IPv4-mapped IPv6, ARP; TCP, UDP, ICMP);
//! - a connection admitted in audit mode, or under an allow that a policy
//!   change removed, stops at its next packet, whichever end sends it;
//! - the first packet of one flow handled on two CPUs at once is not
//!   dropped (the conntrack insert race);
//! - headers outside the linear part of the packet are read, not taken
//!   for malformed, and too many extension headers fail closed;
//! - a policy that does not fit its map denies the endpoint's direction
//!   until one fits (or, when asked, keeps the previous one, also right
//!   after a restart);
//! - an ICMP error passes only back to the connection it is about, and
//!   neighbour discovery only between a pod and its node;
//! - a fragment header cannot hide the L4 port behind extension headers;
//! - no policy slot number is ever used twice (conntrack remembers them).

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bulkhead_datapath::Direction;
use bulkhead_datapath::abi::{EVENT_DROP, RawEvent, Reason};
use bulkhead_datapath::netns;
use bulkhead_datapath::sync::Overflow;
use bulkhead_lab::frame::{
    V4, echo_request, ext_headers, fragment_header, icmp_error, ipv4_packet, neighbour_solicitation, proto, tcp_syn,
    udp, v4_id, v6_mark,
};
use bulkhead_lab::pods::PodLink;
use bulkhead_lab::uninterrupted;
use support::{Lab, framer, privileged, send_and_capture, v4, v6, warm_up};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: iso}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: iso, labels: {app: client}},
   status: {podIPs: [{ip: 198.18.90.1}, {ip: "fd00:b::90:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: iso, labels: {app: server}},
   status: {podIPs: [{ip: 198.18.90.2}, {ip: "fd00:b::90:2"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: trusted, namespace: iso, labels: {app: trusted}},
   status: {podIPs: [{ip: 198.18.90.3}, {ip: "fd00:b::90:3"}]}}
"#;

/// The server admits only `trusted`, on every port.
const ONLY_TRUSTED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: iso}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted}}]
"#;

/// The server admits `client` on TCP 80 and UDP 7000 (and `trusted` on everything).
const CLIENT_ALLOWED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: iso}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "7000", protocol: UDP}]}]
  - fromEndpoints: [{matchLabels: {app: trusted}}]
"#;

/// Every event the datapath reported so far.
fn drain(reader: &mut bulkhead_datapath::events::EventReader) -> Vec<RawEvent> {
    let mut out = Vec::new();
    while reader.wait(Duration::from_millis(100), |e| out.push(e)).expect("events") > 0 {}
    out
}

#[test]
fn spoofed_source_addresses_are_dropped_and_named() {
    if !privileged("spoofed_source_addresses_are_dropped_and_named") {
        return;
    }
    let mut lab = Lab::up("sp", CLUSTER, ONLY_TRUSTED);
    let mut events = lab.dp().take_events().expect("event reader");
    let (client, server, trusted) =
        (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone(), lab.pods["iso/trusted"].clone());
    warm_up(&client, &server);
    warm_up(&trusted, &server);
    let f = framer(&lab, &client);
    let (s4, s6, t4, t6, c4, c6) = (v4(&server), v6(&server), v4(&trusted), v6(&trusted), v4(&client), v6(&client));
    let mapped = t4.to_ipv6_mapped();
    let found =
        |frames: &[Vec<u8>], mark: u16| frames.iter().any(|x| v4_id(x) == Some(mark) || v6_mark(x) == Some(mark));

    // The client, claiming to be `trusted` (whom the server admits).
    let spoofed: Vec<(&str, Vec<u8>, u16)> = vec![
        ("TCP SYN, IPv4", f.ipv4(V4::new(t4, s4, proto::TCP, 0xc001), &tcp_syn(4000, 80)), 0xc001),
        ("UDP, IPv4", f.ipv4(V4::new(t4, s4, proto::UDP, 0xc002), &udp(4000, 7000, b"x")), 0xc002),
        ("ICMP echo, IPv4", f.ipv4(V4::new(t4, s4, proto::ICMP, 0xc003), &echo_request(false, 7)), 0xc003),
        ("TCP SYN, IPv6", f.ipv6(t6, s6, proto::TCP, 0xc004, &tcp_syn(4000, 80)), 0xc004),
        ("UDP, IPv6", f.ipv6(t6, s6, proto::UDP, 0xc005, &udp(4000, 7000, b"x")), 0xc005),
        ("ICMPv6 echo, IPv6", f.ipv6(t6, s6, proto::ICMPV6, 0xc006, &echo_request(true, 7)), 0xc006),
        ("TCP SYN from IPv4-mapped IPv6", f.ipv6(mapped, s6, proto::TCP, 0xc007, &tcp_syn(4000, 80)), 0xc007),
        ("UDP from IPv4-mapped IPv6", f.ipv6(mapped, s6, proto::UDP, 0xc008, &udp(4000, 7000, b"x")), 0xc008),
    ];
    let before = lab.dp().view().counters().expect("counters");
    for (what, frame, mark) in &spoofed {
        let got = send_and_capture(&client, &server, &[frame]);
        assert!(!found(&got, *mark), "{what} with trusted's source address reached the server");
    }
    // An ARP request claiming trusted's address poisons no neighbour table.
    let _ = send_and_capture(&client, &server, &[&f.arp_request(t4, s4)]);
    let after = lab.dp().view().counters().expect("counters");
    assert_eq!(
        after.packets(Reason::InvalidSourceIp) - before.packets(Reason::InvalidSourceIp),
        spoofed.len() as u64 + 1,
        "every spoofed packet is counted as INVALID_SOURCE_IP"
    );
    // Each is reported as a drop by the endpoint that really sent it.
    let client_id = lab.endpoint_id("iso/client");
    let reports: Vec<RawEvent> = drain(&mut events)
        .into_iter()
        .filter(|e| e.kind == EVENT_DROP && e.reason == Reason::InvalidSourceIp as u8)
        .collect();
    assert_eq!(reports.len(), spoofed.len() + 1, "{reports:?}");
    assert!(reports.iter().all(|e| e.endpoint == client_id), "{reports:?}");

    // Controls: the client with its own addresses meets the server's policy
    // (denied, and not for its source), and trusted itself gets through.
    let own = [
        f.ipv4(V4::new(c4, s4, proto::TCP, 0xc101), &tcp_syn(4000, 80)),
        f.ipv6(c6, s6, proto::TCP, 0xc102, &tcp_syn(4000, 80)),
    ];
    let before = lab.dp().view().counters().expect("counters");
    for frame in &own {
        assert!(!found(&send_and_capture(&client, &server, &[frame]), 0xc101));
    }
    let after = lab.dp().view().counters().expect("counters");
    assert_eq!(after.packets(Reason::PolicyDenied) - before.packets(Reason::PolicyDenied), 2);
    assert_eq!(after.packets(Reason::InvalidSourceIp), before.packets(Reason::InvalidSourceIp));
    let ft = framer(&lab, &trusted);
    let got = send_and_capture(&trusted, &server, &[&ft.ipv4(V4::new(t4, s4, proto::TCP, 0xc201), &tcp_syn(4000, 80))]);
    assert!(found(&got, 0xc201), "trusted's own SYN must reach the server");
    let got = send_and_capture(&trusted, &server, &[&ft.ipv6(t6, s6, proto::TCP, 0xc202, &tcp_syn(4000, 80))]);
    assert!(found(&got, 0xc202), "trusted's own IPv6 SYN must reach the server");
}

/// A TCP connection from `client` to `server`:80, with both ends held by
/// the test (sockets keep the namespace they were made in).
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

impl Conn {
    fn open(client: &PodLink, server: &PodLink, listener: &TcpListener) -> Conn {
        let dst = SocketAddr::new(IpAddr::V4(v4(server)), 80);
        let c =
            netns::run_in(&netns::named(&client.netns), || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
                .expect("client netns")
                .expect("connect");
        let (s, _) = listener.accept().expect("accept");
        for t in [&c, &s] {
            t.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
            t.set_nodelay(true).expect("nodelay");
        }
        Conn { client: c, server: s }
    }

    /// Whether one byte written at one end arrives at the other.
    fn carries(&mut self, client_to_server: bool) -> bool {
        self.delivers(client_to_server, Duration::from_millis(700))
    }

    /// Whether the connection delivers again after its packets were
    /// dropped: TCP resends what was lost only when its backed-off
    /// retransmission timer fires, which can be seconds away.
    fn resumes(&mut self, client_to_server: bool) -> bool {
        self.delivers(client_to_server, Duration::from_secs(20))
    }

    fn delivers(&mut self, client_to_server: bool, wait: Duration) -> bool {
        let (w, r) =
            if client_to_server { (&mut self.client, &mut self.server) } else { (&mut self.server, &mut self.client) };
        w.write_all(b"x").expect("write");
        r.set_read_timeout(Some(wait)).expect("timeout");
        let mut b = [0u8; 64];
        let got = matches!(uninterrupted(|| r.read(&mut b)), Ok(n) if n > 0);
        r.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
        got
    }
}

#[test]
fn established_connections_stop_when_audit_ends_or_an_allow_goes() {
    if !privileged("established_connections_stop_when_audit_ends_or_an_allow_goes") {
        return;
    }
    let mut lab = Lab::up("au", CLUSTER, ONLY_TRUSTED);
    let (client, server) = (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone());
    let listener = netns::run_in(&netns::named(&server.netns), || TcpListener::bind("0.0.0.0:80"))
        .expect("server netns")
        .expect("listen");

    // Admitted only because of audit mode; then audit ends.
    lab.audit = true;
    lab.load();
    let mut conn = Conn::open(&client, &server, &listener);
    assert!(conn.carries(true) && conn.carries(false), "audit mode lets the connection work");
    lab.audit = false;
    lab.load();
    let before = lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied);
    assert!(!conn.carries(true), "the client's next packet after audit ended reached the server");
    assert!(!conn.carries(false), "the server's next packet after audit ended reached the client");
    let after = lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied);
    assert!(after >= before + 2, "both drops counted as POLICY_DENIED ({before} → {after})");

    // Allowed by policy; then the allow goes.
    lab.replace_policies(CLIENT_ALLOWED);
    let mut conn = Conn::open(&client, &server, &listener);
    assert!(conn.carries(true) && conn.carries(false), "the allowed connection works");
    lab.replace_policies(ONLY_TRUSTED);
    assert!(!conn.carries(false), "the server's packet reached the client after the allow was removed");
    assert!(!conn.carries(true), "the client's packet reached the server after the allow was removed");
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu in range");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

#[test]
fn one_new_flow_on_two_cpus_at_once_is_not_dropped() {
    if !privileged("one_new_flow_on_two_cpus_at_once_is_not_dropped") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs two CPUs (found {cpus})");
    let mut lab = Lab::up("ct", CLUSTER, CLIENT_ALLOWED);
    let (client, server) = (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone());
    let sink = netns::run_in(&netns::named(&server.netns), || UdpSocket::bind("0.0.0.0:7000"))
        .expect("server netns")
        .expect("bind");
    let dst = SocketAddr::new(IpAddr::V4(v4(&server)), 7000);
    const ROUNDS: usize = 3000;
    // Two senders, one per CPU, meet at a spin barrier before each round's
    // first packet of a new flow (a new source port), and send it together.
    let arrived = Arc::new(AtomicUsize::new(0));
    let before = lab.dp().view().counters().expect("counters");
    let socket_slot: Arc<std::sync::Mutex<Option<Arc<UdpSocket>>>> = Arc::default();
    let gate = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let client_ns = netns::named(&client.netns);
    std::thread::scope(|sc| {
        for cpu in 0..2 {
            let (socket_slot, gate) = (Arc::clone(&socket_slot), Arc::clone(&gate));
            sc.spawn(move || {
                pin_to(cpu);
                for round in 0..ROUNDS {
                    // Round r opens when the gate reaches 3r+1 (the main
                    // thread made the socket); each sender then arrives.
                    while gate.load(Ordering::Acquire) < 3 * round + 1 {
                        std::hint::spin_loop();
                    }
                    let s = socket_slot.lock().expect("lock").clone().expect("socket");
                    gate.fetch_add(1, Ordering::AcqRel);
                    while gate.load(Ordering::Acquire) < 3 * round + 3 {
                        std::hint::spin_loop();
                    }
                    s.send(&[cpu as u8]).expect("send");
                }
            });
        }
        let (sink, counted, stop) = (&sink, Arc::clone(&arrived), Arc::clone(&done));
        sc.spawn(move || {
            sink.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let mut b = [0u8; 4];
            while !stop.load(Ordering::Relaxed) {
                if sink.recv(&mut b).is_ok() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        for round in 0..ROUNDS {
            let s = netns::run_in(&client_ns, || {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(dst)?;
                Ok::<_, std::io::Error>(s)
            })
            .expect("client netns")
            .expect("socket");
            *socket_slot.lock().expect("lock") = Some(Arc::new(s));
            gate.fetch_add(1, Ordering::AcqRel);
            while gate.load(Ordering::Acquire) < 3 * round + 3 {
                std::hint::spin_loop();
            }
        }
        // The arrivals are only reported (the assertions are the datapath's
        // counters): give the last datagrams a moment, not a condition.
        let _ = bulkhead_lab::wait_until("every datagram arriving", Duration::from_secs(1), || {
            arrived.load(Ordering::Relaxed) >= 2 * ROUNDS
        });
        done.store(true, Ordering::Relaxed);
    });
    let after = lab.dp().view().counters().expect("counters");
    let dropped: u64 = Reason::ALL[1..].iter().map(|r| after.packets(*r) - before.packets(*r)).sum();
    eprintln!(
        "{ROUNDS} new flows sent from two CPUs at once: {} of {} datagrams arrived, {dropped} dropped by the datapath",
        arrived.load(Ordering::Relaxed),
        2 * ROUNDS
    );
    assert_eq!(after.packets(Reason::CtFull), before.packets(Reason::CtFull), "conntrack insert race dropped packets");
    assert_eq!(dropped, 0, "the datapath dropped allowed packets");
}

/// Sets the MTU of a pod's interface and of its host side.
fn set_mtu(lab: &Lab, pod: &PodLink, mtu: u32) {
    let run = |ns: &Path, dev: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", ns.file_name().and_then(|n| n.to_str()).expect("netns name")])
            .args(["link", "set", dev, "mtu", &mtu.to_string()])
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip link set {dev} mtu {mtu}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&lab.node.path(), &pod.host_if);
    run(&netns::named(&pod.netns), "eth0");
}

#[test]
fn headers_outside_the_linear_area_are_read_and_too_many_fail_closed() {
    if !privileged("headers_outside_the_linear_area_are_read_and_too_many_fail_closed") {
        return;
    }
    let mut lab = Lab::up("nl", CLUSTER, CLIENT_ALLOWED);
    let (client, server) = (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone());
    for p in [&client, &server] {
        set_mtu(&lab, p, 9000);
    }
    warm_up(&client, &server);
    let f = framer(&lab, &client);
    let (c4, s4, c6, s6) = (v4(&client), v4(&server), v6(&client), v6(&server));
    // A packet socket sends a frame of a page or more with only the
    // Ethernet header in the linear area: the IP and L4 headers are in
    // page fragments, as a GRO-merged or virtio frame can have them.
    let big = vec![0x5au8; 5000];
    let syn = |dport: u16| [tcp_syn(4000, dport), big.clone()].concat();
    let found =
        |frames: &[Vec<u8>], mark: u16| frames.iter().any(|x| v4_id(x) == Some(mark) || v6_mark(x) == Some(mark));
    let cases: Vec<(&str, Vec<u8>, u16, Option<Reason>)> = vec![
        ("IPv4 TCP to an allowed port", f.ipv4(V4::new(c4, s4, proto::TCP, 0xd001), &syn(80)), 0xd001, None),
        (
            "IPv4 TCP to a denied port",
            f.ipv4(V4::new(c4, s4, proto::TCP, 0xd002), &syn(81)),
            0xd002,
            Some(Reason::PolicyDenied),
        ),
        ("IPv6 UDP to an allowed port", f.ipv6(c6, s6, proto::UDP, 0xd003, &udp(4000, 7000, &big)), 0xd003, None),
        (
            "IPv6 UDP behind 6 extension headers to an allowed port",
            f.ipv6(c6, s6, proto::DSTOPTS, 0xd004, &ext_headers(6, proto::UDP, &udp(4000, 7000, &big))),
            0xd004,
            None,
        ),
        (
            "IPv6 UDP behind 6 extension headers to a denied port",
            f.ipv6(c6, s6, proto::DSTOPTS, 0xd005, &ext_headers(6, proto::UDP, &udp(4000, 7001, &big))),
            0xd005,
            Some(Reason::PolicyDenied),
        ),
        (
            "IPv6 UDP behind 20 extension headers (more than the parser walks)",
            f.ipv6(c6, s6, proto::DSTOPTS, 0xd006, &ext_headers(20, proto::UDP, &udp(4000, 7000, &big))),
            0xd006,
            Some(Reason::InvalidPacket),
        ),
        (
            "IPv6 UDP behind 20 extension headers, small",
            f.ipv6(c6, s6, proto::DSTOPTS, 0xd007, &ext_headers(20, proto::UDP, &udp(4000, 7000, b"x"))),
            0xd007,
            Some(Reason::InvalidPacket),
        ),
    ];
    for (what, frame, mark, reason) in &cases {
        let before = lab.dp().view().counters().expect("counters");
        let got = send_and_capture(&client, &server, &[frame]);
        let after = lab.dp().view().counters().expect("counters");
        match reason {
            None => {
                assert!(found(&got, *mark), "{what}: must reach the server");
                assert_eq!(after.packets(Reason::InvalidPacket), before.packets(Reason::InvalidPacket), "{what}");
            }
            Some(r) => {
                assert!(!found(&got, *mark), "{what}: must not reach the server");
                assert_eq!(after.packets(*r), before.packets(*r) + 1, "{what}: one {} drop", r.as_str());
            }
        }
    }

    // GSO-sized traffic through real sockets: 32 MiB over one allowed TCP
    // connection, with nothing dropped as invalid on the way.
    let listener = netns::run_in(&netns::named(&server.netns), || TcpListener::bind("0.0.0.0:80"))
        .expect("server netns")
        .expect("listen");
    let before = lab.dp().view().counters().expect("counters");
    const BYTES: usize = 32 << 20;
    let received = std::thread::scope(|sc| {
        let reader = sc.spawn(|| {
            let (mut s, _) = listener.accept().expect("accept");
            let mut n = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match uninterrupted(|| s.read(&mut buf)) {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        });
        let dst = SocketAddr::new(IpAddr::V4(s4), 80);
        let mut c =
            netns::run_in(&netns::named(&client.netns), || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
                .expect("client netns")
                .expect("connect");
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..BYTES >> 20 {
            c.write_all(&chunk).expect("write");
        }
        drop(c);
        reader.join().expect("reader")
    });
    let after = lab.dp().view().counters().expect("counters");
    assert_eq!(received, BYTES);
    assert_eq!(after.packets(Reason::InvalidPacket), before.packets(Reason::InvalidPacket));
}

/// CLIENT_ALLOWED and 160 more ports for the client: more entries than the
/// slot capacity the overflow test sets.
fn too_big() -> String {
    let mut ports = String::new();
    for rule in 0..4 {
        ports.push_str("  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [");
        let list: Vec<String> =
            (0..40).map(|i| format!("{{port: \"{}\", protocol: TCP}}", 10_000 + rule * 100 + i * 2)).collect();
        ports.push_str(&list.join(", "));
        ports.push_str("]}]\n");
    }
    format!("{CLIENT_ALLOWED}{ports}")
}

/// Whether a UDP datagram from `from` to `to`:7000 gets an answer (the
/// receiving end echoes it on a thread of its own).
fn udp_answered(from: &PodLink, to: &PodLink) -> bool {
    let echo =
        netns::run_in(&netns::named(&to.netns), || UdpSocket::bind("0.0.0.0:7000")).expect("netns").expect("bind");
    echo.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    let dst = SocketAddr::new(IpAddr::V4(v4(to)), 7000);
    let s = netns::run_in(&netns::named(&from.netns), || UdpSocket::bind("0.0.0.0:0")).expect("netns").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    s.send_to(b"?", dst).expect("send");
    let mut b = [0u8; 4];
    if let Ok((n, peer)) = uninterrupted(|| echo.recv_from(&mut b)) {
        let _ = echo.send_to(&b[..n], peer);
    }
    uninterrupted(|| s.recv(&mut b)).is_ok()
}

#[test]
fn a_policy_too_big_for_its_map_fails_closed_or_keeps_the_previous_one() {
    if !privileged("a_policy_too_big_for_its_map_fails_closed_or_keeps_the_previous_one") {
        return;
    }
    let mut lab = Lab::up("ov", CLUSTER, CLIENT_ALLOWED);
    lab.dp().set_slot_capacity(64);
    let (client, server, trusted) =
        (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone(), lab.pods["iso/trusted"].clone());
    let listener = netns::run_in(&netns::named(&server.netns), || TcpListener::bind("0.0.0.0:80"))
        .expect("server netns")
        .expect("listen");
    let mut conn = Conn::open(&client, &server, &listener);
    assert!(conn.carries(true) && udp_answered(&client, &server));

    // Fail closed (the default): the server's ingress denies everything,
    // its established connection included, until a policy fits.
    let report = lab.try_replace_policies(&too_big());
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    let f = &report.failed[0];
    assert_eq!((f.ifindex, f.overflow), (server.ifindex, Overflow::FailClosed));
    assert_eq!(f.directions, vec![Direction::Ingress]);
    assert!(f.error.to_string().contains("full"), "{}", f.error);
    let before = lab.dp().view().counters().expect("counters").packets(Reason::EpNotReady);
    assert!(!conn.carries(true), "the established connection went on into an endpoint with no loaded policy");
    assert!(!conn.carries(false), "the server's packet of that connection reached the client");
    assert!(!udp_answered(&client, &server), "a new flow reached an endpoint with no loaded policy");
    let after = lab.dp().view().counters().expect("counters").packets(Reason::EpNotReady);
    assert!(after >= before + 3, "drops counted as DROP_EP_NOT_READY ({before} → {after})");
    assert!(udp_answered(&server, &trusted), "the server's egress (which fits) is untouched");
    // A policy that fits again: the connection resumes.
    lab.replace_policies(CLIENT_ALLOWED);
    assert!(conn.resumes(true) && conn.resumes(false), "the connection resumes once a policy fits");

    // Keep the previous policy, when asked to.
    lab.sync.set_overflow(Overflow::KeepPrevious);
    let report = lab.try_replace_policies(&too_big());
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].overflow, Overflow::KeepPrevious);
    assert!(conn.carries(true) && conn.carries(false), "the previous policy still admits the connection");
    assert!(udp_answered(&client, &server), "the previous policy still admits new flows");
}

/// CLIENT_ALLOWED, and the server's egress closed: it may answer its
/// connections and nothing else.
const SERVER_CLOSED_IN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-egress, namespace: iso}
spec:
  endpointSelector: {matchLabels: {app: server}}
  egress: [{}]
"#;

/// The 20-byte TCP header of a segment from `(src, sport)` to `(dst, dport)`.
fn tcp_segment(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = tcp_syn(sport, dport);
    t[13] = 0x18; // PSH, ACK
    t
}

#[test]
fn icmp_errors_pass_only_back_to_the_connection_they_are_about() {
    if !privileged("icmp_errors_pass_only_back_to_the_connection_they_are_about") {
        return;
    }
    let mut lab = Lab::up("ic", CLUSTER, &format!("{CLIENT_ALLOWED}---{SERVER_CLOSED_IN}"));
    let (client, server, trusted) =
        (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone(), lab.pods["iso/trusted"].clone());
    let listener = netns::run_in(&netns::named(&server.netns), || TcpListener::bind("0.0.0.0:80"))
        .expect("server netns")
        .expect("listen");
    let conn = Conn::open(&client, &server, &listener);
    let cport = conn.client.local_addr().expect("client address").port();
    warm_up(&server, &trusted);
    warm_up(&server, &client);
    let (c4, s4, t4) = (v4(&client), v4(&server), v4(&trusted));
    let (fs, fc) = (framer(&lab, &server), framer(&lab, &client));
    let request = ipv4_packet(V4::new(c4, s4, proto::TCP, 1), &tcp_segment(cport, 80));
    let reply = ipv4_packet(V4::new(s4, c4, proto::TCP, 2), &tcp_segment(80, cport));
    let found = |frames: &[Vec<u8>], mark: u16| frames.iter().any(|x| v4_id(x) == Some(mark));

    // The server, whose egress is closed, dresses a message to `trusted` as
    // an error about its client's connection: not an error on its way back.
    let covert = fs.ipv4(V4::new(s4, t4, proto::ICMP, 0xe001), &icmp_error(3, 3, &request));
    let before = lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied);
    assert!(!found(&send_and_capture(&server, &trusted, &[&covert]), 0xe001), "an error to a third party passed");
    assert_eq!(lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied), before + 1);

    // A real error about the server's reply (a Packet Too Big on the way to
    // the client) gets back to the server; one about the client's request
    // gets back to the client.
    let too_big = fc.ipv4(V4::new(c4, s4, proto::ICMP, 0xe002), &icmp_error(3, 4, &reply));
    assert!(found(&send_and_capture(&client, &server, &[&too_big]), 0xe002), "an error about the reply was dropped");
    let unreachable = fs.ipv4(V4::new(s4, c4, proto::ICMP, 0xe003), &icmp_error(3, 3, &request));
    assert!(
        found(&send_and_capture(&server, &client, &[&unreachable]), 0xe003),
        "an error about the request was dropped"
    );
    drop(conn);
}

#[test]
fn neighbour_discovery_between_pods_is_under_policy() {
    if !privileged("neighbour_discovery_between_pods_is_under_policy") {
        return;
    }
    let mut lab = Lab::up("nd", CLUSTER, ONLY_TRUSTED);
    let (client, server, trusted) =
        (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone(), lab.pods["iso/trusted"].clone());
    warm_up(&client, &server);
    let f = framer(&lab, &client);
    let (c6, s6) = (v6(&client), v6(&server));
    let found = |frames: &[Vec<u8>], mark: u16| frames.iter().any(|x| v6_mark(x) == Some(mark));
    // Neighbour solicitation and a listener report, from the client's own
    // address to the server's: not the link working but a way past the
    // server's policy (the node forwards them).
    let ns = f.ipv6(c6, s6, proto::ICMPV6, 0xe101, &neighbour_solicitation(s6));
    let mld = f.ipv6(c6, s6, proto::ICMPV6, 0xe102, &[143, 0, 0, 0, 0, 0, 0, 0]);
    let before = lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied);
    assert!(!found(&send_and_capture(&client, &server, &[&ns]), 0xe101), "neighbour solicitation passed the policy");
    assert!(!found(&send_and_capture(&client, &server, &[&mld]), 0xe102), "a listener report passed the policy");
    assert_eq!(lab.dp().view().counters().expect("counters").packets(Reason::PolicyDenied), before + 2);
    // With the node, discovery works: IPv6 between pods the policy allows.
    let (diffs, _) = lab.differences(&[(bulkhead_policy::repository::Proto::Tcp, 80)], Duration::from_millis(500));
    assert!(diffs.is_empty(), "{diffs:?}");
    assert!(trusted.ips.iter().any(IpAddr::is_ipv6));
}

/// Trusted may reach the server on everything but TCP 22.
const ALL_BUT_22: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: iso}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: trusted}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#;

#[test]
fn a_fragment_header_cannot_hide_the_port_behind_extension_headers() {
    if !privileged("a_fragment_header_cannot_hide_the_port_behind_extension_headers") {
        return;
    }
    let lab = Lab::up("fh", CLUSTER, ALL_BUT_22);
    let (server, trusted) = (lab.pods["iso/server"].clone(), lab.pods["iso/trusted"].clone());
    warm_up(&trusted, &server);
    let f = framer(&lab, &trusted);
    let (t6, s6) = (v6(&trusted), v6(&server));
    let found = |frames: &[Vec<u8>], mark: u16| frames.iter().any(|x| v6_mark(x) == Some(mark));
    let behind = |port: u16, more: bool, id: u32| {
        [&fragment_header(proto::DSTOPTS, 0, more, id)[..], &ext_headers(1, proto::TCP, &tcp_syn(4000, port))].concat()
    };
    for (port, denied, mark) in [(22u16, true, 0xe201u16), (23, false, 0xe202)] {
        // An atomic fragment: a fragment header, then destination options,
        // then TCP.
        let atomic = f.ipv6(t6, s6, proto::FRAGMENT, mark, &behind(port, false, u32::from(mark)));
        // A real first fragment and the rest of the datagram.
        let first = f.ipv6(
            t6,
            s6,
            proto::FRAGMENT,
            mark + 0x10,
            &[behind(port, true, 7 + u32::from(mark)), vec![0; 8]].concat(),
        );
        let rest = f.ipv6(
            t6,
            s6,
            proto::FRAGMENT,
            mark + 0x20,
            &[&fragment_header(proto::DSTOPTS, 5, false, 7 + u32::from(mark))[..], &[0u8; 16]].concat(),
        );
        let got = send_and_capture(&trusted, &server, &[&atomic, &first, &rest]);
        for (what, m) in [("atomic fragment", mark), ("first fragment", mark + 0x10), ("later fragment", mark + 0x20)] {
            assert_eq!(found(&got, m), !denied, "{what} to TCP {port}");
        }
    }
}

#[test]
fn slot_numbers_are_never_reused_across_agents() {
    if !privileged("slot_numbers_are_never_reused_across_agents") {
        return;
    }
    let mut lab = Lab::up("sq", CLUSTER, ONLY_TRUSTED);
    // The server gets the newest slots, and then goes: its slots are retired
    // and deleted, so the highest numbers ever used are no longer published.
    lab.replace_policies(CLIENT_ALLOWED);
    let used = *lab.dp().view().slots().expect("slots").iter().max().expect("slots");
    let server = lab.pods["iso/server"].ifindex;
    let specs: Vec<_> = lab.specs().into_iter().filter(|s| s.ifindex != server).collect();
    let ipcache = lab.ipcache();
    let (dp, sync) = (lab.dp.as_mut().expect("datapath"), &mut lab.sync);
    sync.apply(dp, specs, ipcache).expect("the server's endpoint goes");
    sync.collect_retired(dp, true).expect("retired slots deleted");
    assert!(lab.dp().view().slots().expect("slots").iter().all(|s| *s < used), "the highest slot is gone");
    // A new agent hands out numbers above every number ever used: conntrack
    // entries remember theirs.
    lab.restart(bulkhead_datapath::abi::POLICY_SLOT_MAX_ENTRIES, Overflow::FailClosed);
    lab.load();
    let mut named: Vec<u32> =
        lab.dp().view().endpoints().expect("endpoints").iter().flat_map(|(_, e)| e.slot).collect();
    named.sort_unstable();
    assert!(named.iter().all(|s| *s > used), "slot numbers reused: {named:?}, {used} was used before");
}

#[test]
fn keep_previous_after_a_restart_keeps_the_previous_slot() {
    if !privileged("keep_previous_after_a_restart_keeps_the_previous_slot") {
        return;
    }
    let mut lab = Lab::up("kp", CLUSTER, CLIENT_ALLOWED);
    let (client, server) = (lab.pods["iso/client"].clone(), lab.pods["iso/server"].clone());
    let listener = netns::run_in(&netns::named(&server.netns), || TcpListener::bind("0.0.0.0:80"))
        .expect("server netns")
        .expect("listen");
    let mut conn = Conn::open(&client, &server, &listener);
    assert!(conn.carries(true));
    // A new agent, whose first load of the server's policy does not fit and
    // keeps the previous one: the previous one's slot (an earlier agent's)
    // must stay.
    lab.restart(64, Overflow::KeepPrevious);
    let report = lab.try_replace_policies(&too_big());
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].overflow, Overflow::KeepPrevious);
    lab.sync.collect_retired(lab.dp.as_mut().expect("datapath"), true).expect("collect");
    assert!(conn.carries(true) && conn.carries(false), "the previous policy still admits the connection");
    assert!(udp_answered(&client, &server), "the previous policy still admits new flows");
}
