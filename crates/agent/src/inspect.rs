//! What readers put together from a published snapshot and the kernel's
//! maps: `status`, `policy get`, `flows key` and the values metrics read at
//! scrape time. None of it goes through the writer: the maps are read
//! through the datapath's shared read handles ([`DatapathView`]), so a slow
//! read (walking a full conntrack table) holds up nobody else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bulkhead_api::{
    Counts, DirectionDump, EntryDump, FlowKey, FlowStatus, LostEvents, PolicyDump, ProgramStat, Status,
};
use bulkhead_datapath::DatapathView;
use bulkhead_datapath::abi::{DIR_EGRESS, DIR_INGRESS, EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, Reason};
use bulkhead_policy::identity::NumericIdentity;

use crate::config::{AgentError, Config};
use crate::observer::Observer;
use crate::observer::flowlog::FlowLogStats;
use crate::snapshot::Snapshot;

type Result<T> = std::result::Result<T, AgentError>;

/// What does not change while the agent runs.
#[derive(Debug)]
pub struct AgentInfo {
    /// How it was started.
    pub config: Config,
    /// When.
    pub started: Instant,
    /// Where its programs and maps are pinned.
    pub pin_dir: String,
    /// The flow log writer's counters and its public key (hex), when it runs.
    pub flow_log: Option<(Arc<FlowLogStats>, String)>,
    /// The BPF LSM guard's state.
    pub protection: Arc<crate::protection::ProtectionState>,
}

/// Everything a read needs.
#[derive(Clone, Copy)]
pub struct Readers<'a> {
    /// The newest snapshot.
    pub snapshot: &'a Snapshot,
    /// The static facts.
    pub info: &'a AgentInfo,
    /// The kernel's maps.
    pub kernel: &'a DatapathView,
    /// Flows.
    pub observer: &'a Observer,
}

