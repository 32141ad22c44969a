//! bulkhead's node agent (`bulkhead agent`).
//!
//! It holds the cluster state and policies applied to it ([`store`]),
//! resolves them with the policy engine and keeps the kernel's maps equal
//! to the result, registers pods' interfaces for the CNI plugin — all of
//! that in one writer, [`reconciler`], which publishes an immutable
//! [`snapshot`] after every change — and serves reads from the newest
//! snapshot and the kernel's read handles ([`inspect`]): the API on a unix
//! socket ([`server`]; its types and client are `bulkhead_api`), metrics
//! and the service map over HTTP ([`web`], [`metrics`]), and the flows it
//! makes of the datapath's events ([`observer`]: a ring for `observe`, a
//! signed flow log). Nothing that reads waits for a change in progress, and
//! the event path shares no lock with changes or status (only the flow
//! ring's own, held for copies). Enforcement does not depend on the agent
//! running: programs, maps and links are pinned, and a new agent adopts
//! them.

pub mod config;
pub mod fqdn;
pub mod inspect;
mod limits;
pub mod metrics;
mod node;
pub mod observer;
pub mod protection;
pub mod proxy;
pub mod reconciler;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use config::{AgentError, Config};

use crate::inspect::AgentInfo;
use crate::observer::Observer;
use crate::observer::convert::Converter;
use crate::reconciler::Reconciler;
use crate::snapshot::Published;

/// Flows the flow log's queue holds before it counts losses.
const FLOW_LOG_QUEUE: usize = 1 << 16;
/// Drift records waiting to become flows.
const DRIFT_QUEUE: usize = 1024;

