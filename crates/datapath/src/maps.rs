//! Loading, pinning and attaching the programs, and typed access to their
//! maps.
//!
//! [`Datapath::open`] loads `bpf/bulkhead.o` with every map pinned by name
//! under `ROOT/vLAYOUT`: the first agent creates them, a later one reuses
//! them with their contents (the pinned TCX links keep the programs that use
//! them running in between). Attaching to an interface whose link is
//! already pinned swaps the new program into that link atomically.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, HashOfMaps, IterableMap as _, MapData, MapError, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use bulkhead_policy::cidr::Cidr;
use serde::Serialize;

use crate::abi::{
    Addr, Counter, CtKey, CtValue, EP_MAX_ADDRS, Endpoint, IpcacheValue, LAYOUT_VERSION, POLICY_SLOT_MAX_ENTRIES,
    PolicyKeyData, PolicyValue, RawEvent, Reason,
};
use crate::view::DatapathView;

/// What can go wrong in the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object or a program could not be loaded (the verifier's log follows).
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded, attached or replaced.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map has no room for another entry.
    #[error("map {map} is full ({max} entries): {source}")]
    Full {
        /// The map.
        map: &'static str,
        /// Its capacity.
        max: u32,
        /// The kernel's answer.
        #[source]
        source: MapError,
    },
    /// An endpoint has more addresses than its map value holds.
    #[error("the endpoint has {count} addresses; at most {max} are supported")]
    TooManyAddresses {
        /// Its addresses.
        count: usize,
        /// The most an endpoint may have.
        max: usize,
    },
    /// Any other map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// A pin or the bpf filesystem could not be used.
    #[error("{path}: {source}")]
    Pin {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// A direction seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the endpoint.
    Ingress = 0,
    /// Out of the endpoint.
    Egress = 1,
}

impl Direction {
    /// Both, in map index order.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// Hubble's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "INGRESS",
            Self::Egress => "EGRESS",
        }
    }
}

/// A policy entry as the kernel holds it, read back from the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadedEntry {
    /// The slot it belongs to.
    pub slot: u32,
    /// `address`, `identity` or `any`.
    pub level: &'static str,
    /// The peer address or identity; none for `any`.
    pub peer: Option<String>,
    /// IP protocol number (0: every protocol).
    pub proto: u8,
    /// First port (ICMP: type) of the prefix.
    pub port_lo: u16,
    /// Last port of the prefix.
    pub port_hi: u16,
    /// `allow`, `deny` or `redirect`.
    pub verdict: &'static str,
    /// The rule reference id.
    pub rule: u32,
}

/// A program's run statistics (kept by the kernel while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    /// The program.
    pub name: &'static str,
    /// Runs (packets) counted.
    pub run_count: u64,
    /// Nanoseconds spent in them.
    pub run_time_ns: u64,
}

/// The datapath's counters, summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Packets and bytes by reason and direction.
    pub by_reason: Vec<(Reason, Direction, Counter)>,
    /// Events lost because the ring buffer was full.
    pub lost_events: u64,
}

impl Counters {
    /// Packets counted for `reason`, both directions.
    pub fn packets(&self, reason: Reason) -> u64 {
        self.by_reason.iter().filter(|c| c.0 == reason).map(|c| c.2.packets).sum()
    }
}

/// One slot's policy trie.
pub(crate) type SlotTrie = LpmTrie<MapData, PolicyKeyData, PolicyValue>;

