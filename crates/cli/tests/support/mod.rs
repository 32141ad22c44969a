//! The privileged end-to-end tests' fixture: the built binaries, a lab
//! that is taken down however the test ends, and JSON from commands.
//!
//! In CI (`CI` set) a test that cannot run here fails; elsewhere it is
//! skipped with a message saying how to run it.

#![allow(dead_code, reason = "each test binary uses part of the fixture")]

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether privileged tests can run; panics in CI when they cannot.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let missing: Vec<&str> = ["/usr/lib/cni/ptp", "/usr/sbin/dnsmasq", "/usr/bin/curl"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = if root {
        format!("{} missing (bash scripts/test.sh installs them)", missing.join(", "))
    } else {
        "it needs root".to_string()
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run in CI: {why}");
    }
    eprintln!("skipping {test}: {why}; run `sudo -E cargo test -p bulkhead` (CI=1 makes this a failure)");
    false
}

pub fn bulkhead() -> &'static str {
    env!("CARGO_BIN_EXE_bulkhead")
}

pub fn cni() -> &'static str {
    env!("CARGO_BIN_EXE_bulkhead-cni")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A lab name (lowercase letters and digits), unique to this process and `tag`.
pub fn unique(tag: &str) -> String {
    format!("{tag}{}", std::process::id() % 100_000)
}

/// Runs `bulkhead ARGS` with the socket of `socket`.
pub fn run(socket: &Path, args: &[&str]) -> Output {
    Command::new(bulkhead()).args(args).env("BULKHEAD_SOCKET", socket).output().expect("run bulkhead")
}

