//! Port rules: `toPorts[].ports` (numbers, names, ranges, protocols),
//! `icmps`, and the L7 rules under `toPorts[].rules` with Cilium's placement
//! checks (L7 only on TCP, DNS only in egress with an explicit port, ...).

use super::cilium::{MAX_PORTS, is_port_name};
use super::{Decoder, Fields, Unknown};
use crate::api::{
    HeaderMatch, HttpRule, IcmpFamily, IcmpField, KafkaRole, KafkaRule, L7Rules, MismatchAction, PortProtocol,
    PortRule, PortSpec, Protocol,
};
use crate::diag::FieldPath;
use crate::l7;
use crate::yaml::{Node, Value};

impl Decoder<'_> {
    pub(super) fn port_rule(&mut self, node: &Node, path: &FieldPath, egress: bool, deny: bool) -> Option<PortRule> {
        let known: &[&str] = if deny {
            &["ports"]
        } else {
            &["ports", "rules", "serverNames", "terminatingTLS", "originatingTLS", "listener"]
        };
        let f = self.map(node, path, known, Unknown::Error)?;
        let mut ports = Vec::new();
        if let Some(pn) = f.value("ports") {
            let pp = f.path("ports");
            let items = self.seq(pn, &pp)?;
            if items.len() > MAX_PORTS {
                self.sink.error_fix(
                    pn.pos,
                    &pp,
                    format!("{} ports in one port rule; Cilium allows at most {MAX_PORTS}", items.len()),
                    "split them over several toPorts entries, or use port ranges (endPort)",
                );
            }
            for (i, item) in items.iter().enumerate() {
                if let Some(p) = self.port_protocol(item, &pp.index(i)) {
                    ports.push(p);
                }
            }
        }
        let mut rules = None;
        if let Some(rn) = f.value("rules") {
            rules = self.l7_rules(rn, &f.path("rules"));
        }
        if let Some(sn) = f.value("serverNames") {
            let names: Vec<String> = self.strings(sn, &f.path("serverNames"))?.into_iter().map(|(s, _)| s).collect();
            if rules.is_some() && f.get("terminatingTLS").is_none() {
                self.sink.error(
                    sn.pos,
                    &f.path("serverNames"),
                    "serverNames cannot be combined with L7 rules unless TLS is terminated (terminatingTLS)",
                );
            } else if !names.is_empty() {
                rules = Some(L7Rules::Tls(names));
            }
        }
        // Check where the L7 rules sit even when their contents are invalid,
        // so that one pass reports both kinds of problem.
        let placed = rules.clone().or_else(|| {
            let rn = f.value("rules")?;
            if rn.get("dns").is_some() {
                Some(L7Rules::Dns(Vec::new()))
            } else if rn.get("http").is_some() || rn.get("kafka").is_some() || rn.get("l7proto").is_some() {
                Some(L7Rules::Http(Vec::new()))
            } else {
                None
            }
        });
        if let Some(r) = &placed {
            self.check_l7_placement(r, &ports, &f, egress);
        }
        Some(PortRule { ports, rules })
    }

    fn check_l7_placement(&mut self, rules: &L7Rules, ports: &[PortProtocol], f: &Fields<'_>, egress: bool) {
        let rp = f.path("rules");
        let pos = f.get("rules").or(f.get("serverNames")).map(|n| n.pos).unwrap_or_default();
        let is_dns = matches!(rules, L7Rules::Dns(_));
        if is_dns && !egress {
            self.sink.error_fix(
                pos,
                &rp.field("dns"),
                "DNS rules are only allowed in egress rules",
                "move the DNS rule to an egress rule that selects the DNS server",
            );
            return;
        }
        if ports.is_empty() {
            self.sink.error_fix(
                pos,
                &f.path("ports"),
                "L7 rules need an explicit port",
                "add `ports: [{port: \"80\", protocol: TCP}]`",
            );
            return;
        }
        for (i, p) in ports.iter().enumerate() {
            let pp = f.path("ports").index(i);
            let tcp_ok = p.protocol == Protocol::Tcp || (is_dns && matches!(p.protocol, Protocol::Udp | Protocol::Any));
            if !tcp_ok {
                let fix = if is_dns { "DNS rules take protocol TCP, UDP or ANY" } else { "set `protocol: TCP`" };
                self.sink.error_fix(
                    pos,
                    &pp.field("protocol"),
                    format!("L7 rules only apply to TCP, not {}", p.protocol.as_str()),
                    fix,
                );
            }
            if is_dns && p.port == PortSpec::Number(0) {
                self.sink.error_fix(pos, &pp.field("port"), "DNS rules need an explicit port", "e.g. `port: \"53\"`");
            }
            if is_dns && p.end_port.is_some() {
                self.sink.error(pos, &pp.field("endPort"), "DNS rules do not support port ranges");
            }
        }
    }

    pub(super) fn port_protocol(&mut self, node: &Node, path: &FieldPath) -> Option<PortProtocol> {
        let f = self.map(node, path, &["port", "endPort", "protocol"], Unknown::Error)?;
        let protocol = self.protocol(f.value("protocol"), &f.path("protocol"), super::ProtocolSet::Cilium);
        let port = match f.value("port") {
            None => PortSpec::Number(0),
            Some(p) => {
                let text = match &p.value {
                    Value::Scalar { text, quoted } if super::scalar_type(text, *quoted) == super::ScalarType::Int => {
                        self.sink.error_fix(
                            p.pos,
                            &f.path("port"),
                            format!("port must be a string in Cilium policies, found the number {text}"),
                            format!("quote it: port: \"{text}\""),
                        );
                        return None;
                    }
                    _ => self.string(p, &f.path("port"))?,
                };
                match text.parse::<u32>() {
                    Ok(n) if n <= 65535 && text.chars().all(|c| c.is_ascii_digit()) => PortSpec::Number(n as u16),
                    Ok(n) if text.chars().all(|c| c.is_ascii_digit()) => {
                        self.sink.error(p.pos, &f.path("port"), format!("port {n} is out of range 0..65535"));
                        return None;
                    }
                    _ if text.is_empty() => PortSpec::Number(0),
                    _ if is_port_name(&text.to_ascii_lowercase()) => PortSpec::Name(text.to_ascii_lowercase()),
                    _ => {
                        self.sink.error(p.pos, &f.path("port"), format!("`{text}` is neither a port number (0-65535) nor a valid port name (an IANA service name: at most 15 letters, digits and '-', with at least one letter; no '_')"));
                        return None;
                    }
                }
            }
        };
        let end_port = match f.value("endPort") {
            None => None,
            Some(e) => {
                let end = u16::try_from(self.int(e, &f.path("endPort"), 0, 65535)?).ok()?;
                match &port {
                    PortSpec::Name(_) => {
                        self.sink.error(e.pos, &f.path("endPort"), "endPort cannot be used with a named port");
                        return None;
                    }
                    PortSpec::Number(start) if end != 0 && end < *start => {
                        self.sink.error_fix(
                            e.pos,
                            &f.path("endPort"),
                            format!("endPort {end} is below port {start}"),
                            "endPort must be at least port",
                        );
                        return None;
                    }
                    PortSpec::Number(0) if end != 0 => {
                        self.sink.error(e.pos, &f.path("endPort"), "endPort needs a non-zero port");
                        return None;
                    }
                    _ => (end != 0).then_some(end),
                }
            }
        };
        Some(PortProtocol { port, end_port, protocol: protocol? })
    }

    pub(super) fn icmps(&mut self, node: &Node, path: &FieldPath) -> Option<Vec<IcmpField>> {
        let mut out = Vec::new();
        for (i, item) in self.seq(node, path)?.iter().enumerate() {
            let ip = path.index(i);
            let f = self.map(item, &ip, &["fields"], Unknown::Error)?;
            let Some(fields) = f.value("fields") else { continue };
            let fp = f.path("fields");
            let items = self.seq(fields, &fp)?;
            if items.len() > MAX_PORTS {
                self.sink.error(
                    fields.pos,
                    &fp,
                    format!("{} ICMP fields in one rule; at most {MAX_PORTS}", items.len()),
                );
            }
            for (j, field) in items.iter().enumerate() {
                let p = fp.index(j);
                let Some(ff) = self.map(field, &p, &["type", "family"], Unknown::Error) else { continue };
                let family = match ff.value("family") {
                    None => IcmpFamily::IPv4,
                    Some(n) => match self.string(n, &ff.path("family")).as_deref() {
                        Some("IPv4") => IcmpFamily::IPv4,
                        Some("IPv6") => IcmpFamily::IPv6,
                        Some(other) => {
                            self.sink.error_fix(
                                n.pos,
                                &ff.path("family"),
                                format!("unknown family `{other}`"),
                                "IPv4 or IPv6 (case-sensitive)",
                            );
                            continue;
                        }
                        None => continue,
                    },
                };
                let Some(t) = ff.value("type") else {
                    self.sink.error(field.pos, &ff.path("type"), "missing field `type`");
                    continue;
                };
                let icmp_type = match &t.value {
                    Value::Scalar { text, quoted } if super::scalar_type(text, *quoted) == super::ScalarType::Int => {
                        self.int(t, &ff.path("type"), 0, 255).map(|n| n as u8)
                    }
                    _ => {
                        let name = self.string(t, &ff.path("type"));
                        name.and_then(|n| match icmp_type_by_name(family, &n) {
                            Some(v) => Some(v),
                            None => {
                                self.sink.error(
                                    t.pos,
                                    &ff.path("type"),
                                    format!("unknown ICMP type name `{n}` for {family:?}"),
                                );
                                None
                            }
                        })
                    }
                };
                if let Some(icmp_type) = icmp_type {
                    out.push(IcmpField { family, icmp_type });
                }
            }
        }
        Some(out)
    }

    fn l7_rules(&mut self, node: &Node, path: &FieldPath) -> Option<L7Rules> {
        let errors = self.sink.error_count();
        let f = self.map(node, path, &["http", "kafka", "dns", "l7proto", "l7"], Unknown::Error)?;
        let present: Vec<&str> =
            ["http", "kafka", "dns", "l7proto"].into_iter().filter(|k| f.value(k).is_some()).collect();
        if present.len() > 1 {
            self.sink.error_fix(
                node.pos,
                path,
                format!("several L7 protocols ({}) in one rule", present.join(", ")),
                "one L7 protocol per port rule",
            );
            return None;
        }
        let rules = if let Some(n) = f.value("http") {
            L7Rules::Http(self.items(n, &f.path("http"), Self::http_rule)?)
        } else if let Some(n) = f.value("dns") {
            L7Rules::Dns(self.items(n, &f.path("dns"), Self::fqdn_selector)?)
        } else if let Some(n) = f.value("kafka") {
            L7Rules::Kafka(self.items(n, &f.path("kafka"), Self::kafka_rule)?)
        } else if let Some(n) = f.value("l7proto") {
            let proto = self.string(n, &f.path("l7proto"))?;
            let mut rules = Vec::new();
            if let Some(l) = f.value("l7") {
                for (i, item) in self.seq(l, &f.path("l7"))?.iter().enumerate() {
                    let m = self.string_map(item, &f.path("l7").index(i));
                    rules.push(m.into_iter().collect());
                }
            }
            L7Rules::Generic { proto, rules }
        } else {
            if let Some(l) = f.get("l7") {
                self.sink.error(l.pos, &f.path("l7proto"), "`l7` rules need `l7proto`");
            }
            return None;
        };
        for (suffix, msg) in l7::check_rules(&rules) {
            self.sink.error(node.pos, &FieldPath::root().field(&format!("{path}.{suffix}")), msg);
        }
        (self.sink.error_count() == errors).then_some(rules)
    }

    fn http_rule(&mut self, node: &Node, path: &FieldPath) -> Option<HttpRule> {
        let f = self.map(node, path, &["method", "path", "host", "headers", "headerMatches"], Unknown::Error)?;
        let mut r = HttpRule::default();
        for (key, slot) in [("method", &mut r.method), ("path", &mut r.path), ("host", &mut r.host)] {
            if let Some(n) = f.value(key) {
                let s = self.string(n, &f.path(key))?;
                if let Err(e) = l7::http::compile_regex(key, &s) {
                    self.sink.error(n.pos, &f.path(key), e.to_string());
                }
                *slot = Some(s);
            }
        }
        if let Some(h) = f.value("headers") {
            r.headers = self.strings(h, &f.path("headers"))?.into_iter().map(|(s, _)| s).collect();
        }
        if let Some(h) = f.value("headerMatches") {
            let p = f.path("headerMatches");
            for (i, item) in self.seq(h, &p)?.iter().enumerate() {
                let ip = p.index(i);
                let m = self.map(item, &ip, &["mismatch", "name", "secret", "value"], Unknown::Error)?;
                let Some(name) = m.value("name").and_then(|n| self.string(n, &m.path("name"))) else {
                    self.sink.error(item.pos, &m.path("name"), "missing field `name`");
                    continue;
                };
                let value = m.value("value").and_then(|n| self.string(n, &m.path("value"))).unwrap_or_default();
                let mismatch = match m.value("mismatch") {
                    None => None,
                    Some(n) => match self.string(n, &m.path("mismatch")).as_deref() {
                        Some("LOG") => Some(MismatchAction::Log),
                        Some("ADD") => Some(MismatchAction::Add),
                        Some("DELETE") => Some(MismatchAction::Delete),
                        Some("REPLACE") => Some(MismatchAction::Replace),
                        Some(other) => {
                            self.sink.error_fix(
                                n.pos,
                                &m.path("mismatch"),
                                format!("unknown mismatch action `{other}`"),
                                "LOG, ADD, DELETE or REPLACE",
                            );
                            None
                        }
                        None => None,
                    },
                };
                let secret = m.value("secret").map(|s| {
                    let ns = s.get("namespace").and_then(Node::as_str).unwrap_or("");
                    let n = s.get("name").and_then(Node::as_str).unwrap_or("");
                    format!("{ns}/{n}")
                });
                r.header_matches.push(HeaderMatch { name, value, mismatch, secret });
            }
        }
        Some(r)
    }

    fn kafka_rule(&mut self, node: &Node, path: &FieldPath) -> Option<KafkaRule> {
        let f = self.map(node, path, &["role", "apiKey", "apiVersion", "clientID", "topic"], Unknown::Error)?;
        let mut r = KafkaRule::default();
        if let Some(n) = f.value("role") {
            let s = self.string(n, &f.path("role"))?;
            r.role = match s.to_ascii_lowercase().as_str() {
                "produce" => Some(KafkaRole::Produce),
                "consume" => Some(KafkaRole::Consume),
                _ => {
                    self.sink.error_fix(
                        n.pos,
                        &f.path("role"),
                        format!("unknown Kafka role `{s}`"),
                        "`produce` or `consume`",
                    );
                    return None;
                }
            };
        }
        if let Some(n) = f.value("apiKey") {
            let s = self.string(n, &f.path("apiKey"))?;
            match l7::kafka::api_key_from_name(&s) {
                Some(k) => r.api_key = Some(k),
                None => {
                    self.sink.error(
                        n.pos,
                        &f.path("apiKey"),
                        format!("unknown Kafka apiKey `{s}` (e.g. produce, fetch, metadata, apiversions)"),
                    );
                    return None;
                }
            }
            if r.role.is_some() {
                self.sink.error_fix(
                    n.pos,
                    &f.path("apiKey"),
                    "role and apiKey cannot both be set",
                    "keep one: role is a shorthand for a set of apiKeys",
                );
                return None;
            }
        }
        if let Some(n) = f.value("apiVersion") {
            let s = self.string(n, &f.path("apiVersion"))?;
            match s.parse::<i16>() {
                Ok(v) if v >= 0 => r.api_version = Some(v),
                _ => {
                    self.sink.error(
                        n.pos,
                        &f.path("apiVersion"),
                        format!("apiVersion `{s}` is not a non-negative number"),
                    );
                    return None;
                }
            }
        }
        if let Some(n) = f.value("clientID") {
            r.client_id = Some(self.string(n, &f.path("clientID"))?);
        }
        if let Some(n) = f.value("topic") {
            r.topic = Some(self.string(n, &f.path("topic"))?);
        }
        Some(r)
    }
}

/// ICMP type names Cilium accepts, per family.
fn icmp_type_by_name(family: IcmpFamily, name: &str) -> Option<u8> {
    let v4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    let v6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = if family == IcmpFamily::IPv4 { v4 } else { v6 };
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