/// `BPF_F_NO_PREALLOC`, which LPM tries require.
const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_NOEXIST`: a slot number is never reused.
const BPF_NOEXIST: u64 = 1;

/// A datapath event, decoded.
pub type Event = RawEvent;

pub(crate) const MAP_ENDPOINTS: &str = "bh_endpoints";
const MAP_EP_ADDRS: &str = "bh_ep_addrs";
pub(crate) const MAP_IPCACHE: &str = "bh_ipcache";
pub(crate) const MAP_POLICY: &str = "bh_policy";
pub(crate) const MAP_CT: &str = "bh_ct";
pub(crate) const MAP_COUNTERS: &str = "bh_counters";
const MAP_SLOT_SEQ: &str = "bh_slot_seq";
const MAP_EVENTS: &str = "bh_events";
const PROG_FROM_POD: &str = "bh_from_pod";
const PROG_TO_POD: &str = "bh_to_pod";

/// The loaded programs and their pinned maps: the one writer. Reads go
/// through [`Datapath::view`], which other threads share.
pub struct Datapath {
    dir: PathBuf,
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, Endpoint>,
    /// Each endpoint address → its ifindex, kept with `endpoints`.
    ep_addrs: HashMap<MapData, Addr, u32>,
    ipcache: LpmTrie<MapData, Addr, IpcacheValue>,
    policy: HashOfMaps<MapData, u32, SlotTrie>,
    /// Capacity of the endpoints, ipcache and policy maps.
    capacity: [u32; 3],
    /// Entries one policy slot (one direction of one policy) may hold.
    slot_capacity: u32,
    ct: HashMap<MapData, CtKey, CtValue>,
    slot_seq: Array<MapData, u32>,
    events: Option<RingBuf<MapData>>,
    view: Arc<DatapathView>,
    /// Every pinned map, held: a pin removed behind the agent's back is
    /// put back from here ([`Datapath::repair_pins`]).
    pinned: Vec<(PathBuf, MapData)>,
    /// Every link this datapath attached, held as well as pinned: removing
    /// a pin does not detach the program, and the pin is put back. Two
    /// descriptors per endpoint (the agent raises its open-file limit).
    links: std::collections::BTreeMap<PathBuf, (PinnedLink, u32)>,
    /// Each attached hook's TCX revision (the kernel's count of changes to
    /// the programs on it) after this datapath's last attach there: a
    /// different one means another process changed them.
    revisions: std::collections::BTreeMap<(u32, Direction), u64>,
}

/// The bpf filesystem's magic number (`statfs`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn pin_err(path: &Path) -> impl FnOnce(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Pin { path: path.to_owned(), source }
}

/// A pin operation whose error is not an `io::Error` (aya's).
fn pin_other<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> DatapathError + '_ {
    move |e| DatapathError::Pin { path: path.to_owned(), source: io::Error::other(e.to_string()) }
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

impl Datapath {
    /// The default pin root.
    pub const DEFAULT_ROOT: &'static str = "/sys/fs/bpf/bulkhead";

    /// Loads the programs, creating or adopting the maps pinned under
    /// `root` (which must be on a bpf filesystem; `/sys/fs/bpf` is mounted
    /// if it is not).
    pub fn open(root: &Path) -> Result<Self> {
        ensure_bpffs(root)?;
        let dir = root.join(format!("v{LAYOUT_VERSION}"));
        std::fs::create_dir_all(dir.join("links")).map_err(pin_err(&dir))?;
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(&dir).load(crate::OBJECT)?;
        for name in [PROG_FROM_POD, PROG_TO_POD] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { what: format!("loading program {name}"), source })?;
        }
        let max = |name: &str| aya::maps::MapInfo::from_pin(dir.join(name)).map(|i| i.max_entries()).unwrap_or(0);
        let capacity = [max(MAP_ENDPOINTS), max(MAP_IPCACHE), max(MAP_POLICY)];
        let mut programs = Vec::new();
        for name in [PROG_FROM_POD, PROG_TO_POD] {
            let info = classifier_ref(&ebpf, name)?.info().map_err(program_err(name))?;
            programs.push((name, info.id()));
        }
        let view = Arc::new(DatapathView::open(&dir, programs)?);
        let mut pinned = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(pin_err(&dir))? {
            let path = e.map_err(pin_err(&dir))?.path();
            if path.is_file() {
                let data = MapData::from_pin(&path).map_err(pin_other(&path))?;
                pinned.push((path, data));
            }
        }
        let mut dp = Self {
            pinned,
            links: std::collections::BTreeMap::new(),
            revisions: std::collections::BTreeMap::new(),
            endpoints: HashMap::try_from(take(&mut ebpf, MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?,
            ep_addrs: HashMap::try_from(take(&mut ebpf, MAP_EP_ADDRS)?).map_err(map_err(MAP_EP_ADDRS))?,
            ipcache: LpmTrie::try_from(take(&mut ebpf, MAP_IPCACHE)?).map_err(map_err(MAP_IPCACHE))?,
            policy: HashOfMaps::try_from(take(&mut ebpf, MAP_POLICY)?).map_err(map_err(MAP_POLICY))?,
            capacity,
            slot_capacity: POLICY_SLOT_MAX_ENTRIES,
            ct: HashMap::try_from(take(&mut ebpf, MAP_CT)?).map_err(map_err(MAP_CT))?,
            slot_seq: Array::try_from(take(&mut ebpf, MAP_SLOT_SEQ)?).map_err(map_err(MAP_SLOT_SEQ))?,
            events: Some(RingBuf::try_from(take(&mut ebpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?),
            dir,
            ebpf,
            view,
        };
        // Pins from before the address map existed: fill it in.
        for (ifindex, ep) in dp.view.endpoints()? {
            dp.set_endpoint_addrs(ifindex, &ep, None)?;
        }
        Ok(dp)
    }

    /// The maps, for reading (from any thread: clone the `Arc`).
    pub fn view(&self) -> &Arc<DatapathView> {
        &self.view
    }

    /// Limits the entries of one policy slot (default and maximum
    /// [`POLICY_SLOT_MAX_ENTRIES`]): a policy that needs more is refused
    /// with [`DatapathError::Full`] and its endpoints keep their previous one.
    pub fn set_slot_capacity(&mut self, entries: u32) {
        self.slot_capacity = entries.clamp(1, POLICY_SLOT_MAX_ENTRIES);
    }

    /// The directory holding this layout's pins.
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// Attaches both programs to the host side of a pod's veth. A link
    /// already pinned for this interface gets the new programs swapped in
    /// atomically (enforcement never pauses); a stale pin (the interface
    /// was deleted and its index reused) is replaced. Ours must be first on
    /// each hook: a program another process put before it could pass a
    /// packet before ours judges it, so any is detached (what runs after
    /// ours never sees a packet: ours ends the chain, pass, drop or
    /// redirect). Returns the links' ids (for
    /// [`crate::guard::Guard::protect_links`]).
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for (prog, kind, suffix) in
            [(PROG_FROM_POD, TcAttachType::Ingress, "from-pod"), (PROG_TO_POD, TcAttachType::Egress, "to-pod")]
        {
            let pin = self.link_pin(ifindex, suffix);
            let p = classifier(&mut self.ebpf, prog)?;
            let prog_err = |what: &str| {
                let what = format!("{what} {prog} on {ifname}");
                move |source| DatapathError::Program { what, source }
            };
            let swapped = match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(pin_other(&pin))?;
                    match p.attach_to_link(link) {
                        Ok(id) => Some(id),
                        Err(_) => {
                            std::fs::remove_file(&pin).map_err(pin_err(&pin))?;
                            None
                        }
                    }
                }
                Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(pin_other(&pin)(e)),
            };
            let id = match swapped {
                Some(id) => id,
                None => p
                    .attach_with_options(ifname, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .map_err(prog_err("attaching"))?,
            };
            let link = p.take_link(id).map_err(prog_err("taking the link of"))?;
            let fd: FdLink = link.try_into().map_err(pin_other::<LinkError>(&pin))?;
            let id = fd.info().map_err(pin_other(&pin))?.id();
            ids.push(id);
            let dir = if kind == TcAttachType::Ingress { Direction::Egress } else { Direction::Ingress };
            evict_before(ifindex, dir, id).map_err(pin_err(&pin))?;
            let _ = std::fs::remove_file(&pin);
            let pinned = fd.pin(&pin).map_err(pin_other(&pin))?;
            self.links.insert(pin, (pinned, id));
        }
        for d in Direction::BOTH {
            let (revision, _) = tcx_query(ifindex, d).map_err(pin_err(&self.dir))?;
            self.revisions.insert((ifindex, d), revision);
        }
        Ok(ids)
    }

    /// The interfaces among `ifindexes` whose programs another process
    /// changed since this datapath attached them (a program replaced,
    /// detached, or another added: the hook's TCX revision moved), each
    /// with what is there now. One `BPF_PROG_QUERY` per hook; call it in
    /// the node's network namespace. Re-attaching repairs it.
    pub fn changed_programs(&self, ifindexes: &[u32]) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for &ifindex in ifindexes {
            for d in Direction::BOTH {
                let Some(&want) = self.revisions.get(&(ifindex, d)) else { continue };
                match tcx_query(ifindex, d) {
                    Ok((revision, _)) if revision == want => continue,
                    Ok((revision, count)) => out.push((
                        ifindex,
                        format!("{} hook: revision {revision} (attached at {want}), {count} program(s)", d.as_str()),
                    )),
                    Err(e) => out.push((ifindex, format!("{} hook: {e}", d.as_str()))),
                }
                break;
            }
        }
        out
    }

    /// Puts back every pin of a map or link this datapath holds that is
    /// gone (removed behind the agent's back; the objects live on in the
    /// descriptors held here, so enforcement never stopped): the paths put
    /// back.
    pub fn repair_pins(&mut self) -> Result<Vec<PathBuf>> {
        let mut repaired = Vec::new();
        std::fs::create_dir_all(self.dir.join("links")).map_err(pin_err(&self.dir))?;
        for (path, data) in &self.pinned {
            if !path.exists() {
                data.pin(path).map_err(pin_other(path))?;
                repaired.push(path.clone());
            }
        }
        let gone: Vec<PathBuf> = self.links.keys().filter(|p| !p.exists()).cloned().collect();
        for path in gone {
            let Some((link, id)) = self.links.remove(&path) else { continue };
            let again = FdLink::from(link).pin(&path).map_err(pin_other(&path))?;
            self.links.insert(path.clone(), (again, id));
            repaired.push(path);
        }
        Ok(repaired)
    }

    /// The ids of the links this datapath attached (the guard protects them).
    pub fn link_ids(&self) -> Vec<u32> {
        self.links.values().map(|(_, id)| *id).collect()
    }

    /// Detaches the programs from an interface (removes its link pins and
    /// lets go of the links).
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        for suffix in ["from-pod", "to-pod"] {
            let pin = self.link_pin(ifindex, suffix);
            self.links.remove(&pin);
            for d in Direction::BOTH {
                self.revisions.remove(&(ifindex, d));
            }
            match std::fs::remove_file(&pin) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(pin_err(&pin)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Interface indexes that have pinned links.
    pub fn attached(&self) -> Result<Vec<u32>> {
        let links = self.dir.join("links");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&links).map_err(pin_err(&links))? {
            let e = e.map_err(pin_err(&links))?;
            if let Some(idx) = e.file_name().to_str().and_then(|n| n.split('-').next()).and_then(|n| n.parse().ok()) {
                out.push(idx);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn link_pin(&self, ifindex: u32, suffix: &str) -> PathBuf {
        self.dir.join("links").join(format!("{ifindex}-{suffix}"))
    }

    // ---- endpoints ----

    /// Sets an endpoint (one atomic map update), and its addresses in the
    /// address map.
    pub fn set_endpoint(&mut self, ifindex: u32, ep: &Endpoint) -> Result<()> {
        let old = self.endpoints.get(&ifindex, 0).ok();
        self.endpoints.insert(ifindex, ep, 0).map_err(classify(MAP_ENDPOINTS, self.capacity[0]))?;
        self.set_endpoint_addrs(ifindex, ep, old.as_ref())
    }

    /// Removes an endpoint, and its addresses from the address map.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        let old = self.endpoints.get(&ifindex, 0).ok();
        ignore_missing(self.endpoints.remove(&ifindex)).map_err(map_err(MAP_ENDPOINTS))?;
        if let Some(old) = old {
            self.remove_endpoint_addrs(ifindex, old.addrs.iter().take(old.naddrs as usize))?;
        }
        Ok(())
    }

    /// Points `ep`'s addresses at `ifindex`, and no longer those of `old`
    /// that it dropped.
    fn set_endpoint_addrs(&mut self, ifindex: u32, ep: &Endpoint, old: Option<&Endpoint>) -> Result<()> {
        let now = &ep.addrs[..(ep.naddrs as usize).min(ep.addrs.len())];
        for a in now {
            self.ep_addrs
                .insert(a, ifindex, 0)
                .map_err(classify(MAP_EP_ADDRS, self.capacity[0] * EP_MAX_ADDRS as u32))?;
        }
        if let Some(old) = old {
            let gone: Vec<Addr> =
                old.addrs.iter().take(old.naddrs as usize).filter(|a| !now.contains(a)).copied().collect();
            self.remove_endpoint_addrs(ifindex, gone.iter())?;
        }
        Ok(())
    }

    /// Puts the address map right from the endpoints map: every address of
    /// an endpoint points at it, and nothing else is in the map. Returns
    /// the differences found (`address-changed`, `-removed`, `-added`).
    pub fn repair_endpoint_addrs(&mut self) -> Result<Vec<(&'static str, IpAddr)>> {
        let mut want: std::collections::HashMap<Addr, u32> = std::collections::HashMap::new();
        for kv in self.endpoints.iter() {
            let (ifindex, ep) = kv.map_err(map_err(MAP_ENDPOINTS))?;
            for a in ep.addrs.iter().take((ep.naddrs as usize).min(EP_MAX_ADDRS)) {
                want.insert(*a, ifindex);
            }
        }
        let have: std::collections::HashMap<Addr, u32> =
            self.ep_addrs.iter().collect::<std::result::Result<_, _>>().map_err(map_err(MAP_EP_ADDRS))?;
        let mut out = Vec::new();
        for (a, ifindex) in &have {
            match want.get(a) {
                Some(w) if w == ifindex => {}
                Some(w) => {
                    self.ep_addrs.insert(a, *w, 0).map_err(map_err(MAP_EP_ADDRS))?;
                    out.push(("address-changed", IpAddr::from(*a)));
                }
                None => {
                    ignore_missing(self.ep_addrs.remove(a)).map_err(map_err(MAP_EP_ADDRS))?;
                    out.push(("address-added", IpAddr::from(*a)));
                }
            }
        }
        for (a, w) in &want {
            if !have.contains_key(a) {
                self.ep_addrs.insert(a, *w, 0).map_err(map_err(MAP_EP_ADDRS))?;
                out.push(("address-removed", IpAddr::from(*a)));
            }
        }
        Ok(out)
    }

    /// Removes those of `addrs` that still point at `ifindex`.
    fn remove_endpoint_addrs<'a>(&mut self, ifindex: u32, addrs: impl Iterator<Item = &'a Addr>) -> Result<()> {
        for a in addrs {
            if self.ep_addrs.get(a, 0).ok() == Some(ifindex) {
                ignore_missing(self.ep_addrs.remove(a)).map_err(map_err(MAP_EP_ADDRS))?;
            }
        }
        Ok(())
    }

    // ---- ipcache ----

    /// Maps a prefix to an identity.
    pub fn set_ipcache(&mut self, prefix: Cidr, identity: u32) -> Result<()> {
        let v = IpcacheValue { identity };
        self.ipcache.insert(&ipcache_key(prefix), v, 0).map_err(classify(MAP_IPCACHE, self.capacity[1]))
    }

    /// Removes a prefix.
    pub fn remove_ipcache(&mut self, prefix: Cidr) -> Result<()> {
        ignore_missing(self.ipcache.remove(&ipcache_key(prefix))).map_err(map_err(MAP_IPCACHE))
    }

    // ---- policy ----

    /// Publishes a complete policy under `slot`: the entries go into a
    /// new trie, which then becomes visible in one update of the slot map.
    /// Returns the number of map keys written and the trie's map id.
    pub fn write_slot(
        &mut self,
        slot: u32,
        entries: impl IntoIterator<Item = (Key<PolicyKeyData>, PolicyValue)>,
    ) -> Result<(usize, u32)> {
        let mut trie = SlotTrie::create(self.slot_capacity, BPF_F_NO_PREALLOC).map_err(map_err(MAP_POLICY))?;
        let mut n = 0;
        for (k, v) in entries {
            trie.insert(&k, v, 0).map_err(classify("bh_policy slot", self.slot_capacity))?;
            n += 1;
        }
        // A slot is never written again (a change is a new slot): frozen,
        // no process — root, the agent included — can change its entries
        // through bpf(2); the programs still read it.
        freeze(trie.map().fd().as_fd())
            .map_err(|e| DatapathError::Pin { path: self.dir.join(MAP_POLICY), source: e })?;
        let map_id = trie.map().info().map_err(map_err(MAP_POLICY))?.id();
        self.policy.insert(slot, &trie, BPF_NOEXIST).map_err(classify(MAP_POLICY, self.capacity[2]))?;
        Ok((n, map_id))
    }

    /// The next slot number to hand out (0 for a new datapath): kept with
    /// the pins, so that no agent ever reuses a number.
    pub fn slot_sequence(&self) -> Result<u32> {
        self.slot_seq.get(&0, 0).map_err(map_err(MAP_SLOT_SEQ))
    }

    /// Records that slot numbers below `next` are taken.
    pub fn set_slot_sequence(&mut self, next: u32) -> Result<()> {
        self.slot_seq.set(0, next, 0).map_err(map_err(MAP_SLOT_SEQ))
    }

    /// Removes a slot (its trie is freed once no program uses it).
    pub fn remove_slot(&mut self, slot: u32) -> Result<()> {
        ignore_missing(self.policy.remove(&slot)).map_err(map_err(MAP_POLICY))
    }

    // ---- conntrack, counters, events ----

    /// Forgets every conntrack entry of an interface (its endpoint is gone).
    pub fn flush_conntrack(&mut self, ifindex: u32) -> Result<usize> {
        let keys: Vec<CtKey> = self.ct.keys().filter_map(|k| k.ok()).filter(|k| k.ifindex == ifindex).collect();
        for k in &keys {
            ignore_missing(self.ct.remove(k)).map_err(map_err(MAP_CT))?;
        }
        Ok(keys.len())
    }

    /// Forgets one conntrack entry (its connection's next packet is asked
    /// about as a new flow).
    pub fn remove_conntrack(&mut self, key: &CtKey) -> Result<()> {
        ignore_missing(self.ct.remove(key)).map_err(map_err(MAP_CT))
    }

    /// The event ring buffer's reader (taken once, by whoever reads events).
    pub fn take_events(&mut self) -> Option<crate::events::EventReader> {
        self.events.take().map(crate::events::EventReader::new)
    }

    /// Removes every pin of this layout: programs stop enforcing on every
    /// interface. For `lab down` and tests, never for a restart.
    pub fn destroy(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(pin_err(&dir))?;
        if let Some(root) = dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
        Ok(())
    }
}

/// BPF_TCX_INGRESS / BPF_TCX_EGRESS: the pod's egress policy runs on the
/// host side's ingress hook, its ingress policy on the egress hook.
fn tcx_attach_type(d: Direction) -> u32 {
    match d {
        Direction::Egress => 46,
        Direction::Ingress => 47,
    }
}

/// `BPF_PROG_QUERY` of an interface's TCX hook in the calling thread's
/// network namespace, asking only for its revision and program count (aya
/// opens every program to answer it).
fn tcx_query(ifindex: u32, d: Direction) -> io::Result<(u64, u32)> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    // union bpf_attr's query member: target_ifindex (0), attach_type (4),
    // prog_ids (16, none asked), prog_cnt (24, out), revision (56, out).
    let mut attr = [0u64; 9];
    attr[0] = u64::from(ifindex) | (u64::from(tcx_attach_type(d)) << 32);
    #[expect(unsafe_code, reason = "bpf(2) BPF_PROG_QUERY for the revision alone has no wrapper in aya")]
    // SAFETY: `attr` is a valid, writable 72-byte buffer laid out as union
    // bpf_attr's query member, passed with its size; no program id array is
    // given (prog_ids 0), so the kernel writes only prog_cnt and revision in it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr[7], (attr[3] & 0xffff_ffff) as u32))
}

/// Every entry of the conntrack map, `BPF_MAP_LOOKUP_BATCH` at a time
/// (aya has no call for it): thousands of entries per system call, where
/// iterating takes two per entry (the full map, 262,144 entries: 69 ms
/// against 230 ms, `examples/verify_scale.rs`). Entries that come and go
/// meanwhile may or may not be in it, as with iterating.
pub(crate) fn conntrack_entries(map: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<(CtKey, CtValue)>> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    // Far above the entries of one hash bucket, which a batch never splits.
    const CHUNK: usize = 8192;
    let fd = u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("a negative descriptor"))?;
    let mut keys = vec![CtKey::default(); CHUNK];
    let mut values = vec![CtValue::default(); CHUNK];
    let mut out = Vec::new();
    // The hash map's batch token: the bucket to go on from.
    let (mut next, mut after) = (None::<u32>, 0u32);
    loop {
        // union bpf_attr's batch member: in_batch (0), out_batch (8), keys
        // (16), values (24), count (32, in and out), map_fd (36),
        // elem_flags (40), flags (48).
        let mut attr = [0u64; 7];
        attr[0] = next.as_ref().map_or(0, |t| std::ptr::from_ref(t) as u64);
        attr[1] = std::ptr::from_mut(&mut after) as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = CHUNK as u64 | (u64::from(fd) << 32);
        #[expect(unsafe_code, reason = "bpf(2) BPF_MAP_LOOKUP_BATCH has no wrapper in aya")]
        // SAFETY: `attr` is a valid 56-byte buffer laid out as union
        // bpf_attr's batch member, passed with its size. The kernel reads
        // the token `next` points to (4 bytes, a hash map's) and writes at
        // most `count` (CHUNK) keys and values of the map's sizes (44 and 24
        // bytes: CtKey and CtValue, plain integers, any bit pattern valid)
        // into `keys` and `values`, which hold CHUNK each, and 4 bytes into
        // `after`; all live across the call. The descriptor is borrowed, so
        // open for the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let count = usize::try_from(attr[4] & 0xffff_ffff).unwrap_or(0).min(CHUNK);
        out.extend(keys[..count].iter().copied().zip(values[..count].iter().copied()));
        match err {
            None => next = Some(after),
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
    }
}

/// The programs on an interface's TCX hook, in the order they run, each
/// with the id of the link that holds it (0: attached without a link), in
/// the calling thread's network namespace.
fn tcx_programs(ifindex: u32, d: Direction) -> io::Result<Vec<(u32, u32)>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    let (_, mut count) = tcx_query(ifindex, d)?;
    loop {
        let n = usize::try_from(count).unwrap_or(0) + 4;
        let (mut progs, mut links) = (vec![0u32; n], vec![0u32; n]);
        let mut attr = [0u64; 9];
        attr[0] = u64::from(ifindex) | (u64::from(tcx_attach_type(d)) << 32);
        attr[2] = progs.as_mut_ptr() as u64;
        attr[3] = n as u64;
        attr[5] = links.as_mut_ptr() as u64;
        #[expect(unsafe_code, reason = "bpf(2) BPF_PROG_QUERY with program and link ids has no wrapper in aya")]
        // SAFETY: `attr` is a valid, writable 72-byte buffer laid out as
        // union bpf_attr's query member (see `tcx_query`), with prog_ids
        // (16) and link_ids (40) pointing at arrays of `n` u32s, `n` given
        // as the count (24): the kernel writes at most that many ids into
        // each, and the count and revision into `attr`.
        let r =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
        let got = (attr[3] & 0xffff_ffff) as u32;
        if r < 0 {
            let e = io::Error::last_os_error();
            // Programs added meanwhile: ask again with room for them.
            if e.raw_os_error() == Some(libc::ENOSPC) && got > count {
                count = got;
                continue;
            }
            return Err(e);
        }
        let got = usize::try_from(got).unwrap_or(0).min(n);
        return Ok(progs[..got].iter().copied().zip(links[..got].iter().copied()).collect());
    }
}

/// Detaches every program that runs before the one of link `ours` on an
/// interface's TCX hook (another process's, which could pass a packet
/// before ours judges it).
fn evict_before(ifindex: u32, d: Direction, ours: u32) -> io::Result<()> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    const BPF_PROG_DETACH: libc::c_long = 9;
    for (prog, link) in tcx_programs(ifindex, d)? {
        if link == ours {
            break;
        }
        if link != 0 {
            let fd = bpf_fd(BPF_LINK_GET_FD_BY_ID, link)?;
            link_detach(fd.as_fd())?;
        } else {
            use std::os::fd::AsRawFd as _;
            let fd = bpf_fd(BPF_PROG_GET_FD_BY_ID, prog)?;
            // union bpf_attr's attach/detach member: target_ifindex (0),
            // attach_bpf_fd (4), attach_type (8).
            let mut attr = [0u32; 8];
            attr[0] = ifindex;
            attr[1] = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("a negative descriptor"))?;
            attr[2] = tcx_attach_type(d);
            #[expect(unsafe_code, reason = "bpf(2) BPF_PROG_DETACH by program has no wrapper in aya")]
            // SAFETY: `attr` is a valid 32-byte buffer laid out as union
            // bpf_attr's attach member (zero beyond it), passed with its
            // size; the kernel only reads it. `fd` is open for the call.
            let r = unsafe {
                libc::syscall(libc::SYS_bpf, BPF_PROG_DETACH, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A descriptor of the program or link (by `cmd`) with id `id`.
fn bpf_fd(cmd: libc::c_long, id: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // union bpf_attr's get-by-id member: the id first, the rest zero.
    let mut attr = [0u32; 4];
    attr[0] = id;
    #[expect(unsafe_code, reason = "bpf(2) BPF_*_GET_FD_BY_ID has no wrapper in aya for links")]
    // SAFETY: `attr` is a valid 16-byte buffer laid out as union bpf_attr's
    // get-by-id member, passed with its size; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(r).map_err(|_| io::Error::other("a descriptor out of range"))?;
    #[expect(unsafe_code, reason = "taking ownership of the descriptor bpf(2) returned")]
    // SAFETY: the kernel just returned this descriptor to this process and
    // nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_DETACH` (aya detaches a link only when its last descriptor
/// closes): the link's program leaves its hook now.
fn link_detach(link: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    fd_command(34, link)
}

/// `BPF_MAP_FREEZE` (aya has no call for it): from now on the map cannot
/// be changed through bpf(2), by any process; programs still read it.
fn freeze(map: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    fd_command(22, map)
}

/// A bpf(2) command whose only argument is a descriptor (the first u32 of
/// union bpf_attr, the rest zero) and that returns nothing.
fn fd_command(cmd: libc::c_long, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = [0u32; 8];
    attr[0] = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("a negative descriptor"))?;
    #[expect(unsafe_code, reason = "bpf(2) BPF_MAP_FREEZE and BPF_LINK_DETACH have no wrapper in aya")]
    // SAFETY: `attr` is a valid 32-byte buffer laid out as union bpf_attr's
    // first member (a descriptor, zero beyond it), passed with its size;
    // the kernel only reads it. The descriptor is borrowed, so open for
    // the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name).ok_or_else(|| not_a_classifier(name))?.try_into().map_err(program_err(name))
}