/// Runs `bulkhead ARGS`, asserts success, returns stdout.
pub fn ok(socket: &Path, args: &[&str]) -> String {
    let out = run(socket, args);
    assert!(
        out.status.success(),
        "bulkhead {}: {}\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `bulkhead ARGS -o json` (ARGS include the `-o json`), parses stdout.
pub fn json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let text = ok(socket, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bulkhead {}: not JSON ({e}): {text}", args.join(" ")))
}

/// Starts `bulkhead agent` with a state directory, socket, pin root and
/// node namespace (plus `extra` flags), its log in `log`, and waits until it
/// answers.
pub fn spawn_agent(
    state: &Path,
    socket: &Path,
    pins: &Path,
    node: &Path,
    extra: &[&str],
    log: &Path,
) -> std::process::Child {
    let out = std::fs::File::create(log).expect("agent log");
    let child = Command::new(bulkhead())
        .arg("agent")
        .arg("--state-dir")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .arg("--pin-root")
        .arg(pins)
        .arg("--node-netns")
        .arg(node)
        .args(["--web-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start the agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run(socket, &["status"]).status.code() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// A lab that is taken down when dropped.
pub struct Lab {
    pub name: String,
    pub socket: PathBuf,
}

impl Lab {
    /// `bulkhead lab up CLUSTER [EXTRA…]` under a unique name and socket.
    pub fn up(tag: &str, cluster: &Path, extra: &[&str]) -> Lab {
        let name = unique(tag);
        let socket = PathBuf::from(format!("/run/bulkhead/{name}.sock"));
        let lab = Lab { name, socket };
        let _ = run(&lab.socket, &["lab", "--name", &lab.name, "down"]);
        let cluster = cluster.to_str().expect("UTF-8 path");
        let mut args = vec!["lab", "--name", &lab.name, "up", cluster];
        args.extend_from_slice(extra);
        ok(&lab.socket, &args);
        lab
    }

    /// `bulkhead ARGS` against this lab's agent.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&self.socket, args)
    }

    /// `bulkhead ARGS` with JSON output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        json(&self.socket, args)
    }

    /// `bulkhead lab --name NAME ARGS`.
    pub fn lab(&self, args: &[&str]) -> Output {
        let mut a = vec!["lab", "--name", &self.name];
        a.extend_from_slice(args);
        run(&self.socket, &a)
    }

    /// Starts another agent on this lab's state, pins and node (after its
    /// own was stopped or killed), with `extra` flags and its log in `log`.
    pub fn spawn_agent(&self, extra: &[&str], log: &Path) -> std::process::Child {
        let name = &self.name;
        let control = format!("/run/bulkhead/{name}/proxy.sock");
        let extra = [&["--proxy-control", control.as_str()][..], extra].concat();
        spawn_agent(
            Path::new(&format!("/run/bulkhead/{name}/agent")),
            &self.socket,
            Path::new(&format!("/sys/fs/bpf/bulkhead/{name}")),
            Path::new(&format!("/run/netns/bh-{name}-node")),
            &extra,
            log,
        )
    }

    /// The last `last` L7 flows matching `args` (`observe` filters), as
    /// JSON, once there are some (waiting up to 5 s).
    pub fn l7_flows(&self, last: usize, args: &[&str]) -> Vec<serde_json::Value> {
        let last = last.to_string();
        let mut a = vec!["observe", "--type", "l7", "--last", &last, "-o", "json"];
        a.extend_from_slice(args);
        bulkhead_lab::wait_until("L7 flows", std::time::Duration::from_secs(5), || !self.ok(&a).trim().is_empty())
            .expect("flows");
        self.ok(&a)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("flow JSON")["flow"].clone())
            .collect()
    }

    /// The agent's metrics page.
    pub fn metrics(&self) -> String {
        let status = self.json(&["status", "-o", "json"]);
        let web = status["flows"]["web"].as_str().expect("web address");
        let out = Command::new("curl").args(["-sf", &format!("{web}metrics")]).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kill -9` of the lab's proxy, once it is gone: its command line.
    pub fn kill_proxy(&self) -> Vec<String> {
        let marker = format!("/run/bulkhead/{}/proxy.sock", self.name);
        let found = std::fs::read_dir("/proc").ok().and_then(|rd| {
            rd.flatten().find_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let args: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (args.get(1).map(String::as_str) == Some("proxy") && args.contains(&marker)).then_some((pid, args))
            })
        });
        let (pid, args) = found.expect("the lab's proxy");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill proxy");
        bulkhead_lab::wait_until("the proxy gone", std::time::Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        })
        .expect("kill");
        args
    }

    /// The lab's recorded state.
    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(format!("/run/bulkhead/{}/state.json", self.name)).expect("lab state");
        serde_json::from_str(&text).expect("lab state JSON")
    }

    /// The network namespace path of pod `key`.
    pub fn netns(&self, key: &str) -> PathBuf {
        let st = self.state();
        let pod = st["pods"].as_array().expect("pods").iter().find(|p| p["key"] == key).expect("lab pod");
        Path::new("/run/netns").join(pod["netns"].as_str().expect("netns name"))
    }

    /// The first address of pod `key` in the family of `v4`.
    pub fn ip(&self, key: &str, v4: bool) -> std::net::IpAddr {
        let st = self.state();
        let pod = st["pods"].as_array().expect("pods").iter().find(|p| p["key"] == key).expect("lab pod");
        pod["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .filter_map(|i| i.as_str()?.parse::<std::net::IpAddr>().ok())
            .find(|i| i.is_ipv4() == v4)
            .expect("address of that family")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.lab(&["down"]);
        if !out.status.success() {
            eprintln!("lab down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Starts a proxy again with the command line `args` (from
/// [`Lab::kill_proxy`]), once it says it is ready.
pub fn restart_proxy(args: &[String]) -> std::process::Child {
    use std::io::Read as _;
    let mut proxy = Command::new(&args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restart the proxy");
    let mut ready = [0u8; 6];
    proxy.stdout.as_mut().expect("stdout").read_exact(&mut ready).expect("ready line");
    proxy
}

/// Nothing of lab `name` is left on the machine.
pub fn assert_gone(name: &str, socket: &Path) {
    let prefix = format!("bh-{name}-");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new(&format!("/sys/fs/bpf/bulkhead/{name}")).exists(), "pins left");
    assert!(!Path::new(&format!("/run/bulkhead/{name}")).exists(), "lab files left");
    assert!(!socket.exists(), "socket left");
    for pattern in [format!("/run/bulkhead/{name}/"), format!("lab --name {name} respond")] {
        let procs = Command::new("pgrep").args(["-f", &pattern]).output().expect("pgrep");
        assert!(procs.stdout.is_empty(), "processes left ({pattern}): {}", String::from_utf8_lossy(&procs.stdout));
    }
}
