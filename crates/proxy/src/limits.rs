//! RateLimits (`bulkhead.io/v1alpha1`), enforced per request: one token
//! bucket and one in-flight count per (RateLimit entry, source identity,
//! destination endpoint).
//!
//! A request the rules allowed is admitted only when every limit that
//! covers it has room; then it takes a token from each and counts as in
//! flight until its [`Permit`] is dropped (its response relayed whole).
//! One that does not fit takes nothing from any bucket, so a limit that
//! refuses it does not eat into another's budget. Buckets live outside the
//! rules (they survive rule updates; a changed limit is applied to the
//! bucket it already has) and are forgotten once idle and full.
//!
//! Pure but for the lock: callers pass the time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bulkhead_policy::api::RequestLimit;
use bulkhead_policy::repository::RuleRef;
use bulkhead_policy::resolve::AppliedLimit;

/// Buckets kept before idle, full ones are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    by: Arc<RuleRef>,
    source: u32,
    endpoint: Arc<str>,
}

#[derive(Debug)]
struct Bucket {
    limit: RequestLimit,
    tokens: f64,
    last: Instant,
    in_flight: u32,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        if let (Some(rate), Some(size)) = (self.limit.requests_per_second, self.limit.bucket()) {
            let earned = now.saturating_duration_since(self.last).as_secs_f64() * f64::from(rate);
            self.tokens = (self.tokens + earned).min(f64::from(size));
        }
        self.last = now;
    }

    /// How long until this bucket would take one more request (`None`: now).
    fn wait(&self) -> Option<Duration> {
        if let Some(max) = self.limit.max_concurrent_requests
            && self.in_flight >= max
        {
            // Whenever a request in flight completes; a client is told to
            // come back in a second.
            return Some(Duration::from_secs(1));
        }
        match self.limit.requests_per_second {
            Some(rate) if self.tokens < 1.0 => Some(Duration::from_secs_f64((1.0 - self.tokens) / f64::from(rate))),
            _ => None,
        }
    }

    fn idle_and_full(&self) -> bool {
        self.in_flight == 0 && self.limit.bucket().is_none_or(|b| self.tokens >= f64::from(b))
    }
}

/// Every bucket of the proxy.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<Key, Bucket>>,
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// The RateLimit entry that refused it.
    pub by: Arc<RuleRef>,
    /// When to try again, in whole seconds (at least 1): `Retry-After`.
    pub retry_after: u64,
}