fn classifier_ref<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    ebpf.program(name).ok_or_else(|| not_a_classifier(name))?.try_into().map_err(program_err(name))
}

fn not_a_classifier(name: &str) -> DatapathError {
    program_err(name)(aya::programs::ProgramError::UnexpectedProgramType)
}

fn program_err(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError + '_ {
    move |source| DatapathError::Program { what: format!("program {name}"), source }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(DatapathError::Map { map: name, source: MapError::InvalidName { name: name.into() } })
}

fn ipcache_key(prefix: Cidr) -> Key<Addr> {
    let len = u32::from(prefix.len()) + if prefix.is_ipv4() { 96 } else { 0 };
    Key::new(len, Addr::from(prefix.addr()))
}

/// A map that refuses an entry for lack of room says so (E2BIG from hash
/// maps, ENOSPC from LPM tries, ENOMEM without preallocation).
fn classify(map: &'static str, max: u32) -> impl FnOnce(MapError) -> DatapathError {
    move |source| {
        let full = matches!(&source, MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)));
        if full { DatapathError::Full { map, max, source } } else { DatapathError::Map { map, source } }
    }
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

fn ensure_bpffs(root: &Path) -> Result<()> {
    let on_bpffs = |p: &Path| nix::sys::statfs::statfs(p).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    let base = Path::new("/sys/fs/bpf");
    if root.starts_with(base) && !on_bpffs(base).unwrap_or(false) {
        nix::mount::mount(Some("bpf"), base, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| DatapathError::Pin { path: base.into(), source: e.into() })?;
    }
    let probe = root.ancestors().find(|p| p.exists()).unwrap_or(base);
    match on_bpffs(probe) {
        Ok(true) => Ok(()),
        Ok(false) => Err(DatapathError::Pin {
            path: root.into(),
            source: io::Error::other("not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)"),
        }),
        Err(e) => Err(DatapathError::Pin { path: probe.into(), source: e.into() }),
    }
}
