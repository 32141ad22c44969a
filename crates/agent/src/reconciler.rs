//! The one writer: it alone owns the durable [`Store`], the policy
//! [`Engine`] and the kernel maps ([`Datapath`], [`PolicySync`]), and takes
//! changes one at a time from a queue ([`Command`]). After each change it
//! publishes a [`Snapshot`] that every reader uses (see `snapshot`).
//!
//! Every change follows one order: validate (bad input changes nothing;
//! decoding is done by the caller, off this thread), save the new state,
//! update the engine, write the kernel through [`PolicySync`], publish, and
//! answer. A crash after the save is repaired by the next start, which
//! rebuilds the engine from the store, adopts the pinned maps and
//! reconciles them. An endpoint whose new policy does not fit its map is
//! reported not-ready until a later change loads it (what its directions do
//! meanwhile is the `Overflow` setting).
//!
//! The writer runs on a thread of its own: map updates are system calls,
//! and a long apply must never hold up the event path or a `status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bulkhead_api::{
    ApplyRequest, ApplyResponse, AuditRequest, AuditScope, AuditSettings, EndpointFailure, EndpointInfo,
    EndpointRequest, Enforcement,
};
use bulkhead_datapath::abi::EP_MAX_ADDRS;
use bulkhead_datapath::sync::{EndpointSpec, LoadFailure, Overflow, PolicySync, ProxyPorts};
use bulkhead_datapath::{Datapath, DatapathView};
use bulkhead_policy::api::decode::{DecodeOptions, decode_str};
use bulkhead_policy::api::{Object, Pod};
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::diag::{Severity, Sink};
use bulkhead_policy::engine::{Change, Engine};
use bulkhead_policy::identity::Reserved;
use bulkhead_policy::reach::{ProbePort, ReachMatrix, default_ports, reach_with};

use crate::config::{AgentError, Config};
use crate::fqdn::NameCache;
use crate::metrics::Metrics;
use crate::node::{in_node, interface_index};
use crate::protection::{Protection, ProtectionState};
use crate::proxy::ProxyLink;
use crate::snapshot::{Published, Snapshot};
use crate::store::{EndpointRecord, ObjectKey, Store};

type Result<T> = std::result::Result<T, AgentError>;

/// Where a command's answer goes.
pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T>>;

/// Decoded objects to create or replace (`apply`) or remove (`delete`).
#[derive(Debug)]
pub struct Objects {
    /// The objects, valid.
    pub objects: Vec<Object>,
    /// The decoder's warnings.
    pub warnings: Vec<String>,
    /// Check only: report, change nothing.
    pub dry_run: bool,
    /// When the request reached the agent (its implementation delay counts from here).
    pub received: Instant,
}

