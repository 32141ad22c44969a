//! `bulkhead lab`: a local cluster of network-namespace pods behind a node
//! namespace, with the agent enforcing on it.
//!
//! `up` creates the node namespace, starts an agent for it, applies the
//! cluster file, and creates one pod per Pod manifest through the CNI
//! chain ptp → bulkhead-cni exactly as a runtime would, then starts each
//! pod's responder (its container ports) and the lab's DNS (dnsmasq; `POD.NS`
//! names). What it made is recorded in `state.json` as it goes, so `down`
//! removes everything, also after a crash halfway through `up`.

mod probe;
mod respond;
pub mod world;

use std::io::BufRead as _;
use std::net::IpAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulkhead_api::client::Client;
use bulkhead_api::{ApplyRequest, ApplyResponse, SourceFile, Status};
use bulkhead_datapath::netns;
use bulkhead_lab::pods::{self, Attachment, Chain, NODE_SYSCTLS, POD_SYSCTLS};
use bulkhead_policy::api::Object;
use bulkhead_policy::api::decode::DecodeOptions;
use bulkhead_policy::cidr::Cidr;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::live::{AgentAddr, with_details};

pub use probe::ProbeArgs;

#[derive(Debug, Args)]
pub struct LabArgs {
    /// The lab's name: several labs can exist side by side (namespaces
    /// `bh-NAME-…`, files under /run/bulkhead/NAME).
    #[arg(long, global = true, default_value = "lab", value_parser = lab_name)]
    pub name: String,
    #[command(subcommand)]
    pub command: LabCommand,
}

fn lab_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Ok(s.into())
    } else {
        Err("a lab name is 1-16 lowercase letters or digits (it becomes part of namespace and file names)".into())
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create one network-namespace pod per Pod manifest, with the agent enforcing on them.
    ///
    /// Takes the file `policy reach --cluster` takes (Namespaces and Pods; `kubectl get
    /// ns,pods -A -o yaml` works). Pods keep their `status.podIPs`, which must lie in
    /// 198.18.0.0/15 or fd00:b::/64; pods without addresses get some there. Container
    /// ports are served (TCP/UDP echo, HTTP on ports named http*); names `POD.NAMESPACE`
    /// resolve inside the lab.
    ///
    /// Example: bulkhead lab up examples/seed/cluster.yaml
    Up(UpArgs),
    /// Remove the lab: pods, node, agent, pins and files (also after a crash).
    Down(DownArgs),
    /// Run a command inside a pod's network namespace.
    ///
    /// Example: bulkhead lab exec production/frontend -- curl -s http://backend.production:8080/
    Exec(ExecArgs),
    /// Probe every pod pair on every port and print what got through beside what the
    /// policies say, marking each difference (like cyclonus).
    Probe(ProbeArgs),
    /// (internal) Serve a pod's container ports inside its network namespace.
    #[command(hide = true)]
    Respond(respond::RespondArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Namespaces and Pods (and optionally policies).
    pub cluster: PathBuf,
    /// Policies to apply once the pods are up.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub policies: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none (like kubectl -n).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The organisation's Guardrails for the lab's agent (`agent
    /// --guardrails`): an apply that breaks one more of them is refused.
    #[arg(long, value_name = "FILE")]
    pub guardrails: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The lab agent's socket, when the lab's state file is lost (else the one it recorded).
    #[command(flatten)]
    pub agent: AgentAddr,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The pod, NAMESPACE/POD.
    pub pod: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What a lab is made of; saved after every step of `up`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub node_netns: String,
    pub socket: PathBuf,
    pub pin_root: PathBuf,
    pub agent_pid: Option<u32>,
    pub pods: Vec<LabPod>,
    pub dns: Option<IpAddr>,
    /// Hosts outside the cluster (`ExternalHost`).
    #[serde(default)]
    pub hosts: Vec<LabHost>,
}

/// One host outside the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    /// `metadata.name`.
    pub name: String,
    /// Its network namespace's name.
    pub netns: String,
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// One pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// `namespace/name`.
    pub key: String,
    /// Its network namespace's name.
    pub netns: String,
    pub ips: Vec<IpAddr>,
}

/// Where a lab's files are.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new("/run/bulkhead").join(name)
}

impl LabState {
    fn path(name: &str) -> PathBuf {
        lab_dir(name).join("state.json")
    }

