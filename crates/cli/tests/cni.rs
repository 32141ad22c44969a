//! bulkhead-cni chained after Debian's reference ptp plugin (root), invoked
//! from a conflist exactly as a runtime does (libcni's rules, through
//! `pods::Chain`), against a real agent: ADD registers and enforces, CHECK
//! verifies, DEL forgets (twice, and with no agent), and every refusal is a
//! CNI error with the spec's code.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulkhead_lab::pods::{self, Attachment, Chain, NODE_SYSCTLS, POD_SYSCTLS};
use bulkhead_lab::probe::{Outcome, Probe, probe_from};
use bulkhead_policy::repository::Proto;
use serde_json::{Value, json};
use support::{cni, privileged, unique};

const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: shop, labels: {app: client}}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: shop, labels: {app: server}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

/// Everything the test made, removed on drop.
struct Fixture {
    tag: String,
    dir: PathBuf,
    agent: Option<Child>,
    pods: Vec<String>,
}

impl Fixture {
    fn node(&self) -> PathBuf {
        Path::new("/run/netns").join(format!("{}-node", self.tag))
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    fn pins(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/bulkhead-test-{}", self.tag))
    }

    fn start_agent(&mut self) {
        let state = self.dir.join("state");
        let extra = ["--policy-map-max-entries", "64"];
        self.agent = Some(support::spawn_agent(
            &state,
            &self.socket(),
            &self.pins(),
            &self.node(),
            &extra,
            &self.dir.join("agent.log"),
        ));
    }

    fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn chain(&self, plugins: Vec<Value>) -> Chain {
        Chain {
            name: "cni-test".into(),
            plugins,
            cni_path: vec![pods::CNI_PATH.into(), Path::new(cni()).parent().expect("bin dir").into()],
            cache_dir: self.dir.join("cache"),
        }
    }

    fn full_chain(&self) -> Chain {
        self.chain(vec![
            pods::ptp_plugin(&self.dir.join("ipam")),
            json!({"type": "bulkhead-cni", "socket": self.socket()}),
        ])
    }

    fn pod(&mut self, name: &str, ips: &[IpAddr]) -> Attachment {
        let ns = format!("{}-{name}", self.tag);
        let netns = pods::create_netns(&ns, POD_SYSCTLS).expect("pod netns");
        self.pods.push(ns.clone());
        Attachment {
            container_id: format!("ctr-{ns}"),
            netns,
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAMESPACE".into(), "shop".into()), ("K8S_POD_NAME".into(), name.into())],
            ips: ips.to_vec(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_agent();
        for p in &self.pods {
            let _ = pods::delete_netns(p);
        }
        let _ = pods::delete_netns(&format!("{}-node", self.tag));
        let _ = std::fs::remove_dir_all(self.pins());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs bulkhead-cni by hand with `env` and `conf`: (exit ok, stdout JSON).
fn raw(env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
    use std::io::Write;
    let mut c = Command::new(cni())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bulkhead-cni");
    c.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write conf");
    let out = c.wait_with_output().expect("wait");
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

fn reached(from: &Attachment, dst: IpAddr, port: u16) -> bool {
    let got =
        probe_from(&from.netns, &[Probe { dst, proto: Proto::Tcp, port, l7: false }], Duration::from_millis(500), 1)
            .expect("probe");
    match &got[0] {
        Outcome::Reached => true,
        Outcome::Dropped => {
            // A slow machine is not a drop: once more, patiently.
            probe_from(&from.netns, &[Probe { dst, proto: Proto::Tcp, port, l7: false }], Duration::from_secs(2), 1)
                .expect("probe")[0]
                == Outcome::Reached
        }
        Outcome::Http(_) | Outcome::Dns(_) => unreachable!("not an L7 probe"),
        Outcome::Error(e) => panic!("probe: {e}"),
    }
}

#[test]
fn chained_after_ptp_add_check_del_and_errors() {
    if !privileged("chained_after_ptp_add_check_del_and_errors") {
        return;
    }
    let tag = unique("bhcni");
    let dir = std::env::temp_dir().join(format!("{tag}-dir"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut fx = Fixture { tag: tag.clone(), dir, agent: None, pods: Vec::new() };
    pods::create_netns(&format!("{tag}-node"), NODE_SYSCTLS).expect("node netns");
    fx.start_agent();
    let cluster = fx.dir.join("cluster.yaml");
    std::fs::write(&cluster, CLUSTER).expect("cluster");
    support::ok(&fx.socket(), &["apply", "-f", cluster.to_str().expect("path")]);

    let chain = fx.full_chain();
    let client_ip: Vec<IpAddr> = vec!["198.18.60.1".parse().expect("ip"), "fd00:b::60:1".parse().expect("ip")];
    let server_ip: Vec<IpAddr> = vec!["198.18.60.2".parse().expect("ip"), "fd00:b::60:2".parse().expect("ip")];
    let client = fx.pod("client", &client_ip);
    let server = fx.pod("server", &server_ip);
    let node = fx.node();

    // ADD: the result passes through unchanged apart from the version, and
    // the pod is enforced before the runtime hears back.
    let result = chain.add(&node, &client).expect("ADD client");
    assert_eq!(result["ips"].as_array().map(Vec::len), Some(2), "{result}");
    chain.add(&node, &server).expect("ADD server");
    let eps = support::json(&fx.socket(), &["endpoint", "list", "-o", "json"]);
    let eps = eps.as_array().expect("list");
    assert_eq!(eps.len(), 2);
    let srv = eps.iter().find(|e| e["pod"] == "shop/server").expect("server endpoint");
    assert_eq!(srv["ips"][0], "198.18.60.2", "addresses come from prevResult");
    assert_eq!(srv["ingress_enforced"], true);
    assert!(reached(&client, server_ip[0], 80), "allowed by the policy");
    assert!(reached(&client, server_ip[1], 80), "allowed by the policy (IPv6)");
    assert!(!reached(&client, server_ip[0], 81), "default deny");
    assert!(reached(&server, client_ip[0], 81), "client has no policy");

    // A policy too big for the policy map (64 entries here): a clear error,
    // and the server's ingress fails closed until a policy fits.
    let ranges: Vec<String> = (1..=40)
        .map(|i| format!("{{port: \"{}\", endPort: {}, protocol: TCP}}", i * 1000 + 1, i * 1000 + 999))
        .collect();
    let big = fx.dir.join("big.yaml");
    std::fs::write(&big, format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: big, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
        ranges.join(", ")
    )).expect("write");
    let out = support::run(&fx.socket(), &["apply", "-f", big.to_str().expect("path")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "error: shop/server: ingress denies everything until a policy fits: map bh_policy slot is full (64 entries)"
        ),
        "{text}"
    );
    let eps = support::json(&fx.socket(), &["endpoint", "list", "-o", "json"]);
    let state =
        eps.as_array().expect("list").iter().find(|e| e["pod"] == "shop/server").expect("server")["state"].clone();
    assert!(
        state.as_str().unwrap_or("").starts_with("not-ready: ingress denies everything until a policy fits"),
        "{state}"
    );
    assert!(!reached(&client, server_ip[0], 80), "the server's ingress fails closed");
    assert!(!reached(&client, server_ip[1], 80), "the server's ingress fails closed (IPv6)");
    assert!(!reached(&client, server_ip[0], 1001), "the refused policy is not half-loaded");
    assert!(reached(&server, client_ip[0], 81), "the server's egress, which fits, is untouched");
    let status = support::json(&fx.socket(), &["status", "-o", "json"]);
    assert_eq!(status["endpoints_not_ready"], 1, "{status}");
    let metrics = format!("{}metrics", status["flows"]["web"].as_str().expect("web address"));
    let out = std::process::Command::new("curl").args(["-sf", &metrics]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bulkhead_endpoints_not_ready 1"), "{text}");
    assert!(
        text.contains(r#"bulkhead_policy_load_failures_total{direction="ingress",effect="fail-closed"} 1"#),
        "{text}"
    );
    assert!(fx.log().contains("endpoint policy not loaded"), "the agent logs the event");
    support::ok(&fx.socket(), &["delete", "-f", big.to_str().expect("path")]);
    let eps = support::json(&fx.socket(), &["endpoint", "list", "-o", "json"]);
    assert!(eps.as_array().expect("list").iter().all(|e| e["state"] == "ready"), "{eps}");
    assert!(reached(&client, server_ip[0], 80), "allowed again once a policy fits");

    // CHECK through the whole chain.
    chain.check(&node, &client).expect("CHECK");

    // A second ADD of the same container (a runtime retrying) is a no-op.
    let again = json!({"cniVersion": "1.0.0", "name": "cni-test", "type": "bulkhead-cni", "socket": fx.socket(), "prevResult": result});
    let netns = client.netns.to_str().expect("path").to_string();
    let in_node = |env: Vec<(&str, &str)>, conf: &Value| {
        bulkhead_datapath::netns::run_in(&node, || raw(&env, conf)).expect("in node")
    };
    let (ok, v) = in_node(
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &client.container_id),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=client"),
        ],
        &again,
    );
    assert!(ok && v["ips"] == result["ips"], "{v}");
    assert_eq!(support::json(&fx.socket(), &["endpoint", "list", "-o", "json"]).as_array().map(Vec::len), Some(2));

    // A pod the agent does not know: refused, and the runtime's DEL cleans up.
    let mut stranger = fx.pod("stranger", &["198.18.60.3".parse().expect("ip")]);
    let err = chain.add(&node, &stranger).expect_err("unknown pod");
    assert!(err.to_string().contains("pod shop/stranger is not known to the agent"), "{err}");
    chain.del(&node, &stranger).expect("DEL after a failed ADD");

    // DEL forgets the endpoint and detaches its programs; DEL again is fine.
    let server_if = srv["host_ifindex"].as_u64().expect("ifindex");
    chain.del(&node, &server).expect("DEL server");
    let eps = support::json(&fx.socket(), &["endpoint", "list", "-o", "json"]);
    assert!(eps.as_array().expect("list").iter().all(|e| e["pod"] != "shop/server"));
    let links = fx.pins().join(format!("v{}/links", bulkhead_datapath::abi::LAYOUT_VERSION));
    let pinned: Vec<String> =
        std::fs::read_dir(&links).expect("links").flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert!(!pinned.iter().any(|p| p.starts_with(&format!("{server_if}-"))), "{pinned:?}");
    chain.del(&node, &server).expect("second DEL");

    // Errors, with the CNI specification's codes.
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bulkhead-cni", "socket": fx.socket(),
                      "prevResult": {"interfaces": [{"name": "x"}], "ips": [{"address": "198.18.60.9/15"}]}});
    let env = |cmd: &'static str, args: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
        ]
    };
    let (ok, v) = raw(&env("VERSION", ""), &json!({"cniVersion": "1.0.0"}));
    assert!(ok && v["supportedVersions"].as_array().expect("versions").contains(&json!("1.0.0")), "{v}");
    let (ok, v) = raw(&env("ADD", "IgnoreUnknown=1"), &conf);
    assert!(!ok && v["code"] == 4 && v["msg"].as_str().unwrap_or("").contains("K8S_POD_NAMESPACE"), "{v}");
    let mut bare = conf.clone();
    bare.as_object_mut().expect("object").remove("prevResult");
    let (ok, v) = raw(&env("ADD", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=client"), &bare);
    assert!(!ok && v["code"] == 7 && v["msg"].as_str().unwrap_or("").contains("chained plugin"), "{v}");
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.2.0");
    let (ok, v) = raw(&env("ADD", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=client"), &old);
    assert!(!ok && v["code"] == 1, "{v}");
    let (ok, v) = raw(&env("BOGUS", ""), &conf);
    assert!(!ok && v["code"] == 4, "{v}");

    // With no agent: ADD asks the runtime to try again; DEL still succeeds.
    chain.add(&node, &server).expect("ADD server again");
    fx.stop_agent();
    stranger.container_id.push_str("-again");
    let err = chain.add(&node, &stranger).expect_err("ADD without an agent");
    assert!(err.to_string().contains("cannot reach the agent"), "{err}");
    chain.del(&node, &stranger).expect("DEL without an agent");
    let (ok, _) = raw(&env("DEL", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=client"), &conf);
    assert!(ok, "DEL succeeds with no agent");

    // Enforcement outlives the agent; the client's pod then disappears
    // without a DEL (a runtime crash), and a new agent drops its endpoint
    // and keeps the server's.
    assert!(!reached(&client, server_ip[0], 81), "still enforced with no agent");
    assert!(reached(&client, server_ip[0], 80), "still allowed with no agent");
    pods::delete_netns(&fx.pods[0]).expect("delete the client's netns");
    fx.start_agent();
    let eps = support::json(&fx.socket(), &["endpoint", "list", "-o", "json"]);
    let pods: Vec<&str> = eps.as_array().expect("list").iter().filter_map(|e| e["pod"].as_str()).collect();
    assert_eq!(pods, ["shop/server"], "{}", fx.log());
    drop(fx);
}
