//! The bounded in-memory ring of recent flows that `observe` reads.
//!
//! Bounded in bytes, not in flows: a flow with many labels and policies
//! costs more than a bare drop, and what must not grow is memory. The
//! oldest flows are overwritten first and counted. Every flow gets a
//! sequence number, so a follower asks for "after N" and learns from a gap
//! how many it missed.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::filter::Matcher;
use crate::model::Flow;

/// The default size: 64 MiB.
pub const DEFAULT_BYTES: usize = 64 << 20;

/// Recent flows, oldest first.
#[derive(Debug)]
pub struct FlowRing {
    max_bytes: usize,
    bytes: usize,
    flows: VecDeque<(u64, usize, Arc<Flow>)>,
    next_seq: u64,
    overwritten: u64,
}

/// What [`FlowRing::read`] found.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching flows, oldest first, with their sequence numbers.
    pub flows: Vec<(u64, Arc<Flow>)>,
    /// The sequence number to ask for next (one past the newest flow seen).
    pub next: u64,
    /// Flows after the requested point that were overwritten before this
    /// read (the reader fell behind).
    pub missed: u64,
}

impl Page {
    /// Keeps the newest `last` flows that match `m`, oldest first.
    pub fn select(mut self, m: &Matcher, last: usize) -> Page {
        let mut kept: Vec<(u64, Arc<Flow>)> =
            self.flows.into_iter().rev().filter(|(_, f)| m.matches(f)).take(last).collect();
        kept.reverse();
        self.flows = kept;
        self
    }
}

impl FlowRing {
    /// A ring of at most `max_bytes` (at least one flow is always kept).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, bytes: 0, flows: VecDeque::new(), next_seq: 0, overwritten: 0 }
    }

    /// Adds a flow; returns its sequence number.
    pub fn push(&mut self, flow: Arc<Flow>) -> u64 {
        let size = flow.approx_size();
        while !self.flows.is_empty() && self.bytes + size > self.max_bytes {
            if let Some((_, s, _)) = self.flows.pop_front() {
                self.bytes -= s;
                self.overwritten += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        self.flows.push_back((seq, size, flow));
        seq
    }

    /// Flows kept.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Bytes accounted to the flows kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The configured bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Flows overwritten to make room.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// The sequence number the next flow will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Up to `last` of the newest matching flows with a sequence number at
    /// or after `after` (`None`: from the oldest kept), oldest first.
    pub fn read(&self, after: Option<u64>, last: usize, m: &Matcher) -> Page {
        self.since(after).select(m, last)
    }

    /// Every flow after `after` (from the oldest kept when `None`),
    /// unfiltered: references only, so it is quick to take under whatever
    /// lock guards the ring, and [`Page::select`] filters it outside.
    pub fn since(&self, after: Option<u64>) -> Page {
        let oldest = self.flows.front().map_or(self.next_seq, |(s, _, _)| *s);
        let from = after.unwrap_or(oldest);
        let missed = oldest.saturating_sub(from);
        let start = usize::try_from(from.saturating_sub(oldest)).unwrap_or(usize::MAX).min(self.flows.len());
        let flows = self.flows.range(start..).map(|(s, _, f)| (*s, Arc::clone(f))).collect();
        Page { flows, next: self.next_seq.max(from), missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Filters, FlowFilter};
    use crate::model::Verdict;

    fn flow(v: Verdict) -> Arc<Flow> {
        Arc::new(Flow { verdict: v, ..Flow::default() })
    }

    #[test]
    fn bounded_in_bytes_and_counts_what_it_overwrote() {
        let one = Flow::default().approx_size();
        let mut r = FlowRing::new(one * 3);
        for _ in 0..5 {
            r.push(flow(Verdict::Forwarded));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.overwritten(), 2);
        assert!(r.bytes() <= r.max_bytes());
        // A flow bigger than the whole ring is still kept, alone.
        let mut small = FlowRing::new(1);
        small.push(flow(Verdict::Dropped));
        small.push(flow(Verdict::Dropped));
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn reads_follow_sequence_numbers_and_report_gaps() {
        let one = Flow::default().approx_size();
        let mut r = FlowRing::new(one * 4);
        for i in 0..6 {
            r.push(flow(if i % 2 == 0 { Verdict::Dropped } else { Verdict::Forwarded }));
        }
        let all = Matcher::default();
        let p = r.read(None, 10, &all);
        assert_eq!(p.flows.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3, 4, 5]);
        assert_eq!((p.next, p.missed), (6, 0));
        let p = r.read(Some(0), 10, &all);
        assert_eq!(p.missed, 2, "0 and 1 were overwritten");
        let p = r.read(Some(6), 10, &all);
        assert!(p.flows.is_empty());
        assert_eq!(p.next, 6);
        let drops = Filters {
            allow: vec![FlowFilter { verdict: vec![Verdict::Dropped], ..FlowFilter::default() }],
            ..Filters::default()
        }
        .compile()
        .expect("compiles");
        let p = r.read(None, 1, &drops);
        assert_eq!(p.flows.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [4], "the newest match");
    }
}
