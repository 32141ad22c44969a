//! Network-namespace pods behind a node namespace, wired by the reference
//! CNI plugins exactly as a container runtime invokes them.
//!
//! The node is itself a namespace, so that the lab's routes, forwarding,
//! sysctls and any iptables rules never touch the machine's own network,
//! and deleting the node namespace takes every host-side veth with it.
//! Pods get exactly their manifest's addresses (host-local IPAM with the
//! `ips` capability).

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::netns;

/// The subnets the lab's pods live in.
pub const LAB_V4: &str = "198.18.0.0/15";
/// The IPv6 subnet.
pub const LAB_V6: &str = "fd00:b::/64";
/// Where Debian installs the reference plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// A pod's interface as the main plugin reported it.
#[derive(Debug, Clone)]
pub struct PodLink {
    /// The pod's namespace name.
    pub netns: String,
    /// The host-side veth in the node namespace.
    pub host_if: String,
    /// Its index there.
    pub ifindex: u32,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
}

/// A node namespace. Dropping it deletes it with every pod created in it
/// (unless [`Node::keep`] was called).
#[derive(Debug)]
pub struct Node {
    name: String,
    pods: Vec<String>,
    ipam_dir: PathBuf,
    keep: bool,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn sysctl(ns: &Path, settings: &[(&str, &str)]) -> io::Result<()> {
    netns::run_in(ns, || {
        for (k, v) in settings {
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    })?
}

impl Node {
    /// Creates the node namespace `name` (replacing a leftover one).
    pub fn create(name: &str, state_dir: &Path) -> io::Result<Node> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let node = Node { name: name.into(), pods: Vec::new(), ipam_dir: state_dir.join("ipam"), keep: false };
        sysctl(
            &node.path(),
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
            ],
        )?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(node)
    }

    /// The node namespace's path.
    pub fn path(&self) -> PathBuf {
        netns::named(&self.name)
    }

    /// Leaves the namespaces in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Creates pod namespace `pod_ns` with `ips` through the ptp plugin.
    pub fn add_pod(&mut self, pod_ns: &str, ips: &[IpAddr]) -> io::Result<PodLink> {
        let _ = ip(&["netns", "del", pod_ns]);
        ip(&["netns", "add", pod_ns])?;
        self.pods.push(pod_ns.into());
        let pod_path = netns::named(pod_ns);
        sysctl(
            &pod_path,
            &[
                ("net.ipv4.ping_group_range", "0 2147483647"),
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv6.icmp.ratelimit", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        )?;
        ip(&["-n", pod_ns, "link", "set", "lo", "up"])?;
        let ips_json: Vec<String> = ips
            .iter()
            .map(|a| match a {
                IpAddr::V4(_) => format!("{a}/15"),
                IpAddr::V6(_) => format!("{a}/64"),
            })
            .collect();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bulkhead-lab",
            "type": "ptp",
            "mtu": 1500,
            "capabilities": {"ips": true},
            "runtimeConfig": {"ips": ips_json},
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir,
                "ranges": [[{"subnet": LAB_V4}], [{"subnet": LAB_V6}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        });
        let result = self.cni("ADD", pod_ns, &conf)?;
        let host_if = result["interfaces"][0]["name"]
            .as_str()
            .ok_or_else(|| io::Error::other(format!("ptp result names no host interface: {result}")))?
            .to_string();
        let name = host_if.clone();
        let ifindex = netns::run_in(&self.path(), move || nix::net::if_::if_nametoindex(name.as_str()))?
            .map_err(io::Error::from)?;
        Ok(PodLink { netns: pod_ns.into(), host_if, ifindex, ips: ips.to_vec() })
    }

    fn cni(&self, command: &str, pod_ns: &str, conf: &serde_json::Value) -> io::Result<serde_json::Value> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, &format!("{CNI_PATH}/ptp")])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod_ns)
            .env("CNI_NETNS", netns::named(pod_ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("{CNI_PATH}/ptp: {e} (apt-get install containernetworking-plugins)"))
            })?;
        child.stdin.take().ok_or_else(|| io::Error::other("no stdin"))?.write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ptp {command} for {pod_ns}: {v} {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(v)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for p in &self.pods {
            let _ = ip(&["netns", "del", p]);
        }
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.ipam_dir);
    }
}
