//! The node the agent runs on: its network namespace (the one holding the
//! host side of pod interfaces) and interface indexes.

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
