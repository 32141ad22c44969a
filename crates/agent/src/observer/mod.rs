//! The observer: where flows go after the datapath's events are turned
//! into them, and where `observe`, the metrics and the service map read
//! them back.
//!
//! One thread drains the kernel's ring buffer in batches, converts each
//! batch with the newest published snapshot of the agent's state
//! ([`convert`]; no lock), and publishes it here: into the byte-bounded
//! ring, the metrics, and the flow log's queue. Readers take the ring's
//! lock only to copy references and filter outside it, so neither a long
//! policy change nor a slow filter stalls the event path; followers wait on
//! a notification instead of polling.
//!
//! Loss is counted where it happens: the kernel's ring buffer full
//! (`datapath_ring`, a kernel counter) and flows the flow log's queue had
//! no room for (`flow_log`). The ring letting its oldest flows go is
//! eviction, not loss (they were processed and logged); a follower that
//! falls behind it is told how many it missed.

pub mod convert;
pub mod flowlog;
pub mod l7;
pub mod map;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_datapath::abi::RawEvent;
use bulkhead_datapath::events::EventReader;
use bulkhead_flow::filter::FilterError;
use bulkhead_flow::model::Flow;
use bulkhead_flow::ring::FlowRing;

use crate::metrics::Metrics;
use bulkhead_api::{FlowsPage, FlowsRequest};

/// Flows and what happened to them.
pub struct Observer {
    ring: Mutex<FlowRing>,
    changed: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    log: Mutex<Option<SyncSender<Arc<Flow>>>>,
    log_lost: AtomicU64,
    l7_lost: AtomicU64,
}

/// Counts for `status` and the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserverStats {
    /// Flows in the ring.
    pub flows: u64,
    /// Bytes they hold.
    pub bytes: u64,
    /// The ring's bound.
    pub max_bytes: u64,
    /// Flows overwritten.
    pub overwritten: u64,
    /// Flows the flow log could not take.
    pub log_lost: u64,
    /// L7 events the proxy could not deliver.
    pub l7_lost: u64,
    /// Flows seen since the agent started.
    pub seen: u64,
}

impl Observer {
    /// An observer with a ring of `ring_bytes`.
    pub fn new(ring_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            ring: Mutex::new(FlowRing::new(ring_bytes)),
            changed: tokio::sync::Notify::new(),
            metrics,
            log: Mutex::new(None),
            log_lost: AtomicU64::new(0),
            l7_lost: AtomicU64::new(0),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, FlowRing> {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The metrics flows are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Sends every published flow to the flow log too.
    pub fn attach_log(&self, tx: SyncSender<Arc<Flow>>) {
        *self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    }

    /// Stops sending to the flow log (its writer then drains and closes).
    pub fn detach_log(&self) {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }

    /// Publishes converted flows.
    pub fn publish(&self, flows: Vec<Flow>) {
        if flows.is_empty() {
            return;
        }
        let flows: Vec<Arc<Flow>> = flows.into_iter().map(Arc::new).collect();
        for f in &flows {
            self.metrics.observe(f);
        }
        {
            let log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(tx) = log.as_ref() {
                for f in &flows {
                    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(Arc::clone(f)) {
                        self.log_lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        {
            let mut ring = self.ring();
            for f in flows {
                ring.push(f);
            }
        }
        self.changed.notify_waiters();
    }

    /// Counts L7 events the proxy dropped (nobody listening, or the
    /// agent behind).
    pub fn count_l7_lost(&self, n: u64) {
        self.l7_lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts.
    pub fn stats(&self) -> ObserverStats {
        let r = self.ring();
        ObserverStats {
            flows: r.len() as u64,
            bytes: r.bytes() as u64,
            max_bytes: r.max_bytes() as u64,
            overwritten: r.overwritten(),
            log_lost: self.log_lost.load(Ordering::Relaxed),
            l7_lost: self.l7_lost.load(Ordering::Relaxed),
            seen: r.next_seq(),
        }
    }

    /// Reads flows; when none match and `req.wait_ms` is set, waits up to
    /// that long for new ones (a follower's long poll).
    pub async fn follow(&self, req: &FlowsRequest) -> Result<FlowsPage, FilterError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.min(30_000));
        let m = req.filters.compile()?;
        let mut after = req.after;
        let mut missed = 0;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The ring's lock (which the event path takes to publish) is held
            // only to copy references; the filter runs outside it.
            let page = {
                let copied = self.ring().since(after);
                copied.select(&m, req.last)
            };
            missed += page.missed;
            if !page.flows.is_empty() || req.wait_ms == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(FlowsPage {
                    flows: page.flows.into_iter().map(|(_, f)| f).collect(),
                    next: page.next,
                    missed,
                });
            }
            after = Some(page.next);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(FlowsPage { flows: Vec::new(), next: page.next, missed });
            }
        }
    }

    /// Flows for the service map: the newest `limit` kept.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Flow>> {
        let page = self.ring().read(None, limit, &bulkhead_flow::Matcher::default());
        page.flows.into_iter().map(|(_, f)| f).collect()
    }
}

fn wall_offset_ns() -> u64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    let mono = bulkhead_datapath::abi::ktime_ns().unwrap_or(0);
    wall.saturating_sub(mono)
}

/// Events drained per conversion (one snapshot load per batch).
const BATCH: usize = 4096;

/// Drains `reader` until `stop` is set: each batch of events is converted
/// with `convert` (which loads the newest snapshot once per batch) and
/// published. Event times are the kernel's monotonic clock, turned into
/// wall-clock time here.
pub fn run_reader(
    mut reader: EventReader,
    observer: &Observer,
    stop: &AtomicBool,
    mut convert: impl FnMut(&[(RawEvent, u64)]) -> Vec<Flow>,
) {
    let mut batch: Vec<(RawEvent, u64)> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        let offset = wall_offset_ns();
        let r = reader.wait(Duration::from_millis(200), |ev| batch.push((ev, ev.time.saturating_add(offset))));
        if let Err(e) = r {
            tracing::error!(error = %e, "reading datapath events; stopping the reader");
            return;
        }
        for chunk in batch.chunks(BATCH) {
            observer.publish(convert(chunk));
        }
        batch.clear();
    }
}
