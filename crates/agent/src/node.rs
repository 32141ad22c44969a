//! The node the agent runs on: its network namespace (the one holding the
//! host side of pod interfaces), interface indexes, and its own addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use bulkhead_datapath::netns;

use crate::config::Config;

/// Runs `f` in the node's network namespace (fails only when that
/// namespace cannot be entered).
pub fn in_node<T: Send>(config: &Config, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    match &config.node_netns {
        Some(ns) => netns::run_in(ns, f),
        None => Ok(f()),
    }
}

/// The index of interface `name` in the calling thread's namespace.
pub fn interface_index(name: &str) -> std::io::Result<Option<u32>> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(Some(i)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(std::io::Error::other(format!("interface {name}: {e}"))),
    }
}

/// The node's own global addresses: the ipcache maps them to `host`.
pub fn node_addresses() -> std::io::Result<Vec<IpAddr>> {
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
