//! `bulkhead-cni`: a CNI 1.0 plugin chained after a main plugin (ptp,
//! bridge, or any veth-based one). ADD takes the host side of the pod's
//! veth from `prevResult`, registers the endpoint with the agent, and
//! passes the result on only once the pod's policy is enforced on it. DEL
//! forgets the endpoint (idempotent; when no agent answers, the next agent
//! start drops endpoints whose interface is gone). CHECK asks the agent
//! whether the endpoint is there and ready. Pod namespace and name come
//! from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`), as kubelet-driven
//! runtimes pass them.
//!
//! Network configuration (one entry of a conflist's `plugins`):
//! `{"type": "bulkhead-cni", "socket": "/run/bulkhead/agent.sock"}`
//! (`socket` is optional).
//!
//! It links only the agent's API and client (`bulkhead_api`): no policy
//! engine, no datapath, no server.

use std::io::Read;
use std::net::IpAddr;
use std::process::ExitCode;

use bulkhead_api::client::{Client, ClientError};
use bulkhead_api::{DEFAULT_SOCKET, EndpointInfo, EndpointRequest};
use serde_json::{Value, json};

const SUPPORTED: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// A CNI error: the spec's code, message and details.
#[derive(Debug)]
struct CniError {
    code: u32,
    msg: String,
    details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }

    fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

/// Error codes from the CNI specification (plugin-specific ones from 100).
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const AGENT_REFUSED: u32 = 100;
    pub const NOT_ENFORCED: u32 = 101;
}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
}

