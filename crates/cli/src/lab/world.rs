//! The lab's world: hosts outside the cluster that a cluster file declares
//! as `lab.bulkhead.io/v1alpha1 ExternalHost`, each a network namespace of
//! its own behind the node, reached by pods as identity `world` (or the
//! identity a DNS answer teaches), serving its ports, its names in the
//! lab's DNS.
//!
//! ```yaml
//! apiVersion: lab.bulkhead.io/v1alpha1
//! kind: ExternalHost
//! metadata: {name: stripe}
//! spec:
//!   names: [api.stripe.com]
//!   addresses: [198.18.100.10, "fd00:b::100:10"]
//!   ports: [{port: 443, protocol: TCP}, {port: 80, protocol: TCP}]
//! ```

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, Result};
use bulkhead_lab::pods::{self, POD_SYSCTLS, ip};
use bulkhead_policy::cidr::Cidr;
use bulkhead_policy::yaml::{Node, Value, parse_documents};

/// The lab-only kind's apiVersion.
pub const API_VERSION: &str = "lab.bulkhead.io/v1alpha1";

/// One host outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalHost {
    /// `metadata.name`.
    pub name: String,
    /// Its DNS names, as the lab's DNS answers them.
    pub names: Vec<String>,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Its ports, as `PORT/PROTO/NAME` for the responder.
    pub ports: Vec<String>,
}

/// The node side's address on each world link (the host's gateway).
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";

/// Every ExternalHost of `text` (a cluster file, documents and `List`
/// items), checked: names, addresses in the lab's subnets, ports.
pub fn read(text: &str, file: &Path) -> Result<Vec<ExternalHost>> {
    let docs = parse_documents(text).map_err(|e| anyhow::anyhow!("{}:{e}", file.display()))?;
    let mut objects = Vec::new();
    for d in &docs {
        match (d.get("kind").and_then(Node::as_str), d.get("items")) {
            (Some("List"), Some(Node { value: Value::Seq(items), .. })) => objects.extend(items.iter()),
            _ => objects.push(d),
        }
    }
    let lab_v4: Cidr = pods::LAB_V4.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let lab_v6: Cidr = pods::LAB_V6.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for o in objects {
        if o.get("kind").and_then(Node::as_str) != Some("ExternalHost") {
            continue;
        }
        let at = |n: &Node, field: &str, msg: String| {
            anyhow::anyhow!("{}:{}:{}: ExternalHost {field}: {msg}", file.display(), n.pos.line, n.pos.col)
        };
        if o.get("apiVersion").and_then(Node::as_str) != Some(API_VERSION) {
            return Err(at(o, "apiVersion", format!("must be {API_VERSION}")));
        }
        let name = o
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Node::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| at(o, "metadata.name", "missing (fix: name the host, e.g. `stripe`)".into()))?
            .to_owned();
        let spec = o.get("spec").ok_or_else(|| at(o, "spec", "missing".into()))?;
        let list = |field: &str| -> Result<Vec<&Node>> {
            match spec.get(field) {
                Some(Node { value: Value::Seq(items), .. }) => Ok(items.iter().collect()),
                Some(n) => Err(at(n, &format!("spec.{field}"), "must be a list".into())),
                None => Ok(Vec::new()),
            }
        };
        let mut names = Vec::new();
        for n in list("names")? {
            let s = n.as_str().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
            let valid = !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                return Err(at(n, "spec.names", format!("{s:?} is not a DNS name (fix: e.g. api.stripe.com)")));
            }
            names.push(s);
        }
        let mut addrs = Vec::new();
        for n in list("addresses")? {
            let ip: IpAddr = n
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| at(n, "spec.addresses", "not an IP address".into()))?;
            if !(lab_v4.contains_ip(ip) || lab_v6.contains_ip(ip)) || ip == IpAddr::from([198, 18, 0, 1]) {
                return Err(at(
                    n,
                    "spec.addresses",
                    format!("{ip} is outside the lab's subnets (fix: use {} or {})", pods::LAB_V4, pods::LAB_V6),
                ));
            }
            addrs.push(ip);
        }
        if addrs.is_empty() {
            return Err(at(spec, "spec.addresses", "at least one address is needed".into()));
        }
        let mut ports = Vec::new();
        for n in list("ports")? {
            let port = n
                .get("port")
                .and_then(Node::as_str)
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| at(n, "spec.ports[].port", "a port number 1-65535 is needed".into()))?;
            let proto = n.get("protocol").and_then(Node::as_str).unwrap_or("TCP");
            if !matches!(proto, "TCP" | "UDP") {
                return Err(at(n, "spec.ports[].protocol", format!("{proto}: TCP or UDP")));
            }
            let kind = if [80, 8080].contains(&port) { "http" } else { "port" };
            ports.push(format!("{port}/{proto}/{kind}"));
        }
        out.push(ExternalHost { name, names, addrs, ports });
    }
    Ok(out)
}

