//! What keeps other processes from changing enforcement (root).
//!
//! Policy entries: each slot map is frozen once written, so no process —
//! root, the agent included — can change or delete an entry; the programs
//! still enforce it.
//!
//! The guard (BPF LSM): while it stands, a process other than the
//! allowed one gets EPERM for a writable descriptor of the datapath's maps,
//! any descriptor of its programs and links (by id, or by opening a link
//! pin), and of the guard's own maps; a read-only map descriptor is still
//! given; each refusal is reported with the process. Dropping the guard
//! lifts it. The test process plays the attacker with raw bpf(2) calls; a
//! `sleep` child stands in for the agent.

mod support;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use aya::maps::MapInfo;
use bulkhead_datapath::guard::{Guard, GuardError, Tampered};
use support::{Lab, bpf, obj_get, privileged, sys_bpf};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: t}}
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: t, labels: {app: a}}, status: {podIP: 198.18.61.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: t, labels: {app: b}}, status: {podIP: 198.18.61.2}}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
"#;

const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_DELETE_ELEM: i64 = 3;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_F_RDONLY: u32 = 1 << 3;

/// BPF_*_GET_FD_BY_ID of `id` with `flags`.
fn by_id(cmd: i64, id: u32, flags: u32) -> Result<OwnedFd, i32> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    attr[8..12].copy_from_slice(&flags.to_ne_bytes());
    bpf(cmd, &mut attr)
}

#[test]
fn only_the_agent_gets_a_writable_map_a_program_or_a_link_and_every_refusal_is_reported() {
    if !privileged("only_the_agent_gets_a_writable_map_a_program_or_a_link_and_every_refusal_is_reported") {
        return;
    }
    let mut lab = Lab::up("guard", CLUSTER, POLICY);
    let dir = lab.dp().pin_dir().to_path_buf();
    let ipcache = dir.join("bh_ipcache");
    let map_id = MapInfo::from_pin(&ipcache).expect("ipcache pin").id();
    let prog_id = lab.dp().view().program_ids()[0];
    let link_ids = lab.dp().link_ids();
    assert_eq!(link_ids.len(), 4, "two programs on two pods");
    let link_pin =
        std::fs::read_dir(dir.join("links")).expect("links").next().expect("a link pin").expect("entry").path();

    // The "agent": allowed; this process is not.
    let mut agent = Command::new("sleep").arg("60").stdout(Stdio::null()).spawn().expect("sleep");
    let mut guard = match Guard::protect(lab.dp(), &[agent.id()]) {
        Ok(g) => g,
        // Where the kernel refuses BPF LSM programs (these CI machines'
        // does, EPERM for any BTF-attached program), what must hold is that
        // the guard says so and why, and that nothing was left refusing.
        Err(GuardError::Unavailable(why)) => {
            eprintln!("the guard is unavailable on this kernel: {why}");
            assert!(why.contains("refuses to load a BPF LSM program") || why.contains("active LSMs"), "{why}");
            obj_get(&ipcache, 0).expect("nothing refuses a writable map when the guard is unavailable");
            let _ = agent.kill();
            let _ = agent.wait();
            return;
        }
        Err(e) => panic!("the guard: {e}"),
    };

    const EPERM: i32 = 1;
    assert_eq!(obj_get(&ipcache, 0).err(), Some(EPERM), "a writable map by pin");
    assert_eq!(by_id(BPF_MAP_GET_FD_BY_ID, map_id, 0).err(), Some(EPERM), "a writable map by id");
    assert_eq!(by_id(BPF_PROG_GET_FD_BY_ID, prog_id, 0).err(), Some(EPERM), "a program by id");
    assert_eq!(by_id(BPF_LINK_GET_FD_BY_ID, link_ids[0], 0).err(), Some(EPERM), "a link by id");
    assert_eq!(obj_get(&link_pin, 0).err(), Some(EPERM), "a link by its pin");
    // Reading stays open to every root tool.
    obj_get(&ipcache, BPF_F_RDONLY).expect("a read-only map by pin");
    by_id(BPF_MAP_GET_FD_BY_ID, map_id, BPF_F_RDONLY).expect("a read-only map by id");

    let refusals = guard.refusals();
    let kinds: Vec<Tampered> = refusals.iter().map(|r| r.object).collect();
    assert_eq!(
        kinds,
        [Tampered::Map, Tampered::Map, Tampered::Program, Tampered::Link, Tampered::Link],
        "{refusals:?}"
    );
    assert!(refusals.iter().all(|r| r.pid == std::process::id() && r.uid == 0 && !r.comm.is_empty()), "{refusals:?}");
    assert_eq!((refusals[1].id, refusals[2].id, refusals[3].id), (map_id, prog_id, link_ids[0]));

    // Protection ends with the guard.
    drop(guard);
    obj_get(&ipcache, 0).expect("writable again without the guard");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A map command on `fd` with `key` (and `value`): its errno, if any.
fn elem(cmd: i64, fd: &OwnedFd, key: &mut [u8], value: Option<&mut [u8]>) -> Result<(), i32> {
    use std::os::fd::AsRawFd as _;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&u32::try_from(fd.as_raw_fd()).expect("fd").to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_mut_ptr() as u64).to_ne_bytes());
    if let Some(v) = value {
        attr[16..24].copy_from_slice(&(v.as_mut_ptr() as u64).to_ne_bytes());
    }
    sys_bpf(cmd, &mut attr).map(drop)
}

#[test]
fn policy_entries_cannot_be_changed_even_by_root() {
    if !privileged("policy_entries_cannot_be_changed_even_by_root") {
        return;
    }
    let mut lab = Lab::up("frozen", CLUSTER, POLICY);
    let outer = obj_get(&lab.dp().pin_dir().join("bh_policy"), 0).expect("the policy map");
    // A slot, and its map of entries.
    let mut slot = [0u8; 4];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&outer)).expect("fd").to_ne_bytes());
    attr[16..24].copy_from_slice(&(slot.as_mut_ptr() as u64).to_ne_bytes());
    sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).expect("a slot");
    let mut inner_id = [0u8; 4];
    elem(BPF_MAP_LOOKUP_ELEM, &outer, &mut slot, Some(&mut inner_id)).expect("the slot's map");
    let entries = by_id(BPF_MAP_GET_FD_BY_ID, u32::from_ne_bytes(inner_id), 0).expect("a descriptor of it");
    // Any entry, written or deleted: refused, before the key is even read.
    let (mut key, mut value) = ([0u8; 28], [0u8; 8]);
    assert_eq!(elem(BPF_MAP_UPDATE_ELEM, &entries, &mut key, Some(&mut value)), Err(1), "an entry written");
    assert_eq!(elem(BPF_MAP_DELETE_ELEM, &entries, &mut key, None), Err(1), "an entry deleted");
    // The same calls on a map that is not frozen get past that check (and
    // fail only on the bogus key): the EPERM above is the freeze's.
    let ipcache = obj_get(&lab.dp().pin_dir().join("bh_ipcache"), 0).expect("ipcache");
    assert_ne!(elem(BPF_MAP_DELETE_ELEM, &ipcache, &mut [0u8; 20], None), Err(1), "ipcache is writable by its owner");
}
