//! The agent's one-second look (`PolicySync::verify`) at scale, for
//! BENCHMARKS.md (root): ENDPOINTS endpoints (default 10,000) in 100
//! namespaces, a policy per namespace (ingress from five app labels of the
//! namespace on TCP 80), their ipcache, and CONNTRACK conntrack entries
//! (default 100,000) that the policies admit, all in a datapath of its own
//! (pins under /sys/fs/bpf/bulkhead-scale-PID, removed at the end; no
//! interfaces: the look reads maps only). Then ROUNDS looks with nothing to
//! repair (the cost paid every second), and ROUNDS rounds of one change per
//! kind behind the sync's back (an ipcache entry, an endpoint removed, a
//! forged conntrack entry), each followed by the look that repairs it.
//! Last, the conntrack map read in batches (as the look does) and entry by
//! entry, timed in the same run.
//!
//! Usage: verify_scale [ENDPOINTS] [CONNTRACK] [ROUNDS]   (10000 100000 7)
//! Prints each look's time, then the medians and maxima.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use bulkhead_datapath::Datapath;
use bulkhead_datapath::abi::{Addr, CT_SEEN_REPLY, CtKey, CtValue, DIR_INGRESS, Endpoint, ktime_ns};
use bulkhead_datapath::sync::{EndpointSpec, PolicySync};
use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::diag::Sink;
use bulkhead_policy::engine::{Change, Engine};

const NAMESPACES: usize = 100;
const APPS: usize = 20;

/// Removes the pins however the run ends.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(i: usize) -> IpAddr {
    // 198.18.0.0/15 holds 131,072 addresses; pods from 198.18.0.1.
    let n = u32::try_from(i + 1).expect("fits");
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n))
}

