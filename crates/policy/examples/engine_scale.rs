//! Engine at scale: full resolution wall time (repeated, with medians),
//! incremental pod-add latency percentiles, and peak memory.
//!
//! Criterion (`benches/resolve.rs`) reports means and medians; the issue's
//! incremental target is a p99, and its memory target a peak, which this
//! binary measures directly. Baselines measured in the same run: decoding
//! the same YAML, and a naive pod × rule subject match.
//!
//! ```text
//! CARGO_BUILD_JOBS=1 taskset -c 1 cargo run --release -p bulkhead-policy --example engine_scale
//! ```
//!
//! Environment: `BULKHEAD_SCALE=NS,PODS_PER_NS,POLICIES` (or `small`),
//! `BULKHEAD_REPS` (full builds, default 5), `BULKHEAD_ADDS` (incremental
//! adds, default 1000), `BULKHEAD_ADD_BUDGET_SECS` (stop adding after this
//! long, default 300, so a slow engine still gives a report).

#[path = "../benches/support/cluster_gen.rs"]
mod cluster_gen;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bulkhead_policy::engine::{Change, Engine};
use bulkhead_policy::repository::RuleRef;
use bulkhead_policy::resolve::{EndpointPolicy, Peer};

use cluster_gen::{Scale, extra_pods, generate, naive_subject_match, objects};

const SEED: u64 = 0x5EED_B01C_4EAD;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2 }
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `VmHWM` / `VmRSS` from /proc/self/status, in KiB.
fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn mem_line(when: &str) {
    let mib = |f| proc_status_kib(f).map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or("?".into());
    println!("memory {when}: VmHWM (peak RSS) {}  VmRSS {}", mib("VmHWM:"), mib("VmRSS:"));
}

fn summary(name: &str, v: &mut [Duration]) {
    if v.is_empty() {
        println!("{name}: no samples");
        return;
    }
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{name}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms mean={:.3} ms",
        v.len(),
        ms(pct(v, 0.50)),
        ms(pct(v, 0.90)),
        ms(pct(v, 0.99)),
        ms(v[v.len() - 1]),
        ms(mean),
    );
}

fn main() {
    let scale = Scale::from_env();
    let reps = env_usize("BULKHEAD_REPS", 5);
    let adds = env_usize("BULKHEAD_ADDS", 1000);
    println!("scale: {scale}");

    let t = Instant::now();
    let g = generate(scale, SEED);
    let (cnp, knp, ccnp) = g.policy_kinds;
    println!(
        "generated in {:.1} ms: {} KiB cluster YAML, {} KiB policy YAML; {cnp} CNP, {knp} NetworkPolicy, {ccnp} CCNP",
        ms(t.elapsed()),
        g.cluster_yaml.len() / 1024,
        g.policies_yaml.len() / 1024,
    );

    // ---- full resolution, repeated ----
    let (mut decode_t, mut naive_t, mut full_t) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let t = Instant::now();
        let objs = objects(&g);
        decode_t.push(t.elapsed());

        let t = Instant::now();
        let hits = std::hint::black_box(naive_subject_match(&objs));
        naive_t.push(t.elapsed());

        let t = Instant::now();
        let e = Engine::from_objects(objs);
        full_t.push(t.elapsed());

        if rep == 0 {
            sanity(&g, &e, hits);
            mem_line("after first full build");
        }
        println!(
            "rep {rep}: full_resolution {:.1} ms | decode {:.1} ms | naive pod×rule subject match {:.1} ms",
            ms(full_t[rep]),
            ms(decode_t[rep]),
            ms(naive_t[rep]),
        );
        drop(e);
    }
    if reps > 0 {
        report_full(reps, &full_t, &decode_t, &naive_t);
    }

    // ---- incremental adds ----
    if adds > 0 {
        incremental(&g, adds);
    }
    mem_line("at end");
}

fn report_full(reps: usize, full_t: &[Duration], decode_t: &[Duration], naive_t: &[Duration]) {
    let (full, dec, naive) = (median(full_t), median(decode_t), median(naive_t));
    println!(
        "MEDIAN of {reps}: full_resolution {:.1} ms | decode {:.1} ms | naive {:.1} ms | ratio full/decode {:.2} | ratio full/naive {:.2}",
        ms(full),
        ms(dec),
        ms(naive),
        full.as_secs_f64() / dec.as_secs_f64(),
        full.as_secs_f64() / naive.as_secs_f64(),
    );
}