/// Starts the agent and serves its API until SIGINT or SIGTERM. The pins
/// stay: enforcement continues after it exits.
pub fn run(mut config: Config) -> Result<(), AgentError> {
    raise_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let socket = config.socket.clone();
    let listener = rt.block_on(server::bind(&socket))?;
    let web_listener = match config.web_listen {
        Some(addr) => Some(rt.block_on(tokio::net::TcpListener::bind(addr)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("--web-listen {addr}: {e} (another agent, or another service, holds it)"),
            )
        })?),
        None => None,
    };
    // With port 0 the kernel picks one; status reports the one it picked.
    if let Some(l) = &web_listener {
        config.web_listen = Some(l.local_addr()?);
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let observer = Arc::new(Observer::new(config.flow_buffer_bytes, Arc::clone(&metrics)));
    let published = Arc::new(Published::default());
    let protection = Arc::new(protection::ProtectionState::default());
    // Each repair's record, as a flow (`observe --type agent`, the signed
    // log), from a thread that lives as long as the process. Not a
    // background thread like the other reporters: the reconciler hands it
    // the records, and the channel's wakeup takes a lock both sides take.
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(DRIFT_QUEUE);
        protection.record_to(tx);
        let (observer, node_name) = (Arc::clone(&observer), config.node_name.clone());
        std::thread::Builder::new().name("drift-flows".into()).spawn(move || {
            for (at, drift) in rx {
                observer.publish(vec![bulkhead_flow::model::Flow::drift(at, node_name.clone(), drift)]);
            }
        })?;
    }
    let mut reconciler =
        Reconciler::start(config.clone(), Arc::clone(&published), Arc::clone(&metrics), Arc::clone(&protection))?;
    let kernel = reconciler.view();
    let (flow_log, flow_log_info) = match &config.flow_log {
        Some(cfg) => {
            let key = observer::flowlog::load_or_create_key(&config.state_dir)?;
            let (tx, rx) = std::sync::mpsc::sync_channel(FLOW_LOG_QUEUE);
            let stats = Arc::new(observer::flowlog::FlowLogStats::default());
            let public = bulkhead_flow::log::to_hex(key.verifying_key().as_bytes());
            let handle = observer::flowlog::start(cfg.clone(), key, rx, Arc::clone(&stats))?;
            observer.attach_log(tx);
            (Some(handle), Some((stats, public)))
        }
        None => (None, None),
    };
    let info = Arc::new(AgentInfo {
        protection,
        pin_dir: kernel.pin_dir().display().to_string(),
        config: config.clone(),
        started: Instant::now(),
        flow_log: flow_log_info,
    });
    let events = reconciler
        .take_event_reader()
        .ok_or_else(|| AgentError::Io(std::io::Error::other("the datapath's event ring buffer was already taken")))?;
    let (commands, queue) = std::sync::mpsc::channel();
    let writer = std::thread::Builder::new().name("reconciler".into()).spawn(move || {
        // Without its one writer the agent cannot take a change: rather than
        // serve on half alive, it exits (enforcement goes on from the pins,
        // and the next start reconciles from the saved state).
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reconciler.run(queue))).is_err() {
            tracing::error!("the reconciler failed; the agent exits (enforcement continues from the pinned maps)");
            std::process::exit(70);
        }
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (published, observer, stop) = (Arc::clone(&published), Arc::clone(&observer), Arc::clone(&stop));
        let node_name = config.node_name.clone();
        std::thread::Builder::new().name("events".into()).spawn(move || {
            if let Err(e) = bulkhead_datapath::sched::background_this_thread() {
                tracing::warn!(error = %e, "the flow thread keeps its priority");
            }
            let mut conv = Converter::new(node_name);
            observer::run_reader(events, &observer, &stop, |batch| {
                let snapshot = published.load();
                batch.iter().map(|(ev, t)| conv.convert(&snapshot, ev, *t)).collect()
            });
        })?
    };
    let l7 = match &config.proxy {
        Some(p) => {
            let (published, observer, stop) = (Arc::clone(&published), Arc::clone(&observer), Arc::clone(&stop));
            let (control, node_name) = (p.control.clone(), config.node_name.clone());
            Some(std::thread::Builder::new().name("l7-events".into()).spawn(move || {
                observer::l7::run_subscriber(&control, &published, &observer, &stop, node_name);
            })?)
        }
        None => None,
    };
    // What the DNS proxy learns and pins removed behind the agent's back,
    // to the writer; stopped before it (each holds one of its queue senders).
    let feeders_stop = Arc::new(AtomicBool::new(false));
    let learner = match &config.proxy {
        Some(p) if p.dns_port != 0 => {
            let (control, commands, stop) = (p.control.clone(), commands.clone(), Arc::clone(&feeders_stop));
            Some(std::thread::Builder::new().name("fqdn-learner".into()).spawn(move || {
                proxy::run_learner(&control, &commands, &stop);
            })?)
        }
        _ => None,
    };
    let watcher = {
        let (dir, commands, stop) = (kernel.pin_dir().to_path_buf(), commands.clone(), Arc::clone(&feeders_stop));
        std::thread::Builder::new().name("pin-watch".into()).spawn(move || {
            protection::watch_pins(&dir, &commands, &stop);
        })?
    };
    let access = match web_listener.as_ref() {
        Some(l) => Some(Arc::new(web::WebAccess::new(l.local_addr()?)?)),
        None => None,
    };
    let state = server::AppState {
        commands,
        published: Arc::clone(&published),
        info,
        kernel,
        observer: Arc::clone(&observer),
        web: access.clone(),
    };
    let snapshot = published.load();
    tracing::info!(
        pid = std::process::id(),
        socket = %socket.display(),
        pins = %state.info.pin_dir,
        endpoints = snapshot.endpoints.len(),
        policies = snapshot.objects.policies,
        web = %config.web_listen.map(|a| a.to_string()).unwrap_or_default(),
        flow_log = %config.flow_log.as_ref().map(|c| c.dir.display().to_string()).unwrap_or_default(),
        "agent ready"
    );
    let served = rt.block_on(async move {
        if let (Some(l), Some(access)) = (web_listener, access) {
            let app = web::router(state.clone(), access);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics and service map server stopped");
                }
            });
        }
        axum::serve(listener, server::router(state)).with_graceful_shutdown(bulkhead_proxy::stopped("agent")).await
    });
    // The runtime (and with it every holder of the writer's queue) goes
    // first, so that the writer finishes its last change and stops.
    drop(rt);
    feeders_stop.store(true, Ordering::Relaxed);
    if let Some(t) = learner {
        let _ = t.join();
    }
    let _ = watcher.join();
    let _ = writer.join();
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    if let Some(t) = l7 {
        let _ = t.join();
    }
    observer.detach_log();
    if let Some(h) = flow_log {
        let _ = h.join();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped; enforcement continues from the pinned programs and maps");
    served.map_err(AgentError::Io)
}

/// Raises the soft limit on open descriptors to the hard one: the datapath
/// holds two per endpoint (its links) besides its maps.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
    }
}