fn cluster(endpoints: usize) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for n in 0..NAMESPACES {
        y += &format!("- {{apiVersion: v1, kind: Namespace, metadata: {{name: n{n}}}}}\n");
        y += &format!(
            "- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {{name: web, namespace: n{n}}}\n  spec:\n    endpointSelector: {{}}\n    ingress:\n    - fromEndpoints: [{}]\n      toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n",
            (0..5).map(|a| format!("{{matchLabels: {{app: a{a}}}}}")).collect::<Vec<_>>().join(", ")
        );
    }
    for i in 0..endpoints {
        y += &format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: n{}, labels: {{app: a{}}}}}, status: {{podIP: {}}}}}\n",
            i % NAMESPACES,
            (i / NAMESPACES) % APPS,
            ip(i)
        );
    }
    y
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let endpoints = args.first().copied().unwrap_or(10_000);
    let conntrack = args.get(1).copied().unwrap_or(100_000);
    let rounds = args.get(2).copied().unwrap_or(7).max(1);
    assert!((NAMESPACES * 5..130_000).contains(&endpoints), "ENDPOINTS: 500 to 130,000");

    let t = Instant::now();
    let mut sink = Sink::default();
    let objects = decode_str(&cluster(endpoints), &DecodeOptions::default(), &mut sink);
    assert_eq!(sink.error_count(), 0, "{:?}", sink.diagnostics);
    let mut engine = Engine::default();
    engine.apply_batch(objects.into_iter().map(|o| match o {
        bulkhead_policy::api::Object::Namespace(n) => Change::UpsertNamespace(n),
        bulkhead_policy::api::Object::Pod(p) => Change::UpsertPod(p),
        bulkhead_policy::api::Object::Policy(p) => Change::UpsertPolicy(p),
    }));
    // Fake interface indexes: the look never touches an interface.
    let keys = engine.pod_keys();
    let ifindex = |i: usize| 1_000_000 + u32::try_from(i).expect("fits");
    let specs: Vec<EndpointSpec> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let (pod, id) = engine.pod(key).expect("pod");
            EndpointSpec {
                ifindex: ifindex(i),
                id: u32::try_from(i).expect("fits") + 1,
                identity: id.0,
                audit: false,
                addrs: pod.ips.clone(),
                policy: Arc::clone(engine.endpoint_policy(key).expect("resolved")),
            }
        })
        .collect();
    let ipcache: Vec<(Cidr, u32)> = engine.ipcache().into_iter().map(|(c, id)| (c, id.0)).collect();
    eprintln!("engine: {endpoints} endpoints resolved in {:?}", t.elapsed());

    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/bulkhead-scale-{}", std::process::id())));
    let mut dp = Datapath::open(&pins.0).expect("load the datapath (as root)");
    let mut sync = PolicySync::adopt(&dp).expect("adopt");
    let t = Instant::now();
    let report = sync.apply(&mut dp, specs.clone(), ipcache.clone()).expect("load");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    eprintln!(
        "loaded: {} endpoints, {} slots, {} policy entries, {} prefixes in {:?}",
        report.endpoints_updated,
        report.slots_written,
        report.entries_written,
        ipcache.len(),
        t.elapsed()
    );

    // Conntrack entries the policies admit: into endpoint e, from a pod of
    // its namespace labelled a0..a4, on 80.
    let dir = dp.view().pin_dir().to_path_buf();
    let mut ct: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(dir.join("bh_ct")).expect("pin"))).expect("conntrack");
    let eps: std::collections::HashMap<u32, Endpoint> = dp.view().endpoints().expect("endpoints").into_iter().collect();
    let last_seen = ktime_ns().expect("clock");
    let pod_index: std::collections::HashMap<&str, usize> =
        keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let index_of = |i: usize| pod_index[format!("n{}/p{i}", i % NAMESPACES).as_str()];
    let entry = |j: usize, peer: IpAddr, port: u16| {
        let e = j % endpoints;
        let ifx = ifindex(index_of(e));
        let key = CtKey {
            saddr: Addr::from(peer),
            daddr: Addr::from(ip(e)),
            sport: port.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            proto: 6,
            dir: DIR_INGRESS as u8,
            ifindex: ifx,
            ..Default::default()
        };
        let value = CtValue {
            last_seen,
            slot: eps[&ifx].slot[DIR_INGRESS],
            policy_port: 80,
            flags: CT_SEEN_REPLY,
            ..Default::default()
        };
        (key, value)
    };
    let t = Instant::now();
    for j in 0..conntrack {
        // A client in the same namespace, app a0..a4 (pod index ≡ namespace
        // mod 100, app = index / 100 mod 20).
        let client = (j % endpoints) % NAMESPACES + NAMESPACES * (j / endpoints % 5);
        let (k, v) = entry(j, ip(client), u16::try_from(1024 + j / endpoints).expect("fits"));
        ct.insert(k, v, 0).expect("conntrack entry");
    }
    eprintln!("{conntrack} conntrack entries written in {:?}", t.elapsed());

    let look = |what: &str, sync: &mut PolicySync, dp: &mut Datapath, want: &[&str]| {
        let t = Instant::now();
        let drifts = sync.verify(dp).expect("verify");
        let took = t.elapsed();
        let kinds: Vec<&str> = drifts.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, want, "{what}");
        eprintln!("{what:>22}: {took:?}");
        took
    };
    let mut quiet = Vec::new();
    for _ in 0..rounds {
        quiet.push(look("nothing to repair", &mut sync, &mut dp, &[]));
    }
    let mut repairs: Vec<(&str, Vec<Duration>)> =
        vec![("ipcache-changed", vec![]), ("endpoint-removed", vec![]), ("conntrack-unallowed", vec![])];
    let (victim, intruder) = (index_of(0), ip(NAMESPACES * 10)); // p1000 is a10: not admitted
    for r in 0..rounds {
        // An address given another identity.
        let (c, _) = ipcache[r % ipcache.len()];
        dp.set_ipcache(c, 1).expect("tamper");
        repairs[0].1.push(look("ipcache changed", &mut sync, &mut dp, &["ipcache-changed"]));
        // An endpoint removed (its addresses leave the address map with it).
        dp.remove_endpoint(ifindex(victim)).expect("tamper");
        let t = Instant::now();
        let drifts = sync.verify(&mut dp).expect("verify");
        let took = t.elapsed();
        assert!(drifts.iter().any(|d| d.kind == "endpoint-removed"), "{drifts:?}");
        eprintln!("{:>22}: {took:?}", "endpoint removed");
        repairs[1].1.push(took);
        // A forged entry: a pod the policy does not admit, let in.
        let (k, v) = entry(0, intruder, 60_000 + u16::try_from(r).expect("fits"));
        ct.insert(k, v, 0).expect("tamper");
        repairs[2].1.push(look("conntrack forged", &mut sync, &mut dp, &["conntrack-unallowed"]));
    }
    println!(
        "{endpoints} endpoints, {} prefixes, {} conntrack entries, {rounds} rounds: the look with nothing to repair: median {:?}, max {:?}",
        ipcache.len(),
        dp.view().conntrack_len(),
        median(&mut quiet.clone()),
        quiet.iter().max().expect("rounds")
    );
    for (kind, mut v) in repairs {
        let max = *v.iter().max().expect("rounds");
        println!("the look that repairs {kind}: median {:?}, max {max:?}", median(&mut v));
    }
    // The peers, in the same run: reading the conntrack map in batches (as
    // the look does) against entry by entry (aya's iterator, as bpftool's
    // dump: two system calls an entry).
    let (mut batched, mut one_by_one) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let n = dp.view().conntrack_entries().expect("batched").len();
        batched.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(ct.iter().count(), n);
        one_by_one.push(t.elapsed());
    }
    let (b, o) = (median(&mut batched), median(&mut one_by_one));
    println!(
        "reading the conntrack map: batched median {b:?}, entry by entry median {o:?} ({:.1}x)",
        o.as_secs_f64() / b.as_secs_f64().max(1e-9)
    );
    drop(dp);
    drop(pins);
}
