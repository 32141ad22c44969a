//! bulkhead's transparent L7 proxy (DESIGN.md §1: its own process,
//! deciding with `bulkhead-policy`'s matchers): `bulkhead proxy`.
//!
//! The kernel hands it every connection an L7 rule covers ([`server`]:
//! transparent listeners, the original destination as the accepted
//! socket's own address). It frames requests itself ([`http1`]: a strict,
//! sans-I/O decoder, and the encoder that writes every forwarded request
//! anew), so the server sees exactly the requests the proxy allowed, one
//! for one, in order, and anything a strict server would refuse is refused
//! before it. Its rules come from the agent as a stream of per-endpoint
//! updates ([`control`], [`rules`]) and stay in force when the agent dies.
//! RateLimits are held per source identity and endpoint ([`limits`]).

pub mod control;
pub mod dns;
pub mod dns_proxy;
pub mod dns_upstream;
pub mod events;
pub mod h2;
pub mod http1;
pub mod learn;
pub mod limits;
pub mod rules;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

use bulkhead_policy::l7::EscapedSlashes;

pub use server::UPSTREAM_MARK;

/// What `bulkhead proxy` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP proxy's port (what the agent's `--proxy-http-port` names).
    pub http_port: u16,
    /// The DNS proxy's port, UDP and TCP (the agent's `--proxy-dns-port`).
    pub dns_port: u16,
    /// A denied DNS query is answered NXDOMAIN instead of REFUSED.
    pub dns_nxdomain: bool,
    /// How long an allowed DNS answer is held at most until the kernel
    /// enforces its addresses.
    pub dns_hold: std::time::Duration,
    /// The control socket the agent writes rules to.
    pub control: PathBuf,
    /// What an encoded slash in a path does.
    pub escaped_slashes: EscapedSlashes,
    /// Worker threads.
    pub threads: usize,
    /// Run by the thread that streams L7 events to the agent as it starts:
    /// `bulkhead proxy` lowers that thread's priority below the workers'.
    pub reporter_init: Option<fn() -> std::io::Result<()>>,
}

/// Runs the proxy in the calling thread's network namespace until SIGINT
/// or SIGTERM. Prints `ready` on stdout once it listens.
pub fn run(config: Config) -> std::io::Result<()> {
    // Sockets first, on this thread: it is in the node's namespace, the
    // runtime's threads need not be.
    let listeners = server::listeners(config.http_port)?;
    // DNS port 0: no DNS proxy (DNS rules drop, as the agent's 0 says).
    let (dns_listeners, dns_sockets) = match config.dns_port {
        0 => (Vec::new(), Vec::new()),
        port => (server::listeners(port)?, dns_proxy::udp_sockets(port)?),
    };
    let control = control_socket(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads.max(1)).enable_all().build()?;
    let shared = Arc::new(server::Shared {
        rules: Default::default(),
        escaped_slashes: config.escaped_slashes,
        port: config.http_port,
        events: Default::default(),
        learner: Default::default(),
        limiter: Default::default(),
        reporter_init: config.reporter_init,
    });
    rt.block_on(async move {
        for l in listeners {
            tokio::spawn(server::serve(tokio::net::TcpListener::from_std(l)?, Arc::clone(&shared)));
        }
        let settings =
            dns_proxy::DnsSettings { port: config.dns_port, nxdomain: config.dns_nxdomain, hold: config.dns_hold };
        let dns = Arc::new(dns_proxy::Dns::new(Arc::clone(&shared), settings));
        for l in dns_listeners {
            tokio::spawn(dns_proxy::serve_tcp(tokio::net::TcpListener::from_std(l)?, Arc::clone(&dns)));
        }
        for s in dns_sockets {
            tokio::spawn(dns_proxy::serve_udp(tokio::net::UdpSocket::from_std(s)?, Arc::clone(&dns)));
        }
        control.set_nonblocking(true)?;
        tokio::spawn(control::serve(tokio::net::UnixListener::from_std(control)?, Arc::clone(&shared)));
        tracing::info!(http_port = config.http_port, dns_port = config.dns_port, control = %config.control.display(), "proxy ready");
        println!("ready");
        stopped("proxy").await;
        tracing::info!("proxy stopped; L7 connections are dropped until it runs again");
        Ok(())
    })
}

fn control_socket(config: &Config) -> std::io::Result<std::os::unix::net::UnixListener> {
    // tokio's listener needs a runtime to be made; make the std one here.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let l = rt.block_on(async { control::bind(&config.control) })?;
    l.into_std()
}

/// Resolves at SIGTERM or SIGINT (never, with an error logged, when the
/// handlers cannot be installed): how the proxy's and the agent's
/// processes (`what`) are stopped.
pub async fn stopped(what: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the {what} with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
