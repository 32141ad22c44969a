//! Network-namespace pods behind a node namespace, wired by CNI plugins
//! exactly as a container runtime (libcni) invokes a conflist.
//!
//! The node is itself a namespace, so that the lab's routes, forwarding,
//! sysctls and any iptables rules never touch the machine's own network,
//! and deleting the node namespace takes every host-side veth with it.
//! Pods get exactly their manifest's addresses (host-local IPAM with the
//! `ips` capability). [`Chain`] runs a conflist's plugins in order for
//! ADD (each gets the previous one's result as `prevResult`) and in
//! reverse for DEL and CHECK (with the cached ADD result), passes
//! `runtimeConfig` only for capabilities a plugin declares, and runs every
//! plugin inside the node namespace.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use bulkhead_cni::host_interface;
use bulkhead_datapath::netns;

/// The subnets the lab's pods live in.
pub const LAB_V4: &str = "198.18.0.0/15";
/// The IPv6 subnet.
pub const LAB_V6: &str = "fd00:b::/64";
/// Where Debian installs the reference plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// Forwarding on, no duplicate-address detection (addresses are assigned
/// by the lab and used at once).
pub const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
];

/// Ping sockets for root, no ICMP rate limits (probes must not be
/// mistaken for drops), no duplicate-address detection.
pub const POD_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ping_group_range", "0 2147483647"),
    ("net.ipv4.icmp_ratelimit", "0"),
    ("net.ipv6.icmp.ratelimit", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

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

/// Runs `ip ARGS`; its stderr is the error when it fails.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Creates the named network namespace (replacing a leftover one) with
/// `sysctls` and loopback up.
pub fn create_netns(name: &str, sysctls: &[(&str, &str)]) -> io::Result<PathBuf> {
    let _ = ip(&["netns", "del", name]);
    ip(&["netns", "add", name])?;
    let path = netns::named(name);
    netns::run_in(&path, || {
        for (k, v) in sysctls {
            let p = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        }
        Ok::<_, io::Error>(())
    })??;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(path)
}

/// Deletes a named network namespace (no error when it is gone).
pub fn delete_netns(name: &str) -> io::Result<()> {
    if !netns::named(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// The lab's main plugin: ptp with host-local IPAM over the lab subnets,
/// taking each pod's addresses from the `ips` capability.
pub fn ptp_plugin(ipam_dir: &Path) -> Value {
    json!({
        "type": "ptp",
        "mtu": 1500,
        "capabilities": {"ips": true},
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [[{"subnet": LAB_V4}], [{"subnet": LAB_V6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    })
}

/// One pod's attachment, as a runtime describes it to the plugins.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAMESPACE`, …).
    pub args: Vec<(String, String)>,
    /// The `ips` capability: the addresses to assign.
    pub ips: Vec<IpAddr>,
}

/// A conflist and where its plugins and results live.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The network name.
    pub name: String,
    /// The plugin configurations, in order.
    pub plugins: Vec<Value>,
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub cni_path: Vec<PathBuf>,
    /// Where ADD results are cached for DEL and CHECK.
    pub cache_dir: PathBuf,
}

impl Chain {
    /// The conflist document (as a runtime would read it from disk).
    pub fn conflist(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": self.plugins})
    }

    /// ADD through every plugin, inside the node namespace `node`; returns
    /// (and caches) the last plugin's result.
    pub fn add(&self, node: &Path, a: &Attachment) -> io::Result<Value> {
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            prev = Some(self.exec(node, "ADD", p, a, prev.as_ref())?);
        }
        let result = prev.unwrap_or(Value::Null);
        std::fs::create_dir_all(&self.cache_dir)?;
        std::fs::write(self.cache_path(a), result.to_string())?;
        Ok(result)
    }

    /// DEL through every plugin in reverse order (with the cached result);
    /// every plugin is called even when an earlier one fails.
    pub fn del(&self, node: &Path, a: &Attachment) -> io::Result<()> {
        let cached = std::fs::read(self.cache_path(a)).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let mut first_err = None;
        for p in self.plugins.iter().rev() {
            if let Err(e) = self.exec(node, "DEL", p, a, cached.as_ref()) {
                first_err.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(self.cache_path(a));
        first_err.map_or(Ok(()), Err)
    }

    /// CHECK through every plugin (with the cached result).
    pub fn check(&self, node: &Path, a: &Attachment) -> io::Result<()> {
        let cached = std::fs::read(self.cache_path(a))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .ok_or_else(|| io::Error::other(format!("no cached ADD result for {}", a.container_id)))?;
        for p in &self.plugins {
            self.exec(node, "CHECK", p, a, Some(&cached))?;
        }
        Ok(())
    }

    fn cache_path(&self, a: &Attachment) -> PathBuf {
        self.cache_dir.join(format!("{}-{}-{}.json", self.name, a.container_id, a.ifname))
    }

    fn find(&self, ty: &str) -> io::Result<PathBuf> {
        self.cni_path.iter().map(|d| d.join(ty)).find(|p| p.is_file()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "CNI plugin `{ty}` not found in {} (the reference plugins: apt-get install containernetworking-plugins)",
                    self.cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                ),
            )
        })
    }

    /// Runs one plugin as libcni does: the plugin's configuration with the
    /// network's name and version, `prevResult`, and `runtimeConfig` for
    /// the capabilities it declares.
    fn exec(
        &self,
        node: &Path,
        command: &str,
        plugin: &Value,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> io::Result<Value> {
        let ty = plugin["type"].as_str().ok_or_else(|| io::Error::other(format!("plugin without a type: {plugin}")))?;
        let bin = self.find(ty)?;
        let mut conf = plugin.clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!("1.0.0");
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["ips"].as_bool() == Some(true) {
            let ips: Vec<String> = a
                .ips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(_) => format!("{ip}/15"),
                    IpAddr::V6(_) => format!("{ip}/64"),
                })
                .collect();
            conf["runtimeConfig"] = json!({"ips": ips});
        }
        if let Some(o) = conf.as_object_mut() {
            o.remove("capabilities");
        }
        let mut args = vec!["IgnoreUnknown=1".to_string()];
        args.extend(a.args.iter().map(|(k, v)| format!("{k}={v}")));
        let cni_path = self.cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
        let out = netns::run_in(node, || {
            let mut child = Command::new(&bin)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", args.join(";"))
                .env("CNI_PATH", &cni_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", bin.display())))?;
            child.stdin.take().ok_or_else(|| io::Error::other("no stdin"))?.write_all(conf.to_string().as_bytes())?;
            child.wait_with_output()
        })??;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let mut msg = format!("{ty} {command} for {}: ", a.container_id);
            match v["msg"].as_str() {
                Some(m) => msg.push_str(m),
                None => msg.push_str(String::from_utf8_lossy(&out.stdout).trim()),
            }
            if let Some(d) = v["details"].as_str().filter(|d| !d.is_empty()) {
                msg.push_str(&format!(" ({d})"));
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                msg.push_str(&format!("; stderr: {}", stderr.trim()));
            }
            return Err(io::Error::other(msg));
        }
        Ok(v)
    }
}

/// [`host_interface`] and its index in the node namespace.
pub fn host_link(result: &Value, node: &Path) -> io::Result<(String, u32)> {
    let name = host_interface(result)
        .ok_or_else(|| io::Error::other(format!("the CNI result names no host interface: {result}")))?
        .to_string();
    let n = name.clone();
    let ifindex = netns::run_in(node, move || nix::net::if_::if_nametoindex(n.as_str()))?.map_err(io::Error::from)?;
    Ok((name, ifindex))
}

/// A node namespace for tests. Dropping it deletes it with every pod
/// created in it (unless [`Node::keep`] was called).
#[derive(Debug)]
pub struct Node {
    name: String,
    pods: Vec<String>,
    chain: Chain,
    keep: bool,
    state_dir: PathBuf,
}

impl Node {
    /// Creates the node namespace `name` (replacing a leftover one); pods
    /// are wired by ptp alone.
    pub fn create(name: &str, state_dir: &Path) -> io::Result<Node> {
        create_netns(name, NODE_SYSCTLS)?;
        let chain = Chain {
            name: "bulkhead-test".into(),
            plugins: vec![ptp_plugin(&state_dir.join("ipam"))],
            cni_path: vec![CNI_PATH.into()],
            cache_dir: state_dir.join("cni-cache"),
        };
        Ok(Node { name: name.into(), pods: Vec::new(), chain, keep: false, state_dir: state_dir.into() })
    }

    /// The node namespace's path.
    pub fn path(&self) -> PathBuf {
        netns::named(&self.name)
    }

    /// Leaves the namespaces in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Creates pod namespace `pod_ns` with `ips` through the chain.
    pub fn add_pod(&mut self, pod_ns: &str, ips: &[IpAddr]) -> io::Result<PodLink> {
        let netns = create_netns(pod_ns, POD_SYSCTLS)?;
        self.pods.push(pod_ns.into());
        let a = Attachment {
            container_id: pod_ns.into(),
            netns,
            ifname: "eth0".into(),
            args: Vec::new(),
            ips: ips.to_vec(),
        };
        let result = self.chain.add(&self.path(), &a)?;
        let (host_if, ifindex) = host_link(&result, &self.path())?;
        Ok(PodLink { netns: pod_ns.into(), host_if, ifindex, ips: ips.to_vec() })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for p in &self.pods {
            let _ = delete_netns(p);
        }
        let _ = delete_netns(&self.name);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