/// Creates host `i` of lab `lab` as network namespace `ns`: a link to the
/// node (`bhw{i}` there, `eth0` in the host), the host's addresses on it,
/// routes both ways. Returns its namespace path.
pub fn create(lab_node: &str, ns: &str, i: usize, host: &ExternalHost) -> Result<std::path::PathBuf> {
    let path = pods::create_netns(ns, POD_SYSCTLS).with_context(|| format!("ExternalHost {}", host.name))?;
    let node_if = format!("bhw{i}");
    ip(&["-n", lab_node, "link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    ip(&["-n", lab_node, "link", "set", &node_if, "up"])?;
    ip(&["-n", lab_node, "addr", "add", &format!("{GATEWAY_V4}/32"), "dev", &node_if])?;
    ip(&["-n", lab_node, "-6", "addr", "add", &format!("{GATEWAY_V6}/64"), "dev", &node_if, "nodad"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    for a in &host.addrs {
        let (len, fam) = if a.is_ipv4() { ("32", "-4") } else { ("128", "-6") };
        let mut add = vec!["-n", ns, fam, "addr", "add"];
        let cidr = format!("{a}/{len}");
        add.extend([cidr.as_str(), "dev", "eth0"]);
        if a.is_ipv6() {
            add.push("nodad");
        }
        ip(&add)?;
        ip(&["-n", lab_node, fam, "route", "replace", &cidr, "dev", &node_if])?;
    }
    ip(&["-n", ns, "-4", "route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"])?;
    ip(&["-n", ns, "-4", "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0"])?;
    ip(&["-n", ns, "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0"])?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_with_their_names_addresses_and_ports_and_bad_ones_named() {
        let text = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
- apiVersion: lab.bulkhead.io/v1alpha1
  kind: ExternalHost
  metadata: {name: stripe}
  spec:
    names: [API.Stripe.com.]
    addresses: [198.18.100.10, "fd00:b::100:10"]
    ports: [{port: 443, protocol: TCP}, {port: 80}]
"#;
        let hosts = read(text, Path::new("c.yaml")).expect("valid");
        assert_eq!(
            hosts,
            [ExternalHost {
                name: "stripe".into(),
                names: vec!["api.stripe.com".into()],
                addrs: vec!["198.18.100.10".parse().expect("ip"), "fd00:b::100:10".parse().expect("ip")],
                ports: vec!["443/TCP/port".into(), "80/TCP/http".into()],
            }]
        );
        let bad = text.replace("198.18.100.10", "8.8.8.8");
        let e = read(&bad, Path::new("c.yaml")).expect_err("outside the lab").to_string();
        assert!(
            e.contains("c.yaml:11:17:") && e.contains("spec.addresses: 8.8.8.8 is outside the lab's subnets"),
            "{e}"
        );
        let bad = text.replace("API.Stripe.com.", "\"bad name\"");
        let e = read(&bad, Path::new("c.yaml")).expect_err("bad name").to_string();
        assert!(e.contains("spec.names") && e.contains("is not a DNS name"), "{e}");
    }
}
