//! The agent's side of the L7 proxy's control socket: it sends the proxy
//! what changed in the local endpoints' L7 rules and waits until the proxy
//! has it in force, from the reconciler, before the kernel is written. So
//! a rule reaches the proxy before the kernel redirects to it, and before
//! `apply` returns.
//!
//! The proxy runs apart from the agent: when it is not there the kernel
//! drops L7 connections (`PROXY_UNAVAILABLE`) and the agent goes on; it
//! sends everything again to a proxy that (re)connects, found by
//! [`ProxyLink::tick`] between changes. An agent that dies leaves the
//! proxy enforcing the last rules it sent.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bulkhead_policy::cidr::Cidr;
use std::sync::atomic::{AtomicBool, Ordering};

use bulkhead_proxy::control::Reply;
use bulkhead_proxy::learn::{Learn, Learnt};
use bulkhead_proxy::rules::{Endpoint, Update};

use crate::config::ProxyConfig;
use crate::reconciler::Command;

/// How long the agent waits for the proxy to take an update.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection to the proxy and what it holds.
#[derive(Debug)]
pub struct ProxyLink {
    config: ProxyConfig,
    stream: Option<BufReader<UnixStream>>,
    generation: u64,
    /// What the proxy holds (as it last confirmed).
    sent: BTreeMap<u32, Endpoint>,
    sent_ipcache: Vec<(Cidr, u32)>,
    /// What it should hold.
    want: BTreeMap<u32, Endpoint>,
    want_ipcache: Vec<(Cidr, u32)>,
    /// Why the last exchange failed (cleared by the next that succeeds).
    problem: Option<String>,
}

/// Why the proxy does not hold the newest rules.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The proxy is not running (or not reachable); the kernel drops L7
    /// connections until it is.
    #[error("the L7 proxy is not reachable at {path}: {error}")]
    Unreachable {
        /// Its control socket.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// It refused the update (it keeps the rules it had).
    #[error("the L7 proxy refused the rules: {0}")]
    Refused(String),
}

impl ProxyLink {
    /// A link to the proxy `config` names; nothing is sent yet.
    pub fn new(config: ProxyConfig) -> Self {
        Self {
            config,
            stream: None,
            generation: 0,
            sent: BTreeMap::new(),
            sent_ipcache: Vec::new(),
            want: BTreeMap::new(),
            want_ipcache: Vec::new(),
            problem: Some("no rules were sent to it yet".into()),
        }
    }

    /// The DNS (`dns`) or HTTP proxy's port (0: none).
    pub fn port(&self, dns: bool) -> u16 {
        if dns { self.config.dns_port } else { self.config.http_port }
    }

    /// Why the proxy does not hold the newest rules (`None`: it does).
    pub fn problem(&self) -> Option<String> {
        self.problem.clone()
    }

    /// Makes `endpoints` and `ipcache` what the proxy should hold, and
    /// sends it what changed (everything, to a proxy new to this agent).
    pub fn update(&mut self, endpoints: Vec<Endpoint>, ipcache: Vec<(Cidr, u32)>) -> Result<(), LinkError> {
        self.want = endpoints.into_iter().map(|e| (e.id, e)).collect();
        self.want_ipcache = ipcache;
        let r = self.send();
        self.problem = r.as_ref().err().map(ToString::to_string);
        r
    }

    /// Between changes: notices a proxy that went away, and brings one that
    /// (re)started up to date.
    pub fn tick(&mut self) {
        if let Some(s) = &mut self.stream
            && !alive(s.get_mut())
        {
            tracing::warn!("the L7 proxy went away; L7 connections are dropped until it is back");
            self.stream = None;
        }
        if self.stream.is_none() {
            // Quietly: a proxy that is not running is reported when a
            // change needs it, not every tick.
            self.problem = self.send().err().map(|e| e.to_string());
        }
    }

