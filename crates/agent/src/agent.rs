//! The agent's core: the durable [`Store`], the policy [`Engine`] built
//! from it, and the datapath it keeps equal to the engine.
//!
//! Every change follows one order: validate (bad input changes nothing),
//! save the new state, update the engine, then write the kernel through
//! [`PolicySync`] and report what reached it. A crash after the save is
//! repaired by the next start, which rebuilds the engine from the store,
//! adopts the pinned maps and reconciles them. An endpoint whose new policy
//! cannot be loaded (a full map) keeps its previous one and is reported
//! `not-ready` until a later change loads it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bulkhead_datapath::abi::EP_MAX_ADDRS;
use bulkhead_datapath::sync::{EndpointSpec, LoadFailure, Overflow, PolicySync};
use bulkhead_datapath::{Datapath, DatapathError, netns};
use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::api::{Object, Pod};
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::diag::{Severity, Sink};
use bulkhead_policy::engine::{Change, Engine};
use bulkhead_policy::identity::{NumericIdentity, Reserved};
use bulkhead_policy::reach::{ProbePort, ReachMatrix, default_ports, reach};

use crate::observer::Observer;
use crate::observer::convert::{Converter, Local, Names};
use crate::store::{EndpointRecord, ObjectKey, Store, StoreError};
use bulkhead_api::{
    ApplyRequest, ApplyResponse, AuditRequest, AuditScope, AuditSettings, Counts, DirectionDump, EndpointFailure,
    EndpointInfo, EndpointRequest, Enforcement, EntryDump, IdentityInfo, PolicyDump, Status,
};

/// Where the agent keeps things.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory (`state.json`, `agent.lock`).
    pub state_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// The bpf filesystem directory for pins.
    pub pin_root: PathBuf,
    /// The network namespace that holds the host side of pod interfaces
    /// (`None`: the agent's own).
    pub node_netns: Option<PathBuf>,
    /// Bytes of recent flows `observe` can look back over.
    pub flow_buffer_bytes: usize,
    /// The node's name in flows.
    pub node_name: String,
    /// The signed flow log (`None`: no log).
    pub flow_log: Option<crate::observer::flowlog::FlowLogConfig>,
    /// Where metrics and the service map are served over HTTP (`None`: not served).
    pub web_listen: Option<std::net::SocketAddr>,
    /// Entries one policy (one direction of one endpoint policy) may hold
    /// in the kernel; a policy that needs more is refused.
    pub policy_map_entries: u32,
    /// What an endpoint's direction does while its policy does not fit.
    pub policy_overflow: Overflow,
}

/// What a request can fail with; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The input is invalid; nothing changed.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Every diagnostic.
        details: Vec<String>,
    },
    /// No such endpoint or object.
    #[error("{0}")]
    NotFound(String),
    /// The request needs something that is not there yet.
    #[error("{0}")]
    Conflict(String),
    /// The kernel refused.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The state directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A network namespace or interface could not be used.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AgentError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid { .. } => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Datapath(DatapathError::Full { .. }) => 507,
            _ => 500,
        }
    }

    /// The diagnostics behind an invalid request.
    pub fn details(&self) -> Vec<String> {
        match self {
            Self::Invalid { details, .. } => details.clone(),
            _ => Vec::new(),
        }
    }
}

type Result<T> = std::result::Result<T, AgentError>;

/// The running agent's state. See the module documentation.
pub struct Agent {
    config: Config,
    store: Store,
    engine: Engine,
    dp: Datapath,
    sync: PolicySync,
    /// Endpoints (by pod key) whose latest policy is not loaded, and why.
    not_ready: BTreeMap<String, EndpointFailure>,
    started: Instant,
    observer: Arc<Observer>,
    /// Bumped by every change of state, so that caches of names know.
    generation: u64,
    /// The local endpoints as flows name them.
    local: Local,
    /// The flow log writer's counters and its public key (hex), once it runs.
    flow_log: Option<(Arc<crate::observer::flowlog::FlowLogStats>, String)>,
}