/// An admitted request: in flight until dropped.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    keys: Vec<Key>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut buckets = self.limiter.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for k in &self.keys {
            if let Some(b) = buckets.get_mut(k) {
                b.in_flight = b.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Limiter {
    /// Admits a request from `source` (identity) to `endpoint` under
    /// `limits` at `now`, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        limits: &[&AppliedLimit],
        source: u32,
        endpoint: &Arc<str>,
        now: Instant,
    ) -> Result<Permit, Limited> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<Key> =
            limits.iter().map(|l| Key { by: Arc::clone(&l.by), source, endpoint: Arc::clone(endpoint) }).collect();
        if buckets.len() >= SWEEP_AT && keys.iter().any(|k| !buckets.contains_key(k)) {
            buckets.retain(|_, b| {
                b.refill(now);
                !b.idle_and_full()
            });
        }
        // First look, then take: a request one limit refuses costs no other.
        for (k, l) in keys.iter().zip(limits) {
            let b = buckets.entry(k.clone()).or_insert_with(|| Bucket {
                limit: l.limit,
                tokens: f64::from(l.limit.bucket().unwrap_or(0)),
                last: now,
                in_flight: 0,
            });
            if b.limit != l.limit {
                b.limit = l.limit;
                b.tokens = b.tokens.min(f64::from(l.limit.bucket().unwrap_or(0)));
            }
            b.refill(now);
            if let Some(wait) = b.wait() {
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                return Err(Limited { by: Arc::clone(&l.by), retry_after });
            }
        }
        for k in &keys {
            if let Some(b) = buckets.get_mut(k) {
                if b.limit.requests_per_second.is_some() {
                    b.tokens -= 1.0;
                }
                b.in_flight += 1;
            }
        }
        Ok(Permit { limiter: Arc::clone(self), keys })
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// No bucket held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_policy::api::PolicyKind;

    fn limit(name: &str, rps: Option<u32>, burst: Option<u32>, conc: Option<u32>) -> AppliedLimit {
        AppliedLimit {
            limit: RequestLimit { requests_per_second: rps, burst, max_concurrent_requests: conc },
            by: Arc::new(RuleRef {
                kind: PolicyKind::RateLimit,
                namespace: Some("ns".into()),
                name: name.into(),
                rule: "spec.ingress[0]".into(),
            }),
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_per_source_and_endpoint() {
        let l = Arc::new(Limiter::default());
        let rl = limit("rl", Some(2), Some(3), None);
        let ep: Arc<str> = "ns/backend".into();
        let t0 = Instant::now();
        let mut admitted = 0;
        for _ in 0..10 {
            if l.admit(&[&rl], 300, &ep, t0).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3, "the burst");
        let refused = l.admit(&[&rl], 300, &ep, t0).expect_err("over");
        assert_eq!((refused.by.name.as_str(), refused.retry_after), ("rl", 1));
        // Another source, another endpoint: their own buckets.
        assert!(l.admit(&[&rl], 301, &ep, t0).is_ok());
        assert!(l.admit(&[&rl], 300, &"ns/other".into(), t0).is_ok());
        // Half a second at 2/s earns one request, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.admit(&[&rl], 300, &ep, t1).is_ok());
        assert!(l.admit(&[&rl], 300, &ep, t1).is_err());
        // A long pause refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        let n = (0..10).filter(|_| l.admit(&[&rl], 300, &ep, t2).is_ok()).count();
        assert_eq!(n, 3);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        // Rates are whole requests per second, so a token is never more
        // than a second away: Retry-After is 1.
        let l = Arc::new(Limiter::default());
        let slow = limit("slow", Some(1), Some(1), None);
        let ep: Arc<str> = "e".into();
        let t0 = Instant::now();
        assert!(l.admit(&[&slow], 1, &ep, t0).is_ok());
        for ms in [0, 100, 999] {
            let refused = l.admit(&[&slow], 1, &ep, t0 + Duration::from_millis(ms)).expect_err("no token yet");
            assert_eq!(refused.retry_after, 1, "{ms} ms");
        }
        assert!(l.admit(&[&slow], 1, &ep, t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn concurrency_counts_requests_until_their_permit_is_dropped() {
        let l = Arc::new(Limiter::default());
        let c = limit("c", None, None, Some(2));
        let ep: Arc<str> = "e".into();
        let now = Instant::now();
        let a = l.admit(&[&c], 1, &ep, now).expect("1");
        let b = l.admit(&[&c], 1, &ep, now).expect("2");
        assert!(l.admit(&[&c], 1, &ep, now).is_err(), "two in flight");
        drop(a);
        let _c = l.admit(&[&c], 1, &ep, now).expect("one completed");
        drop(b);
    }

    #[test]
    fn a_request_one_limit_refuses_costs_the_others_nothing() {
        let l = Arc::new(Limiter::default());
        let wide = limit("wide", Some(1), Some(2), None);
        let narrow = limit("narrow", None, None, Some(1));
        let ep: Arc<str> = "e".into();
        let now = Instant::now();
        let held = l.admit(&[&wide, &narrow], 1, &ep, now).expect("first");
        for _ in 0..5 {
            assert_eq!(l.admit(&[&wide, &narrow], 1, &ep, now).expect_err("narrow is full").by.name, "narrow");
        }
        drop(held);
        assert!(l.admit(&[&wide, &narrow], 1, &ep, now).is_ok(), "wide still had its second token");
    }

    #[test]
    fn idle_full_buckets_are_forgotten_and_a_changed_limit_applies_at_once() {
        let l = Arc::new(Limiter::default());
        let rl = limit("rl", Some(1000), None, None);
        let ep: Arc<str> = "e".into();
        let t0 = Instant::now();
        for src in 0..SWEEP_AT as u32 {
            drop(l.admit(&[&rl], src, &ep, t0));
        }
        assert_eq!(l.len(), SWEEP_AT);
        drop(l.admit(&[&rl], u32::MAX, &ep, t0 + Duration::from_secs(5)));
        assert_eq!(l.len(), 1, "every refilled, idle bucket swept");
        let tighter = AppliedLimit { limit: RequestLimit { requests_per_second: Some(1), ..rl.limit }, ..rl.clone() };
        let t1 = t0 + Duration::from_secs(5);
        assert!(l.admit(&[&tighter], u32::MAX, &ep, t1).is_ok());
        assert!(l.admit(&[&tighter], u32::MAX, &ep, t1).is_err(), "the bucket shrank to the new burst");
    }
}
