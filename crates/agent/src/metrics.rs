//! The agent's Prometheus metrics, named as Cilium and Hubble users know
//! them (`bulkhead_drop_total{reason,direction}` beside Cilium's
//! `cilium_drop_count_total`, `bulkhead_flows_processed_total` beside
//! Hubble's `hubble_flows_processed_total`).
//!
//! Two kinds: counters the flow pipeline increments as flows pass
//! ([`Metrics::observe`]: flows, policy verdicts, and the HTTP, DNS and
//! Kafka families the L7 proxies' flows fill), and values read when
//! scraped ([`Snapshot`]: the kernel's per-reason packet counters, lost
//! events, map pressure, buffer sizes), which the scrape handler refreshes
//! just before encoding.

use std::sync::Mutex;

use bulkhead_flow::model::{Dns, Flow, L7FlowType, TrafficDirection, Verdict, event_types, policy_match_name};
use bulkhead_policy::api::PolicyKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    r#type: String,
    subtype: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    action: String,
    r#match: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelayLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLoadLabels {
    direction: String,
    /// `fail-closed` or `keep-previous`.
    effect: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    protocol: String,
    reporter: String,
    /// FORWARDED, or DROPPED when the L7 rules denied it.
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpResponseLabels {
    method: String,
    status: String,
    reporter: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpDurationLabels {
    method: String,
    status: String,
    reporter: String,
    verdict: String,
}

/// The `method` label: a method RFC 9110 (or PATCH) defines, else `other`
/// — a client choosing method names must not choose how many series the
/// agent keeps.
fn method_label(method: &str) -> String {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    if KNOWN.contains(&method) { method.to_owned() } else { "other".to_owned() }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    rcode: String,
    qtypes: String,
    ips_returned: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    /// `enforced`, `timeout` or `no-agent`.
    released: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KafkaLabels {
    topic: String,
    api_key: String,
    error_code: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// Values read from the kernel and the pipeline at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Dropped packets and bytes by (reason, direction).
    pub drops: Vec<(String, String, u64, u64)>,
    /// Forwarded packets and bytes by direction.
    pub forwarded: Vec<(String, u64, u64)>,
    /// Lost events by where they were lost.
    pub lost: Vec<(String, u64)>,
    /// Map fill ratio by map name.
    pub map_pressure: Vec<(String, f64)>,
    /// Endpoints managed.
    pub endpoints: u64,
    /// Endpoints whose latest policy is not loaded.
    pub endpoints_not_ready: u64,
    /// Identities known.
    pub identities: u64,
    /// Flows in the observer's ring.
    pub flows_buffered: u64,
    /// Bytes the ring holds.
    pub flow_buffer_bytes: u64,
    /// Flows the ring let go to make room.
    pub flows_evicted: u64,
}

#[derive(Debug, Default)]
struct SnapshotCollector(Mutex<Snapshot>);

/// Label names and values of one row.
type Labels = Vec<(&'static str, String)>;

/// Encodes one family read at scrape time; a row without labels is a
/// single value (no label set, not even an empty one).
fn encode_rows<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (l, v) in rows {
        if l.is_empty() {
            return v.encode(m);
        }
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        v.encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

fn counters(rows: impl IntoIterator<Item = (Labels, u64)>) -> impl Iterator<Item = (Labels, ConstCounter<u64>)> {
    rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)))
}

fn gauges(rows: impl IntoIterator<Item = (Labels, f64)>) -> impl Iterator<Item = (Labels, ConstGauge<f64>)> {
    rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)))
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let e = &mut enc;
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);
        let reason_dir = |r: &String, d: &String| vec![("reason", r.clone()), ("direction", d.clone())];
        encode_rows(
            e,
            "drop",
            "Packets dropped by the datapath, by reason (Hubble's drop reason names) and direction",
            counter,
            counters(s.drops.iter().map(|(r, d, p, _)| (reason_dir(r, d), *p))),
        )?;
        encode_rows(
            e,
            "drop_bytes",
            "Bytes dropped by the datapath, by reason and direction",
            counter,
            counters(s.drops.iter().map(|(r, d, _, b)| (reason_dir(r, d), *b))),
        )?;
        encode_rows(
            e,
            "forward",
            "Packets forwarded by the datapath, by direction",
            counter,
            counters(s.forwarded.iter().map(|(d, p, _)| (vec![("direction", d.clone())], *p))),
        )?;
        encode_rows(
            e,
            "forward_bytes",
            "Bytes forwarded by the datapath, by direction",
            counter,
            counters(s.forwarded.iter().map(|(d, _, b)| (vec![("direction", d.clone())], *b))),
        )?;
        encode_rows(
            e,
            "lost_events",
            "Events lost: datapath_ring (the kernel ring buffer was full), flow_log (the flow log's queue was full)",
            counter,
            counters(s.lost.iter().map(|(src, n)| (vec![("source", src.clone())], *n))),
        )?;
        encode_rows(
            e,
            "flows_evicted",
            "Flows the observer's ring let go to make room (processed, logged and counted; no longer in `observe`'s reach)",
            counter,
            counters([(vec![], s.flows_evicted)]),
        )?;
        encode_rows(
            e,
            "bpf_map_pressure",
            "Fill ratio of each datapath map (entries / capacity)",
            gauge,
            gauges(s.map_pressure.iter().map(|(n, v)| (vec![("map_name", n.clone())], *v))),
        )?;
        for (name, help, v) in [
            ("endpoints", "Endpoints the agent manages", s.endpoints),
            (
                "endpoints_not_ready",
                "Endpoints whose latest policy is not loaded (endpoint list says what they do meanwhile)",
                s.endpoints_not_ready,
            ),
            ("identities", "Security identities the agent knows", s.identities),
            ("flows_buffered", "Flows in the observer's ring", s.flows_buffered),
            ("flow_buffer_bytes", "Bytes the observer's ring holds", s.flow_buffer_bytes),
        ] {
            encode_rows(e, name, help, gauge, gauges([(vec![], v as f64)]))?;
        }
        Ok(())
    }
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    snapshot: std::sync::Arc<SnapshotCollector>,
    flows: Family<FlowLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    delay: Family<DelayLabels, Histogram>,
    policy_load_failures: Family<PolicyLoadLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_responses: Family<HttpResponseLabels, Counter>,
    http_duration: Family<HttpDurationLabels, Histogram>,
    http_rate_limited: Family<RateLimitLabels, Counter>,
    dns_queries: Family<DnsLabels, Counter>,
    dns_responses: Family<DnsLabels, Counter>,
    dns_latency: Histogram,
    dns_held: Family<HeldLabels, Histogram>,
    kafka_requests: Family<KafkaLabels, Counter>,
    tamper_refused: Family<TamperLabels, Counter>,
    drift_repaired: Family<DriftLabels, Counter>,
    drift_repair: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    /// `map-pin` or `link-pin`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TamperLabels {
    /// `map`, `program` or `link`.
    object: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `bulkhead_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let snapshot = std::sync::Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(std::sync::Arc::clone(&snapshot)));
        let m = Self {
            registry,
            snapshot,
            flows: Family::default(),
            verdicts: Family::default(),
            delay: Family::new_with_constructor(latency_histogram),
            policy_load_failures: Family::default(),
            http_requests: Family::default(),
            http_responses: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            http_rate_limited: Family::default(),
            dns_queries: Family::default(),
            dns_responses: Family::default(),
            dns_latency: latency_histogram(),
            dns_held: Family::new_with_constructor(latency_histogram),
            kafka_requests: Family::default(),
            tamper_refused: Family::default(),
            drift_repaired: Family::default(),
            drift_repair: Histogram::new([0.0001, 0.001, 0.01, 0.1, 1.0]),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register("flows_processed", "Flows processed, by event type, sub-type and verdict", m.flows.clone());
        r.register(
            "policy_verdicts",
            "Policy decisions on new connections: action (allow, deny, audit, redirect), match type and direction",
            m.verdicts.clone(),
        );
        r.register_with_unit(
            "policy_implementation_delay",
            "Time from a change reaching the agent (apply, endpoint added) to its enforcement in the kernel",
            Unit::Seconds,
            m.delay.clone(),
        );
        r.register(
            "policy_load_failures",
            "Endpoint policies (per direction) that did not fit their map, by what the direction did: \
             fail-closed (denies everything until a policy fits) or keep-previous",
            m.policy_load_failures.clone(),
        );
        r.register("http_requests", "HTTP requests seen by the L7 proxy", m.http_requests.clone());
        r.register("http_responses", "HTTP responses seen by the L7 proxy", m.http_responses.clone());
        r.register_with_unit(
            "http_request_duration",
            "HTTP request to response latency",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "http_rate_limited",
            "HTTP requests the L7 proxy refused for a RateLimit (429, gRPC RESOURCE_EXHAUSTED), by RateLimit",
            m.http_rate_limited.clone(),
        );
        r.register("dns_queries", "DNS queries seen by the DNS proxy", m.dns_queries.clone());
        r.register("dns_responses", "DNS responses seen by the DNS proxy", m.dns_responses.clone());
        r.register_with_unit(
            "dns_proxy_latency",
            "DNS query to answer latency through the DNS proxy (the upstream's time included)",
            Unit::Seconds,
            m.dns_latency.clone(),
        );
        r.register_with_unit(
            "dns_held_answer_wait",
            "How long the DNS proxy held an allowed answer until the kernel enforced its addresses, by how it \
             was released: enforced, timeout (released anyway) or no-agent",
            Unit::Seconds,
            m.dns_held.clone(),
        );
        r.register("kafka_requests", "Kafka requests seen by the L7 proxy", m.kafka_requests.clone());
        r.register(
            "tamper_refused",
            "Attempts by another process to get a writable map, a program or a link of the datapath, refused by \
             the BPF LSM guard, by object",
            m.tamper_refused.clone(),
        );
        r.register(
            "drift_repaired",
            "Drift of the datapath's kernel state repaired, by kind",
            m.drift_repaired.clone(),
        );
        r.register_with_unit(
            "drift_repair",
            "Time from a drift being seen to its repair",
            Unit::Seconds,
            m.drift_repair.clone(),
        );
        m
    }

    /// Counts a flow.
    pub fn observe(&self, f: &Flow) {
        let kind = f.event_kind();
        let subtype = match (kind, &f.l7) {
            (_, Some(l7)) if l7.http.is_some() => "http",
            (_, Some(l7)) if l7.dns.is_some() => "dns",
            (_, Some(l7)) if l7.kafka.is_some() => "kafka",
            (event_types::TRACE, _) => match f.trace_observation_point.as_str() {
                "TO_ENDPOINT" => "to-endpoint",
                "FROM_ENDPOINT" => "from-endpoint",
                _ => "",
            },
            _ => "",
        };
        let count = f.count.max(1);
        self.flows
            .get_or_create(&FlowLabels {
                r#type: event_types::name(kind).into(),
                subtype: subtype.into(),
                verdict: f.verdict.as_str().into(),
            })
            .inc_by(count);
        let policy_decision = kind == event_types::POLICY_VERDICT
            || (kind == event_types::DROP && matches!(f.drop_reason_desc.0, 133 | 181));
        if policy_decision {
            let action = match f.verdict {
                Verdict::Dropped => "deny",
                Verdict::Audit => "audit",
                Verdict::Redirected => "redirect",
                _ => "allow",
            };
            let direction = match f.traffic_direction {
                TrafficDirection::Ingress => "ingress",
                TrafficDirection::Egress => "egress",
                TrafficDirection::Unknown => "unknown",
            };
            self.verdicts
                .get_or_create(&VerdictLabels {
                    action: action.into(),
                    r#match: policy_match_name(f.policy_match_type).into(),
                    direction: direction.into(),
                })
                .inc_by(count);
        }
        if let Some(l7) = &f.l7 {
            let reporter = match f.traffic_direction {
                TrafficDirection::Ingress => "server",
                _ => "client",
            };
            if let Some(h) = &l7.http {
                match l7.kind {
                    L7FlowType::Request => {
                        for p in f.ingress_denied_by.iter().filter(|p| p.kind == PolicyKind::RateLimit.as_str()) {
                            self.http_rate_limited
                                .get_or_create(&RateLimitLabels {
                                    namespace: p.namespace.clone(),
                                    name: p.name.clone(),
                                })
                                .inc();
                        }
                        self.http_requests
                            .get_or_create(&HttpLabels {
                                method: method_label(&h.method),
                                protocol: h.protocol.clone(),
                                reporter: reporter.into(),
                                verdict: f.verdict.as_str().into(),
                            })
                            .inc();
                    }
                    L7FlowType::Response => {
                        self.http_responses
                            .get_or_create(&HttpResponseLabels {
                                method: method_label(&h.method),
                                status: h.code.to_string(),
                                reporter: reporter.into(),
                                verdict: f.verdict.as_str().into(),
                            })
                            .inc();
                        self.http_duration
                            .get_or_create(&HttpDurationLabels {
                                method: method_label(&h.method),
                                status: h.code.to_string(),
                                reporter: reporter.into(),
                                verdict: f.verdict.as_str().into(),
                            })
                            .observe(l7.latency_ns as f64 / 1e9);
                    }
                    _ => {}
                }
            }
            if let Some(d) = &l7.dns {
                let labels = DnsLabels {
                    rcode: if l7.kind == L7FlowType::Response {
                        Dns::rcode_name(d.rcode).unwrap_or("Other").into()
                    } else {
                        String::new()
                    },
                    qtypes: d.qtypes.join(","),
                    ips_returned: d.ips.len().to_string(),
                    verdict: f.verdict.as_str().into(),
                };
                match l7.kind {
                    L7FlowType::Request => {
                        self.dns_queries.get_or_create(&labels).inc();
                    }
                    _ => {
                        self.dns_responses.get_or_create(&labels).inc();
                        self.dns_latency.observe(l7.latency_ns as f64 / 1e9);
                    }
                }
            }
            if let Some(k) = &l7.kafka {
                self.kafka_requests
                    .get_or_create(&KafkaLabels {
                        topic: k.topic.clone(),
                        api_key: k.api_key.clone(),
                        error_code: k.error_code.to_string(),
                    })
                    .inc();
            }
        }
    }

    /// An allowed DNS answer the proxy held `wait_ns` before releasing it
    /// (`released`: enforced, timeout or no-agent).
    pub fn dns_held(&self, released: &str, wait_ns: u64) {
        self.dns_held.get_or_create(&HeldLabels { released: released.into() }).observe(wait_ns as f64 / 1e9);
    }

    /// One drift of `kind` repaired, `took` after it was seen.
    pub fn drift_repaired(&self, kind: &str, took: std::time::Duration) {
        self.drift_repaired.get_or_create(&DriftLabels { kind: kind.into() }).inc();
        self.drift_repair.observe(took.as_secs_f64());
    }

    /// One attempt on the datapath's `object` refused by the guard.
    pub fn tamper_refused(&self, object: &str) {
        self.tamper_refused.get_or_create(&TamperLabels { object: object.into() }).inc();
    }

    /// Counts an endpoint policy that did not load, per direction.
    pub fn policy_load_failed(&self, directions: &[String], fail_closed: bool) {
        let effect = if fail_closed { "fail-closed" } else { "keep-previous" };
        for d in directions {
            self.policy_load_failures
                .get_or_create(&PolicyLoadLabels { direction: d.clone(), effect: effect.into() })
                .inc();
        }
    }

    /// Records how long a change took to reach the kernel.
    pub fn implementation_delay(&self, source: &str, seconds: f64) {
        self.delay.get_or_create(&DelayLabels { source: source.into() }).observe(seconds);
    }

    /// The Prometheus text exposition (format 0.0.4, which every scraper
    /// and `promtool check metrics` reads), with `snapshot` as the scraped
    /// values.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        *self.snapshot.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        openmetrics_to_prometheus(&out)
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// prometheus-client writes OpenMetrics, where a counter family is named
/// without `_total` and `# UNIT` and `# EOF` lines appear; the Prometheus
/// text format names the family as its samples are named and has neither.
fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bulkhead_flow::model::{Dns, DropReason, Endpoint, EventType, Http, Layer7};

    use super::*;

    #[test]
    fn flows_fill_the_families() {
        let m = Metrics::new();
        m.observe(&Flow {
            verdict: Verdict::Dropped,
            drop_reason_desc: DropReason::POLICY_DENIED,
            traffic_direction: TrafficDirection::Ingress,
            event_type: Some(EventType { kind: event_types::DROP, sub_type: 133 }),
            count: 3,
            ..Flow::default()
        });
        m.observe(&Flow {
            verdict: Verdict::Forwarded,
            traffic_direction: TrafficDirection::Egress,
            policy_match_type: 2,
            event_type: Some(EventType { kind: event_types::POLICY_VERDICT, sub_type: 0 }),
            ..Flow::default()
        });
        m.observe(&Flow {
            verdict: Verdict::Dropped,
            traffic_direction: TrafficDirection::Ingress,
            source: Arc::new(Endpoint::default()),
            l7: Some(Layer7 {
                kind: L7FlowType::Response,
                latency_ns: 2_000_000,
                http: Some(Http { code: 403, method: "GET".into(), protocol: "HTTP/1.1".into(), ..Http::default() }),
                ..Layer7::default()
            }),
            event_type: Some(EventType { kind: event_types::L7, sub_type: 0 }),
            ..Flow::default()
        });
        m.observe(&Flow {
            verdict: Verdict::Forwarded,
            traffic_direction: TrafficDirection::Egress,
            l7: Some(Layer7 {
                kind: L7FlowType::Request,
                dns: Some(Dns { query: "api.stripe.com.".into(), qtypes: vec!["A".into()], ..Dns::default() }),
                ..Layer7::default()
            }),
            event_type: Some(EventType { kind: event_types::L7, sub_type: 0 }),
            ..Flow::default()
        });
        m.observe(&Flow {
            verdict: Verdict::Dropped,
            traffic_direction: TrafficDirection::Ingress,
            ingress_denied_by: Arc::from([bulkhead_flow::model::Policy {
                name: "rl".into(),
                namespace: "production".into(),
                kind: "RateLimit".into(),
                ..Default::default()
            }]),
            l7: Some(Layer7 {
                kind: L7FlowType::Request,
                http: Some(Http { method: "GET".into(), protocol: "HTTP/1.1".into(), ..Http::default() }),
                ..Layer7::default()
            }),
            event_type: Some(EventType { kind: event_types::L7, sub_type: 0 }),
            ..Flow::default()
        });
        // A method nobody defined: counted, under `other`.
        m.observe(&Flow {
            verdict: Verdict::Forwarded,
            traffic_direction: TrafficDirection::Ingress,
            l7: Some(Layer7 {
                kind: L7FlowType::Request,
                http: Some(Http { method: "X-7f3a".into(), protocol: "HTTP/1.1".into(), ..Http::default() }),
                ..Layer7::default()
            }),
            event_type: Some(EventType { kind: event_types::L7, sub_type: 0 }),
            ..Flow::default()
        });
        m.implementation_delay("apply", 0.04);
        let text = m.encode(Snapshot {
            drops: vec![("POLICY_DENIED".into(), "INGRESS".into(), 7, 420)],
            lost: vec![("datapath_ring".into(), 0)],
            ..Snapshot::default()
        });
        for want in [
            r#"bulkhead_flows_processed_total{type="drop",subtype="",verdict="DROPPED"} 3"#,
            r#"bulkhead_policy_verdicts_total{action="deny",match="none",direction="ingress"} 3"#,
            r#"bulkhead_policy_verdicts_total{action="allow",match="L3-L4",direction="egress"} 1"#,
            r#"bulkhead_http_responses_total{method="GET",status="403",reporter="server",verdict="DROPPED"} 1"#,
            r#"bulkhead_http_request_duration_seconds_count{method="GET",status="403",reporter="server",verdict="DROPPED"} 1"#,
            r#"bulkhead_http_requests_total{method="other",protocol="HTTP/1.1",reporter="server",verdict="FORWARDED"} 1"#,
            r#"bulkhead_drop_total{reason="POLICY_DENIED",direction="INGRESS"} 7"#,
            r#"bulkhead_http_rate_limited_total{namespace="production",name="rl"} 1"#,
            r#"bulkhead_lost_events_total{source="datapath_ring"} 0"#,
            "bulkhead_policy_implementation_delay_seconds_count{source=\"apply\"} 1",
            "# TYPE bulkhead_dns_queries_total counter",
            r#"bulkhead_dns_queries_total{rcode="",qtypes="A",ips_returned="0",verdict="FORWARDED"} 1"#,
            "# HELP bulkhead_drop_total Packets dropped",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(!text.contains("X-7f3a"), "{text}");
    }
}
