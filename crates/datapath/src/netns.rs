//! Network namespaces: running work inside one without moving the process.
//!
//! A thread's network namespace is its own (`setns(CLONE_NEWNET)` affects
//! the calling thread only), so work is done on a scoped thread that enters
//! the namespace and ends with it; sockets it opens stay in that namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a new thread inside the network namespace at `path`
/// (e.g. `/run/netns/NAME`).
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let ns = File::open(path).map_err(|e| with_path(e, path))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| with_path(e.into(), path))?;
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other(format!("thread in {} panicked", path.display())))?
    })
}

/// Moves the calling thread into the network namespace at `path`. Call it
/// before starting other threads to move a whole process.
pub fn enter(path: &Path) -> std::io::Result<()> {
    let ns = File::open(path).map_err(|e| with_path(e, path))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| with_path(e.into(), path))
}

/// The path of a named namespace (`ip netns add NAME`).
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// The global addresses of the calling thread's network namespace (not
/// loopback, link-local or unspecified): a node's own, which the ipcache
/// maps to the `host` identity.
pub fn global_addresses() -> std::io::Result<Vec<IpAddr>> {
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

/// The policy routing the L7 redirect needs in the node's namespace (the
/// calling thread's; DESIGN.md §4): a packet the datapath assigned to the
/// proxy's socket carries mark `0x200` and must be delivered locally, else
/// the kernel drops it. Idempotent. Runs iproute2's `ip`, which every
/// Debian and Ubuntu system has.
pub fn route_marked_to_proxy() -> std::io::Result<()> {
    for (family, any) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let rule = ["rule", "add", "fwmark", "0x200/0xf00", "lookup", "2004", "pref", "9"];
        ip(family, &rule, true)?;
        ip(family, &["route", "replace", "local", any, "dev", "lo", "table", "2004"], false)?;
    }
    Ok(())
}

/// Runs `ip FAMILY ARGS`; `exists_ok`: "File exists" is success.
fn ip(family: &str, args: &[&str], exists_ok: bool) -> std::io::Result<()> {
    let out = std::process::Command::new("ip")
        .arg(family)
        .args(args)
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("running ip (iproute2): {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || (exists_ok && stderr.contains("File exists")) {
        return Ok(());
    }
    Err(std::io::Error::other(format!("ip {family} {}: {}", args.join(" "), stderr.trim())))
}

fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