/// Adds `adds` pods one at a time to a built engine, then deletes every
/// 20th, timing each change.
fn incremental(g: &cluster_gen::Generated, adds: usize) {
    let mut e = Engine::from_objects(objects(g));
    mem_line("after the incremental phase's build");
    let pods = extra_pods(g, adds, SEED ^ 0xADD);
    let (mut all, mut reuse, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    // Per kind of add: (adds, endpoint diffs, changed entries) and the rules
    // behind entries changed on endpoints other than the added pod.
    let mut stats = [(0usize, 0usize, 0usize); 2];
    let mut others: [BTreeMap<String, usize>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut keys = Vec::new();
    let mut ids_before = e.identities().count();
    let budget = Duration::from_secs(env_usize("BULKHEAD_ADD_BUDGET_SECS", 300) as u64);
    let started = Instant::now();
    for pod in pods {
        if started.elapsed() > budget {
            println!("incremental: time budget of {budget:?} spent after {} of {adds} adds; stopping", all.len());
            break;
        }
        let key = pod.key();
        keys.push(key.clone());
        let t = Instant::now();
        let d = e.apply(Change::UpsertPod(pod));
        let el = t.elapsed();
        let ids_after = e.identities().count();
        let new_id = usize::from(ids_after > ids_before);
        all.push(el);
        if new_id == 1 {
            fresh.push(el)
        } else {
            reuse.push(el)
        }
        ids_before = ids_after;
        let st = &mut stats[new_id];
        st.0 += 1;
        st.1 += d.len();
        for diff in &d {
            st.2 += diff.upserted.len() + diff.removed.len();
            if diff.endpoint != key {
                for (_, entry) in &diff.upserted {
                    for r in &entry.refs {
                        *others[new_id].entry(format!("{} {}", shape_of(r), diff.direction)).or_insert(0) += 1;
                    }
                }
            }
        }
        drop(d);
    }
    // A few deletes (every 20th added pod).
    let mut dels = Vec::new();
    for key in keys.iter().step_by(20) {
        let t = Instant::now();
        let d = e.apply(Change::DeletePod(key.clone()));
        dels.push(t.elapsed());
        drop(d);
    }
    for (i, what) in ["reusing an identity", "with a new identity"].iter().enumerate() {
        let (n, eps, ents) = stats[i];
        if n == 0 {
            continue;
        }
        println!(
            "incremental: {n} adds {what}: {:.1} endpoint diffs and {:.1} changed entries per add",
            eps as f64 / n as f64,
            ents as f64 / n as f64
        );
        let mut v: Vec<_> = others[i].iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(*x.1));
        for (s, c) in v.iter().take(6) {
            println!("    {:>9.1} entries/add on other endpoints from {s}", **c as f64 / n as f64);
        }
    }
    summary("incremental_pod_add (all)", &mut all);
    summary("incremental_pod_add (reuses an identity)", &mut reuse);
    summary("incremental_pod_add (new identity)", &mut fresh);
    summary("incremental_pod_delete", &mut dels);
}

/// The generator's policy shape and the rule path: `cnp-0001-l4-ingress`,
/// `spec.ingress[0]` -> `cnp l4-ingress spec.ingress[0]`.
fn shape_of(r: &RuleRef) -> String {
    let shape = r.name.split_once('-').map(|(a, b)| (a, b.split_once('-').map_or(b, |x| x.1)));
    let shape = shape.map_or(r.name.clone(), |(a, b)| format!("{a} {b}"));
    format!("{shape} {}", r.rule)
}

/// Checks the engine saw what was generated: every pod, bookkeeping labels
/// not creating identities, and policy maps actually computed. Also says
/// where the policy-map entries come from (peer kind, policy shape).
fn sanity(g: &cluster_gen::Generated, e: &Engine, subject_hits: usize) {
    let pods = e.pod_keys();
    let mut cluster_ids = BTreeSet::new();
    let (mut enforced_in, mut enforced_out, mut entries) = (0, 0, 0);
    // Maps the engine shares between pods (one allocation) counted once.
    let mut unique: BTreeMap<usize, &EndpointPolicy> = BTreeMap::new();
    for k in &pods {
        if let Some((_, id)) = e.pod(k) {
            cluster_ids.insert(id);
        }
        if let Some(p) = e.endpoint_policy(k) {
            enforced_in += usize::from(p.ingress.enforced);
            enforced_out += usize::from(p.egress.enforced);
            entries += p.ingress.entries.len() + p.egress.entries.len();
            unique.insert(std::ptr::from_ref(p) as usize, p);
        }
    }
    println!(
        "engine: {} pods, {} pod identities (expected {}), {} identities total, {} policies; \
         {enforced_in} pods ingress-enforced, {enforced_out} egress-enforced; \
         {entries} policy-map entries over all pods; naive subject matches {subject_hits}",
        pods.len(),
        cluster_ids.len(),
        g.expected_pod_identities,
        e.identities().count(),
        e.policies().count(),
    );
    let (mut by_peer, mut by_shape, mut sizes) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for p in unique.values() {
        sizes.push(p.ingress.entries.len() + p.egress.entries.len());
        for (dir, d) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            for (k, v) in &d.entries {
                let peer = match k.peer {
                    Peer::Any => "any",
                    Peer::Identity(_) => "identity",
                    Peer::Address(_) => "address",
                };
                *by_peer.entry((dir, peer)).or_insert(0usize) += 1;
                for r in &v.refs {
                    *by_shape.entry(shape_of(r)).or_insert(0usize) += 1;
                }
            }
        }
    }
    sizes.sort_unstable();
    let total: usize = sizes.iter().sum();
    println!(
        "unique policy maps: {} holding {total} entries; entries per map p50={} p90={} p99={} max={}",
        sizes.len(),
        sizes.get(sizes.len() / 2).unwrap_or(&0),
        sizes.get(sizes.len() * 9 / 10).unwrap_or(&0),
        sizes.get(sizes.len() * 99 / 100).unwrap_or(&0),
        sizes.last().unwrap_or(&0),
    );
    println!("unique entries by direction and peer: {by_peer:?}");
    let mut shapes: Vec<(String, usize)> = by_shape.into_iter().collect();
    shapes.sort_by_key(|x| std::cmp::Reverse(x.1));
    println!("unique entries by the rule behind them (top 12):");
    for (s, n) in shapes.iter().take(12) {
        println!("  {n:>9}  {s}");
    }
    assert_eq!(pods.len(), g.scale.namespaces * g.scale.pods_per_namespace, "every pod loaded");
    assert_eq!(cluster_ids.len(), g.expected_pod_identities, "bookkeeping labels must not create identities");
    assert_eq!(e.policies().count(), g.scale.policies, "every policy loaded");
}
