//! A node with pods, the datapath on it, and the engine that decides what
//! the datapath should do: the fixture of the privileged tests.
//!
//! In CI (`CI` set) a test that cannot run here fails; elsewhere it is
//! skipped with a message saying how to run it.

#![allow(dead_code, reason = "each test binary uses part of the fixture")]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_datapath::sync::{EndpointSpec, PolicySync, SyncReport};
use bulkhead_datapath::{Datapath, netns};
use bulkhead_lab::frame::{Frame, mac_of};
use bulkhead_lab::pods::{Node, PodLink};
use bulkhead_lab::probe::{Outcome, Probe, RawLink, probe_from};
use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::diag::Sink;
use bulkhead_policy::engine::{Change, Engine};
use bulkhead_policy::repository::Proto;
use bulkhead_policy::resolve::{Decision, Verdict};

/// Whether privileged tests can run; panics in CI when they cannot.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let tools = std::path::Path::new("/usr/lib/cni/ptp").exists();
    if root && tools {
        return true;
    }
    let why = if root {
        "the CNI plugins are missing (apt-get install containernetworking-plugins)"
    } else {
        "it needs root"
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run in CI: {why}");
    }
    eprintln!("skipping {test}: {why}; run `sudo -E cargo test -p bulkhead-datapath` (CI=1 makes this a failure)");
    false
}

/// Decodes YAML into objects, panicking on any diagnostic error.
pub fn objects(yaml: &str) -> Vec<bulkhead_policy::api::Object> {
    let mut sink = Sink::default();
    let objs = decode_str(yaml, &DecodeOptions::default(), &mut sink);
    assert_eq!(sink.error_count(), 0, "{:?}", sink.diagnostics);
    objs
}

/// The fixture.
pub struct Lab {
    pub engine: Engine,
    pub sync: PolicySync,
    pub dp: Option<Datapath>,
    pub pods: BTreeMap<String, PodLink>,
    pub node: Node,
    pub pin_root: PinRoot,
    pub audit: bool,
}

impl Lab {
    /// Creates the node and a pod per Pod object of `cluster`, loads the
    /// datapath under a pin root of its own, and enforces `policies`.
    pub fn up(tag: &str, cluster: &str, policies: &str) -> Lab {
        let id = format!("bh{}{tag}", std::process::id() % 100_000);
        let state = std::env::temp_dir().join(format!("{id}-state"));
        let mut node = Node::create(&format!("{id}-node"), &state).expect("node namespace");
        let mut engine = Engine::default();
        for o in objects(cluster) {
            engine.apply(match o {
                bulkhead_policy::api::Object::Namespace(n) => Change::UpsertNamespace(n),
                bulkhead_policy::api::Object::Pod(p) => Change::UpsertPod(p),
                bulkhead_policy::api::Object::Policy(p) => Change::UpsertPolicy(p),
            });
        }
        let mut pods = BTreeMap::new();
        for (i, key) in engine.pod_keys().iter().enumerate() {
            let (pod, _) = engine.pod(key).expect("listed pod");
            let link = node.add_pod(&format!("{id}-p{i}"), &pod.ips).expect("pod through ptp");
            pods.insert(key.clone(), link);
        }
        let pin_root = PinRoot(PathBuf::from(format!("/sys/fs/bpf/bulkhead-test-{id}")));
        let mut dp = Datapath::open(&pin_root.0).expect("load the datapath");
        let sync = PolicySync::adopt(&dp).expect("adopt");
        let node_path = node.path();
        netns::run_in(&node_path, || {
            for link in pods.values() {
                dp.attach(&link.host_if, link.ifindex).expect("attach");
            }
        })
        .expect("enter node namespace");
        let mut lab = Lab { engine, sync, dp: Some(dp), pods, node, pin_root, audit: false };
        lab.replace_policies(policies);
        lab
    }

