//! bulkhead's node agent (`bulkhead agent`).
//!
//! It holds the cluster state and policies applied to it ([`store`]),
//! resolves them with the policy engine, keeps the kernel's maps equal to
//! the result ([`agent::Agent`]), registers pods' interfaces for the CNI
//! plugin, collects datapath events ([`events`]), and serves all of it as
//! HTTP/JSON on a unix socket ([`server`], [`api`]; [`client`] is the
//! other end). Enforcement does not depend on the agent running: programs,
//! maps and links are pinned, and a new agent adopts them.

pub mod agent;
pub mod api;
pub mod client;
pub mod events;
mod limits;
pub mod server;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use agent::{Agent, AgentError, Config};

/// Starts the agent and serves its API until SIGINT or SIGTERM. The pins
/// stay: enforcement continues after it exits.
pub fn run(config: Config) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let socket = config.socket.clone();
    let listener = rt.block_on(server::bind(&socket))?;
    let mut agent = Agent::start(config)?;
    let log = agent.events();
    let stop = Arc::new(AtomicBool::new(false));
    let events = agent
        .take_event_reader()
        .ok_or_else(|| AgentError::Io(std::io::Error::other("the datapath's event ring buffer was already taken")))?;
    let reader = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::Builder::new().name("events".into()).spawn(move || events::run_reader(events, &log, &stop))?
    };
    let status = agent.status()?;
    tracing::info!(
        pid = status.pid,
        socket = %socket.display(),
        pins = %status.pin_dir,
        endpoints = status.counts.endpoints,
        policies = status.counts.policies,
        "agent ready"
    );
    let shared = Arc::new(Mutex::new(agent));
    let gc = Arc::clone(&shared);
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
        axum::serve(listener, server::router(shared)).with_graceful_shutdown(shutdown_signal()).await
    });
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
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
