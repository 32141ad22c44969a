//! Datapath events: a reader thread drains the ring buffer into a bounded
//! log, and `observe` reads the log back with names attached.
//!
//! The log keeps raw events (fixed size, no allocation per event) and
//! names them only when read, so a flood costs the reader a copy per event
//! and nothing else; the oldest events are overwritten first and counted.
//! Names are those the agent knows at read time. (Per-connection
//! aggregation and the full flow model are the flow room's work.)

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_datapath::abi::{EVENT_DROP, RawEvent, Reason};
use bulkhead_datapath::events::EventReader;
use bulkhead_datapath::sync::PolicySync;
use bulkhead_policy::engine::Engine;
use bulkhead_policy::identity::NumericIdentity;

use crate::api::{EventPeer, EventView};

/// The bounded log of recent events.
pub struct EventLog {
    capacity: usize,
    ring: Mutex<VecDeque<(RawEvent, u64)>>,
    overwritten: AtomicU64,
}

impl EventLog {
    /// A log of at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            overwritten: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(RawEvent, u64)>> {
        // A panic while holding the lock leaves a valid deque behind.
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds an event that happened at `wall_ns` (ns since the epoch).
    pub fn push(&self, ev: RawEvent, wall_ns: u64) {
        let mut r = self.lock();
        if r.len() == self.capacity {
            r.pop_front();
            self.overwritten.fetch_add(1, Ordering::Relaxed);
        }
        r.push_back((ev, wall_ns));
    }

    /// Events kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no event is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events overwritten because the log was full.
    pub fn overwritten(&self) -> u64 {
        self.overwritten.load(Ordering::Relaxed)
    }

    /// The last `last` events at or after `since_ns`, oldest first.
    pub fn recent(&self, last: usize, since_ns: u64) -> Vec<(RawEvent, u64)> {
        let r = self.lock();
        let mut v: Vec<(RawEvent, u64)> =
            r.iter().rev().take_while(|(_, t)| *t >= since_ns).take(last).copied().collect();
        v.reverse();
        v
    }
}

fn now_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock)
        .map(|t| u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0))
        .unwrap_or(0)
}

/// Drains `reader` into `log` until `stop` is set. Event times are the
/// kernel's monotonic clock; they are turned into wall-clock time here.
pub fn run_reader(mut reader: EventReader, log: &EventLog, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mono = now_ns(nix::time::ClockId::CLOCK_MONOTONIC);
        let offset = wall.saturating_sub(mono);
        if let Err(e) = reader.wait(Duration::from_millis(200), |ev| log.push(ev, ev.time.saturating_add(offset))) {
            tracing::error!(error = %e, "reading datapath events; stopping the reader");
            return;
        }
    }
}

/// An event with names, labels and rules attached.
pub fn view(ev: &RawEvent, wall_ns: u64, engine: &Engine, sync: &PolicySync) -> EventView {
    let src = IpAddr::from(ev.saddr);
    let dst = IpAddr::from(ev.daddr);
    let peer = |ip: IpAddr, id: u32| {
        let (_, pod) = engine.identity_of_ip(ip);
        let (namespace, pod_name) = pod
            .as_deref()
            .and_then(|k| k.split_once('/'))
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .unwrap_or_default();
        let labels = engine.identity(NumericIdentity(id)).map(|i| i.labels.to_strings()).unwrap_or_default();
        EventPeer { identity: id, namespace, pod_name, labels }
    };
    let reason = Reason::from_u8(ev.reason).unwrap_or(Reason::InvalidPacket);
    let verdict = match ev.verdict {
        1 => "FORWARDED",
        2 => "DROPPED",
        3 => "AUDIT",
        4 => "REDIRECTED",
        _ => "VERDICT_UNKNOWN",
    };
    let icmp = matches!(ev.proto, 1 | 58);
    EventView {
        time: rfc3339(wall_ns),
        time_ns: wall_ns,
        verdict: verdict.into(),
        drop_reason_desc: (reason != Reason::Forwarded).then(|| reason.as_str().into()),
        traffic_direction: if ev.dir == 0 { "INGRESS" } else { "EGRESS" }.into(),
        event_type: if ev.kind == EVENT_DROP { "drop" } else { "policy-verdict" }.into(),
        is_reply: ev.is_reply != 0,
        protocol: match ev.proto {
            1 => "ICMPv4".into(),
            p => crate::agent::proto_name(p),
        },
        source_ip: src,
        destination_ip: dst,
        source_port: if icmp { 0 } else { u16::from_be_bytes(ev.sport) },
        destination_port: u16::from_be_bytes(ev.dport),
        tcp_flags: if ev.proto == 6 { tcp_flags(ev.tcp_flags) } else { Vec::new() },
        source: peer(src, ev.src_identity),
        destination: peer(dst, ev.dst_identity),
        policies: sync.rules(ev.rule).iter().map(ToString::to_string).collect(),
        length: ev.len,
    }
}

fn tcp_flags(b: u8) -> Vec<String> {
    ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]
        .iter()
        .enumerate()
        .filter(|(i, _)| b & (1 << i) != 0)
        .map(|(_, n)| (*n).to_string())
        .collect()
}

/// `2026-12-02T18:52:30.123456789Z` (UTC, civil-from-days).
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3600, rem % 3600 / 60, rem % 60, ns % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_counts_what_it_overwrote() {
        let log = EventLog::new(3);
        for t in 0..5 {
            log.push(RawEvent { time: t, ..RawEvent::default() }, t * 10);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.overwritten(), 2);
        let times: Vec<u64> = log.recent(10, 0).iter().map(|(_, t)| *t).collect();
        assert_eq!(times, [20, 30, 40]);
        assert_eq!(log.recent(2, 0).iter().map(|(_, t)| *t).collect::<Vec<_>>(), [30, 40]);
        assert_eq!(log.recent(10, 35).iter().map(|(_, t)| *t).collect::<Vec<_>>(), [40]);
    }

    #[test]
    fn wall_clock_text() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_796_237_550_123_000_000), "2026-12-02T18:52:30.123000000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn flags() {
        assert_eq!(tcp_flags(0x12), ["SYN", "ACK"]);
    }
}