impl Objects {
    /// Decodes and validates an `apply`/`delete` request: every diagnostic,
    /// and nothing at all when any is an error. Pure: run it anywhere, it
    /// need not (and should not) hold up the writer.
    pub fn decode(req: &ApplyRequest, received: Instant) -> Result<Self> {
        if req.files.is_empty() {
            return Err(AgentError::invalid("no files given"));
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
        Ok(Objects { objects, warnings: rendered, dry_run: req.dry_run, received })
    }
}

/// A change (or a question only the engine can answer), queued for the writer.
#[derive(Debug)]
pub enum Command {
    /// `apply -f`.
    Apply(Objects, Reply<ApplyResponse>),
    /// `delete -f`.
    Delete(Objects, Reply<ApplyResponse>),
    /// The CNI plugin's ADD.
    AddEndpoint(EndpointRequest, Reply<EndpointInfo>),
    /// The CNI plugin's DEL (container id).
    RemoveEndpoint(String, Reply<Option<EndpointInfo>>),
    /// `audit`.
    SetAudit(AuditRequest, Reply<AuditSettings>),
    /// The engine's reachability matrix (for `lab probe`).
    Reach(Vec<String>, Reply<ReachMatrix>),
    /// Addresses the DNS proxy learnt: answered once the kernel enforces
    /// them, with until when (unix seconds) each learn's addresses stay.
    Learn(Vec<bulkhead_proxy::learn::Learn>, Reply<Vec<u64>>),
    /// A pin of the datapath was removed (seen at that instant): put back
    /// whatever is missing.
    RepairPins(Instant),
}

/// How often retired policy slots are looked at.
const GC_EVERY: Duration = Duration::from_millis(500);
/// How often, at most, the conntrack table is read for the addresses of
/// open connections, which learnt names past their TTL must outlive.
const FQDN_SCAN_EVERY: Duration = Duration::from_secs(2);
/// How often a proxy that went away or (re)started is looked for.
const PROXY_EVERY: Duration = Duration::from_millis(200);
/// How often the kernel's endpoints, ipcache, slot index and conntrack are
/// compared with what the agent wrote (drift found within this, repaired at
/// once). Counted from one look's start to the next's, so that the time a
/// look takes (85 ms at 10,000 endpoints and 100,000 connections,
/// BENCHMARKS.md) does not add to it.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

/// The writer. See the module documentation.
pub struct Reconciler {
    config: Config,
    store: Store,
    engine: Engine,
    dp: Datapath,
    sync: PolicySync,
    /// The L7 proxy, when there is one.
    proxy: Option<ProxyLink>,
    /// Endpoints (by pod key) whose latest policy is not loaded, and why.
    not_ready: BTreeMap<String, EndpointFailure>,
    /// Names learnt from DNS answers, with their addresses (persisted).
    fqdn: NameCache,
    /// Expiries moved since the cache was last saved (saved within a tick).
    fqdn_dirty: bool,
    /// When stale names may next be looked for.
    next_fqdn_scan: Instant,
    generation: u64,
    published: Arc<Published>,
    metrics: Arc<Metrics>,
    /// The BPF LSM guard (from the end of start), and what status shows of it.
    protection: Option<Protection>,
    protection_state: Arc<ProtectionState>,
}

impl Reconciler {
    /// Starts from the state directory and whatever an earlier agent left
    /// pinned: endpoints whose interface is gone are dropped, the rest get
    /// this agent's programs swapped into their links, and the maps are
    /// reconciled with the stored state. Publishes the first snapshot.
    pub fn start(
        config: Config,
        published: Arc<Published>,
        metrics: Arc<Metrics>,
        protection_state: Arc<ProtectionState>,
    ) -> Result<Self> {
        let mut store = Store::open(&config.state_dir)?;
        let mut dp = Datapath::open(&config.pin_root)?;
        dp.set_slot_capacity(config.policy_map_entries);
        let mut sync = PolicySync::adopt(&dp)?;
        sync.set_overflow(config.policy_overflow);
        let proxy = match &config.proxy {
            Some(p) => {
                in_node(&config, bulkhead_datapath::netns::route_marked_to_proxy)??;
                sync.set_proxy_ports(ProxyPorts { http: p.http_port, dns: p.dns_port });
                Some(ProxyLink::new(p.clone()))
            }
            None => None,
        };
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
        let mut r = Reconciler {
            engine: Engine::default(),
            config,
            store,
            dp,
            sync,
            proxy,
            not_ready: BTreeMap::new(),
            fqdn: NameCache::default(),
            fqdn_dirty: false,
            next_fqdn_scan: Instant::now(),
            generation: 0,
            published,
            metrics,
            protection: None,
            protection_state,
        };
        let mut changes: Vec<Change> = r.store.objects.values().map(|o| r.change_for(o.clone())).collect();
        // The names learnt before a restart, in force before the first
        // packet is judged by this agent's maps.
        r.fqdn = r.load_fqdn();
        changes.extend(r.fqdn.addresses().iter().map(|(a, names)| Change::SetLearnt(*a, names.clone())));
        r.engine.apply_batch(changes);
        r.reconcile()?;
        let endpoints: Vec<EndpointRecord> = r.store.endpoints.values().cloned().collect();
        for e in &endpoints {
            r.attach(&e.request)?;
        }
        let live: BTreeSet<u32> = endpoints.iter().map(|e| e.request.host_ifindex).collect();
        for ifindex in r.dp.attached()? {
            if !live.contains(&ifindex) {
                r.dp.detach(ifindex)?;
            }
        }
        // Over what this agent now holds: from here on, only it may write.
        r.protection = Some(Protection::start(&r.dp, &r.protection_state));
        Ok(r)
    }

