//! Criterion benchmarks of the policy engine at the issue's scale
//! (1,000 namespaces, 10,000 pods, 1,000 policies; see
//! `support/cluster_gen.rs`).
//!
//! - `full_resolution`: `Engine::from_objects` on every object.
//! - `incremental_pod_add/{reuse_identity,new_identity}`: one `UpsertPod` of
//!   a new pod in an existing namespace on a built engine, whose labels match
//!   an existing identity or need a new one. The pod is deleted again outside
//!   the timed region, so every iteration sees the same engine.
//! - baselines measured in the same run (there is no external peer for an
//!   in-process engine): `baseline_decode` (the decoder on the same YAML) and
//!   `baseline_naive_subject_match` (each pod × each rule's subject selector).
//!
//! ```text
//! CARGO_BUILD_JOBS=1 taskset -c 1 cargo bench -p bulkhead-policy --bench resolve
//! ```
//!
//! p99 and peak memory come from `examples/engine_scale.rs`.

#[path = "support/cluster_gen.rs"]
mod cluster_gen;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_policy::engine::{Change, Engine};
use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};

use cluster_gen::{Scale, extra_pods, generate, naive_subject_match, objects};

const SEED: u64 = 0x5EED_B01C_4EAD;

fn engine_benches(c: &mut Criterion) {
    let scale = Scale::from_env();
    let g = generate(scale, SEED);
    let objs = objects(&g);
    assert_eq!(objs.len(), g.scale.namespaces * (1 + g.scale.pods_per_namespace) + g.scale.policies);
    let (cnp, knp, ccnp) = g.policy_kinds;
    eprintln!("workload: {scale}; {cnp} CNP, {knp} NetworkPolicy, {ccnp} CCNP");

    let mut group = c.benchmark_group(format!(
        "engine/{}ns_{}pods_{}pol",
        scale.namespaces,
        scale.namespaces * scale.pods_per_namespace,
        scale.policies
    ));
    // Ten samples of routines that take up to seconds each at this scale:
    // the whole run stays around two minutes on the 2-core machine.
    // Flat sampling: every sample runs the same number of iterations (one,
    // for the multi-second routines) instead of criterion's 1..=10 ramp.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(30));

    group.bench_function("full_resolution", |b| {
        b.iter_batched(|| objs.clone(), Engine::from_objects, BatchSize::PerIteration)
    });
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("baseline_decode", |b| b.iter(|| objects(black_box(&g))));
    group.bench_function("baseline_naive_subject_match", |b| b.iter(|| naive_subject_match(black_box(&objs))));

    let mut engine = Engine::from_objects(objs.clone());
    drop(objs);
    let pod_ids: BTreeSet<_> = engine.pod_keys().iter().filter_map(|k| engine.pod(k).map(|(_, id)| id)).collect();
    assert_eq!(pod_ids.len(), g.expected_pod_identities, "bookkeeping labels must not create identities");
    // Even extra pods reuse an identity, odd ones need a new one: measured
    // apart, since they cost very different amounts.
    let pods = extra_pods(&g, 200, SEED ^ 0xADD);
    group.measurement_time(Duration::from_secs(10));
    for (name, parity) in [("incremental_pod_add/reuse_identity", 0), ("incremental_pod_add/new_identity", 1)] {
        let batch: Vec<_> = pods.iter().skip(parity).step_by(2).cloned().collect();
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pod = batch[next % batch.len()].clone();
                    next += 1;
                    let key = pod.key();
                    let t = Instant::now();
                    let diffs = engine.apply(Change::UpsertPod(pod));
                    total += t.elapsed();
                    drop(black_box(diffs));
                    // Back to the same state for the next iteration (untimed).
                    drop(engine.apply(Change::DeletePod(key)));
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine_benches);
criterion_main!(benches);
