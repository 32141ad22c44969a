//! Fail closed on real traffic (root): crafted frames sent from a pod's
//! interface meet the programs. Malformed headers, unknown later fragments
//! and unknown L3 protocols drop with their counted reason; fragments of an
//! allowed flow pass and those of a denied one do not; SCTP (which this
//! kernel cannot originate) is enforced by port like TCP and UDP. Frames
//! that arrive are captured on the destination pod's interface.

mod support;

use bulkhead_datapath::abi::Reason;
use bulkhead_lab::frame::{V4, proto, sctp_init, tcp_syn, v4_id};
use support::{Lab, framer, privileged, send_and_capture, v4, v6, warm_up};

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

/// Frames on the server's interface carrying IPv4 id `id` (our marker).
fn arrived(captured: &[Vec<u8>], id: u16) -> usize {
    captured.iter().filter(|f| v4_id(f) == Some(id)).count()
}

#[test]
fn malformed_fragmented_and_sctp_frames_on_real_interfaces() {
    if !privileged("malformed_fragmented_and_sctp_frames_on_real_interfaces") {
        return;
    }
    let mut lab = Lab::up("fc", CLUSTER, POLICY);
    let client = lab.pods["f/client"].clone();
    let server = lab.pods["f/server"].clone();
    let frame = framer(&lab, &client);
    let (c4, s4, c6, s6) = (v4(&client), v4(&server), v6(&client), v6(&server));
    warm_up(&client, &server);

    // (what, frame, drop reason or None when it must arrive, marker id)
    let cases: Vec<(&str, Vec<u8>, Option<Reason>, u16)> = vec![
        (
            "SCTP INIT to an allowed port",
            frame.ipv4(V4::new(c4, s4, proto::SCTP, 0xa001), &sctp_init(5000, 9000)),
            None,
            0xa001,
        ),
        (
            "SCTP INIT to a port no rule allows",
            frame.ipv4(V4::new(c4, s4, proto::SCTP, 0xa002), &sctp_init(5000, 9001)),
            Some(Reason::PolicyDenied),
            0xa002,
        ),
        (
            "IPv4 header length 16 bytes",
            frame.ipv4(V4 { ihl: 4, ..V4::new(c4, s4, proto::TCP, 0xa003) }, &tcp_syn(5000, 80)),
            Some(Reason::InvalidPacket),
            0xa003,
        ),
        (
            "IPv4 total length beyond the frame",
            frame.ipv4(V4 { tot_len: Some(400), ..V4::new(c4, s4, proto::TCP, 0xa004) }, &tcp_syn(5000, 80)),
            Some(Reason::InvalidPacket),
            0xa004,
        ),
        (
            "truncated TCP header",
            frame.ipv4(V4::new(c4, s4, proto::TCP, 0xa005), &tcp_syn(5000, 80)[..12]),
            Some(Reason::InvalidPacket),
            0xa005,
        ),
        (
            "TCP data offset below 5",
            frame.ipv4(V4::new(c4, s4, proto::TCP, 0xa006), &{
                let mut t = tcp_syn(5000, 80);
                t[12] = 4 << 4;
                t
            }),
            Some(Reason::InvalidPacket),
            0xa006,
        ),
        (
            "a later fragment whose first was never seen",
            frame.ipv4(V4 { frag: 100, ..V4::new(c4, s4, proto::TCP, 0xa007) }, &[0u8; 32]),
            Some(Reason::FragUnknown),
            0xa007,
        ),
        ("unknown L3 protocol", frame.eth(0x88b5, &[0u8; 46]), Some(Reason::UnknownL3), 0),
        (
            "IPv6 with a truncated extension header",
            frame.ipv6(c6, s6, 0, 0, &[6, 0, 0, 0]),
            Some(Reason::InvalidPacket),
            0,
        ),
        (
            "IPv6 payload length beyond the frame",
            {
                let mut f = frame.ipv6(c6, s6, proto::TCP, 0, &tcp_syn(5000, 80));
                f[18..20].copy_from_slice(&400u16.to_be_bytes());
                f
            },
            Some(Reason::InvalidPacket),
            0,
        ),
    ];
    for (what, bytes, reason, id) in cases {
        let before = lab.dp().view().counters().expect("counters");
        let captured = send_and_capture(&client, &server, &[&bytes]);
        let after = lab.dp().view().counters().expect("counters");
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
        let first = frame.ipv4(V4 { frag: 0x2000, ..V4::new(c4, s4, proto::TCP, id) }, &[&syn[..], &[0u8; 4]].concat());
        let second = frame.ipv4(V4 { frag: 3, ..V4::new(c4, s4, proto::TCP, id) }, &[0u8; 16]);
        let captured = send_and_capture(&client, &server, &[&first, &second]);
        assert_eq!(arrived(&captured, id), if allowed { 2 } else { 0 }, "fragments to port {port}");
    }
}
