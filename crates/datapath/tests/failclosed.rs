//! Fail closed on real traffic (root): crafted frames sent from a pod's
//! interface meet the programs. Malformed headers, unknown later fragments
//! and unknown L3 protocols drop with their counted reason; fragments of an
//! allowed flow pass and those of a denied one do not; SCTP (which this
//! kernel cannot originate) is enforced by port like TCP and UDP. Frames
//! that arrive are captured on the destination pod's interface.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use bulkhead_datapath::abi::Reason;
use bulkhead_datapath::netns;
use bulkhead_lab::probe::RawLink;
use support::{Lab, privileged};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: f}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: f, labels: {app: client}},
   status: {podIPs: [{ip: 198.18.80.1}, {ip: "fd00:b::80:1"}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: f, labels: {app: server}},
   status: {podIPs: [{ip: 198.18.80.2}, {ip: "fd00:b::80:2"}]}}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: f}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "9000", protocol: SCTP}, {port: "80", protocol: TCP}]}]
"#;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_SCTP: u8 = 132;

fn mac_of(ns: &Path, ifname: &str) -> [u8; 6] {
    let name = ifname.to_string();
    netns::run_in(ns, move || {
        nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .filter(|i| i.interface_name == name)
            .find_map(|i| i.address.and_then(|a| a.as_link_addr().and_then(|l| l.addr())))
            .expect("link address")
    })
    .expect("netns")
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct Frame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
}

impl Frame {
    fn eth(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// IPv4: `ihl` in words, `frag` the flags+offset field, `tot_len`
    /// overriding the true length when given.
    #[allow(clippy::too_many_arguments, reason = "one frame's header fields")]
    fn ipv4(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        id: u16,
        frag: u16,
        ihl: u8,
        tot_len: Option<u16>,
        l4: &[u8],
    ) -> Vec<u8> {
        let hlen = usize::from(ihl.max(5)) * 4;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | ihl;
        let len = tot_len.unwrap_or((hlen + l4.len()) as u16);
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        self.eth(0x0800, &h)
    }

    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.push(next);
        h.push(64);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        self.eth(0x86dd, &h)
    }
}

/// An SCTP common header and an INIT chunk (the checksum is not checked on the way).
fn sctp_init(sport: u16, dport: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0; 8]); // verification tag, checksum
    s.extend_from_slice(&[1, 0, 0, 20, 0xb1, 0x1b, 0xe4, 0xd0, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
    s
}

/// A TCP SYN header (20 bytes, no checksum needed to be forwarded).
fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t
}

/// Frames on the server's interface carrying IPv4 id `id` (our marker).
fn arrived(captured: &[Vec<u8>], id: u16) -> usize {
    captured.iter().filter(|f| f.len() > 20 && f[12..14] == [0x08, 0x00] && f[18..20] == id.to_be_bytes()).count()
}

