//! Reading the datapath's maps from any thread: what `status`, metrics,
//! `policy get` and the agent's own reconciliation read, through handles of
//! their own on the pinned maps, so that readers never wait for the one
//! writer ([`crate::Datapath`]) and the writer never waits for them. The
//! kernel makes each map operation atomic; a reader sees the maps as they
//! are at that moment.

use std::net::IpAddr;
use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, HashOfMaps, Map, MapData, PerCpuArray};
use bulkhead_policy::cidr::Cidr;

use crate::abi::{
    Addr, COUNTER_LOST_EVENTS, Counter, CtKey, CtValue, Endpoint, IpcacheValue, POLICY_FIXED_BITS, Reason,
};
use crate::maps::{
    Counters, DatapathError, Direction, LoadedEntry, MAP_COUNTERS, MAP_CT, MAP_ENDPOINTS, MAP_IPCACHE, MAP_POLICY,
    ProgramStats, SlotTrie, map_err,
};

type Result<T> = std::result::Result<T, DatapathError>;

/// Read-only handles on one layout's pinned maps. `Sync`: share it.
pub struct DatapathView {
    dir: std::path::PathBuf,
    endpoints: HashMap<MapData, u32, Endpoint>,
    ipcache: LpmTrie<MapData, Addr, IpcacheValue>,
    policy: HashOfMaps<MapData, u32, SlotTrie>,
    ct: HashMap<MapData, CtKey, CtValue>,
    counters: PerCpuArray<MapData, Counter>,
    /// Capacity of the endpoints, ipcache, policy and conntrack maps.
    capacity: [u32; 4],
    /// The programs by name and the id they were loaded with.
    programs: Vec<(&'static str, u32)>,
}

fn pinned(dir: &Path, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

impl DatapathView {
    /// The directory holding this layout's pins.
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the maps pinned in `dir` (a layout's pin directory).
    /// The ids of the programs this datapath loaded.
    pub fn program_ids(&self) -> Vec<u32> {
        self.programs.iter().map(|(_, id)| *id).collect()
    }

    pub(crate) fn open(dir: &Path, programs: Vec<(&'static str, u32)>) -> Result<Self> {
        let max = |name: &str| aya::maps::MapInfo::from_pin(dir.join(name)).map(|i| i.max_entries()).unwrap_or(0);
        Ok(Self {
            dir: dir.to_owned(),
            endpoints: HashMap::try_from(pinned(dir, MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?,
            ipcache: LpmTrie::try_from(pinned(dir, MAP_IPCACHE)?).map_err(map_err(MAP_IPCACHE))?,
            policy: HashOfMaps::try_from(pinned(dir, MAP_POLICY)?).map_err(map_err(MAP_POLICY))?,
            ct: HashMap::try_from(pinned(dir, MAP_CT)?).map_err(map_err(MAP_CT))?,
            counters: PerCpuArray::try_from(pinned(dir, MAP_COUNTERS)?).map_err(map_err(MAP_COUNTERS))?,
            capacity: [max(MAP_ENDPOINTS), max(MAP_IPCACHE), max(MAP_POLICY), max(MAP_CT)],
            programs,
        })
    }

    /// Every endpoint, by interface index.
    pub fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>> {
        self.endpoints.iter().collect::<std::result::Result<_, _>>().map_err(map_err(MAP_ENDPOINTS))
    }

    /// Every prefix and its identity.
    pub fn ipcache(&self) -> Result<Vec<(Cidr, u32)>> {
        let mut out = Vec::new();
        for kv in self.ipcache.iter() {
            let (k, v) = kv.map_err(map_err(MAP_IPCACHE))?;
            let ip = IpAddr::from(k.data());
            let len = k.prefix_len();
            let len = if ip.is_ipv4() { len.saturating_sub(96) } else { len };
            out.push((Cidr::new(ip, u8::try_from(len).unwrap_or(128)), v.identity));
        }
        Ok(out)
    }

    /// Every published slot.
    pub fn slots(&self) -> Result<Vec<u32>> {
        self.policy.keys().collect::<std::result::Result<_, _>>().map_err(map_err(MAP_POLICY))
    }

    /// The id of the map a slot names (`None`: no such slot).
    pub fn slot_map_id(&self, slot: u32) -> Result<Option<u32>> {
        match self.policy.get(&slot, 0) {
            Ok(trie) => Ok(Some(aya::maps::IterableMap::map(&trie).info().map_err(map_err(MAP_POLICY))?.id())),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_POLICY)(e)),
        }
    }

    /// The entries of one slot, as the kernel holds them.
    pub fn policy_entries(&self, slot: u32) -> Result<Vec<LoadedEntry>> {
        let trie: SlotTrie = self.policy.get(&slot, 0).map_err(map_err(MAP_POLICY))?;
        let mut out = Vec::new();
        for kv in trie.iter() {
            let (k, v) = kv.map_err(map_err(MAP_POLICY))?;
            let d = k.data();
            let port_bits = k.prefix_len().saturating_sub(POLICY_FIXED_BITS).min(16);
            let lo = u16::from_be_bytes(d.port);
            let span = if port_bits == 0 { u16::MAX } else { ((1u32 << (16 - port_bits)) - 1) as u16 };
            let (level, peer) = match d.level {
                crate::abi::LEVEL_ADDRESS => ("address", Some(IpAddr::from(d.peer).to_string())),
                crate::abi::LEVEL_IDENTITY => {
                    let id = u32::from_be_bytes([d.peer.0[0], d.peer.0[1], d.peer.0[2], d.peer.0[3]]);
                    ("identity", Some(id.to_string()))
                }
                _ => ("any", None),
            };
            out.push(LoadedEntry {
                slot,
                level,
                peer,
                proto: d.proto,
                port_lo: lo,
                port_hi: lo.saturating_add(span),
                verdict: match v.verdict {
                    crate::abi::VERDICT_ALLOW => "allow",
                    crate::abi::VERDICT_DENY => "deny",
                    crate::abi::VERDICT_REDIRECT => "redirect",
                    _ => "invalid",
                },
                rule: v.rule,
            });
        }
        out.sort_by_key(|e| (e.level, e.peer.clone(), e.proto, e.port_lo));
        Ok(out)
    }

    /// Number of conntrack entries.
    pub fn conntrack_len(&self) -> usize {
        self.conntrack_entries().map_or(0, |c| c.len())
    }

    /// Every conntrack entry, read in batches.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>> {
        use std::os::fd::AsFd as _;
        let fd = aya::maps::IterableMap::map(&self.ct).fd().as_fd();
        crate::maps::conntrack_entries(fd).map_err(|e| {
            map_err(MAP_CT)(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: e,
            }))
        })
    }

    /// The addresses, either end, of every conntrack entry still live
    /// (within its timeout, as the datapath judges it): the peers of open
    /// connections, which a learnt name's address must outlive.
    pub fn conntrack_addresses(&self) -> std::collections::HashSet<IpAddr> {
        // The datapath's clock (bpf_ktime_get_ns); unreadable, every entry
        // counts as live (an address is kept, never dropped early).
        let now = crate::abi::ktime_ns().unwrap_or(0);
        let mut out = std::collections::HashSet::new();
        for (k, v) in self.conntrack_entries().unwrap_or_default() {
            if now.saturating_sub(v.last_seen) <= crate::abi::ct_timeout_ns(k.proto, v.flags) {
                out.insert(IpAddr::from(k.saddr));
                out.insert(IpAddr::from(k.daddr));
            }
        }
        out
    }

    /// How full the maps that can fill up are (entries / capacity):
    /// endpoints, ipcache, policy slots and conntrack.
    pub fn map_pressure(&self) -> Result<Vec<(String, f64)>> {
        let ratio = |n: usize, max: u32| if max == 0 { 0.0 } else { n as f64 / f64::from(max) };
        Ok(vec![
            (MAP_ENDPOINTS.into(), ratio(self.endpoints.keys().count(), self.capacity[0])),
            (MAP_IPCACHE.into(), ratio(self.ipcache.iter().count(), self.capacity[1])),
            (MAP_POLICY.into(), ratio(self.slots()?.len(), self.capacity[2])),
            (MAP_CT.into(), ratio(self.conntrack_len(), self.capacity[3])),
        ])
    }

    /// Packets and bytes by reason and direction, summed over CPUs, plus
    /// the number of events lost because the ring buffer was full.
    pub fn counters(&self) -> Result<Counters> {
        let sum = |idx: u32| -> Result<Counter> {
            let per_cpu = self.counters.get(&idx, 0).map_err(map_err(MAP_COUNTERS))?;
            Ok(per_cpu
                .iter()
                .fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes }))
        };
        let mut out = Vec::new();
        for r in Reason::ALL {
            for d in Direction::BOTH {
                out.push((r, d, sum(r as u32 * 2 + d as u32)?));
            }
        }
        Ok(Counters { by_reason: out, lost_events: sum(COUNTER_LOST_EVENTS)?.packets })
    }

    /// Run statistics of this datapath's two programs (found among the
    /// loaded programs by the ids they had when this datapath loaded them).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>> {
        let mut out: Vec<ProgramStats> =
            self.programs.iter().map(|(name, _)| ProgramStats { name, run_count: 0, run_time_ns: 0 }).collect();
        for info in aya::programs::loaded_programs() {
            let info = info.map_err(|source| DatapathError::Program { what: "listing programs".into(), source })?;
            if let Some(i) = self.programs.iter().position(|(_, id)| *id == info.id()) {
                out[i].run_count = info.run_count();
                out[i].run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            }
        }
        Ok(out)
    }
}
