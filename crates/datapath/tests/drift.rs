//! Drift (root): the datapath's mutable maps changed behind the sync's
//! back — an ipcache entry that makes one pod pass for another, an
//! endpoint removed, an address taken out of the address map, a slot
//! removed, entries added — are each found by
//! `PolicySync::verify` and put right, and a program detached through
//! its link, or a foreign program put before ours, is found by
//! `Datapath::changed_programs` and attaching again puts ours first;
//! traffic is judged as the policy says again. Each tampering is first shown to change what the
//! kernel does, so the repair is what makes the difference.

mod support;

use std::time::Duration;

use bulkhead_datapath::abi::Addr;
use bulkhead_datapath::sync::Drift;
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::repository::Proto;
use std::os::fd::AsRawFd as _;

use bulkhead_datapath::netns;
use support::{Lab, obj_get, privileged, sys_bpf};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: t}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: t, labels: {app: client}}, status: {podIP: 198.18.62.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: t, labels: {app: server}}, status: {podIP: 198.18.62.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: intruder, namespace: t, labels: {app: intruder}}, status: {podIP: 198.18.62.3}}
"#;

/// The server takes the client on 80, nobody else.
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const PORTS: [(Proto, u16); 1] = [(Proto::Tcp, 80)];
const BPF_LINK_DETACH: i64 = 34;

fn kinds(d: &[Drift]) -> Vec<&'static str> {
    d.iter().map(|d| d.kind).collect()
}

