//! The guard over the datapath's kernel objects, as the agent runs it: put
//! in place at start ([`bulkhead_datapath::guard::Guard`], BPF LSM), told of
//! each new link, its refusals logged, counted
//! (`bulkhead_tamper_refused_total{object}`) and shown by `status` — or,
//! where the kernel has no usable BPF LSM, the reason, logged at start and
//! shown by `status` as `protection: none`.
//!
//! Whatever gets past it is repaired where it can be seen: [`watch_pins`]
//! waits on inotify for a pin of the datapath to be removed and has the
//! writer put it back from the descriptors the datapath holds; every
//! second the writer compares the endpoints, ipcache and slot index with
//! what it wrote (`PolicySync::verify`; the policy entries themselves are
//! frozen). Each repair is counted in `bulkhead_drift_repaired_total{kind}`
//! and timed in `bulkhead_drift_repair_seconds`.

use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use bulkhead_datapath::Datapath;
use bulkhead_datapath::guard::{Guard, GuardError};
use bulkhead_flow::model::Drift;
use bulkhead_flow::time::Timestamp;

use crate::metrics::Metrics;
use crate::reconciler::Command;

/// What `status` shows of the protection (shared with the API's readers).
#[derive(Debug, Default)]
pub struct ProtectionState {
    reason: Mutex<Option<String>>,
    refused: AtomicU64,
    repaired: AtomicU64,
    /// Where each repair's record goes, for the flows and the signed log
    /// (a reporting thread; a full queue drops the record, with a warning:
    /// the repair itself is counted above and in the metrics).
    records: std::sync::OnceLock<SyncSender<(Timestamp, Drift)>>,
}

impl ProtectionState {
    /// As `status` reports it.
    pub fn status(&self) -> bulkhead_api::Protection {
        let reason = self.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        bulkhead_api::Protection {
            mode: if reason.is_none() { "bpf-lsm" } else { "none" }.into(),
            reason: reason.unwrap_or_default(),
            refused: self.refused.load(Ordering::Relaxed),
            repaired: self.repaired.load(Ordering::Relaxed),
        }
    }

    /// One drift repaired: counted, and its record queued for the flows.
    pub fn repaired(&self, drift: Drift) {
        self.repaired.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = self.records.get() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let at = Timestamp::from_nanos(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX));
            if let Err(e) = tx.try_send((at, drift)) {
                tracing::warn!(error = %e, "a drift record was not queued for the flows");
            }
        }
    }

    /// Sends each repair's record to `tx` from now on (once).
    pub fn record_to(&self, tx: SyncSender<(Timestamp, Drift)>) {
        let _ = self.records.set(tx);
    }
}

/// The guard, or why there is none.
pub struct Protection {
    guard: Option<Guard>,
}

impl Protection {
    /// Puts the guard over `dp` for this process; where it cannot be, says
    /// why (in the log and in `state`) and runs without.
    pub fn start(dp: &Datapath, state: &ProtectionState) -> Self {
        let why = match Guard::protect(dp, &[std::process::id()]) {
            Ok(guard) => {
                tracing::info!(
                    "BPF LSM guard in place: other processes are refused the datapath's writable maps, programs and links"
                );
                return Self { guard: Some(guard) };
            }
            Err(GuardError::Unavailable(why)) => why,
            Err(e) => format!("the guard failed: {e}"),
        };
        tracing::warn!(reason = %why, "the datapath's maps, programs and links are not protected from other root processes");
        *state.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
        Self { guard: None }
    }

    /// Protects links pinned since.
    pub fn links(&mut self, ids: &[u32]) {
        if let Some(g) = &mut self.guard
            && let Err(e) = g.protect_links(ids)
        {
            tracing::error!(error = %e, "the guard could not take new links");
        }
    }

    /// Reports the attempts refused since the last call.
    pub fn report(&mut self, state: &ProtectionState, metrics: &Metrics) {
        let Some(g) = &mut self.guard else { return };
        for r in g.refusals() {
            tracing::warn!(pid = r.pid, uid = r.uid, comm = %r.comm, object = r.object.as_str(), id = r.id,
                "refused a process the datapath's {}", r.object.as_str());
            state.refused.fetch_add(1, Ordering::Relaxed);
            metrics.tamper_refused(r.object.as_str());
        }
    }
}

/// Waits (until `stop`) for a pin under `dir` or `dir/links` to be removed
/// or renamed away, and asks the writer to put it back. A watched
/// directory removed with its pins is watched again once the writer has
/// made it anew.
pub fn watch_pins(dir: &Path, commands: &std::sync::mpsc::Sender<Command>, stop: &AtomicBool) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let flags = AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE_SELF;
    let ino = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
        Ok(i) => i,
        Err(e) => return tracing::error!(error = %e, "inotify: removed pins will not be noticed"),
    };
    let dirs = [dir.to_path_buf(), dir.join("links")];
    let watch = |ino: &Inotify| dirs.iter().all(|d| ino.add_watch(d, flags).is_ok());
    let mut watching = watch(&ino);
    while !stop.load(Ordering::Relaxed) {
        if !watching {
            // Made anew by the repair (or not yet): try again shortly.
            std::thread::sleep(WATCH_POLL / 4);
            watching = watch(&ino);
            if commands.send(Command::RepairPins(Instant::now())).is_err() {
                return;
            }
            continue;
        }
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(WATCH_POLL.as_millis() as u16)), Ok(n) if n > 0) {
            continue;
        }
        let seen = Instant::now();
        let Ok(events) = ino.read_events() else { continue };
        if events.iter().any(|e| e.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_IGNORED)) {
            watching = false;
        }
        if commands.send(Command::RepairPins(seen)).is_err() {
            return;
        }
    }
}

/// How long the watcher waits before looking at its stop flag.
const WATCH_POLL: Duration = Duration::from_millis(200);
