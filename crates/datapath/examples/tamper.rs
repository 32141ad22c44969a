//! A root user tampering with a running agent's datapath, for
//! `scripts/bench-assure.sh`: one change behind the agent's back, then a
//! wait (1 ms polls, at most 5 s) until the agent has put it right.
//!
//! Usage: tamper PIN_DIR KIND [ARG…]
//!   map-pin               removes the pin of bh_ipcache
//!   link-pin IFINDEX      removes the pin of that interface's to-pod link
//!   ipcache ADDR IDENTITY maps ADDR (a pod's) to another identity
//!   endpoint IFINDEX      deletes that interface's endpoint entry
//!   conntrack IFINDEX SADDR DADDR DPORT SPORT
//!                         writes the conntrack entry that lets that TCP
//!                         connection into the endpoint of IFINDEX as
//!                         established, under its current ingress slot
//! Prints one JSON line: {"kind": K, "repaired": bool, "us": N, "changed_ns":
//! T} (N: the time from the change to the repair being visible, detection
//! and repair; T: when the change was made, Unix nanoseconds).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData};
use bulkhead_datapath::abi::{Addr, CT_SEEN_REPLY, CtKey, CtValue, DIR_INGRESS, Endpoint, IpcacheValue, ktime_ns};

fn open(dir: &Path, name: &str) -> MapData {
    MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: tamper PIN_DIR map-pin | link-pin IFINDEX | ipcache ADDR IDENTITY | endpoint IFINDEX \
             | conntrack IFINDEX SADDR DADDR DPORT SPORT"
        );
        std::process::exit(2)
    };
    let dir = PathBuf::from(args.get(1).unwrap_or_else(|| usage()));
    let kind = args.get(2).unwrap_or_else(|| usage()).clone();
    let arg = |i: usize| args.get(i).unwrap_or_else(|| usage()).clone();
    let t0;
    let repaired: Box<dyn Fn() -> bool> = match kind.as_str() {
        "map-pin" => {
            let pin = dir.join("bh_ipcache");
            t0 = Instant::now();
            std::fs::remove_file(&pin).expect("remove the pin");
            Box::new(move || pin.exists())
        }
        "link-pin" => {
            let pin = dir.join("links").join(format!("{}-to-pod", arg(3)));
            t0 = Instant::now();
            std::fs::remove_file(&pin).expect("remove the pin");
            Box::new(move || pin.exists())
        }
        "ipcache" => {
            let ip: IpAddr = arg(3).parse().unwrap_or_else(|_| usage());
            let identity: u32 = arg(4).parse().unwrap_or_else(|_| usage());
            // A host entry: 128 bits (IPv4 addresses are stored IPv4-mapped).
            let key = Key::new(128, Addr::from(ip));
            let mut trie: LpmTrie<MapData, Addr, IpcacheValue> =
                LpmTrie::try_from(Map::LpmTrie(open(&dir, "bh_ipcache"))).expect("ipcache");
            let own = trie.get(&key, 0).expect("the address's entry");
            t0 = Instant::now();
            trie.insert(&key, IpcacheValue { identity }, 0).expect("tamper");
            Box::new(move || trie.get(&key, 0).is_ok_and(|v| v.identity == own.identity))
        }
        "endpoint" => {
            let ifindex: u32 = arg(3).parse().unwrap_or_else(|_| usage());
            let mut map: HashMap<MapData, u32, Endpoint> =
                HashMap::try_from(Map::HashMap(open(&dir, "bh_endpoints"))).expect("endpoints");
            map.get(&ifindex, 0).expect("the endpoint's entry");
            t0 = Instant::now();
            map.remove(&ifindex).expect("tamper");
            Box::new(move || map.get(&ifindex, 0).is_ok())
        }
        "conntrack" => {
            let ifindex: u32 = arg(3).parse().unwrap_or_else(|_| usage());
            let ip = |i| arg(i).parse::<IpAddr>().map(Addr::from).unwrap_or_else(|_| usage());
            let port = |i| arg(i).parse::<u16>().unwrap_or_else(|_| usage());
            let endpoints: HashMap<MapData, u32, Endpoint> =
                HashMap::try_from(Map::HashMap(open(&dir, "bh_endpoints"))).expect("endpoints");
            let slot = endpoints.get(&ifindex, 0).expect("the endpoint's entry").slot[DIR_INGRESS];
            let mut ct: HashMap<MapData, CtKey, CtValue> =
                HashMap::try_from(Map::HashMap(open(&dir, "bh_ct"))).expect("conntrack");
            let key = CtKey {
                saddr: ip(4),
                daddr: ip(5),
                dport: port(6).to_be_bytes(),
                sport: port(7).to_be_bytes(),
                proto: 6,
                dir: DIR_INGRESS as u8,
                ifindex,
                ..Default::default()
            };
            let last_seen = ktime_ns().expect("clock");
            let value = CtValue { last_seen, slot, policy_port: port(6), flags: CT_SEEN_REPLY, ..Default::default() };
            t0 = Instant::now();
            ct.insert(key, value, 0).expect("tamper");
            Box::new(move || ct.get(&key, 0).is_err())
        }
        _ => usage(),
    };
    let limit = t0 + Duration::from_secs(5);
    while !repaired() && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
    let ok = repaired();
    let took = t0.elapsed();
    let changed = std::time::SystemTime::now() - took;
    let changed_ns = changed.duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    println!(r#"{{"kind": "{kind}", "repaired": {ok}, "us": {}, "changed_ns": {changed_ns}}}"#, took.as_micros());
}