    /// The kernel maps, for readers on other threads.
    pub fn view(&self) -> Arc<DatapathView> {
        Arc::clone(self.dp.view())
    }

    /// The datapath's event ring buffer (taken once, by the event reader).
    pub fn take_event_reader(&mut self) -> Option<bulkhead_datapath::events::EventReader> {
        self.dp.take_events()
    }

    /// Takes commands until every sender is gone, deleting retired policy
    /// slots in between.
    pub fn run(mut self, commands: Receiver<Command>) {
        let mut next_gc = Instant::now() + GC_EVERY;
        let mut next_proxy = Instant::now() + PROXY_EVERY;
        let mut next_verify = Instant::now() + VERIFY_EVERY;
        loop {
            let next = next_gc.min(next_proxy).min(next_verify);
            match commands.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(c) => self.handle(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(p) = &mut self.proxy
                && Instant::now() >= next_proxy
            {
                p.tick();
                next_proxy = Instant::now() + PROXY_EVERY;
            }
            let start = Instant::now();
            if start >= next_verify {
                self.verify();
                next_verify = start + VERIFY_EVERY;
            }
            if Instant::now() >= next_gc {
                if let Some(p) = &mut self.protection {
                    p.report(&self.protection_state, &self.metrics);
                }
                if let Err(e) = self.sync.collect_retired(&mut self.dp, false) {
                    tracing::warn!(error = %e, "deleting retired policy slots");
                }
                if let Err(e) = self.expire_fqdn() {
                    tracing::warn!(error = %e, "expiring learnt names");
                }
                next_gc = Instant::now() + GC_EVERY;
            }
        }
    }

    fn handle(&mut self, c: Command) {
        // An answer nobody waits for any more (the client went away) is dropped.
        match c {
            Command::Apply(o, reply) => drop(reply.send(self.apply(o))),
            Command::Delete(o, reply) => drop(reply.send(self.delete(o))),
            Command::AddEndpoint(req, reply) => drop(reply.send(self.add_endpoint(req))),
            Command::RemoveEndpoint(id, reply) => drop(reply.send(self.remove_endpoint(&id))),
            Command::SetAudit(req, reply) => drop(reply.send(self.set_audit(req))),
            Command::Reach(ports, reply) => drop(reply.send(self.reach(&ports))),
            Command::Learn(learns, reply) => drop(reply.send(self.learn(learns))),
            Command::RepairPins(seen) => self.repair_pins(seen),
        }
    }

    // ---- names learnt from DNS answers ----

    fn fqdn_path(&self) -> std::path::PathBuf {
        self.config.state_dir.join("fqdn.json")
    }

    /// The persisted name cache; an unreadable one is moved aside (names are
    /// learnt again from the next lookups) rather than stopping the agent.
    fn load_fqdn(&self) -> NameCache {
        let path = self.fqdn_path();
        match std::fs::read(&path) {
            Ok(bytes) => NameCache::from_json(&bytes).unwrap_or_else(|e| {
                let aside = path.with_extension("json.bad");
                tracing::error!(path = %path.display(), error = %e, aside = %aside.display(), "unreadable name cache; starting empty");
                let _ = std::fs::rename(&path, &aside);
                NameCache::default()
            }),
            Err(_) => NameCache::default(),
        }
    }

    fn save_fqdn(&mut self) -> Result<()> {
        self.fqdn_dirty = false;
        let path = self.fqdn_path();
        let bytes = self.fqdn.to_json().map_err(|e| AgentError::Io(std::io::Error::other(e)))?;
        crate::store::write_atomically(&path, &bytes)
            .map_err(|e| AgentError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))
    }