    pub fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("datapath open")
    }

    /// Applies changes to the engine and loads the result.
    pub fn change(&mut self, changes: impl IntoIterator<Item = Change>) {
        for c in changes {
            self.engine.apply(c);
        }
        self.load();
    }

    /// Replaces every policy with those in `text` (one engine batch, one load).
    pub fn replace_policies(&mut self, text: &str) {
        let changes = self.policy_changes(text);
        self.change(changes);
    }

    /// The engine changes that replace every policy with those in `text`.
    fn policy_changes(&self, text: &str) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .engine
            .policies()
            .map(|p| Change::DeletePolicy(bulkhead_policy::repository::PolicyId::of(p)))
            .collect();
        changes.extend(objects(text).into_iter().map(|o| match o {
            bulkhead_policy::api::Object::Policy(p) => Change::UpsertPolicy(p),
            other => panic!("not a policy: {other:?}"),
        }));
        changes
    }

    /// Loads the engine's current state into the maps.
    pub fn load(&mut self) {
        let report = self.try_load();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }

    /// Loads the engine's current state into the maps, reporting what did not load.
    pub fn try_load(&mut self) -> SyncReport {
        let specs: Vec<EndpointSpec> = self.specs();
        let ipcache = self.ipcache();
        let dp = self.dp.as_mut().expect("datapath open");
        self.sync.apply(dp, specs, ipcache).expect("sync")
    }

    /// Replaces every policy with those in `text`, reporting what did not load.
    pub fn try_replace_policies(&mut self, text: &str) -> SyncReport {
        for c in self.policy_changes(text) {
            self.engine.apply(c);
        }
        self.try_load()
    }

    /// An agent restart: the datapath and the sync state are dropped (only
    /// the pins remain), a new datapath adopts the pins with `capacity`
    /// entries per slot and `overflow`, and swaps its programs into the
    /// pinned links. Nothing is loaded yet.
    pub fn restart(&mut self, capacity: u32, overflow: bulkhead_datapath::sync::Overflow) {
        drop(self.dp.take());
        let mut dp = Datapath::open(&self.pin_root.0).expect("reopen the pins");
        dp.set_slot_capacity(capacity);
        let mut sync = PolicySync::adopt(&dp).expect("adopt");
        sync.set_overflow(overflow);
        netns::run_in(&self.node.path(), || {
            for link in self.pods.values() {
                dp.attach(&link.host_if, link.ifindex).expect("re-attach");
            }
        })
        .expect("enter node namespace");
        self.dp = Some(dp);
        self.sync = sync;
    }

    /// What the agent loads into the ipcache: the engine's prefixes, and the
    /// node's own addresses as `host`.
    pub fn ipcache(&self) -> Vec<(bulkhead_policy::cidr::Cidr, u32)> {
        let mut ipcache: Vec<_> = self.engine.ipcache().into_iter().map(|(c, id)| (c, id.0)).collect();
        let node = netns::run_in(&self.node.path(), netns::global_addresses).expect("node netns").expect("addresses");
        let host = bulkhead_policy::identity::Reserved::Host.id().0;
        ipcache.extend(node.into_iter().map(|ip| (bulkhead_policy::cidr::Cidr::host(ip), host)));
        ipcache
    }

    /// The endpoint id [`Lab::specs`] gives pod `key`.
    pub fn endpoint_id(&self, key: &str) -> u32 {
        self.pods.keys().position(|k| k == key).expect("lab pod") as u32 + 1
    }

    pub fn specs(&self) -> Vec<EndpointSpec> {
        self.pods
            .iter()
            .enumerate()
            .map(|(i, (key, link))| {
                let (_, id) = self.engine.pod(key).expect("pod");
                EndpointSpec {
                    ifindex: link.ifindex,
                    id: i as u32 + 1,
                    identity: id.0,
                    audit: self.audit,
                    addrs: link.ips.clone(),
                    policy: Arc::clone(self.engine.endpoint_policy(key).expect("resolved")),
                }
            })
            .collect()
    }

    /// What the kernel should do with a packet from `from` (at `src`) to
    /// `to` (at `dst`): the engine's lookups, with a redirect dropping
    /// while no L7 proxy runs.
    pub fn expected(&self, from: &str, to: &str, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> bool {
        let (_, sid) = self.engine.pod(from).expect("pod");
        let (_, did) = self.engine.pod(to).expect("pod");
        let eg = self.engine.endpoint_policy(from).expect("policy").egress.lookup(Some(dst), did, proto, port);
        let ing = self.engine.endpoint_policy(to).expect("policy").ingress.lookup(Some(src), sid, proto, port);
        kernel_passes(&eg) && kernel_passes(&ing)
    }

    /// Probes every ordered pod pair on every address family and port, all
    /// sources at once; returns the differences as readable lines and the
    /// numbers of probes the engine expected to pass and to drop. A probe
    /// the kernel dropped against the engine's word is sent once more with
    /// a long timeout, so that a slow machine is not mistaken for a drop.
    pub fn differences(&self, ports: &[(Proto, u16)], timeout: Duration) -> (Vec<String>, [usize; 2]) {
        type Meta = (String, IpAddr, IpAddr, Proto, u16);
        let mut work: Vec<(&String, &PodLink, Vec<Probe>, Vec<Meta>)> = Vec::new();
        for (from, src) in &self.pods {
            let (mut probes, mut meta) = (Vec::new(), Vec::new());
            for (to, dst) in &self.pods {
                if from == to {
                    continue;
                }
                for (s, d) in src.ips.iter().zip(&dst.ips) {
                    for &(proto, port) in ports {
                        let proto = match (proto, d) {
                            (Proto::Icmp | Proto::Icmpv6, IpAddr::V4(_)) => Proto::Icmp,
                            (Proto::Icmp | Proto::Icmpv6, IpAddr::V6(_)) => Proto::Icmpv6,
                            (p, _) => p,
                        };
                        let policy_port = match proto {
                            Proto::Icmp => 8,
                            Proto::Icmpv6 => 128,
                            _ => port,
                        };
                        probes.push(Probe { dst: *d, proto, port, l7: false });
                        meta.push((to.clone(), *s, *d, proto, policy_port));
                    }
                }
            }
            work.push((from, src, probes, meta));
        }
        let results: Vec<Vec<Outcome>> = std::thread::scope(|sc| {
            let handles: Vec<_> = work
                .iter()
                .map(|(_, src, probes, _)| {
                    sc.spawn(move || probe_from(&netns::named(&src.netns), probes, timeout, 16).expect("probe"))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
        });
        let mut diffs = Vec::new();
        let mut total = [0, 0];
        for ((from, src, probes, meta), outcomes) in work.iter().zip(results) {
            for ((probe, (to, s, d, proto, port)), mut got) in probes.iter().zip(meta).zip(outcomes) {
                let want = self.expected(from, to, *s, *d, *proto, *port);
                total[usize::from(!want)] += 1;
                if want && got == Outcome::Dropped {
                    got = probe_from(&netns::named(&src.netns), &[*probe], Duration::from_secs(2), 1)
                        .expect("probe")
                        .remove(0);
                }
                let ok = match got {
                    Outcome::Reached => want,
                    Outcome::Dropped => !want,
                    Outcome::Http(_) | Outcome::Dns(_) => unreachable!("not an L7 probe"),
                    Outcome::Error(ref e) => panic!("probe {from} -> {to} {d} {}/{port}: {e}", proto.as_str()),
                };
                if !ok {
                    diffs.push(format!(
                        "{from} ({s}) -> {to} ({d}) {}/{port}: engine {}, kernel {:?}",
                        proto.as_str(),
                        if want { "allows" } else { "drops" },
                        got
                    ));
                }
            }
        }
        (diffs, total)
    }
}

pub fn kernel_passes(d: &Decision<'_>) -> bool {
    match d {
        Decision::Entry(_, e) => e.verdict == Verdict::Allow,
        Decision::Default { deny } => !deny,
    }
}

/// How long a capture waits for frames after the send.
const CAPTURE_WINDOW: Duration = Duration::from_millis(400);

/// A pod's IPv4 address.
pub fn v4(link: &PodLink) -> Ipv4Addr {
    link.ips.iter().find_map(|ip| if let IpAddr::V4(a) = ip { Some(*a) } else { None }).expect("IPv4 address")
}

/// A pod's IPv6 address.
pub fn v6(link: &PodLink) -> Ipv6Addr {
    link.ips.iter().find_map(|ip| if let IpAddr::V6(a) = ip { Some(*a) } else { None }).expect("IPv6 address")
}

/// Frames from `pod`'s interface to the node.
pub fn framer(lab: &Lab, pod: &PodLink) -> Frame {
    Frame {
        dst_mac: mac_of(&lab.node.path(), &pod.host_if).expect("host-side MAC"),
        src_mac: mac_of(&netns::named(&pod.netns), "eth0").expect("pod MAC"),
    }
}

/// Sends `frames` from `from`'s eth0 and returns what arrived on `to`'s
/// eth0 within a short window. The capture socket is open before the
/// first send, so nothing that arrives is missed, and no sleep is needed.
pub fn send_and_capture(from: &PodLink, to: &PodLink, frames: &[&[u8]]) -> Vec<Vec<u8>> {
    let capture = netns::run_in(&netns::named(&to.netns), || RawLink::open("eth0"))
        .expect("destination netns")
        .expect("raw socket on the destination");
    netns::run_in(&netns::named(&from.netns), || {
        let link = RawLink::open("eth0")?;
        frames.iter().try_for_each(|f| link.send(f))
    })
    .expect("source netns")
    .expect("send");
    capture.capture(CAPTURE_WINDOW, |_| true).expect("capture")
}

/// Lets the node resolve `to`'s neighbours, so that crafted frames with
/// fixed MACs are forwarded at once.
pub fn warm_up(from: &PodLink, to: &PodLink) {
    for dst in &to.ips {
        let probe = Probe { dst: *dst, proto: Proto::Tcp, port: 1, l7: false };
        let _ = probe_from(&netns::named(&from.netns), &[probe], Duration::from_millis(500), 1);
    }
}

/// A test's pin directory, removed however the test ends.
pub struct PinRoot(pub PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let _ = dp.destroy();
        }
    }
}

