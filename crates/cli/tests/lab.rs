//! The seed scenario on a live lab (root): `lab up` through the CNI chain,
//! `apply`, `lab probe` against the engine, names and HTTP inside the lab,
//! the agent's read commands, audit mode, and `lab down` leaving nothing.

mod support;

use bulkhead_datapath::abi::{Addr, CT_SEEN_REPLY, CtKey, CtValue, DIR_INGRESS};
use bulkhead_lab::frame::{Frame, V4, mac_of, proto, tcp_syn};
use bulkhead_lab::probe::RawLink;
use support::{Lab, assert_gone, privileged, repo};

#[test]
fn seed_lab_probe_matches_the_policies_and_down_leaves_nothing() {
    if !privileged("seed_lab_probe_matches_the_policies_and_down_leaves_nothing") {
        return;
    }
    let cluster = repo().join("examples/seed/cluster.yaml");
    let policies = repo().join("examples/seed/policies");
    let lab = Lab::up("seed", &cluster, &[]);
    let out = lab.ok(&["apply", "-f", policies.to_str().expect("path"), "-n", "production"]);
    assert!(out.contains("CiliumNetworkPolicy production/restrict-backend-api created"), "{out}");
    // HTTP and DNS rules and toFQDNs are the L7 proxy's, and it runs.
    assert!(!out.contains("not enforced"), "{out}");

    // Every probe as the engine says, on both families.
    let out = lab.lab(&["probe", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert!(out.status.success(), "differences: {:#}", report["differences"]);
    assert_eq!(report["differences"].as_array().map(Vec::len), Some(0));
    assert!(report["probes"].as_u64().unwrap_or(0) >= 150, "{}", report["probes"]);
    let cell = |from: &str, to: &str, port: &str| {
        (report["verdicts"][from][to][port].clone(), report["expected"][from][to][port].clone())
    };
    // The L7 rule decides the probe's GET / (only /api/v1/products and
    // /api/v1/inventory are allowed): the proxy answers 403.
    assert_eq!(cell("production/frontend", "production/backend", "8080/TCP"), ("l7-denied".into(), "l7".into()));
    // Lateral movement from staging is stopped by default deny.
    assert_eq!(cell("staging/debug-tools", "production/backend", "8080/TCP"), ("denied".into(), "denied".into()));
    assert_eq!(cell("staging/debug-tools", "production/frontend", "80/TCP"), ("allowed".into(), "allowed".into()));
    // The DNS rule (any name) decides the probe's query, on both
    // transports; the resolver answers it.
    for port in ["53/UDP", "53/TCP"] {
        assert_eq!(
            cell("production/payment-processor", "kube-system/kube-dns", port),
            ("l7-allowed".into(), "l7".into()),
            "{port}"
        );
    }
    assert_eq!(
        cell("production/payment-processor", "production/frontend", "80/TCP"),
        ("denied".into(), "denied".into())
    );
    let reasons = report["reasons"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|g| g["drop_reason_desc"] == "POLICY_DENIED" && g["endpoint"] == "production/payment-processor")
    );

    // Names and HTTP inside the lab: kube-dns → frontend's http port.
    let out = lab.lab(&["exec", "kube-system/kube-dns", "--", "curl", "-s", "-m", "5", "http://frontend.production/x"]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && body.contains("\"pod\":\"production/frontend\""), "{body} {:?}", out);
    let out = lab.lab(&["exec", "staging/debug-tools", "--", "getent", "ahostsv4", "backend.production"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.1.20"), "{out:?}");

    // What the agent holds.
    let eps = lab.json(&["endpoint", "list", "-o", "json"]);
    let eps = eps.as_array().expect("endpoints");
    assert_eq!(eps.len(), 5);
    assert!(eps.iter().all(|e| e["state"] == "ready"), "{eps:?}");
    let backend = eps.iter().find(|e| e["pod"] == "production/backend").expect("backend endpoint");
    assert_eq!(backend["ingress_enforced"], true);
    assert_eq!(backend["egress_enforced"], false);
    let ids = lab.json(&["identity", "list", "-o", "json"]);
    assert!(ids.as_array().expect("ids").iter().any(|i| i["pods"][0] == "production/frontend"));
    let dump = lab.json(&["policy", "get", "production/backend", "-o", "json"]);
    assert_eq!(dump["ingress"]["default_deny"], true);
    let redirect = dump["ingress"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["verdict"] == "redirect")
        .expect("the L7 rule's entry, read back from the kernel");
    assert_eq!((redirect["protocol"].as_str(), redirect["port"].as_u64()), (Some("TCP"), Some(8080)));
    assert_eq!(
        redirect["peer"].as_str().and_then(|p| p.parse::<u64>().ok()),
        Some(eps.iter().find(|e| e["pod"] == "production/frontend").expect("fe")["identity"].as_u64().expect("id"))
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&lab.socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is root's alone");
    let status = lab.json(&["status", "-o", "json"]);
    assert_eq!(status["healthy"], true);
    assert_eq!(status["pid"], lab.state()["agent_pid"]);
    assert_eq!(status["counts"]["endpoints"], 5);
    assert_eq!(status["counts"]["policies"], 2);
    assert!(status["drops"]["POLICY_DENIED INGRESS"].as_u64().unwrap_or(0) > 0, "{status}");
    // The BPF LSM guard, or why there is none (these machines' kernel
    // refuses BPF LSM programs: the agent must say so, not stay silent).
    let p = &status["protection"];
    match p["mode"].as_str() {
        Some("bpf-lsm") => assert_eq!(p["refused"], 0, "{p}"),
        Some("none") => assert!(p["reason"].as_str().is_some_and(|r| r.contains("LSM")), "{p}"),
        _ => panic!("no protection status: {status}"),
    }
    assert!(lab.ok(&["status"]).contains("protection: "), "the text status shows it too");

    // A compromised pod claiming frontend's address (the repro): a
    // raw SYN from debug-tools with source 198.18.1.10 to backend:8080 is
    // dropped where it leaves debug-tools, and the flow names debug-tools.
    let tools = eps.iter().find(|e| e["pod"] == "staging/debug-tools").expect("debug-tools endpoint");
    let tools_ns = lab.netns("staging/debug-tools");
    let node = std::path::PathBuf::from(format!("/run/netns/bh-{}-node", lab.name));
    let frame = Frame {
        dst_mac: mac_of(&node, tools["host_if"].as_str().expect("host_if")).expect("host-side MAC"),
        src_mac: mac_of(&tools_ns, "eth0").expect("pod MAC"),
    };
    let frontend = std::net::Ipv4Addr::new(198, 18, 1, 10);
    let backend = std::net::Ipv4Addr::new(198, 18, 1, 20);
    let syn = frame.ipv4(V4::new(frontend, backend, proto::TCP, 0x5f00), &tcp_syn(40123, 8080));
    bulkhead_datapath::netns::run_in(&tools_ns, || RawLink::open("eth0").and_then(|l| l.send(&syn)))
        .expect("debug-tools netns")
        .expect("send the spoofed SYN");
    let spoofed = lab.ok(&[
        "observe",
        "--drop-reason",
        "INVALID_SOURCE_IP",
        "--from-ip",
        "198.18.1.10",
        "--last",
        "5",
        "-o",
        "json",
    ]);
    let line: serde_json::Value =
        serde_json::from_str(spoofed.lines().last().expect("an INVALID_SOURCE_IP flow")).expect("flow JSON");
    let flow = &line["flow"];
    assert_eq!(flow["verdict"], "DROPPED", "{flow}");
    assert_eq!(flow["source"]["pod_name"], "debug-tools", "the flow names the real sender: {flow}");
    assert_eq!(flow["source"]["namespace"], "staging", "{flow}");
    assert_eq!(flow["IP"]["source"], "198.18.1.10", "{flow}");
    assert_eq!(flow["traffic_direction"], "EGRESS", "{flow}");
    assert_eq!(flow["destination"]["pod_name"], "backend", "{flow}");
    assert!(flow["destination"]["identity"].as_u64().unwrap_or(0) >= 256, "the peer's identity: {flow}");
    assert!(
        lab.json(&["status", "-o", "json"])["drops"]["INVALID_SOURCE_IP EGRESS"].as_u64().unwrap_or(0) >= 1,
        "counted"
    );

    // Audit on the backend: the would-be drop passes and is reported as AUDIT.
    let out = lab.ok(&["audit", "on", "--endpoint", "production/backend"]);
    assert!(out.contains("endpoint production/backend on"), "{out}");
    let out = lab.lab(&["probe", "--ports", "8080/TCP", "-o", "json"]);
    let audited: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(audited["verdicts"]["staging/debug-tools"]["production/backend"]["8080/TCP"], "allowed");
    assert!(!out.status.success(), "audit mode lets through what the policy denies: a difference");
    let events = lab.ok(&["observe", "--last", "2000", "-o", "json"]);
    assert!(
        events.lines().any(|l| l.contains("\"verdict\":\"AUDIT\"") && l.contains("\"pod_name\":\"debug-tools\"")),
        "no AUDIT event in {events}"
    );
    lab.ok(&["audit", "inherit", "--endpoint", "production/backend"]);
    let observed = |ports: &str| -> serde_json::Value {
        let out = lab.lab(&["probe", "--ports", ports, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("probe JSON")["verdicts"].clone()
    };
    // Per namespace, and globally; an endpoint's own setting wins over both.
    lab.ok(&["audit", "on", "-n", "production"]);
    assert_eq!(observed("8080/TCP")["staging/debug-tools"]["production/backend"]["8080/TCP"], "allowed");
    lab.ok(&["audit", "off", "--endpoint", "production/backend"]);
    assert_eq!(observed("8080/TCP")["staging/debug-tools"]["production/backend"]["8080/TCP"], "denied");
    lab.ok(&["audit", "inherit", "--endpoint", "production/backend"]);
    lab.ok(&["audit", "inherit", "-n", "production"]);
    lab.ok(&["audit", "on"]);
    assert_eq!(observed("80/TCP")["production/payment-processor"]["production/frontend"]["80/TCP"], "allowed");
    let out = lab.ok(&["audit", "off"]);
    assert_eq!(out.trim(), "audit: global off", "no setting is left behind");
    let out = lab.lab(&["probe", "--ports", "8080/TCP,80/TCP", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Bad input changes nothing and says where.
    let bad = std::env::temp_dir().join(format!("bulkhead-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: production}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoint: [{}]}]\n").expect("write");
    let out = support::run(&lab.socket, &["apply", "-f", bad.to_str().expect("path")]);
    let _ = std::fs::remove_file(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(":6:") && err.contains("fromEndpoints"), "{err}");
    assert_eq!(lab.json(&["status", "-o", "json"])["counts"]["policies"], 2);

    let (name, socket) = (lab.name.clone(), lab.socket.clone());
    drop(lab);
    assert_gone(&name, &socket);
}

/// `lab down` after a crash: the agent killed and the state file lost
/// still removes every namespace, process, pin and file of the lab.
#[test]
fn guardrails_refuse_an_apply_that_breaks_one_and_nothing_changes() {
    if !privileged("guardrails_refuse_an_apply_that_breaks_one_and_nothing_changes") {
        return;
    }
    let dir = std::env::temp_dir().join(support::unique("guardrails"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("path").to_string()
    };
    let guardrails = file(
        "guardrails.yaml",
        "apiVersion: bulkhead.io/v1alpha1\nkind: Guardrails\nmetadata: {name: org}\nspec:\n  forbidEntityAll: true\n  requireL7: [{port: 8080}]\n  requireDefaultDeny: true\n",
    );
    let lab = Lab::up("guard", &repo().join("examples/seed/cluster.yaml"), &["--guardrails", &guardrails]);
    let policies = |lab: &Lab| lab.json(&["status", "-o", "json"])["counts"]["policies"].clone();
    // Breaking two guardrails (three times): refused with the findings; nothing stored.
    let bad = file(
        "bad.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: open, namespace: production}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: '8080', protocol: TCP}]}]}]\n  egress: [{toEntities: [all]}]\n",
    );
    let before = policies(&lab);
    let out = support::run(&lab.socket, &["apply", "-f", &bad]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refused by guardrails: 3 finding(s)"), "{err}");
    assert!(err.contains("spec.egress[0].toEntities") && err.contains("spec.forbidEntityAll"), "{err}");
    assert!(err.contains("spec.ingress[0].toPorts[0]") && err.contains("spec.requireL7"), "{err}");
    assert_eq!(policies(&lab), before, "nothing changed");
    // The namespaces lacked a default deny before: an apply that does not
    // make it worse passes (the seed's, with L7 rules on 8080).
    let out =
        lab.ok(&["apply", "-f", repo().join("examples/seed/policies").to_str().expect("path"), "-n", "production"]);
    assert!(out.contains("created"), "{out}");
    // The same check offline: lint says what the agent refused.
    let out = support::run(&lab.socket, &["policy", "lint", "--guardrails", &guardrails, &bad]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spec.egress[0].toEntities: guardrail:") && text.contains("spec.requireL7"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn drift_is_put_right_within_a_second_and_enforcement_never_stops() {
    if !privileged("drift_is_put_right_within_a_second_and_enforcement_never_stops") {
        return;
    }
    let lab = Lab::up("pins", &repo().join("examples/seed/cluster.yaml"), &[]);
    lab.ok(&["apply", "-f", repo().join("examples/seed/policies").to_str().expect("path"), "-n", "production"]);
    let dir = std::path::PathBuf::from(lab.json(&["status", "-o", "json"])["pin_dir"].as_str().expect("pin dir"));
    // Staging is denied the backend; the frontend's allowed request answers.
    let reaches = |lab: &Lab, from: &str| {
        let url = "http://backend.production:8080/api/v1/products";
        lab.lab(&["exec", from, "--", "curl", "-sf", "-o", "/dev/null", "--max-time", "1", url]).status.success()
    };
    let denied = |lab: &Lab| !reaches(lab, "staging/debug-tools") && reaches(lab, "production/frontend");
    assert!(denied(&lab), "staging reaches the backend (or the frontend does not) before any drift");
    // A link pin (the program on a pod's interface) and a map pin, removed
    // as a root user could: both back within a second; the program never
    // left the interface (the agent holds the link), so staging stays out.
    let link = std::fs::read_dir(dir.join("links")).expect("links").next().expect("a link").expect("entry").path();
    let map = dir.join("bh_ipcache");
    for pin in [&link, &map] {
        let t0 = std::time::Instant::now();
        std::fs::remove_file(pin).expect("remove the pin");
        bulkhead_lab::wait_until("the pin back", std::time::Duration::from_secs(1), || pin.exists())
            .unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
        eprintln!("{} put back after {:?}", pin.display(), t0.elapsed());
        assert!(denied(&lab), "staging reached the backend after {} was removed", pin.display());
    }
    let status = lab.json(&["status", "-o", "json"]);
    assert_eq!(status["protection"]["repaired"], 2, "{status}");
    let metrics = lab.metrics();
    for kind in ["link-pin", "map-pin"] {
        assert!(metrics.contains(&format!("bulkhead_drift_repaired_total{{kind=\"{kind}\"}} 1")), "{metrics}");
    }
    assert!(metrics.contains("bulkhead_drift_repair_seconds_count 2"), "{metrics}");
    // The whole links directory: every link pin back.
    let before = std::fs::read_dir(dir.join("links")).expect("links").count();
    std::fs::remove_dir_all(dir.join("links")).expect("remove the links directory");
    bulkhead_lab::wait_until("every link pin back", std::time::Duration::from_secs(1), || {
        std::fs::read_dir(dir.join("links")).map(|d| d.count()).unwrap_or(0) == before
    })
    .expect("links back");
    assert!(denied(&lab), "staging reached the backend after the links directory was removed");

    // A root user maps staging's address to the frontend's identity in the
    // ipcache: the agent finds it within its one-second look and puts it right.
    let pod_ip = |key: &str| {
        lab.state()["pods"].as_array().expect("pods").iter().find(|p| p["key"] == key).expect("pod")["ips"][0]
            .as_str()
            .expect("ip")
            .parse::<std::net::IpAddr>()
            .expect("ip")
    };
    let (staging, frontend) = (pod_ip("staging/debug-tools"), pod_ip("production/frontend"));
    let mut dp = bulkhead_datapath::Datapath::open(dir.parent().expect("pin root")).expect("the pins, as root");
    let ipcache = |dp: &bulkhead_datapath::Datapath| dp.view().ipcache().expect("ipcache");
    let host = |ip| bulkhead_policy::cidr::Cidr::host(ip);
    let identity_of =
        |dp: &bulkhead_datapath::Datapath, ip| ipcache(dp).into_iter().find(|(c, _)| *c == host(ip)).map(|(_, id)| id);
    let (theirs, own) =
        (identity_of(&dp, frontend).expect("frontend's identity"), identity_of(&dp, staging).expect("staging's"));
    let repaired_before = lab.json(&["status", "-o", "json"])["protection"]["repaired"].as_u64().expect("count");
    let t0 = std::time::Instant::now();
    dp.set_ipcache(host(staging), theirs).expect("tamper");
    bulkhead_lab::wait_until("the ipcache put right", std::time::Duration::from_millis(2500), || {
        identity_of(&dp, staging) == Some(own)
    })
    .expect("the agent repairs the ipcache");
    eprintln!("ipcache entry put right after {:?}", t0.elapsed());
    assert!(denied(&lab), "staging reaches the backend after the repair");
    let status = lab.json(&["status", "-o", "json"]);
    assert_eq!(status["protection"]["repaired"].as_u64(), Some(repaired_before + 1), "{status}");
    assert!(lab.metrics().contains("bulkhead_drift_repaired_total{kind=\"ipcache-changed\"} 1"));

    // A root user writes the conntrack entry that lets one staging
    // connection into the backend as established, under the slot the
    // backend's ingress policy uses now (so the kernel would not ask
    // again): the agent finds that the policy does not admit it and
    // removes it. Until then the connection is let through (as a root user
    // who can write maps can do); after, it is dropped like any other.
    // Staging's own egress is open: its entries there are no drift.
    let backend = pod_ip("production/backend");
    let endpoint_of = |ip: std::net::IpAddr| {
        dp.view()
            .endpoints()
            .expect("endpoints")
            .into_iter()
            .find(|(_, e)| e.addrs[..e.naddrs as usize].contains(&Addr::from(ip)))
            .expect("the pod's endpoint")
    };
    let mut ct: aya::maps::HashMap<aya::maps::MapData, CtKey, CtValue> = aya::maps::HashMap::try_from(
        aya::maps::Map::HashMap(aya::maps::MapData::from_pin(dir.join("bh_ct")).expect("the conntrack pin")),
    )
    .expect("conntrack");
    let now = bulkhead_datapath::abi::ktime_ns().expect("clock");
    let port = 40_123u16;
    let forged: Vec<CtKey> = [(backend, DIR_INGRESS)]
        .into_iter()
        .map(|(at, dir)| {
            let (ifindex, ep) = endpoint_of(at);
            let key = CtKey {
                saddr: Addr::from(staging),
                daddr: Addr::from(backend),
                sport: port.to_be_bytes(),
                dport: 8080u16.to_be_bytes(),
                proto: 6,
                dir: dir as u8,
                ifindex,
                ..Default::default()
            };
            let value = CtValue {
                last_seen: now,
                slot: ep.slot[dir],
                policy_port: 8080,
                flags: CT_SEEN_REPLY,
                ..Default::default()
            };
            ct.insert(key, value, 0).expect("tamper");
            key
        })
        .collect();
    let t0 = std::time::Instant::now();
    bulkhead_lab::wait_until("the forged entry removed", std::time::Duration::from_millis(2500), || {
        forged.iter().all(|k| ct.get(k, 0).is_err())
    })
    .expect("the agent removes a conntrack entry no policy admits");
    eprintln!("forged conntrack entry removed after {:?}", t0.elapsed());
    let url = "http://backend.production:8080/api/v1/products";
    let port = port.to_string();
    let through = lab.lab(&[
        "exec",
        "staging/debug-tools",
        "--",
        "curl",
        "-sf",
        "-o",
        "/dev/null",
        "--max-time",
        "1",
        "--local-port",
        &port,
        url,
    ]);
    assert!(!through.status.success(), "the forged connection's tuple still reaches the backend");
    assert!(denied(&lab), "staging reaches the backend after the conntrack repair");
    // Only the forged entry: the allowed connections of this test (through
    // the L7 proxy at both ends) and staging's own were never taken for
    // drift.
    let metrics = lab.metrics();
    assert!(metrics.contains("bulkhead_drift_repaired_total{kind=\"conntrack-unallowed\"} 1"), "{metrics}");

    // Every repair is also an agent record among the flows, and in the
    // signed flow log.
    let kinds_in = |flows: Vec<bulkhead_flow::model::Flow>| {
        let mut k: Vec<String> = flows.into_iter().filter_map(|f| f.drift).map(|d| d.kind).collect();
        k.sort();
        k.dedup();
        k
    };
    let want = ["conntrack-unallowed", "ipcache-changed", "link-pin", "map-pin"];
    let observed = || -> Vec<bulkhead_flow::model::Flow> {
        let out = lab.ok(&["observe", "--type", "agent", "--last", "1000", "-o", "json"]);
        out.lines().map(|l| bulkhead_flow::model::decode_json(l.as_bytes()).expect("a flow record")).collect()
    };
    // The records are written by a background thread: give it a moment.
    let _ = bulkhead_lab::wait_until("the records observed", std::time::Duration::from_secs(2), || {
        kinds_in(observed()) == want
    });
    let flows = observed();
    assert!(flows.iter().all(|f| f.event_kind() == 130), "only agent records: {flows:?}");
    assert_eq!(kinds_in(flows), want);
    let log_dir = std::path::PathBuf::from(format!("/run/bulkhead/{}/agent/flows", lab.name));
    let logged = || {
        let image = bulkhead_agent::observer::flowlog::read_log(&log_dir).expect("the flow log");
        let mut flows = Vec::new();
        for (_, segment) in &image.segments {
            bulkhead_flow::log::read_flows(segment, |f| flows.push(f.expect("a logged flow")));
        }
        (image, flows)
    };
    let _ = bulkhead_lab::wait_until("the records logged", std::time::Duration::from_secs(2), || {
        kinds_in(logged().1) == want
    });
    let (image, flows) = logged();
    assert_eq!(kinds_in(flows), want);
    let key = lab.ok(&["flows", "key", "-q"]).trim().to_string();
    assert!(image.verify(Some(&bulkhead_flow::log::parse_public_key(&key).expect("key"))).ok(), "the log verifies");
}

#[test]
fn down_after_a_crash_removes_everything() {
    if !privileged("down_after_a_crash_removes_everything") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cluster = dir.join("cluster.yaml");
    std::fs::write(
        &cluster,
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: c}}\n\
         - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: c}, spec: {containers: [{name: a, ports: [{name: http, containerPort: 80}]}]}}\n\
         - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: c}}\n",
    )
    .expect("write");
    let lab = Lab::up("crash", &cluster, &[]);
    let pid = lab.state()["agent_pid"].as_i64().expect("agent pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    std::fs::remove_file(format!("/run/bulkhead/{}/state.json", lab.name)).expect("lose the state");
    let (name, socket) = (lab.name.clone(), lab.socket.clone());
    drop(lab);
    assert_gone(&name, &socket);
    let _ = std::fs::remove_dir_all(&dir);
}