    fn send(&mut self) -> Result<(), LinkError> {
        let full = self.stream.is_none();
        if full {
            let path = self.config.control.display().to_string();
            let s = UnixStream::connect(&self.config.control)
                .map_err(|error| LinkError::Unreachable { path: path.clone(), error })?;
            // A proxy that stopped (SIGSTOP, hung) holds up a change for
            // this long at most, writing or waiting.
            s.set_read_timeout(Some(REPLY_TIMEOUT))
                .and_then(|()| s.set_write_timeout(Some(REPLY_TIMEOUT)))
                .map_err(|error| LinkError::Unreachable { path: path.clone(), error })?;
            self.stream = Some(BufReader::new(s));
            tracing::info!(control = %path, "connected to the L7 proxy; sending every endpoint's rules");
        } else if self.want == self.sent && self.want_ipcache == self.sent_ipcache {
            return Ok(());
        }
        self.generation += 1;
        let update = Update {
            generation: self.generation,
            full,
            endpoints: self
                .want
                .iter()
                .filter(|(id, e)| full || self.sent.get(id) != Some(e))
                .map(|(_, e)| e.clone())
                .collect(),
            removed: if full {
                Vec::new()
            } else {
                self.sent.keys().filter(|id| !self.want.contains_key(id)).copied().collect()
            },
            ipcache: (full || self.want_ipcache != self.sent_ipcache).then(|| self.want_ipcache.clone()),
        };
        match self.exchange(&update) {
            Ok(Reply { error: None, .. }) => {
                self.sent = self.want.clone();
                self.sent_ipcache = self.want_ipcache.clone();
                Ok(())
            }
            Ok(Reply { error: Some(e), .. }) => Err(LinkError::Refused(e)),
            Err(error) => {
                self.stream = None;
                Err(LinkError::Unreachable { path: self.config.control.display().to_string(), error })
            }
        }
    }

    fn exchange(&mut self, update: &Update) -> std::io::Result<Reply> {
        let s = self.stream.as_mut().ok_or_else(|| std::io::Error::other("not connected"))?;
        let mut line = serde_json::to_vec(update).map_err(std::io::Error::other)?;
        line.push(b'\n');
        s.get_mut().write_all(&line)?;
        let mut answer = String::new();
        if s.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the proxy closed the connection"));
        }
        let reply: Reply = serde_json::from_str(&answer).map_err(std::io::Error::other)?;
        if reply.error.is_none() && reply.generation != update.generation {
            return Err(std::io::Error::other(format!(
                "the proxy confirmed generation {} for {}",
                reply.generation, update.generation
            )));
        }
        Ok(reply)
    }
}

/// Whether the proxy's end of `s` is still open (it sends nothing
/// unasked: readable means closed).
fn alive(s: &mut UnixStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let open = matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    open && s.set_nonblocking(false).is_ok()
}

/// How often a missing proxy is looked for, and how long a read waits
/// before the stop flag is looked at.
const LEARN_POLL: Duration = Duration::from_millis(200);

/// Takes what the DNS proxy learns until `stop`: each batch of learns that
/// arrived together goes to the writer as one [`Command::Learn`], and once
/// it is in the kernel, every learn of it is acknowledged, releasing the
/// answers the proxy holds.
pub fn run_learner(control: &std::path::Path, commands: &std::sync::mpsc::Sender<Command>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let conn = UnixStream::connect(control).and_then(|mut s| {
            s.write_all(b"{\"subscribe\":\"fqdn\"}\n")?;
            s.set_read_timeout(Some(LEARN_POLL))?;
            Ok(s)
        });
        match conn {
            Ok(s) => {
                tracing::info!(control = %control.display(), "taking the names the DNS proxy learns");
                if let Err(e) = learn_from(s, commands, stop) {
                    tracing::warn!(error = %e, "the DNS proxy's learnt names stopped; looking for it again");
                }
            }
            Err(_) => std::thread::sleep(LEARN_POLL),
        }
    }
}

fn learn_from(s: UnixStream, commands: &std::sync::mpsc::Sender<Command>, stop: &AtomicBool) -> std::io::Result<()> {
    let mut write = s.try_clone()?;
    let mut reader = BufReader::new(s);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        // A read timeout may leave part of a line in `line`: the next read
        // appends the rest. Whole lines already buffered join the batch.
        loop {
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the proxy went away")),
                Ok(_) if line.ends_with(b"\n") => {
                    match serde_json::from_slice::<Learn>(&line) {
                        Ok(l) => batch.push(l),
                        Err(e) => tracing::warn!(error = %e, "an unreadable learn from the DNS proxy"),
                    }
                    line.clear();
                    if !reader.buffer().contains(&b'\n') {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let ids: Vec<u64> = batch.iter().map(|l| l.id).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        if commands.send(Command::Learn(batch, tx)).is_err() {
            return Ok(());
        }
        let until = match rx.blocking_recv() {
            Ok(Ok(until)) => until,
            // Not in the kernel: the answers are not released early; the
            // proxy's hold time runs out (and counts them).
            Ok(Err(e)) => {
                tracing::error!(error = %e, "learnt names could not be enforced");
                continue;
            }
            Err(_) => return Ok(()),
        };
        let mut out = Vec::with_capacity(ids.len() * 40);
        for (id, until) in ids.into_iter().zip(until) {
            serde_json::to_writer(&mut out, &Learnt { learnt: id, until }).map_err(std::io::Error::other)?;
            out.push(b'\n');
        }
        write.write_all(&out)?;
    }
    Ok(())
}
