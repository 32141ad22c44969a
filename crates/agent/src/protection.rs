//! The guard over the datapath's kernel objects, as the agent runs it: put
//! in place at start ([`bulkhead_datapath::guard::Guard`], BPF LSM), told of
//! each new link, its refusals logged, counted
//! (`bulkhead_tamper_refused_total{object}`) and shown by `status` — or,
//! where the kernel has no usable BPF LSM, the reason, logged at start and
//! shown by `status` as `protection: none`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bulkhead_datapath::Datapath;
use bulkhead_datapath::guard::{Guard, GuardError};

use crate::metrics::Metrics;

/// What `status` shows of the protection (shared with the API's readers).
#[derive(Debug, Default)]
pub struct ProtectionState {
    reason: Mutex<Option<String>>,
    refused: AtomicU64,
}

impl ProtectionState {
    /// As `status` reports it.
    pub fn status(&self) -> bulkhead_api::Protection {
        let reason = self.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        bulkhead_api::Protection {
            mode: if reason.is_none() { "bpf-lsm" } else { "none" }.into(),
            reason: reason.unwrap_or_default(),
            refused: self.refused.load(Ordering::Relaxed),
        }
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