    /// Takes what the DNS proxy learnt: new addresses saved, then in the
    /// engine and the kernel, before the answers are released. Answers
    /// until when each learn's addresses stay at least.
    fn learn(&mut self, learns: Vec<bulkhead_proxy::learn::Learn>) -> Result<Vec<u64>> {
        let now = unix_now();
        let mut changed = Vec::new();
        for l in &learns {
            let endpoint = self.engine.identity_of_ip(l.client).1.unwrap_or_else(|| l.client.to_string());
            changed.extend(self.fqdn.learn(self.config.fqdn, &endpoint, &l.name, &l.addrs, l.ttl, now));
        }
        if changed.is_empty() {
            // Only expiries moved: saved by the next tick, not per answer.
            self.fqdn_dirty = true;
        } else {
            self.save_fqdn()?;
            self.apply_learnt(changed)?;
        }
        Ok(learns.iter().map(|l| self.fqdn.held_until(&l.name, &l.addrs).unwrap_or(0)).collect())
    }

    /// Forgets addresses past their TTL that no open connection uses. The
    /// conntrack table is read at most every [`FQDN_SCAN_EVERY`] (a stale
    /// address a connection still uses would have it read every tick).
    fn expire_fqdn(&mut self) -> Result<()> {
        let due = self.fqdn.next_expiry().is_some_and(|t| t < unix_now()) && Instant::now() >= self.next_fqdn_scan;
        if due {
            self.next_fqdn_scan = Instant::now() + FQDN_SCAN_EVERY;
            let in_use = self.dp.view().conntrack_addresses();
            let changed = self.fqdn.expire(unix_now(), &in_use);
            if !changed.is_empty() {
                // The kernel first: once the file says an address is gone, no
                // new connection to it passes (a crash between the two only
                // keeps it until the next look).
                self.apply_learnt(changed)?;
                return self.save_fqdn();
            }
        }
        if self.fqdn_dirty { self.save_fqdn() } else { Ok(()) }
    }

    fn apply_learnt(&mut self, changed: Vec<(std::net::IpAddr, BTreeSet<String>)>) -> Result<()> {
        if changed.is_empty() {
            return Ok(());
        }
        self.engine.apply_batch(changed.into_iter().map(|(a, names)| Change::SetLearnt(a, names)));
        self.reconcile().map(drop)
    }

    // ---- objects ----

