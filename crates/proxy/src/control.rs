//! Where the agent's rules come in: a unix socket (mode 0600) on which the
//! agent writes one [`Update`] per line (JSON) and reads one [`Reply`] per
//! line once the update is in force or was refused. The agent waits for
//! the reply before its `apply` returns, so a rule change reaches the
//! proxy first.
//!
//! The proxy keeps the last rules it took when the agent goes away, and
//! takes a full update from the next agent that connects. An update that
//! does not parse or compile changes nothing and is answered with why.
//!
//! A connection whose first line is [`Subscribe`] instead receives every
//! request's and response's [`crate::events::L7Event`], one per line, from
//! then on (the agent's flows: `l7`), or every [`crate::learn::Learn`] of
//! the DNS proxy, answering each with a [`crate::learn::Learnt`] once the
//! kernel enforces it (`fqdn`).

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::events::Lost;
use crate::rules::Update;
use crate::server::Shared;

/// The proxy's answer to one update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The generation in force after the update.
    pub generation: u64,
    /// Why the update was not taken (the rules in force did not change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The first line of a connection that wants the proxy's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// What to receive: `l7` or `fqdn`.
    pub subscribe: String,
}

/// Longest update line accepted (a node's rules; far above any real set).
const MAX_LINE: usize = 256 << 20;

/// Binds the control socket at `path` (mode 0600), replacing a stale one;
/// fails when a live proxy serves it.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: another proxy serves this control socket (stop it first)", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Takes agents' connections until the runtime stops.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = agent(stream, &shared).await {
                        tracing::warn!(error = %e, "the agent's connection failed; keeping the rules in force");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn agent(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        let n = (&mut lines).take(MAX_LINE as u64 + 1).read_line(&mut line).await?;
        if n == 0 {
            tracing::info!(
                generation = shared.rules.load().generation(),
                "the agent went away; keeping the rules in force"
            );
            return Ok(());
        }
        if n > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an update over the size limit"));
        }
        if std::mem::take(&mut first) {
            if let Ok(sub) = serde_json::from_str::<Subscribe>(&line) {
                let stream = lines.into_inner().reunite(write).map_err(io::Error::other)?;
                return stream_events(&sub, stream, shared).await;
            }
            tracing::info!("an agent connected");
        }
        let reply = take(&line, shared);
        let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

/// Events written to a subscriber in one go, at most.
const BATCH: usize = 4096;

/// How long the event writer rests between writes (the delay an event may
/// see before it reaches the agent).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Events serialized between two offers of the CPU to the workers.
const YIELD_EVERY: usize = 16;

/// Sends the events asked for until the subscriber goes away, from a
/// thread of its own: serializing and writing them never takes time from
/// the workers that proxy requests. Events that queue up while it writes
/// go out together, in one write.
async fn stream_events(sub: &Subscribe, mut stream: UnixStream, shared: &Shared) -> io::Result<()> {
    match sub.subscribe.as_str() {
        "l7" => {}
        "fqdn" => return learns(stream, shared).await,
        other => {
            let msg = serde_json::json!({ "error": format!("unknown subscription {other:?}: \"l7\" or \"fqdn\"") });
            return stream.write_all(format!("{msg}\n").as_bytes()).await;
        }
    }
    tracing::info!("an agent subscribed to L7 events");
    let mut rx = shared.events.subscribe();
    let unsent = shared.events.take_lost();
    let mut out = stream.into_std()?;
    out.set_nonblocking(false)?;
    let init = shared.reporter_init;
    let writer = std::thread::Builder::new().name("l7-events".into()).spawn(move || -> io::Result<()> {
        if let Some(Err(e)) = init.map(|f| f()) {
            tracing::warn!(error = %e, "the L7 event writer keeps its priority");
        }
        use std::io::Write as _;
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let mut buf = Vec::with_capacity(64 * 1024);
        // Events lost (no subscriber before this one, or this one behind),
        // told to the agent, which counts them.
        let mut lost = unsent;
        loop {
            if lost > 0 {
                serde_json::to_writer(&mut buf, &Lost { lost }).map_err(io::Error::other)?;
                buf.push(b'\n');
                lost = 0;
            }
            let first = match rx.blocking_recv() {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    lost += n;
                    continue;
                }
                Err(RecvError::Closed) => return Ok(()),
            };
            serde_json::to_writer(&mut buf, &*first).map_err(io::Error::other)?;
            buf.push(b'\n');
            for i in 1..BATCH {
                match rx.try_recv() {
                    Ok(e) => {
                        serde_json::to_writer(&mut buf, &*e).map_err(io::Error::other)?;
                        buf.push(b'\n');
                        if i % YIELD_EVERY == 0 {
                            // Requests first: a worker waiting for the CPU
                            // gets it before the next events are written.
                            std::thread::yield_now();
                        }
                    }
                    Err(TryRecvError::Lagged(n)) => lost += n,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            out.write_all(&buf)?;
            buf.clear();
            // Woken once per PAUSE at most under load, not once per event:
            // the workers' sends then rarely have a sleeper to wake.
            std::thread::sleep(PAUSE);
        }
    })?;
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(io::Error::other)?
        .map_err(|_| io::Error::other("the L7 event writer panicked"))?
}

/// Sends the agent what the DNS proxy learns and releases each held
/// answer as the agent replies, until it goes away.
async fn learns(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    tracing::info!("an agent subscribed to learnt names");
    let (n, mut rx) = shared.learner.subscribe();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let result = async {
        loop {
            tokio::select! {
                learn = rx.recv() => {
                    let Some(learn) = learn else { return Ok(()) };
                    let mut out = serde_json::to_vec(&learn).map_err(io::Error::other)?;
                    out.push(b'\n');
                    // Whatever else is waiting goes in the same write.
                    while let Ok(more) = rx.try_recv() {
                        serde_json::to_writer(&mut out, &more).map_err(io::Error::other)?;
                        out.push(b'\n');
                    }
                    write.write_all(&out).await?;
                }
                line = lines.next_line() => {
                    let Some(line) = line? else { return Ok(()) };
                    match serde_json::from_str::<crate::learn::Learnt>(&line) {
                        Ok(l) => shared.learner.learnt(l),
                        Err(e) => tracing::warn!(error = %e, "an unreadable reply from the agent"),
                    }
                }
            }
        }
    }
    .await;
    shared.learner.unsubscribe(n);
    tracing::info!("the agent's subscription to learnt names ended");
    result
}

/// Parses and applies one update line.
fn take(line: &str, shared: &Shared) -> Reply {
    let current = shared.rules.load();
    let result = serde_json::from_str::<Update>(line)
        .map_err(|e| format!("the update does not parse: {e}"))
        .and_then(|u| current.apply(&u).map_err(|e| e.to_string()));
    match result {
        Ok(rules) => {
            let generation = rules.generation();
            tracing::info!(generation, endpoints = rules.endpoints(), "rules updated");
            shared.rules.store(Arc::new(rules));
            Reply { generation, error: None }
        }
        Err(error) => {
            tracing::error!(error = %error, "refused an update; the rules in force stay");
            Reply { generation: current.generation(), error: Some(error) }
        }
    }
}