impl Agent {
    /// Starts from the state directory and whatever an earlier agent left
    /// pinned: endpoints whose interface is gone are dropped, the rest get
    /// this agent's programs swapped into their links, and the maps are
    /// reconciled with the stored state.
    pub fn start(config: Config, observer: Arc<Observer>) -> Result<Self> {
        let mut store = Store::open(&config.state_dir)?;
        let mut dp = Datapath::open(&config.pin_root)?;
        dp.set_slot_capacity(config.policy_map_entries);
        let mut sync = PolicySync::adopt(&dp)?;
        sync.set_overflow(config.policy_overflow);
        let gone: Vec<String> = store
            .endpoints
            .iter()
            .filter(|(_, e)| {
                in_node(&config, || interface_index(&e.request.host_if)).ok().and_then(|r| r.ok()).flatten()
                    != Some(e.request.host_ifindex)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            tracing::info!(container_id = %k, "endpoint's interface is gone; dropping it");
        }
        if !gone.is_empty() {
            store.update(|st| {
                for k in &gone {
                    st.endpoints.remove(k);
                }
            })?;
        }
        let mut agent = Agent {
            engine: Engine::default(),
            config,
            store,
            dp,
            sync,
            not_ready: BTreeMap::new(),
            started: Instant::now(),
            observer,
            generation: 0,
            local: Local::default(),
            flow_log: None,
        };
        let changes: Vec<Change> = agent.store.objects.values().map(|o| agent.change_for(o.clone())).collect();
        for c in changes {
            agent.engine.apply(c);
        }
        agent.reconcile()?;
        let endpoints: Vec<EndpointRecord> = agent.store.endpoints.values().cloned().collect();
        for e in &endpoints {
            agent.attach(&e.request)?;
        }
        let live: BTreeSet<u32> = endpoints.iter().map(|e| e.request.host_ifindex).collect();
        for ifindex in agent.dp.attached()? {
            if !live.contains(&ifindex) {
                agent.dp.detach(ifindex)?;
            }
        }
        Ok(agent)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where flows go.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// Reports the running flow log writer: its counters in `status`, the
    /// key it signs with in `flows key`.
    pub fn set_flow_log(
        &mut self,
        stats: Arc<crate::observer::flowlog::FlowLogStats>,
        key: &ed25519_dalek::VerifyingKey,
    ) {
        self.flow_log = Some((stats, bulkhead_flow::log::to_hex(key.as_bytes())));
    }

    /// Turns a batch of datapath events into flows, with names as the
    /// agent knows them now.
    pub fn flows(
        &self,
        conv: &mut Converter,
        events: &[(bulkhead_datapath::abi::RawEvent, u64)],
    ) -> Vec<bulkhead_flow::Flow> {
        let names = Names { engine: &self.engine, sync: &self.sync, local: &self.local, generation: self.generation };
        events.iter().map(|(ev, t)| conv.convert(&names, ev, *t)).collect()
    }

    /// The values metrics read at scrape time.
    pub fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot> {
        let counters = self.dp.counters()?;
        let mut snap = crate::metrics::Snapshot::default();
        for (reason, dir, c) in &counters.by_reason {
            if *reason == bulkhead_datapath::abi::Reason::Forwarded {
                snap.forwarded.push((dir.as_str().to_string(), c.packets, c.bytes));
            } else {
                snap.drops.push((reason.as_str().into(), dir.as_str().to_string(), c.packets, c.bytes));
            }
        }
        let o = self.observer.stats();
        snap.lost = vec![("datapath_ring".into(), counters.lost_events), ("flow_log".into(), o.log_lost)];
        snap.map_pressure = self.dp.map_pressure()?;
        snap.endpoints = self.store.endpoints.len() as u64;
        snap.endpoints_not_ready = self.not_ready.len() as u64;
        snap.identities = self.engine.identities().count() as u64;
        snap.flows_buffered = o.flows;
        snap.flow_buffer_bytes = o.bytes;
        snap.flows_evicted = o.overwritten;
        Ok(snap)
    }

    /// The datapath's event reader, for a thread of its own (once).
    pub fn take_event_reader(&mut self) -> Option<bulkhead_datapath::events::EventReader> {
        self.dp.take_events()
    }

    // ---- objects ----

    /// `apply -f`: creates or replaces every object in the files.
    pub fn apply(&mut self, req: ApplyRequest) -> Result<ApplyResponse> {
        let t0 = Instant::now();
        let (objects, warnings) = decode_files(&req)?;
        let mut resp = ApplyResponse {
            warnings,
            not_enforced: crate::limits::not_enforced(objects.iter().filter_map(|o| match o {
                Object::Policy(p) => Some(p),
                _ => None,
            })),
            ..ApplyResponse::default()
        };
        let mut changed = Vec::new();
        for o in objects {
            let key = ObjectKey::of(&o);
            match self.store.objects.get(&key) {
                None => resp.created.push(key.to_string()),
                Some(old) if same_object(old, &o) => {
                    resp.unchanged.push(key.to_string());
                    continue;
                }
                Some(_) => resp.configured.push(key.to_string()),
            }
            changed.push((key, o));
        }
        if req.dry_run || changed.is_empty() {
            return Ok(resp);
        }
        let t_decoded = t0.elapsed();
        self.store.update(|st| {
            for (key, o) in &changed {
                st.objects.insert(key.clone(), o.clone());
            }
        })?;
        let t_saved = t0.elapsed();
        let n = changed.len();
        for (_, o) in changed {
            let c = self.change_for(o);
            self.engine.apply(c);
        }
        let t_resolved = t0.elapsed();
        resp.enforcement = self.reconcile_timed(t0, "apply")?;
        tracing::info!(
            objects = n,
            endpoints_updated = resp.enforcement.endpoints_updated,
            decode_ms = t_decoded.as_secs_f64() * 1e3,
            save_ms = (t_saved - t_decoded).as_secs_f64() * 1e3,
            resolve_ms = (t_resolved - t_saved).as_secs_f64() * 1e3,
            total_ms = resp.enforcement.elapsed_us as f64 / 1e3,
            "applied"
        );
        Ok(resp)
    }

    /// `delete -f`: removes every object the files name.
    pub fn delete(&mut self, req: ApplyRequest) -> Result<ApplyResponse> {
        let t0 = Instant::now();
        let (objects, warnings) = decode_files(&req)?;
        let mut resp = ApplyResponse { warnings, ..ApplyResponse::default() };
        let keys: BTreeSet<ObjectKey> = objects.iter().map(ObjectKey::of).collect();
        let mut gone = Vec::new();
        for key in keys {
            if self.store.objects.contains_key(&key) {
                resp.deleted.push(key.to_string());
                gone.push(key);
            } else {
                resp.not_found.push(key.to_string());
            }
        }
        if req.dry_run || gone.is_empty() {
            return Ok(resp);
        }
        self.store.update(|st| {
            for key in &gone {
                st.objects.remove(key);
            }
        })?;
        for key in gone {
            self.engine.apply(match key {
                ObjectKey::Policy(id) => Change::DeletePolicy(id),
                ObjectKey::Namespace(n) => Change::DeleteNamespace(n),
                ObjectKey::Pod(k) => Change::DeletePod(k),
            });
        }
        resp.enforcement = self.reconcile_timed(t0, "delete")?;
        Ok(resp)
    }

    /// The engine change for a stored object: a pod with a local endpoint
    /// has the addresses its endpoint was given (as a kubelet reports).
    fn change_for(&self, o: Object) -> Change {
        match o {
            Object::Namespace(n) => Change::UpsertNamespace(n),
            Object::Policy(p) => Change::UpsertPolicy(p),
            Object::Pod(p) => Change::UpsertPod(self.with_endpoint_ips(p)),
        }
    }

    fn with_endpoint_ips(&self, mut pod: Pod) -> Pod {
        let key = pod.key();
        if let Some(e) = self.store.endpoints.values().find(|e| e.pod_key() == key) {
            pod.ips = e.request.ips.clone();
        }
        pod
    }

    // ---- endpoints ----

    /// Registers a pod's interface and enforces its policy on it before
    /// answering. Registering the same container again is a no-op; a new
    /// container for the same pod replaces the old one.
    pub fn add_endpoint(&mut self, req: EndpointRequest) -> Result<EndpointInfo> {
        let t0 = Instant::now();
        check_endpoint_request(&req)?;
        let key = format!("{}/{}", req.namespace, req.pod);
        let Some(Object::Pod(pod)) = self.store.objects.get(&ObjectKey::Pod(key.clone())).cloned() else {
            return Err(AgentError::Conflict(format!(
                "pod {key} is not known to the agent: apply its Pod manifest first (bulkhead apply -f pod.yaml); \
                 its labels decide its identity"
            )));
        };
        if let Some(old) = self.store.endpoints.get(&req.container_id)
            && old.request == req
        {
            return self.endpoint_info(old);
        }
        let found = in_node(&self.config, || interface_index(&req.host_if))??;
        if found != Some(req.host_ifindex) {
            return Err(AgentError::Invalid {
                message: format!(
                    "interface {} has index {} on the node, not {} (is the plugin running in the node's network namespace{}?)",
                    req.host_if,
                    found.map_or("none".into(), |i| i.to_string()),
                    req.host_ifindex,
                    self.config.node_netns.as_ref().map(|p| format!(", {}", p.display())).unwrap_or_default()
                ),
                details: Vec::new(),
            });
        }
        let stale: Vec<String> = self
            .store
            .endpoints
            .iter()
            .filter(|(c, e)| **c == req.container_id || e.pod_key() == key)
            .map(|(c, _)| c.clone())
            .collect();
        for c in stale {
            self.remove_endpoint(&c)?;
        }
        let record = self.store.update(|st| {
            let record = EndpointRecord { id: st.allocate_endpoint_id(), request: req.clone() };
            st.endpoints.insert(req.container_id.clone(), record.clone());
            record
        })?;
        let id = record.id;
        self.engine.apply(Change::UpsertPod(self.with_endpoint_ips(pod)));
        // The endpoint's map value goes in before its programs, so its
        // first packet already meets its policy.
        let loaded = self.reconcile().map(|_| self.not_ready.get(&key).cloned());
        let outcome = match loaded {
            Ok(None) => self.attach(&req),
            Ok(Some(f)) => Err(AgentError::Conflict(format!("the policy of {key} could not be loaded: {}", f.error))),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(pod = %key, error = %e, "endpoint not enforced; removing it");
            let _ = self.remove_endpoint(&req.container_id);
            return Err(e);
        }
        tracing::info!(pod = %key, ifname = %req.host_if, ifindex = req.host_ifindex, endpoint = id, "endpoint added");
        self.observer.metrics().implementation_delay("endpoint", t0.elapsed().as_secs_f64());
        self.endpoint_info(&record)
    }

    /// Forgets a container's endpoint (detaches its programs, drops its
    /// conntrack entries). Unknown containers are not an error.
    pub fn remove_endpoint(&mut self, container_id: &str) -> Result<Option<EndpointInfo>> {
        let Some(record) = self.store.endpoints.get(container_id).cloned() else { return Ok(None) };
        let info = self.endpoint_info(&record).ok();
        self.dp.detach(record.request.host_ifindex)?;
        self.store.update(|st| st.endpoints.remove(container_id))?;
        let key = record.pod_key();
        if let Some(Object::Pod(p)) = self.store.objects.get(&ObjectKey::Pod(key.clone())).cloned() {
            self.engine.apply(Change::UpsertPod(p));
        }
        self.not_ready.remove(&key);
        self.reconcile()?;
        self.dp.flush_conntrack(record.request.host_ifindex)?;
        tracing::info!(pod = %key, endpoint = record.id, "endpoint removed");
        Ok(info)
    }

    /// One endpoint, by container id.
    pub fn endpoint(&self, container_id: &str) -> Result<EndpointInfo> {
        let r = self
            .store
            .endpoints
            .get(container_id)
            .ok_or_else(|| AgentError::NotFound(format!("no endpoint for container {container_id}")))?;
        self.endpoint_info(r)
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Result<Vec<EndpointInfo>> {
        let mut v: Vec<EndpointInfo> =
            self.store.endpoints.values().map(|r| self.endpoint_info(r)).collect::<Result<_>>()?;
        v.sort_by(|a, b| a.pod.cmp(&b.pod));
        Ok(v)
    }

    fn endpoint_info(&self, r: &EndpointRecord) -> Result<EndpointInfo> {
        let key = r.pod_key();
        let (_, id) = self.engine.pod(&key).ok_or_else(|| AgentError::NotFound(format!("pod {key} is not known")))?;
        let policy = self.engine.endpoint_policy(&key);
        Ok(EndpointInfo {
            id: r.id,
            pod: key.clone(),
            container_id: r.request.container_id.clone(),
            identity: id.0,
            labels: self.labels_of(id),
            ips: r.request.ips.clone(),
            netns: r.request.netns.clone(),
            host_if: r.request.host_if.clone(),
            host_ifindex: r.request.host_ifindex,
            ingress_enforced: policy.is_some_and(|p| p.ingress.default_deny),
            egress_enforced: policy.is_some_and(|p| p.egress.default_deny),
            audit: self.store.audit.effective(&key),
            state: match self.not_ready.get(&key) {
                Some(f) => format!("not-ready: {}", f.summary()),
                None => "ready".into(),
            },
        })
    }

    /// Finds an endpoint by `namespace/pod`, endpoint id or container id.
    fn find_endpoint(&self, name: &str) -> Result<&EndpointRecord> {
        self.store
            .endpoints
            .values()
            .find(|e| e.pod_key() == name || e.id.to_string() == name || e.request.container_id == name)
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "no endpoint `{name}`: name it NAMESPACE/POD, by endpoint id or by container id (bulkhead endpoint list)"
                ))
            })
    }

    // ---- reading ----

    /// Every identity with its labels and the pods that have it.
    pub fn identities(&self) -> Vec<IdentityInfo> {
        let mut pods: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for k in self.engine.pod_keys() {
            if let Some((_, id)) = self.engine.pod(&k) {
                pods.entry(id.0).or_default().push(k);
            }
        }
        let mut v: Vec<IdentityInfo> = self
            .engine
            .identities()
            .map(|i| IdentityInfo {
                id: i.id.0,
                labels: i.labels.to_strings(),
                pods: pods.remove(&i.id.0).unwrap_or_default(),
            })
            .collect();
        v.sort_by_key(|i| i.id);
        v
    }

    fn labels_of(&self, id: NumericIdentity) -> Vec<String> {
        self.engine.identity(id).map(|i| i.labels.to_strings()).unwrap_or_default()
    }

    /// `policy get`: the endpoint's entries, read back from the kernel.
    pub fn policy_dump(&self, name: &str) -> Result<PolicyDump> {
        let r = self.find_endpoint(name)?;
        let key = r.pod_key();
        let ifindex = r.request.host_ifindex;
        let (_, ep) = self
            .dp
            .endpoints()?
            .into_iter()
            .find(|(i, _)| *i == ifindex)
            .ok_or_else(|| AgentError::NotFound(format!("{key} has no entry in the kernel's endpoint map")))?;
        let dump = |slot: u32, default_deny: bool| -> Result<DirectionDump> {
            let entries = self
                .dp
                .policy_entries(slot)?
                .into_iter()
                .map(|e| {
                    let peer_labels = match (e.level, &e.peer) {
                        ("identity", Some(p)) => {
                            p.parse().map(|n| self.labels_of(NumericIdentity(n))).unwrap_or_default()
                        }
                        _ => Vec::new(),
                    };
                    EntryDump {
                        level: e.level.into(),
                        peer: e.peer,
                        peer_labels,
                        protocol: proto_name(e.proto),
                        port: e.port_lo,
                        end_port: e.port_hi,
                        verdict: e.verdict.into(),
                        rules: self.sync.rules(e.rule).iter().map(ToString::to_string).collect(),
                    }
                })
                .collect();
            Ok(DirectionDump { default_deny, slot, entries })
        };
        use bulkhead_datapath::abi::{EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS};
        Ok(PolicyDump {
            endpoint: key,
            identity: ep.identity,
            ingress: dump(ep.slot[0], ep.flags & EP_DEFAULT_DENY_INGRESS != 0)?,
            egress: dump(ep.slot[1], ep.flags & EP_DEFAULT_DENY_EGRESS != 0)?,
        })
    }

    /// The engine's reachability matrix over every known pod.
    pub fn reach(&self, ports: &[String]) -> Result<ReachMatrix> {
        let ports = if ports.is_empty() {
            default_ports(&self.engine)
        } else {
            ports
                .iter()
                .map(|p| ProbePort::parse(p))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|message| AgentError::Invalid { message, details: Vec::new() })?
        };
        Ok(reach(&self.engine, &ports))
    }

    /// `status`.
    pub fn status(&self) -> Result<Status> {
        let counters = self.dp.counters()?;
        let mut drops = BTreeMap::new();
        let mut forwarded = 0;
        for (reason, dir, c) in &counters.by_reason {
            if *reason == bulkhead_datapath::abi::Reason::Forwarded {
                forwarded += c.packets;
            } else if c.packets > 0 {
                *drops.entry(format!("{} {}", reason.as_str(), dir.as_str())).or_insert(0) += c.packets;
            }
        }
        let count = |f: fn(&Object) -> bool| self.store.objects.values().filter(|o| f(o)).count();
        Ok(Status {
            healthy: true,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            state_dir: self.config.state_dir.display().to_string(),
            pin_dir: self.dp.pin_dir().display().to_string(),
            node_netns: self
                .config
                .node_netns
                .as_ref()
                .map_or_else(|| "(the agent's own)".into(), |p| p.display().to_string()),
            counts: Counts {
                policies: count(|o| matches!(o, Object::Policy(_))),
                namespaces: count(|o| matches!(o, Object::Namespace(_))),
                pods: count(|o| matches!(o, Object::Pod(_))),
                endpoints: self.store.endpoints.len(),
                identities: self.engine.identities().count(),
                ipcache: self.dp.ipcache()?.len(),
                policy_slots: self.dp.slots()?.len(),
                conntrack: self.dp.conntrack_len(),
            },
            audit: self.store.audit.clone(),
            drops,
            forwarded,
            flows: self.flow_status(counters.lost_events),
            endpoints_not_ready: self.not_ready.len(),
            programs: self
                .dp
                .program_stats()?
                .into_iter()
                .map(|p| bulkhead_api::ProgramStat {
                    name: p.name.into(),
                    run_count: p.run_count,
                    run_time_ns: p.run_time_ns,
                })
                .collect(),
        })
    }

    /// Sets or clears audit mode at a scope, and enforces the result.
    pub fn set_audit(&mut self, req: AuditRequest) -> Result<AuditSettings> {
        let endpoint = match &req.scope {
            AuditScope::Endpoint(ep) => Some(self.find_endpoint(ep)?.pod_key()),
            _ => None,
        };
        self.store.update(|st| {
            let a = &mut st.audit;
            match (&req.scope, endpoint, req.enabled) {
                (AuditScope::Global, _, v) => a.global = v.unwrap_or(false),
                (AuditScope::Namespace(ns), _, Some(v)) => {
                    a.namespaces.insert(ns.clone(), v);
                }
                (AuditScope::Namespace(ns), _, None) => {
                    a.namespaces.remove(ns);
                }
                (AuditScope::Endpoint(_), Some(key), Some(v)) => {
                    a.endpoints.insert(key, v);
                }
                (AuditScope::Endpoint(_), Some(key), None) => {
                    a.endpoints.remove(&key);
                }
                (AuditScope::Endpoint(_), None, _) => {}
            }
        })?;
        self.reconcile()?;
        Ok(self.store.audit.clone())
    }

    fn flow_status(&self, datapath_lost: u64) -> bulkhead_api::FlowStatus {
        let o = self.observer.stats();
        let log = self.flow_log.as_ref().map(|(s, _)| s);
        bulkhead_api::FlowStatus {
            buffered: o.flows,
            evicted: o.overwritten,
            buffer_bytes: o.bytes,
            buffer_max_bytes: o.max_bytes,
            seen: o.seen,
            lost: bulkhead_api::LostEvents { datapath_ring: datapath_lost, flow_log: o.log_lost },
            log_dir: self.config.flow_log.as_ref().map(|c| c.dir.display().to_string()).unwrap_or_default(),
            log_written: log.map_or(0, |s| s.written.load(std::sync::atomic::Ordering::Relaxed)),
            log_checkpoint: log.map_or(0, |s| s.checkpoint_seq.load(std::sync::atomic::Ordering::Relaxed)),
            log_error: log.and_then(|s| s.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()),
            web: self.config.web_listen.map(|a| format!("http://{a}/")).unwrap_or_default(),
        }
    }

    /// The flow log's public key and directory.
    pub fn flow_key(&self) -> Result<bulkhead_api::FlowKey> {
        match (&self.config.flow_log, &self.flow_log) {
            (Some(cfg), Some((_, key))) => {
                Ok(bulkhead_api::FlowKey { public_key: key.clone(), dir: cfg.dir.display().to_string() })
            }
            _ => Err(AgentError::Conflict("this agent keeps no flow log (started with --no-flow-log)".into())),
        }
    }

    // ---- the kernel ----

    fn reconcile_timed(&mut self, t0: Instant, source: &str) -> Result<Enforcement> {
        let mut e = self.reconcile()?;
        e.elapsed_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.observer.metrics().implementation_delay(source, t0.elapsed().as_secs_f64());
        Ok(e)
    }

    /// Makes the maps hold the engine's view of every local endpoint.
    fn reconcile(&mut self) -> Result<Enforcement> {
        let t0 = Instant::now();
        self.generation += 1;
        self.local = Local::new(
            self.store
                .endpoints
                .values()
                .map(|r| (r.id, r.request.host_ifindex, r.request.host_if.clone(), r.pod_key())),
        );
        let mut specs = Vec::new();
        let mut pod_of = BTreeMap::new();
        for r in self.store.endpoints.values() {
            let key = r.pod_key();
            let (Some((_, id)), Some(policy)) = (self.engine.pod(&key), self.engine.endpoint_policy(&key)) else {
                continue;
            };
            pod_of.insert(r.request.host_ifindex, key.clone());
            specs.push(EndpointSpec {
                ifindex: r.request.host_ifindex,
                id: r.id,
                identity: id.0,
                audit: self.store.audit.effective(&key),
                addrs: r.request.ips.clone(),
                policy: Arc::clone(policy),
            });
        }
        let mut ipcache: Vec<(Cidr, u32)> = self.engine.ipcache().into_iter().map(|(c, id)| (c, id.0)).collect();
        ipcache.extend(
            in_node(&self.config, node_addresses)??.into_iter().map(|ip| (Cidr::host(ip), Reserved::Host.id().0)),
        );
        let report = self.sync.apply(&mut self.dp, specs, ipcache)?;
        let failed: Vec<EndpointFailure> = report
            .failed
            .iter()
            .map(|f| {
                let endpoint = pod_of.get(&f.ifindex).cloned().unwrap_or_else(|| format!("ifindex {}", f.ifindex));
                failure(endpoint, f)
            })
            .collect();
        for f in &failed {
            tracing::warn!(
                endpoint = %f.endpoint,
                directions = %f.directions.join(","),
                fail_closed = f.fail_closed,
                error = %f.error,
                "endpoint policy not loaded"
            );
            self.observer.metrics().policy_load_failed(&f.directions, f.fail_closed);
        }
        // Every reconcile retries every endpoint not yet at its policy, so
        // the endpoints not ready are exactly this round's failures.
        self.not_ready = failed.iter().map(|f| (f.endpoint.clone(), f.clone())).collect();
        Ok(Enforcement {
            endpoints_updated: report.endpoints_updated,
            slots_written: report.slots_written,
            entries_written: report.entries_written,
            failed,
            elapsed_us: u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
        })
    }

    fn attach(&mut self, req: &EndpointRequest) -> Result<()> {
        let dp = &mut self.dp;
        in_node(&self.config, || dp.attach(&req.host_if, req.host_ifindex))??;
        Ok(())
    }

    /// Deletes retired policy slots whose grace period is over.
    pub fn collect_garbage(&mut self) {
        if let Err(e) = self.sync.collect_retired(&mut self.dp, false) {
            tracing::warn!(error = %e, "deleting retired policy slots");
        }
    }
}