    fn apply(&mut self, req: Objects) -> Result<ApplyResponse> {
        let t0 = req.received;
        let mut resp = ApplyResponse { warnings: req.warnings, ..ApplyResponse::default() };
        // Read before the objects move into the store; worded after the
        // reconcile, when the proxy's state is known.
        let needs = crate::limits::NotEnforced::of(req.objects.iter().filter_map(|o| match o {
            Object::Policy(p) => Some(p),
            _ => None,
        }));
        let mut changed = Vec::new();
        for o in req.objects {
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
        self.check_guardrails(&changed)?;
        if req.dry_run || changed.is_empty() {
            resp.not_enforced = needs.lines(|dns| self.proxy_problem(dns));
            return Ok(resp);
        }
        let t_start = t0.elapsed();
        self.store.update(|st| {
            for (key, o) in &changed {
                st.objects.insert(key.clone(), o.clone());
            }
        })?;
        let t_saved = t0.elapsed();
        let n = changed.len();
        let changes: Vec<Change> = changed.into_iter().map(|(_, o)| self.change_for(o)).collect();
        self.engine.apply_batch(changes);
        let t_resolved = t0.elapsed();
        resp.enforcement = self.reconcile_timed(t0, "apply")?;
        resp.not_enforced = needs.lines(|dns| self.proxy_problem(dns));
        tracing::info!(
            objects = n,
            endpoints_updated = resp.enforcement.endpoints_updated,
            decode_and_queue_ms = t_start.as_secs_f64() * 1e3,
            save_ms = (t_saved - t_start).as_secs_f64() * 1e3,
            resolve_ms = (t_resolved - t_saved).as_secs_f64() * 1e3,
            total_ms = resp.enforcement.elapsed_us as f64 / 1e3,
            "applied"
        );
        Ok(resp)
    }

    /// Compares the kernel's endpoints, ipcache, slot index and conntrack
    /// with what the agent wrote and repairs each difference, reporting it
    /// with the time the repair took.
    fn verify(&mut self) {
        let t0 = Instant::now();
        match self.sync.verify(&mut self.dp) {
            Ok(drifts) => {
                let took = t0.elapsed();
                for d in drifts {
                    self.drifted(d.kind, &d.what, took);
                }
            }
            Err(e) => tracing::error!(error = %e, "comparing the datapath's maps with the agent's failed"),
        }
        // The programs on each endpoint's interface: re-attached where
        // another process replaced, detached or added one.
        let ifindexes: Vec<u32> = self.store.endpoints.values().map(|e| e.request.host_ifindex).collect();
        let dp = &self.dp;
        let changed = match in_node(&self.config, || dp.changed_programs(&ifindexes)) {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "looking at the endpoints' programs failed"),
        };
        for (ifindex, what) in changed {
            let t0 = Instant::now();
            let Some(req) =
                self.store.endpoints.values().find(|e| e.request.host_ifindex == ifindex).map(|e| e.request.clone())
            else {
                continue;
            };
            match self.attach(&req) {
                Ok(()) => self.drifted("program-changed", &format!("{}: {what}", req.host_if), t0.elapsed()),
                Err(e) => tracing::error!(interface = %req.host_if, error = %e, "attaching again failed"),
            }
        }
    }

    /// Puts back the pins removed behind the agent's back (the maps and
    /// links live on in the descriptors the datapath holds: enforcement
    /// never stopped), reporting each with the time from its removal being
    /// seen to its repair.
    fn repair_pins(&mut self, seen: Instant) {
        match self.dp.repair_pins() {
            Ok(paths) => {
                for path in paths {
                    let kind = if path.parent().is_some_and(|p| p.ends_with("links")) { "link-pin" } else { "map-pin" };
                    self.drifted(kind, &path.display().to_string(), seen.elapsed());
                }
            }
            Err(e) => tracing::error!(error = %e, "putting removed pins back failed"),
        }
    }

    /// Reports one drift of `kind` (`what` changed behind the agent's back)
    /// put right `took` after it was seen: the log, `status`, the metrics.
    fn drifted(&self, kind: &'static str, what: &str, took: Duration) {
        tracing::warn!(
            kind,
            what,
            repair_us = took.as_micros() as u64,
            "the datapath was changed behind the agent's back; put right"
        );
        self.protection_state.repaired(bulkhead_flow::model::Drift {
            kind: kind.into(),
            what: what.into(),
            repair_ns: u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        });
        self.metrics.drift_repaired(kind, took);
    }

