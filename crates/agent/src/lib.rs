//! bulkhead's node agent (`bulkhead agent`).
//!
//! It holds the cluster state and policies applied to it ([`store`]),
//! resolves them with the policy engine, keeps the kernel's maps equal to
//! the result ([`agent::Agent`]), registers pods' interfaces for the CNI
//! plugin, turns datapath events into flows ([`observer`]: a ring for
//! `observe`, a signed flow log, the service map) and metrics
//! ([`metrics`]), and serves all of it as HTTP/JSON on a unix socket
//! ([`server`]; the types and the client are `bulkhead_api`) and, for metrics and
//! the service map, over HTTP on localhost ([`web`]). Enforcement does not
//! depend on the agent running: programs, maps and links are pinned, and a
//! new agent adopts them.

pub mod agent;
mod limits;
pub mod metrics;
pub mod observer;
pub mod server;
pub mod store;
pub mod web;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use agent::{Agent, AgentError, Config};

use crate::observer::Observer;
use crate::observer::convert::Converter;

/// Flows the flow log's queue holds before it counts losses.
const FLOW_LOG_QUEUE: usize = 1 << 16;

/// Starts the agent and serves its API until SIGINT or SIGTERM. The pins
/// stay: enforcement continues after it exits.
pub fn run(mut config: Config) -> Result<(), AgentError> {
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
    let observer = Arc::new(Observer::new(config.flow_buffer_bytes, metrics));
    let node_name = config.node_name.clone();
    let mut agent = Agent::start(config.clone(), Arc::clone(&observer))?;
    let flow_log = match &config.flow_log {
        Some(cfg) => {
            let key = observer::flowlog::load_or_create_key(&config.state_dir)?;
            let (tx, rx) = std::sync::mpsc::sync_channel(FLOW_LOG_QUEUE);
            let stats = Arc::new(observer::flowlog::FlowLogStats::default());
            agent.set_flow_log(Arc::clone(&stats), &key.verifying_key());
            let handle = observer::flowlog::start(cfg.clone(), key, rx, stats)?;
            observer.attach_log(tx);
            Some(handle)
        }
        None => None,
    };
    let events = agent
        .take_event_reader()
        .ok_or_else(|| AgentError::Io(std::io::Error::other("the datapath's event ring buffer was already taken")))?;
    let status = agent.status()?;
    let shared = Arc::new(Mutex::new(agent));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (shared, observer, stop) = (Arc::clone(&shared), Arc::clone(&observer), Arc::clone(&stop));
        std::thread::Builder::new().name("events".into()).spawn(move || {
            let mut conv = Converter::new(node_name);
            observer::run_reader(events, &observer, &stop, |batch| {
                shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).flows(&mut conv, batch)
            });
        })?
    };
    tracing::info!(
        pid = status.pid,
        socket = %socket.display(),
        pins = %status.pin_dir,
        endpoints = status.counts.endpoints,
        policies = status.counts.policies,
        web = %status.flows.web,
        flow_log = %status.flows.log_dir,
        "agent ready"
    );
    let gc = Arc::clone(&shared);
    let access = match web_listener.as_ref() {
        Some(l) => Some(Arc::new(web::WebAccess::new(l.local_addr()?)?)),
        None => None,
    };
    let state = server::AppState { agent: Arc::clone(&shared), observer: Arc::clone(&observer), web: access.clone() };
    let served = rt.block_on(async move {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let gc = Arc::clone(&gc);
                let _ = tokio::task::spawn_blocking(move || {
                    gc.lock().unwrap_or_else(std::sync::PoisonError::into_inner).collect_garbage();
                })
                .await;
            }
        });
        if let (Some(l), Some(access)) = (web_listener, access) {
            let app = web::router(state.clone(), access);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics and service map server stopped");
                }
            });
        }
        axum::serve(listener, server::router(state)).with_graceful_shutdown(shutdown_signal()).await
    });
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    observer.detach_log();
    if let Some(h) = flow_log {
        let _ = h.join();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped; enforcement continues from the pinned programs and maps");
    served.map_err(AgentError::Io)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