#[test]
fn tampered_maps_are_found_and_put_right() {
    if !privileged("tampered_maps_are_found_and_put_right") {
        return;
    }
    let mut lab = Lab::up("drift", CLUSTER, POLICY);
    let wait = Duration::from_millis(400);
    assert_eq!(lab.differences(&PORTS, wait).0, Vec::<String>::new(), "enforced as the policy says");
    let verify = |lab: &mut Lab| {
        let dp = lab.dp.as_mut().expect("datapath");
        lab.sync.verify(dp).expect("verify")
    };
    assert_eq!(verify(&mut lab), [], "nothing to put right before any tampering");

    // The intruder's address mapped to the client's identity: the server
    // now takes the intruder.
    let client_id = lab.engine.pod("t/client").expect("client").1.0;
    let intruder = Cidr::host("198.18.62.3".parse().expect("ip"));
    lab.dp().set_ipcache(intruder, client_id).expect("tamper");
    let (diff, _) = lab.differences(&PORTS, wait);
    assert!(diff.iter().any(|d| d.contains("t/intruder") && d.contains("t/server")), "the tampering took: {diff:?}");
    // The connection the tampering let in (its conntrack entry, made under
    // the server's current slot) is cut in the same look: with the ipcache
    // put right, the policy no longer admits it.
    let drifts = verify(&mut lab);
    assert_eq!(kinds(&drifts)[0], "ipcache-changed", "{drifts:?}");
    assert!(drifts.len() > 1, "the intruder's connection is cut: {drifts:?}");
    for d in &drifts[1..] {
        assert_eq!(d.kind, "conntrack-unallowed", "{drifts:?}");
        assert!(d.what.contains("198.18.62.3") && d.what.contains("ingress"), "{drifts:?}");
    }
    assert_eq!(lab.differences(&PORTS, wait).0, Vec::<String>::new(), "the intruder is out again");
    assert_eq!(verify(&mut lab), [], "the probes since made no entry the policy does not admit");

    // A prefix added, the server's endpoint removed (its policy with it),
    // its ingress slot removed: all found, all put right.
    let server_if = lab.pods["t/server"].ifindex;
    let slot = lab.sync.slots_of(server_if).expect("server slots")[0];
    lab.dp().set_ipcache(Cidr::new("198.18.99.0".parse().expect("ip"), 24), client_id).expect("tamper");
    lab.dp().remove_endpoint(server_if).expect("tamper");
    assert!(!lab.differences(&PORTS, wait).0.is_empty(), "without its endpoint the server takes anyone");
    lab.dp().remove_slot(slot).expect("tamper");
    let mut found = kinds(&verify(&mut lab));
    found.sort_unstable();
    assert_eq!(found, ["endpoint-removed", "ipcache-added", "slot-removed"]);
    assert_eq!(lab.differences(&PORTS, wait).0, Vec::<String>::new(), "enforced again");
    assert_eq!(verify(&mut lab), [], "nothing left to put right");

    // The server's address taken out of the address map (which the source
    // checks and local deliveries read): found, put back.
    let mut addrs: aya::maps::HashMap<aya::maps::MapData, Addr, u32> = aya::maps::HashMap::try_from(
        aya::maps::Map::HashMap(aya::maps::MapData::from_pin(lab.dp().pin_dir().join("bh_ep_addrs")).expect("pin")),
    )
    .expect("address map");
    let server_addr = Addr::from("198.18.62.2".parse::<std::net::IpAddr>().expect("ip"));
    addrs.remove(&server_addr).expect("tamper");
    assert_eq!(kinds(&verify(&mut lab)), ["address-removed"]);
    assert_eq!(addrs.get(&server_addr, 0).ok(), Some(server_if), "back, pointing at the server");
    assert_eq!(lab.differences(&PORTS, wait).0, Vec::<String>::new(), "enforced as before");

    // The server's ingress program detached through a descriptor of its
    // link (root opens the pin; no map changes): the hook's revision says
    // so, and attaching again puts enforcement back.
    let node = lab.node.path();
    let changed = |lab: &mut Lab| netns::run_in(&node, || lab.dp().changed_programs(&[server_if])).expect("node netns");
    assert_eq!(changed(&mut lab), []);
    let link = lab.dp().pin_dir().join("links").join(format!("{server_if}-to-pod"));
    let fd = obj_get(&link, 0).expect("the link, as root");
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&u32::try_from(fd.as_raw_fd()).expect("fd").to_ne_bytes());
    sys_bpf(BPF_LINK_DETACH, &mut attr).expect("detach");
    let (diff, _) = lab.differences(&PORTS, wait);
    assert!(diff.iter().any(|d| d.contains("t/intruder") && d.contains("t/server")), "detached: {diff:?}");
    let found = changed(&mut lab);
    assert_eq!(found.len(), 1, "{found:?}");
    let host_if = lab.pods["t/server"].host_if.clone();
    netns::run_in(&node, || lab.dp().attach(&host_if, server_if)).expect("node netns").expect("attach again");
    assert_eq!(changed(&mut lab), [], "the new attachment is the recorded one");
    assert_eq!(lab.differences(&PORTS, wait).0, Vec::<String>::new(), "enforced again after the detach");

    // A program of another process put first on the same hook, passing
    // every packet (TCX_PASS ends the chain before ours runs): the intruder
    // gets in. Found by the revision; attaching again detaches what runs
    // before ours.
    let foreign = netns::run_in(&node, || pass_all_first(server_if)).expect("node netns");
    let (diff, _) = lab.differences(&PORTS, wait);
    assert!(diff.iter().any(|d| d.contains("t/intruder") && d.contains("t/server")), "bypassed: {diff:?}");
    let found = changed(&mut lab);
    assert!(found.len() == 1 && found[0].1.contains("2 program(s)"), "{found:?}");
    netns::run_in(&node, || lab.dp().attach(&host_if, server_if)).expect("node netns").expect("attach again");
    assert_eq!(changed(&mut lab), [], "the new attachment is the recorded one");
    assert_eq!(lab.differences(&PORTS, wait).0, Vec::<String>::new(), "enforced again, the foreign program gone");
    drop(foreign);
}

/// Loads a program that passes every packet (`r0 = TCX_PASS; exit`) and
/// attaches it first on the TCX egress hook (towards the pod) of
/// `ifindex`, as another root process could: its link, held by the
/// descriptor (closed, the program leaves the hook).
fn pass_all_first(ifindex: u32) -> std::os::fd::OwnedFd {
    const BPF_PROG_LOAD: i64 = 5;
    const BPF_LINK_CREATE: i64 = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_EGRESS: u32 = 47;
    const BPF_F_BEFORE: u32 = 1 << 3;
    // mov64 r0, 0; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let prog = support::bpf(BPF_PROG_LOAD, &mut attr).expect("load the foreign program");
    // union bpf_attr's link_create: prog_fd, target_ifindex, attach_type,
    // flags (relative_fd 0 with BPF_F_BEFORE: first).
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&u32::try_from(prog.as_raw_fd()).expect("fd").to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TCX_EGRESS.to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_BEFORE.to_ne_bytes());
    support::bpf(BPF_LINK_CREATE, &mut attr).expect("attach it first")
}