/// An endpoint whose policy did not load, as the API reports it.
fn failure(endpoint: String, f: &LoadFailure) -> EndpointFailure {
    EndpointFailure {
        endpoint,
        directions: f.directions.iter().map(|d| d.as_str().to_ascii_lowercase()).collect(),
        fail_closed: f.overflow == Overflow::FailClosed,
        error: f.error.to_string(),
    }
}

fn decode_files(req: &ApplyRequest) -> Result<(Vec<Object>, Vec<String>)> {
    if req.files.is_empty() {
        return Err(AgentError::Invalid { message: "no files given".into(), details: Vec::new() });
    }
    let opts = DecodeOptions { default_namespace: req.namespace.clone() };
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    for f in &req.files {
        let mut sink = Sink::new(&f.name);
        objects.extend(decode_str(&f.text, &opts, &mut sink));
        diagnostics.extend(sink.diagnostics);
    }
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    if errors > 0 {
        return Err(AgentError::Invalid {
            message: format!("{errors} error(s) in the input; nothing was applied"),
            details: rendered,
        });
    }
    if objects.is_empty() {
        return Err(AgentError::Invalid {
            message: "the input holds no Namespace, Pod or policy objects".into(),
            details: rendered,
        });
    }
    Ok((objects, rendered))
}