impl Readers<'_> {
    /// `status`.
    pub fn status(&self) -> Result<Status> {
        let (s, k) = (self.snapshot, self.kernel);
        let counters = k.counters()?;
        let mut drops = BTreeMap::new();
        let mut forwarded = 0;
        for (reason, dir, c) in &counters.by_reason {
            if *reason == Reason::Forwarded {
                forwarded += c.packets;
            } else if c.packets > 0 {
                *drops.entry(format!("{} {}", reason.as_str(), dir.as_str())).or_insert(0) += c.packets;
            }
        }
        let config = &self.info.config;
        Ok(Status {
            healthy: true,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.info.started.elapsed().as_secs(),
            state_dir: config.state_dir.display().to_string(),
            pin_dir: self.info.pin_dir.clone(),
            node_netns: config
                .node_netns
                .as_ref()
                .map_or_else(|| "(the agent's own)".into(), |p| p.display().to_string()),
            counts: Counts {
                policies: s.objects.policies,
                namespaces: s.objects.namespaces,
                pods: s.objects.pods,
                endpoints: s.endpoints.len(),
                identities: s.identities.len(),
                ipcache: k.ipcache()?.len(),
                policy_slots: k.slots()?.len(),
                conntrack: k.conntrack_len(),
            },
            audit: s.audit.clone(),
            drops,
            forwarded,
            flows: self.flow_status(counters.lost_events),
            endpoints_not_ready: s.not_ready.len(),
            protection: self.info.protection.status(),
            programs: k
                .program_stats()?
                .into_iter()
                .map(|p| ProgramStat { name: p.name.into(), run_count: p.run_count, run_time_ns: p.run_time_ns })
                .collect(),
        })
    }

    fn flow_status(&self, datapath_lost: u64) -> FlowStatus {
        let o = self.observer.stats();
        let log = self.info.flow_log.as_ref().map(|(s, _)| s);
        let config = &self.info.config;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        FlowStatus {
            buffered: o.flows,
            evicted: o.overwritten,
            buffer_bytes: o.bytes,
            buffer_max_bytes: o.max_bytes,
            seen: o.seen,
            lost: LostEvents { datapath_ring: datapath_lost, flow_log: o.log_lost, l7_proxy: o.l7_lost },
            log_dir: config.flow_log.as_ref().map(|c| c.dir.display().to_string()).unwrap_or_default(),
            log_written: log.map_or(0, |s| load(&s.written)),
            log_checkpoint: log.map_or(0, |s| load(&s.checkpoint_seq)),
            log_error: log.and_then(|s| s.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()),
            web: config.web_listen.map(|a| format!("http://{a}/")).unwrap_or_default(),
        }
    }

    /// `policy get`: the endpoint's entries, read back from the kernel.
    pub fn policy_dump(&self, name: &str) -> Result<PolicyDump> {
        let s = self.snapshot;
        let e = s.find_endpoint(name)?;
        let (_, ep) = self
            .kernel
            .endpoints()?
            .into_iter()
            .find(|(i, _)| *i == e.host_ifindex)
            .ok_or_else(|| AgentError::NotFound(format!("{} has no entry in the kernel's endpoint map", e.pod)))?;
        let dump = |slot: u32, default_deny: bool| -> Result<DirectionDump> {
            let entries = self
                .kernel
                .policy_entries(slot)?
                .into_iter()
                .map(|e| {
                    let peer_labels = match (e.level, &e.peer) {
                        ("identity", Some(p)) => p.parse().map(|n| s.labels(NumericIdentity(n))).unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    EntryDump {
                        level: e.level.into(),
                        peer: e.peer,
                        peer_labels,
                        protocol: bulkhead_datapath::abi::proto_name(e.proto),
                        port: e.port_lo,
                        end_port: e.port_hi,
                        verdict: e.verdict.into(),
                        rules: s.rules.get(e.rule).iter().map(ToString::to_string).collect(),
                    }
                })
                .collect();
            Ok(DirectionDump { default_deny, slot, entries })
        };
        Ok(PolicyDump {
            endpoint: e.pod.clone(),
            identity: ep.identity,
            ingress: dump(ep.slot[DIR_INGRESS], ep.flags & EP_DEFAULT_DENY_INGRESS != 0)?,
            egress: dump(ep.slot[DIR_EGRESS], ep.flags & EP_DEFAULT_DENY_EGRESS != 0)?,
        })
    }

    /// The flow log's public key and directory.
    pub fn flow_key(&self) -> Result<FlowKey> {
        match (&self.info.config.flow_log, &self.info.flow_log) {
            (Some(cfg), Some((_, key))) => Ok(FlowKey { public_key: key.clone(), dir: cfg.dir.display().to_string() }),
            _ => Err(AgentError::Conflict("this agent keeps no flow log (started with --no-flow-log)".into())),
        }
    }

    /// The values metrics read at scrape time.
    pub fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot> {
        let counters = self.kernel.counters()?;
        let mut snap = crate::metrics::Snapshot::default();
        for (reason, dir, c) in &counters.by_reason {
            if *reason == Reason::Forwarded {
                snap.forwarded.push((dir.as_str().to_string(), c.packets, c.bytes));
            } else {
                snap.drops.push((reason.as_str().into(), dir.as_str().to_string(), c.packets, c.bytes));
            }
        }
        let o = self.observer.stats();
        snap.lost = vec![
            ("datapath_ring".into(), counters.lost_events),
            ("flow_log".into(), o.log_lost),
            ("l7_proxy".into(), o.l7_lost),
        ];
        snap.map_pressure = self.kernel.map_pressure()?;
        snap.endpoints = self.snapshot.endpoints.len() as u64;
        snap.endpoints_not_ready = self.snapshot.not_ready.len() as u64;
        snap.identities = self.snapshot.identities.len() as u64;
        snap.flows_buffered = o.flows;
        snap.flow_buffer_bytes = o.bytes;
        snap.flows_evicted = o.overwritten;
        Ok(snap)
    }
}