    /// Refuses the policies of `changed` if they would break a guardrail
    /// that holds without them (the findings of the applied state that the
    /// state with only the rest of `changed` has not: guardrails judge
    /// policies, never a pod or namespace): the same check as `policy lint
    /// --guardrails`. Two engine builds per apply that changes a policy,
    /// only with guardrails.
    fn check_guardrails(&self, changed: &[(ObjectKey, Object)]) -> Result<()> {
        let (policies, rest): (Vec<_>, Vec<_>) =
            changed.iter().cloned().partition(|(_, o)| matches!(o, Object::Policy(_)));
        if self.config.guardrails.is_empty() || policies.is_empty() {
            return Ok(());
        }
        let judge = |objects: Vec<Object>| {
            let engine = Engine::from_objects(objects);
            let findings: Vec<_> = self
                .config
                .guardrails
                .iter()
                .flat_map(|g| bulkhead_policy::lint::guardrails::check(g, &engine, true))
                .collect();
            findings
        };
        // The guardrail and what breaks it (a rule, a namespace), not where
        // it was read or how many pods a namespace's finding names.
        let key = |f: &bulkhead_policy::lint::Finding| {
            (f.guardrail.clone(), f.rule.as_ref().map(|p| p.rule.clone()), f.namespace.clone())
        };
        let mut after = self.store.objects.clone();
        after.extend(rest);
        let before: BTreeSet<_> = judge(after.values().cloned().collect()).iter().map(key).collect();
        after.extend(policies);
        let new: Vec<String> = judge(after.into_values().collect())
            .iter()
            .filter(|f| !before.contains(&key(f)))
            .map(ToString::to_string)
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        Err(AgentError::Invalid {
            message: format!("refused by guardrails: {} finding(s) this apply would add; nothing changed", new.len()),
            details: new,
        })
    }