// ---- raw bpf(2), as an attacker with root would call it ----

const BPF_OBJ_GET: i64 = 7;

/// bpf(2) with `attr` (zeroed, the command's fields written at their uapi
/// offsets): what it returned, or the errno.
pub fn sys_bpf(cmd: i64, attr: &mut [u8; 128]) -> Result<i64, i32> {
    #[expect(unsafe_code, reason = "bpf(2) has no safe wrapper; the attacker's calls are raw on purpose")]
    // SAFETY: `attr` is a valid, writable 128-byte buffer the kernel reads
    // (and may write) within its length, which is passed as the size; the
    // pointers written into it point at live buffers of the command's sizes.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(r) }
}

/// A bpf(2) command that returns a new descriptor: it, or the errno.
pub fn bpf(cmd: i64, attr: &mut [u8; 128]) -> Result<OwnedFd, i32> {
    let fd = i32::try_from(sys_bpf(cmd, attr)?).expect("a descriptor");
    #[expect(unsafe_code, reason = "taking ownership of the descriptor bpf(2) returned")]
    // SAFETY: the kernel just returned this descriptor to this process and
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_OBJ_GET` of `path` with `flags`: a root user's own descriptor of a pin.
pub fn obj_get(path: &std::path::Path, flags: u32) -> Result<OwnedFd, i32> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[12..16].copy_from_slice(&flags.to_ne_bytes());
    bpf(BPF_OBJ_GET, &mut attr)
}
