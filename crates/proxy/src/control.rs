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
//! then on (the agent's flows).

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

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
    /// What to receive: `l7`.
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
                return stream_events(&sub, write, shared).await;
            }
            tracing::info!("an agent connected");
        }
        let reply = take(&line, shared);
        let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

/// Sends the events asked for until the subscriber goes away.
async fn stream_events(
    sub: &Subscribe,
    mut write: tokio::net::unix::OwnedWriteHalf,
    shared: &Shared,
) -> io::Result<()> {
    if sub.subscribe != "l7" {
        let msg = serde_json::json!({ "error": format!("unknown subscription {:?}: only \"l7\"", sub.subscribe) });
        return write.write_all(format!("{msg}\n").as_bytes()).await;
    }
    tracing::info!("an agent subscribed to L7 events");
    let mut rx = shared.events.subscribe();
    loop {
        match rx.recv().await {
            Ok(e) => {
                let mut out = serde_json::to_vec(&*e).map_err(io::Error::other)?;
                out.push(b'\n');
                write.write_all(&out).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "the L7 event subscriber fell behind");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
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