    fn delete(&mut self, req: Objects) -> Result<ApplyResponse> {
        let t0 = req.received;
        let mut resp = ApplyResponse { warnings: req.warnings, ..ApplyResponse::default() };
        let keys: BTreeSet<ObjectKey> = req.objects.iter().map(ObjectKey::of).collect();
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
        self.engine.apply_batch(gone.into_iter().map(|key| match key {
            ObjectKey::Policy(id) => Change::DeletePolicy(id),
            ObjectKey::Namespace(n) => Change::DeleteNamespace(n),
            ObjectKey::Pod(k) => Change::DeletePod(k),
        }));
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
    fn add_endpoint(&mut self, req: EndpointRequest) -> Result<EndpointInfo> {
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
            return self.published.load().endpoint(&req.container_id).cloned();
        }
        let found = in_node(&self.config, || interface_index(&req.host_if))??;
        if found != Some(req.host_ifindex) {
            return Err(AgentError::invalid(format!(
                "interface {} has index {} on the node, not {} (is the plugin running in the node's network namespace{}?)",
                req.host_if,
                found.map_or("none".into(), |i| i.to_string()),
                req.host_ifindex,
                self.config.node_netns.as_ref().map(|p| format!(", {}", p.display())).unwrap_or_default()
            )));
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
        tracing::info!(pod = %key, ifname = %req.host_if, ifindex = req.host_ifindex, endpoint = record.id, "endpoint added");
        self.metrics.implementation_delay("endpoint", t0.elapsed().as_secs_f64());
        self.published.load().endpoint(&req.container_id).cloned()
    }

    /// Forgets a container's endpoint (detaches its programs, drops its
    /// conntrack entries). Unknown containers are not an error.
    fn remove_endpoint(&mut self, container_id: &str) -> Result<Option<EndpointInfo>> {
        let Some(record) = self.store.endpoints.get(container_id).cloned() else { return Ok(None) };
        let info = self.published.load().endpoint(container_id).ok().cloned();
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

    /// Sets or clears audit mode at a scope, and enforces the result.
    fn set_audit(&mut self, req: AuditRequest) -> Result<AuditSettings> {
        let endpoint = match &req.scope {
            AuditScope::Endpoint(ep) => Some(self.published.load().find_endpoint(ep)?.pod.clone()),
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

    /// The engine's reachability matrix over every known pod.
    fn reach(&self, ports: &[String]) -> Result<ReachMatrix> {
        let ports = if ports.is_empty() {
            default_ports(&self.engine)
        } else {
            ports
                .iter()
                .map(|p| ProbePort::parse(p))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(AgentError::invalid)?
        };
        let proxies = self.sync.proxy_ports();
        Ok(reach_with(&self.engine, &ports, &|rules| proxies.port(rules) != 0))
    }

    // ---- the kernel ----

    /// Why the HTTP proxy does not hold the newest rules (`None`: it does).
    /// Why the HTTP (`dns` false) or DNS proxy does not hold the rules.
    fn proxy_problem(&self, dns: bool) -> Option<String> {
        let flag = if dns { "--proxy-dns-port" } else { "--proxy-http-port" };
        match &self.proxy {
            None => Some(format!("the agent runs without one ({flag} 0)")),
            Some(p) if p.port(dns) == 0 => Some(format!("the agent runs without one ({flag} 0)")),
            Some(p) => p.problem(),
        }
    }

    fn reconcile_timed(&mut self, t0: Instant, source: &str) -> Result<Enforcement> {
        let mut e = self.reconcile()?;
        e.elapsed_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.implementation_delay(source, t0.elapsed().as_secs_f64());
        Ok(e)
    }

    /// Makes the maps hold the engine's view of every local endpoint, then
    /// publishes the new snapshot: always, also when a write failed, so that
    /// readers see the state that was saved and what reached the kernel.
    fn reconcile(&mut self) -> Result<Enforcement> {
        let result = self.write_kernel();
        self.publish();
        result
    }

    fn write_kernel(&mut self) -> Result<Enforcement> {
        let t0 = Instant::now();
        let mut specs = Vec::new();
        let mut proxied = Vec::new();
        let mut pod_of = BTreeMap::new();
        for r in self.store.endpoints.values() {
            let key = r.pod_key();
            let (Some((_, id)), Some(policy)) = (self.engine.pod(&key), self.engine.endpoint_policy(&key)) else {
                continue;
            };
            if self.proxy.is_some() {
                proxied.push(bulkhead_proxy::rules::Endpoint {
                    id: r.id,
                    name: key.clone(),
                    identity: id.0,
                    addrs: r.request.ips.clone(),
                    ingress: bulkhead_proxy::rules::Direction::of(&policy.ingress),
                    egress: bulkhead_proxy::rules::Direction::of(&policy.egress),
                });
            }
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
            in_node(&self.config, bulkhead_datapath::netns::global_addresses)??
                .into_iter()
                .map(|ip| (Cidr::host(ip), Reserved::Host.id().0)),
        );
        // The proxy first: a connection the kernel redirects under the new
        // rules finds them there.
        if let Some(p) = &mut self.proxy
            && let Err(e) = p.update(proxied, ipcache.clone())
        {
            tracing::warn!(error = %e, "L7 rules not in the proxy (the kernel drops L7 connections it cannot take)");
        }
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
            self.metrics.policy_load_failed(&f.directions, f.fail_closed);
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

    fn publish(&mut self) {
        self.generation += 1;
        self.published.store(Snapshot::build(
            self.generation,
            &self.store,
            &self.engine,
            self.sync.rule_table(),
            &self.not_ready,
            &self.fqdn,
        ));
    }

    fn attach(&mut self, req: &EndpointRequest) -> Result<()> {
        let dp = &mut self.dp;
        let links = in_node(&self.config, || dp.attach(&req.host_if, req.host_ifindex))??;
        if let Some(p) = &mut self.protection {
            p.links(&links);
        }
        Ok(())
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
        return Err(AgentError::invalid(format!("endpoint request lacks {}", missing.join(", "))));
    }
    if r.ips.len() > EP_MAX_ADDRS {
        return Err(AgentError::invalid(format!(
            "endpoint request gives the pod {} addresses ({}); an endpoint may have at most {EP_MAX_ADDRS} \
             (its packets are checked against each)",
            r.ips.len(),
            r.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// Seconds since the epoch (what learnt names expire by: it survives a restart).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