    pub fn load(name: &str) -> Result<Option<LabState>> {
        match std::fs::read(Self::path(name)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("{}", Self::path(name).display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}", Self::path(name).display())),
        }
    }

    /// The lab that must exist for `exec` and `probe`.
    pub fn require(name: &str) -> Result<LabState> {
        Self::load(name)?.ok_or_else(|| {
            anyhow::anyhow!("no lab named `{name}` is up (start one: bulkhead lab up examples/seed/cluster.yaml)")
        })
    }

    fn save(&self) -> Result<()> {
        let p = Self::path(&self.name);
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }

    pub fn pod(&self, key: &str) -> Result<&LabPod> {
        self.pods.iter().find(|p| p.key == key).ok_or_else(|| {
            anyhow::anyhow!(
                "no pod `{key}` in lab `{}` (pods: {})",
                self.name,
                self.pods.iter().map(|p| p.key.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn chain(&self) -> Result<Chain> {
        let dir = lab_dir(&self.name);
        let me = std::env::current_exe().context("locating the bulkhead binary")?;
        let here = me.parent().map(Path::to_path_buf).unwrap_or_default();
        if !here.join("bulkhead-cni").is_file() {
            bail!("bulkhead-cni is not beside {} (build both: cargo build --release)", me.display());
        }
        Ok(Chain {
            name: format!("bulkhead-{}", self.name),
            plugins: vec![
                pods::ptp_plugin(&dir.join("ipam")),
                serde_json::json!({"type": "bulkhead-cni", "socket": self.socket}),
            ],
            cni_path: vec![pods::CNI_PATH.into(), here],
            cache_dir: dir.join("cni-cache"),
        })
    }
}

pub fn run(a: LabArgs) -> Result<ExitCode> {
    if !matches!(a.command, LabCommand::Respond(_)) && !nix::unistd::Uid::effective().is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs: run it as root");
    }
    match a.command {
        LabCommand::Up(u) => up(&a.name, u),
        LabCommand::Down(d) => down(&a.name, &d.agent.socket).map(|()| ExitCode::SUCCESS),
        LabCommand::Exec(e) => exec(&a.name, e),
        LabCommand::Probe(p) => probe::run(&a.name, p),
        LabCommand::Respond(r) => respond::run(r),
    }
}

fn node_name(lab: &str) -> String {
    format!("bh-{lab}-node")
}

/// Addresses for pods whose manifest has none.
fn auto_address(i: usize) -> [IpAddr; 2] {
    let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
    [
        IpAddr::from([198, 19, 200 + hi, lo]),
        IpAddr::from([0xfd00, 0xb, 0, 0, 0, 0, 0x200 + u16::from(hi), u16::from(lo)]),
    ]
}

fn up(name: &str, a: UpArgs) -> Result<ExitCode> {
    for (path, fix) in [
        (format!("{}/ptp", pods::CNI_PATH), "apt-get install containernetworking-plugins"),
        ("/usr/sbin/dnsmasq".to_string(), "apt-get install dnsmasq-base"),
    ] {
        if !Path::new(&path).exists() {
            bail!("{path} is missing ({fix})");
        }
    }
    if LabState::load(name)?.is_some() {
        bail!("lab `{name}` is already up (bulkhead lab down, or --name for another)");
    }
    let opts = DecodeOptions { default_namespace: a.namespace.clone() };
    let loaded = inputs::load(std::slice::from_ref(&a.cluster), &opts)?;
    if loaded.errors() > 0 {
        for d in &loaded.diagnostics {
            eprintln!("{d}");
        }
        bail!("{}: {} error(s); the lab was not created", a.cluster.display(), loaded.errors());
    }
    let mut pods_in: Vec<bulkhead_policy::api::Pod> = loaded
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) if !p.host_network => Some(p.clone()),
            _ => None,
        })
        .collect();
    if pods_in.is_empty() {
        bail!("{}: no Pod objects (the lab creates one network-namespace pod per Pod)", a.cluster.display());
    }
    let hosts = world::read(&std::fs::read_to_string(&a.cluster)?, &a.cluster)?;
    for h in &hosts {
        if let Some(p) = pods_in.iter().find(|p| p.ips.iter().any(|ip| h.addrs.contains(ip))) {
            bail!("ExternalHost {}: an address of pod {} (fix: give the host addresses of its own)", h.name, p.key());
        }
    }
    // Pods without addresses get some, and the agent learns them as if
    // their status said so.
    let mut addressed = Vec::new();
    let lab_v4: Cidr = pods::LAB_V4.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let lab_v6: Cidr = pods::LAB_V6.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, p) in pods_in.iter_mut().enumerate() {
        if p.ips.is_empty() {
            p.ips = auto_address(i).to_vec();
            let ports: Vec<serde_json::Value> = p
                .ports
                .iter()
                .map(|np| serde_json::json!({"name": np.name, "containerPort": np.port, "protocol": np.protocol}))
                .collect();
            addressed.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                "spec": {"serviceAccountName": p.service_account, "containers": [{"name": "c", "ports": ports}]},
                "status": {"podIPs": p.ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>()},
            }));
        }
        for ip in &p.ips {
            if !(lab_v4.contains_ip(*ip) || lab_v6.contains_ip(*ip)) || *ip == IpAddr::from([198, 18, 0, 1]) {
                bail!(
                    "pod {}: status.podIPs has {ip}, outside the lab's subnets (fix: use addresses in {} or {}; 198.18.0.1 is the node's)",
                    p.key(),
                    pods::LAB_V4,
                    pods::LAB_V6
                );
            }
        }
    }
    std::fs::create_dir_all(lab_dir(name))?;
    let mut st = LabState {
        name: name.into(),
        node_netns: node_name(name),
        socket: a.agent.socket.clone(),
        pin_root: Path::new(bulkhead_datapath::Datapath::DEFAULT_ROOT).join(name),
        ..LabState::default()
    };
    st.save()?;
    let extra = if addressed.is_empty() {
        String::new()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": addressed}).to_string()
    };
    if let Err(e) = build(&mut st, &a, &pods_in, &hosts, &extra) {
        eprintln!("lab up failed: {e:#}; removing what was created");
        if st.agent_pid.is_some() {
            eprint!("{}", log_tail(name));
        }
        let _ = down(name, &a.agent.socket);
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

fn log_tail(name: &str) -> String {
    let log = std::fs::read_to_string(lab_dir(name).join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!("agent log ({}):\n{tail}\n", lab_dir(name).join("agent.log").display())
    }
}

fn build(
    st: &mut LabState,
    a: &UpArgs,
    pods_in: &[bulkhead_policy::api::Pod],
    hosts: &[world::ExternalHost],
    extra: &str,
) -> Result<()> {
    let t0 = Instant::now();
    let node = pods::create_netns(&st.node_netns, NODE_SYSCTLS).context("creating the node namespace")?;
    st.save()?;
    start_proxy(st, &node)?;
    start_agent(st, &node, a.guardrails.as_deref())?;
    let client = Client::new(&st.socket);

    let mut files =
        vec![SourceFile { name: a.cluster.display().to_string(), text: std::fs::read_to_string(&a.cluster)? }];
    if !extra.is_empty() {
        files.push(SourceFile { name: "(lab: addresses for pods without status.podIPs)".into(), text: extra.into() });
    }
    let _: ApplyResponse = client
        .post("/apply", &ApplyRequest { files, namespace: a.namespace.clone(), dry_run: false })
        .map_err(with_details)?;

    let chain = st.chain()?;
    std::fs::write(lab_dir(&st.name).join("bulkhead.conflist"), serde_json::to_vec_pretty(&chain.conflist())?)?;
    let total = pods_in.len();
    for (i, p) in pods_in.iter().enumerate() {
        let ns_name = format!("bh-{}-{i}", st.name);
        let netns = pods::create_netns(&ns_name, POD_SYSCTLS).with_context(|| format!("pod {}", p.key()))?;
        st.pods.push(LabPod { key: p.key(), netns: ns_name.clone(), ips: p.ips.clone() });
        st.save()?;
        chain
            .add(&node, &attachment(&ns_name, &netns, &p.namespace, &p.name, &p.ips))
            .with_context(|| format!("pod {}", p.key()))?;
        eprintln!(
            "[{}/{total}] pod {} up ({})",
            i + 1,
            p.key(),
            p.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
    }

    // The world: each ExternalHost behind the node, serving its ports.
    for (i, h) in hosts.iter().enumerate() {
        let ns_name = format!("bh-{}-w{i}", st.name);
        st.hosts.push(LabHost {
            name: h.name.clone(),
            netns: ns_name.clone(),
            names: h.names.clone(),
            ips: h.addrs.clone(),
        });
        st.save()?;
        let ns = world::create(&st.node_netns, &ns_name, i, h)?;
        if !h.ports.is_empty() {
            let mut cmd = Command::new(std::env::current_exe()?);
            let who = format!("world/{}", h.name);
            cmd.args(["lab", "--name", &st.name, "respond", "--pod", &who, "--ports", &h.ports.join(",")]);
            spawn_ready(&ns, cmd, &lab_dir(&st.name).join("responders.log"))
                .with_context(|| format!("responder of ExternalHost {}", h.name))?;
        }
        eprintln!(
            "host {} up ({}; {})",
            h.name,
            h.names.join(", "),
            h.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
    }

    // DNS: in the pod that serves port 53 under a dns* name (kube-dns), else on the node.
    let dns_pod = pods_in.iter().position(|p| p.ports.iter().any(|np| np.port == 53 && np.name.starts_with("dns")));
    let hosts_file = lab_dir(&st.name).join("hosts");
    let mut text = String::new();
    for p in pods_in {
        for ip in &p.ips {
            text.push_str(&format!("{ip} {}.{}\n", p.name, p.namespace));
        }
    }
    for h in hosts {
        for ip in &h.addrs {
            text.push_str(&format!("{ip} {}\n", h.names.join(" ")));
        }
    }
    std::fs::write(&hosts_file, text)?;
    let (dns_ns, dns_ips) = match dns_pod {
        Some(i) => (netns::named(&st.pods[i].netns), pods_in[i].ips.clone()),
        None => (node.clone(), vec![IpAddr::from([198, 18, 0, 1])]),
    };
    let mut cmd = Command::new("/usr/sbin/dnsmasq");
    cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--user=root", "--local=/#/"])
        // Who asked what: the lab's DNS log shows each query's client.
        .arg("--log-queries")
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .arg(format!("--pid-file={}", lab_dir(&st.name).join("dnsmasq.pid").display()))
        .arg(format!("--log-facility={}", lab_dir(&st.name).join("dnsmasq.log").display()));
    for ip in &dns_ips {
        cmd.arg(format!("--listen-address={ip}"));
    }
    spawn_in(&dns_ns, cmd)?;
    st.dns = dns_ips.first().copied();
    st.save()?;
    // Up once it answers: a pod's first lookup must not race its start.
    if let Some(dns) = st.dns {
        let asks = || {
            netns::run_in(&dns_ns, || {
                let q = bulkhead_lab::dns::query("lab.", bulkhead_lab::dns::RecordType::A, 1)?;
                bulkhead_lab::dns::exchange(
                    std::net::SocketAddr::new(dns, 53),
                    &q,
                    bulkhead_lab::dns::Transport::Udp,
                    Duration::from_millis(200),
                )
            })
            .is_ok_and(|r| r.is_ok())
        };
        bulkhead_lab::wait_until("the lab's DNS answering", Duration::from_secs(10), asks)
            .with_context(|| format!("dnsmasq at {dns} (log: dnsmasq.log in the lab's directory)"))?;
    }

    // Responders, and each pod's resolver configuration (ip netns exec
    // bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf).
    let me = std::env::current_exe()?;
    for (i, p) in pods_in.iter().enumerate() {
        let lp = st.pods[i].clone();
        let etc = Path::new("/etc/netns").join(&lp.netns);
        std::fs::create_dir_all(&etc)?;
        if let Some(dns) = st.dns {
            std::fs::write(
                etc.join("resolv.conf"),
                format!("nameserver {dns}\nsearch {}\noptions ndots:1\n", p.namespace),
            )?;
        }
        let ports: Vec<String> = p
            .ports
            .iter()
            .filter(|np| !(Some(i) == dns_pod && np.port == 53))
            .map(|np| {
                format!(
                    "{}/{}/{}",
                    np.port,
                    bulkhead_policy::repository::Proto::expand(np.protocol)[0].as_str(),
                    np.name
                )
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let mut cmd = Command::new(&me);
        cmd.args(["lab", "--name", &st.name, "respond", "--pod", &lp.key, "--ports", &ports.join(",")]);
        let log = lab_dir(&st.name).join("responders.log");
        spawn_ready(&netns::named(&lp.netns), cmd, &log).with_context(|| format!("responder of {}", lp.key))?;
    }

    if !a.policies.is_empty() {
        let files = inputs::read(&a.policies)?.into_iter().map(|(name, text)| SourceFile { name, text }).collect();
        let r: ApplyResponse = client
            .post("/apply", &ApplyRequest { files, namespace: a.namespace.clone(), dry_run: false })
            .map_err(with_details)?;
        print!("{}", crate::live::render_apply(&r, false));
    }

    let eps: Vec<bulkhead_api::EndpointInfo> = client.get("/endpoints").map_err(with_details)?;
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            let ports = pods_in
                .iter()
                .find(|p| p.key() == e.pod)
                .map(|p| {
                    p.ports
                        .iter()
                        .map(|np| {
                            format!(
                                "{}/{}",
                                np.port,
                                bulkhead_policy::repository::Proto::expand(np.protocol)[0].as_str()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                e.pod.clone(),
                e.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                e.identity.to_string(),
                e.host_if.clone(),
                if ports.is_empty() { "-".into() } else { ports },
            ]
        })
        .collect();
    print!("{}", crate::live::table(&["POD", "IPS", "IDENTITY", "INTERFACE", "SERVES"], &rows));
    println!(
        "lab `{}` up in {:.1} s: {} pods, agent pid {} on {}, DNS {} (names POD.NAMESPACE)",
        st.name,
        t0.elapsed().as_secs_f64(),
        st.pods.len(),
        st.agent_pid.unwrap_or(0),
        st.socket.display(),
        st.dns.map_or("-".into(), |d| d.to_string())
    );
    if let Ok(s) = Client::new(&st.socket).get::<Status>("/status")
        && !s.flows.web.is_empty()
    {
        println!(
            "service map {} · metrics {}metrics · flows: bulkhead observe --socket {}",
            s.flows.web,
            s.flows.web,
            st.socket.display()
        );
    }
    Ok(())
}

fn attachment(container_id: &str, netns: &Path, ns: &str, pod: &str, ips: &[IpAddr]) -> Attachment {
    Attachment {
        container_id: container_id.into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), ns.into()),
            ("K8S_POD_NAME".into(), pod.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
        ],
        ips: ips.to_vec(),
    }
}

fn start_agent(st: &mut LabState, node: &Path, guardrails: Option<&Path>) -> Result<()> {
    if Client::new(&st.socket).get::<Status>("/status").is_ok() {
        bail!(
            "an agent already serves {} (the lab starts its own: stop that one, or pass --socket for the lab's)",
            st.socket.display()
        );
    }
    let dir = lab_dir(&st.name);
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let me = std::env::current_exe()?;
    let guardrails = match guardrails {
        Some(g) => vec!["--guardrails".into(), std::path::absolute(g)?.into_os_string()],
        None => Vec::new(),
    };
    let child = Command::new(me)
        .arg("agent")
        .args(guardrails)
        .arg("--state-dir")
        .arg(dir.join("agent"))
        .arg("--socket")
        .arg(&st.socket)
        .arg("--pin-root")
        .arg(&st.pin_root)
        .arg("--node-netns")
        .arg(node)
        .arg("--proxy-control")
        .arg(proxy_control(&st.name))
        // Several labs can run side by side: each serves its metrics and
        // service map on a port of its own (`status` names it).
        .args(["--web-listen", "127.0.0.1:0", "--node-name", &format!("lab-{}", st.name)])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    st.agent_pid = Some(child.id());
    st.save()?;
    let client = Client::new(&st.socket).with_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get::<Status>("/status").is_ok() {
            return Ok(());
        }
        if !Path::new(&format!("/proc/{}", child.id())).exists() || Instant::now() > deadline {
            bail!("the agent did not come up\n{}", log_tail(&st.name));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lab proxy's control socket.
fn proxy_control(name: &str) -> PathBuf {
    lab_dir(name).join("proxy.sock")
}

/// Starts the L7 proxy in the node's namespace (on the default port: each
/// lab's node has its own) and waits until it listens.
fn start_proxy(st: &LabState, node: &Path) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("proxy").arg("--node-netns").arg(node).arg("--control").arg(proxy_control(&st.name));
    spawn_ready(node, cmd, &lab_dir(&st.name).join("proxy.log"))
        .context("starting the L7 proxy (log: proxy.log in the lab's directory)")
}

/// Starts `cmd` inside the network namespace at `ns`, detached from this
/// process (its own process group, no terminal; `down` finds it by its
/// command line).
fn spawn_in(ns: &Path, mut cmd: Command) -> Result<()> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    netns::run_in(ns, move || cmd.spawn())??;
    Ok(())
}

/// Like [`spawn_in`] (with stderr to `log`), and waits for the child to
/// print `ready`.
fn spawn_ready(ns: &Path, mut cmd: Command, log: &Path) -> Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).process_group(0);
    let mut child = netns::run_in(ns, move || cmd.spawn())??;
    let out = child.stdout.take().context("responder stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("it did not start (said {:?})", line.trim());
    }
    Ok(())
}

/// Every process lab `name` started: its agent (state under the lab's
/// directory), dnsmasq (hosts file there) and the responders (`lab --name
/// NAME respond`). Found by command line, so a crash that lost the state
/// file loses none of them.
fn lab_processes(name: &str) -> Vec<nix::unistd::Pid> {
    let markers = [format!("/run/bulkhead/{name}/"), format!("lab --name {name} respond")];
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            markers.iter().any(|m| cmdline.contains(m.as_str()))
        })
        .map(|pid| nix::unistd::Pid::from_raw(pid as i32))
        .collect()
}

/// SIGTERM to each, then SIGKILL to those still there after 3 s.
fn stop_processes(pids: &[nix::unistd::Pid]) {
    use nix::sys::signal::{Signal, kill};
    for p in pids {
        let _ = kill(*p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let alive = |p: &nix::unistd::Pid| {
        // Reap it if it is our child (lab up failing midway).
        let _ = nix::sys::wait::waitpid(*p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        Path::new(&format!("/proc/{p}")).exists()
    };
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in pids.iter().filter(|p| alive(p)) {
        let _ = kill(*p, Signal::SIGKILL);
    }
}

/// Removes everything lab `name` created that still exists.
pub fn down(name: &str, socket: &Path) -> Result<()> {
    let st = LabState::load(name)?.unwrap_or_else(|| LabState {
        name: name.into(),
        socket: socket.to_owned(),
        node_netns: node_name(name),
        pin_root: Path::new(bulkhead_datapath::Datapath::DEFAULT_ROOT).join(name),
        ..LabState::default()
    });
    let node = netns::named(&st.node_netns);
    let mut problems = Vec::new();
    // Pods through the chain (bulkhead-cni DEL, then ptp DEL), while the agent runs.
    if node.exists()
        && let Ok(chain) = st.chain()
    {
        for p in &st.pods {
            let (ns, pod) = p.key.split_once('/').unwrap_or(("", &p.key));
            let pod_ns = netns::named(&p.netns);
            if pod_ns.exists()
                && let Err(e) = chain.del(&node, &attachment(&p.netns, &pod_ns, ns, pod, &p.ips))
            {
                problems.push(format!("{}: {e}", p.key));
            }
        }
    }
    stop_processes(&lab_processes(name));
    // Whatever is left by the name pattern (a crash before the state was saved).
    let prefix = format!("bh-{name}-");
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&prefix) {
                if let Err(e) = pods::delete_netns(&n) {
                    problems.push(format!("netns {n}: {e}"));
                }
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&n));
            }
        }
    }
    for p in &st.pods {
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&p.netns));
    }
    if st.pin_root.exists()
        && let Err(e) = std::fs::remove_dir_all(&st.pin_root)
    {
        problems.push(format!("{}: {e}", st.pin_root.display()));
    }
    if let Some(parent) = st.pin_root.parent() {
        let _ = std::fs::remove_dir(parent); // only when no other agent pins there
    }
    // The socket, unless some other agent serves it.
    if Client::new(&st.socket).with_timeout(Duration::from_secs(1)).get::<Status>("/status").is_err() {
        let _ = std::fs::remove_file(&st.socket);
    }
    let dir = lab_dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if problems.is_empty() {
        println!("lab `{name}` is down: pods, node namespace, agent, pins and files removed");
        Ok(())
    } else {
        bail!("lab `{name}` removed, with problems:\n{}", problems.join("\n"))
    }
}

fn exec(name: &str, a: ExecArgs) -> Result<ExitCode> {
    let st = LabState::require(name)?;
    let pod = st.pod(&a.pod)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(&a.command)
        .status()
        .with_context(|| format!("running {:?} in {}", a.command, a.pod))?;
    Ok(ExitCode::from(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1))))
}