/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS` (`K=V;K=V`).
fn pod_from_args(args: &str) -> Result<(String, String), CniError> {
    let get = |k: &str| {
        args.split(';').filter_map(|kv| kv.split_once('=')).find(|(key, _)| *key == k).map(|(_, v)| v.to_string())
    };
    match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
        (Some(ns), Some(pod)) if !ns.is_empty() && !pod.is_empty() => Ok((ns, pod)),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME (the runtime sets them for Kubernetes pods)",
        )
        .details(format!("CNI_ARGS={args}"))),
    }
}

/// The host side of the pod's veth in a main plugin's result: the last
/// interface without a sandbox (ptp lists [host, container], bridge
/// [bridge, host, container]).
pub fn host_interface(result: &Value) -> Option<&str> {
    result["interfaces"]
        .as_array()?
        .iter()
        .filter(|i| i["sandbox"].as_str().unwrap_or("").is_empty())
        .filter_map(|i| i["name"].as_str())
        .next_back()
}

/// The host-side interface ([`host_interface`]) and the pod's
/// addresses from a main plugin's result.
fn from_prev_result(prev: &Value, netns: &str, ifname: &str) -> Result<(String, Vec<IpAddr>), CniError> {
    let bad = |m: &str| CniError::new(code::INVALID_CONFIG, m.to_string()).details(prev.to_string());
    let ifaces = prev["interfaces"].as_array().ok_or_else(|| bad("prevResult has no interfaces"))?;
    let host = host_interface(prev).ok_or_else(|| {
        bad("prevResult names no host-side interface: chain bulkhead-cni after a veth-based plugin (ptp, bridge)")
    })?;
    let container =
        ifaces.iter().position(|i| i["sandbox"].as_str() == Some(netns) && i["name"].as_str() == Some(ifname));
    let mut ips = Vec::new();
    for ip in prev["ips"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let on_container = match (ip["interface"].as_u64(), container) {
            (Some(i), Some(c)) => i as usize == c,
            _ => true,
        };
        let addr = ip["address"].as_str().and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok());
        match addr {
            Some(a) if on_container => ips.push(a),
            Some(_) => {}
            None => return Err(bad("prevResult has an address that is not ADDRESS/PREFIX")),
        }
    }
    if ips.is_empty() {
        return Err(bad("prevResult gives the pod no address (does the main plugin have IPAM?)"));
    }
    Ok((host.to_string(), ips))
}

fn refused(e: ClientError) -> CniError {
    match e {
        ClientError::Unreachable { .. } => CniError::new(code::TRY_AGAIN, e.to_string()),
        ClientError::Refused { ref body, .. } => {
            CniError::new(code::AGENT_REFUSED, body.error.clone()).details(body.details.join("\n"))
        }
        e => CniError::new(code::AGENT_REFUSED, e.to_string()),
    }
}

fn run(command: &str, conf: &Value) -> Result<Option<Value>, CniError> {
    let version = conf["cniVersion"].as_str().unwrap_or("");
    if command == "VERSION" {
        return Ok(Some(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED})));
    }
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion `{version}` is not supported (supported: {})", SUPPORTED.join(", ")),
        ));
    }
    let socket = conf["socket"].as_str().unwrap_or(DEFAULT_SOCKET);
    let client = Client::new(socket);
    let container_id = env("CNI_CONTAINERID")?;
    let path = format!("/endpoints/{container_id}");
    match command {
        "ADD" => {
            let prev = conf.get("prevResult").filter(|v| v.is_object()).ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "no prevResult: bulkhead-cni is a chained plugin; list it after the main plugin (ptp, bridge) in a conflist",
                )
            })?;
            let netns = env("CNI_NETNS")?;
            let ifname = env("CNI_IFNAME")?;
            let (namespace, pod) = pod_from_args(&std::env::var("CNI_ARGS").unwrap_or_default())?;
            let (host_if, ips) = from_prev_result(prev, &netns, &ifname)?;
            let host_ifindex = nix::net::if_::if_nametoindex(host_if.as_str()).map_err(|e| {
                CniError::new(code::INVALID_CONFIG, format!("host interface {host_if} from prevResult: {e}"))
            })?;
            let req = EndpointRequest { container_id, namespace, pod, netns, ifname, host_if, host_ifindex, ips };
            let _: EndpointInfo = client.put(&path, &req).map_err(refused)?;
            let mut result = prev.clone();
            result["cniVersion"] = json!(version);
            Ok(Some(result))
        }
        "DEL" => match client.delete::<Option<EndpointInfo>>(&path) {
            Ok(_) => Ok(None),
            Err(e @ ClientError::Unreachable { .. }) => {
                eprintln!(
                    "bulkhead-cni: DEL: {e}; the agent drops the endpoint when it starts and finds its interface gone"
                );
                Ok(None)
            }
            Err(e) => Err(refused(e)),
        },
        "CHECK" => {
            let ep: EndpointInfo = client.get(&path).map_err(refused)?;
            if let Some(prev) = conf.get("prevResult").filter(|v| v.is_object()) {
                let netns = env("CNI_NETNS")?;
                let ifname = env("CNI_IFNAME")?;
                let (host_if, _) = from_prev_result(prev, &netns, &ifname)?;
                if host_if != ep.host_if {
                    return Err(CniError::new(
                        code::NOT_ENFORCED,
                        format!("the agent enforces {} on {}, prevResult names {host_if}", ep.pod, ep.host_if),
                    ));
                }
            }
            if ep.state != "ready" {
                return Err(CniError::new(code::NOT_ENFORCED, format!("endpoint {} is {}", ep.pod, ep.state)));
            }
            Ok(None)
        }
        other => {
            Err(CniError::new(code::INVALID_ENV, format!("CNI_COMMAND `{other}` is not ADD, DEL, CHECK or VERSION")))
        }
    }
}

/// The plugin: reads `CNI_*` and the network configuration on stdin, and
/// prints the result or the CNI error on stdout.
pub fn plugin() -> ExitCode {
    let mut input = String::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let result = if command.is_empty() {
        Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set: bulkhead-cni is run by a container runtime (see README)",
        ))
    } else if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        Err(CniError::new(code::DECODE, format!("reading the network configuration: {e}")))
    } else if command == "VERSION" && input.trim().is_empty() {
        run(&command, &json!({}))
    } else {
        match serde_json::from_str::<Value>(&input) {
            Ok(conf) => run(&command, &conf),
            Err(e) => Err(CniError::new(code::DECODE, format!("the network configuration is not JSON: {e}"))),
        }
    };
    match result {
        Ok(Some(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let version = serde_json::from_str::<Value>(&input)
                .ok()
                .and_then(|c| c["cniVersion"].as_str().map(String::from))
                .unwrap_or_else(|| "1.0.0".into());
            println!("{}", json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ptp_and_bridge_results() {
        let ptp = json!({"interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
                         "ips": [{"address": "198.18.1.10/15", "interface": 1}, {"address": "fd00:b::1:10/64", "interface": 1}]});
        let (host, ips) = from_prev_result(&ptp, "/run/netns/p", "eth0").expect("ptp result");
        assert_eq!(host, "veth1");
        assert_eq!(ips.len(), 2);
        let bridge = json!({"interfaces": [{"name": "cni0"}, {"name": "veth2"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
                            "ips": [{"address": "198.18.1.11/15", "interface": 2, "gateway": "198.18.0.1"}]});
        assert_eq!(from_prev_result(&bridge, "/run/netns/p", "eth0").expect("bridge result").0, "veth2");
        assert!(from_prev_result(&json!({"interfaces": [], "ips": []}), "/x", "eth0").is_err());
    }

    #[test]
    fn pod_names_come_from_cni_args() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc";
        assert_eq!(pod_from_args(args).ok(), Some(("prod".into(), "web-0".into())));
        let e = pod_from_args("IgnoreUnknown=1").expect_err("missing names");
        assert_eq!(e.code, code::INVALID_ENV);
    }
}
