//! UDP queries to upstream resolvers, sent as the client on shared sockets.
//!
//! Opening a socket per query (bind as the client, connect, register,
//! close) cost the DNS proxy about a fifth of its CPU. Instead the queries
//! from one client address to one upstream share a socket (transparent,
//! bound to the client's address and a kernel-chosen port, with
//! [`UPSTREAM_MARK`]), which a reader task serves: each query goes out
//! under a random message ID unused on that socket, and an answer is given
//! to the query waiting under its ID only once, with the client's ID put
//! back, [`Query::learn`] accepts it (ID and question); anything else on
//! the socket is ignored. An error on the
//! socket (the upstream's port unreachable) fails the queries waiting on
//! it at once: their clients get SERVFAIL without waiting for the timeout.
//!
//! A socket takes new queries for [`PORT_LIFETIME`] only, so the source
//! port still changes every second (with the random ID, what an off-path
//! forger must guess); it is closed once its last query can no longer be
//! answered. At most [`MAX_SHARED`] sockets are shared at once; past them
//! a query gets a socket of its own (the same code, used once).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::Type;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::UPSTREAM_MARK;
use crate::dns::{Learnt, MAX_MESSAGE, Query};
use crate::server::transparent;

/// How long a shared socket takes new queries.
pub const PORT_LIFETIME: Duration = Duration::from_secs(1);

/// Shared sockets at once, at most (one per client address and upstream).
const MAX_SHARED: usize = 4096;

/// The proxy's upstream UDP sockets, by client address and upstream.
#[derive(Debug, Default)]
pub struct Upstreams {
    shared: Mutex<HashMap<(IpAddr, SocketAddr), Arc<Channel>>>,
}

/// One socket, bound as a client and connected to an upstream, and the
/// queries waiting for their answers on it.
#[derive(Debug)]
struct Channel {
    sock: UdpSocket,
    waiting: Mutex<HashMap<u16, Waiter>>,
    /// Until when it takes new queries.
    open_until: Instant,
}

/// A query waiting for its answer.
#[derive(Debug)]
struct Waiter {
    query: Query,
    answer: oneshot::Sender<io::Result<(Vec<u8>, Learnt)>>,
}

/// Takes a waiter off its channel when its query is answered, times out or
/// is abandoned.
struct Registered<'a> {
    channel: &'a Channel,
    id: u16,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.channel.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

/// The error of an upstream that did not answer in `timeout`.
pub(crate) fn no_answer(upstream: SocketAddr, timeout: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {upstream} in {timeout:?}"))
}

impl Upstreams {
    /// Sends `bytes` (the client's `query`) to `upstream` from `client`'s
    /// address and waits up to `timeout` for the datagram that answers it:
    /// it, with the client's ID, and what it teaches.
    pub async fn ask(
        &self,
        client: IpAddr,
        upstream: SocketAddr,
        bytes: &[u8],
        query: &Query,
        timeout: Duration,
    ) -> io::Result<(Vec<u8>, Learnt)> {
        let channel = self.channel(client, upstream, timeout)?;
        let (tx, rx) = oneshot::channel();
        let id = channel.register(Waiter { query: query.clone(), answer: tx });
        let _registered = Registered { channel: &channel, id };
        let mut out = bytes.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        channel.sock.send(&out).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err(no_answer(upstream, timeout)),
        }
    }

    /// The socket for `client`'s queries to `upstream`: the shared one
    /// while it takes new queries, else a new one (shared while there is
    /// room).
    fn channel(&self, client: IpAddr, upstream: SocketAddr, timeout: Duration) -> io::Result<Arc<Channel>> {
        let now = Instant::now();
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = shared.get(&(client, upstream))
            && c.open_until > now
        {
            return Ok(Arc::clone(c));
        }
        let channel = Channel::open(client, upstream, now, timeout)?;
        if shared.len() >= MAX_SHARED {
            shared.retain(|_, c| c.open_until > now);
        }
        if shared.len() < MAX_SHARED {
            shared.insert((client, upstream), Arc::clone(&channel));
        }
        Ok(channel)
    }
}

impl Channel {
    /// A new socket from `client` to `upstream`, and its reader, which ends
    /// once no query it took can still be answered.
    fn open(client: IpAddr, upstream: SocketAddr, now: Instant, timeout: Duration) -> io::Result<Arc<Self>> {
        let s = transparent(upstream, Type::DGRAM)?;
        s.set_mark(UPSTREAM_MARK)?;
        s.bind(&SocketAddr::new(client, 0).into())?;
        s.connect(&upstream.into())?;
        let open_until = now + PORT_LIFETIME;
        let channel = Arc::new(Self { sock: UdpSocket::from_std(s.into())?, waiting: Mutex::default(), open_until });
        let reader = Arc::clone(&channel);
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let end = tokio::time::sleep_until(open_until + timeout);
            tokio::pin!(end);
            loop {
                tokio::select! {
                    got = reader.sock.recv(&mut buf) => match got {
                        Ok(n) => reader.dispatch(&mut buf[..n]),
                        Err(e) => reader.fail(&e),
                    },
                    () = &mut end => return,
                }
            }
        });
        Ok(channel)
    }

    /// Puts `waiter` under a random ID unused on this socket: the ID.
    fn register(&self, waiter: Waiter) -> u16 {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // Free IDs abound: a socket has at most MAX_IN_FLIGHT waiting.
            let id: u16 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(e) = waiting.entry(id) {
                e.insert(waiter);
                return id;
            }
        }
    }

    /// An error on the socket (an ICMP error: nothing listens upstream)
    /// fails every query waiting on it at once.
    fn fail(&self, e: &io::Error) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        tracing::debug!(error = %e, queries = waiting.len(), "DNS upstream failed");
        for w in waiting.into_values() {
            let _ = w.answer.send(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }

    /// Gives `answer` to the query waiting under its ID, if it answers it.
    fn dispatch(&self, answer: &mut [u8]) {
        if answer.len() < 2 {
            return;
        }
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(w) = waiting.get(&id) else { return };
        answer[..2].copy_from_slice(&w.query.id().to_be_bytes());
        match w.query.learn(answer) {
            Ok(learnt) => {
                let w = waiting.remove(&id).expect("looked up above");
                // The waiter may have just timed out: nothing to tell.
                let _ = w.answer.send(Ok((answer.to_vec(), learnt)));
            }
            Err(e) => tracing::debug!(error = %e, "a datagram that does not answer its query; ignored"),
        }
    }
}