#[test]
fn malformed_fragmented_and_sctp_frames_on_real_interfaces() {
    if !privileged("malformed_fragmented_and_sctp_frames_on_real_interfaces") {
        return;
    }
    let mut lab = Lab::up("fc", CLUSTER, POLICY);
    let client = lab.pods["f/client"].clone();
    let server = lab.pods["f/server"].clone();
    let client_ns = netns::named(&client.netns);
    let server_ns = netns::named(&server.netns);
    let frame = Frame { dst_mac: mac_of(&lab.node.path(), &client.host_if), src_mac: mac_of(&client_ns, "eth0") };
    let (c4, s4) = (Ipv4Addr::new(198, 18, 80, 1), Ipv4Addr::new(198, 18, 80, 2));
    let (c6, s6): (Ipv6Addr, Ipv6Addr) = ("fd00:b::80:1".parse().expect("ip"), "fd00:b::80:2".parse().expect("ip"));
    // Let the neighbours resolve (the crafted frames carry fixed MACs).
    let _ = bulkhead_lab::probe::probe_from(
        &client_ns,
        &[bulkhead_lab::probe::Probe { dst: IpAddr::V4(s4), proto: bulkhead_policy::repository::Proto::Tcp, port: 80 }],
        Duration::from_secs(1),
        1,
    );

    // (what, frame, drop reason or None when it must arrive, marker id)
    let cases: Vec<(&str, Vec<u8>, Option<Reason>, u16)> = vec![
        (
            "SCTP INIT to an allowed port",
            frame.ipv4(c4, s4, IPPROTO_SCTP, 0xa001, 0, 5, None, &sctp_init(5000, 9000)),
            None,
            0xa001,
        ),
        (
            "SCTP INIT to a port no rule allows",
            frame.ipv4(c4, s4, IPPROTO_SCTP, 0xa002, 0, 5, None, &sctp_init(5000, 9001)),
            Some(Reason::PolicyDenied),
            0xa002,
        ),
        (
            "IPv4 header length 16 bytes",
            frame.ipv4(c4, s4, IPPROTO_TCP, 0xa003, 0, 4, None, &tcp_syn(5000, 80)),
            Some(Reason::InvalidPacket),
            0xa003,
        ),
        (
            "IPv4 total length beyond the frame",
            frame.ipv4(c4, s4, IPPROTO_TCP, 0xa004, 0, 5, Some(400), &tcp_syn(5000, 80)),
            Some(Reason::InvalidPacket),
            0xa004,
        ),
        (
            "truncated TCP header",
            frame.ipv4(c4, s4, IPPROTO_TCP, 0xa005, 0, 5, None, &tcp_syn(5000, 80)[..12]),
            Some(Reason::InvalidPacket),
            0xa005,
        ),
        (
            "TCP data offset below 5",
            frame.ipv4(c4, s4, IPPROTO_TCP, 0xa006, 0, 5, None, &{
                let mut t = tcp_syn(5000, 80);
                t[12] = 4 << 4;
                t
            }),
            Some(Reason::InvalidPacket),
            0xa006,
        ),
        (
            "a later fragment whose first was never seen",
            frame.ipv4(c4, s4, IPPROTO_TCP, 0xa007, 100, 5, None, &[0u8; 32]),
            Some(Reason::FragUnknown),
            0xa007,
        ),
        ("unknown L3 protocol", frame.eth(0x88b5, &[0u8; 46]), Some(Reason::UnknownL3), 0),
        (
            "IPv6 with a truncated extension header",
            frame.ipv6(c6, s6, 0, &[6, 0, 0, 0]),
            Some(Reason::InvalidPacket),
            0,
        ),
        (
            "IPv6 payload length beyond the frame",
            {
                let mut f = frame.ipv6(c6, s6, IPPROTO_TCP, &tcp_syn(5000, 80));
                f[18..20].copy_from_slice(&400u16.to_be_bytes());
                f
            },
            Some(Reason::InvalidPacket),
            0,
        ),
    ];
    for (what, bytes, reason, id) in cases {
        let before = lab.dp().counters().expect("counters");
        let captured = std::thread::scope(|sc| {
            let cap = sc.spawn(|| {
                netns::run_in(&server_ns, || {
                    let link = RawLink::open("eth0").expect("raw socket on the server");
                    link.capture(Duration::from_millis(700), |_| true).expect("capture")
                })
                .expect("server netns")
            });
            std::thread::sleep(Duration::from_millis(150));
            netns::run_in(&client_ns, || RawLink::open("eth0").expect("raw socket").send(&bytes).expect("send"))
                .expect("client netns");
            cap.join().expect("capture thread")
        });
        let after = lab.dp().counters().expect("counters");
        match reason {
            Some(r) => {
                assert_eq!(after.packets(r), before.packets(r) + 1, "{what}: one {} drop counted", r.as_str());
                if id != 0 {
                    assert_eq!(arrived(&captured, id), 0, "{what}: must not reach the server");
                }
            }
            None => assert_eq!(arrived(&captured, id), 1, "{what}: must reach the server"),
        }
    }

    // Fragments: both halves of an allowed flow arrive; of a denied flow, none.
    for (port, allowed, id) in [(80u16, true, 0xb001u16), (81, false, 0xb002)] {
        let syn = tcp_syn(6000, port);
        let first = frame.ipv4(c4, s4, IPPROTO_TCP, id, 0x2000, 5, None, &[&syn[..], &[0u8; 4]].concat());
        let second = frame.ipv4(c4, s4, IPPROTO_TCP, id, 3, 5, None, &[0u8; 16]);
        let captured = std::thread::scope(|sc| {
            let cap = sc.spawn(|| {
                netns::run_in(&server_ns, || {
                    RawLink::open("eth0").expect("raw").capture(Duration::from_millis(700), |_| true).expect("capture")
                })
                .expect("server netns")
            });
            std::thread::sleep(Duration::from_millis(150));
            netns::run_in(&client_ns, || {
                let link = RawLink::open("eth0").expect("raw socket");
                link.send(&first).expect("first fragment");
                link.send(&second).expect("second fragment");
            })
            .expect("client netns");
            cap.join().expect("capture thread")
        });
        assert_eq!(arrived(&captured, id), if allowed { 2 } else { 0 }, "fragments to port {port}");
    }
}