/// Equal apart from where they were read from.
fn same_object(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Policy(x), Object::Policy(y)) => {
            let mut y = y.clone();
            y.origin = x.origin.clone();
            *x == y
        }
        _ => a == b,
    }
}

fn check_endpoint_request(r: &EndpointRequest) -> Result<()> {
    let missing: Vec<&str> = [
        ("container_id", r.container_id.is_empty()),
        ("namespace", r.namespace.is_empty()),
        ("pod", r.pod.is_empty()),
        ("host_if", r.host_if.is_empty()),
        ("ips", r.ips.is_empty()),
    ]
    .into_iter()
    .filter_map(|(n, empty)| empty.then_some(n))
    .collect();
    if !missing.is_empty() {
        return Err(AgentError::Invalid {
            message: format!("endpoint request lacks {}", missing.join(", ")),
            details: Vec::new(),
        });
    }
    if r.ips.len() > EP_MAX_ADDRS {
        return Err(AgentError::Invalid {
            message: format!(
                "endpoint request gives the pod {} addresses ({}); an endpoint may have at most {EP_MAX_ADDRS} \
                 (its packets are checked against each)",
                r.ips.len(),
                r.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            details: Vec::new(),
        });
    }
    Ok(())
}

/// Runs `f` in the node's network namespace (fails only when that
/// namespace cannot be entered).
fn in_node<T: Send>(config: &Config, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    match &config.node_netns {
        Some(ns) => netns::run_in(ns, f),
        None => Ok(f()),
    }
}

fn interface_index(name: &str) -> std::io::Result<Option<u32>> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(Some(i)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(std::io::Error::other(format!("interface {name}: {e}"))),
    }
}

/// The node's own global addresses: the ipcache maps them to `host`.
fn node_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !ip.is_loopback() && !link_local && !ip.is_unspecified() {
            out.insert(ip);
        }
    }
    Ok(out.into_iter().collect())
}

/// `TCP`, `UDP`, … for an IP protocol number (0: every protocol).
pub fn proto_name(n: u8) -> String {
    match n {
        0 => "ANY".into(),
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}
