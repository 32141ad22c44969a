//! Criterion benchmarks of the policy engine at the issue's scale
//! (1,000 namespaces, 10,000 pods, 1,000 policies; see
//! `support/cluster_gen.rs`).
//!
//! - `full_resolution`: `Engine::from_objects` on every object.
//! - `incremental_pod_add`: one `UpsertPod` of a new pod in an existing
//!   namespace on a built engine; alternately a pod that reuses an identity
//!   and one that needs a new one. The pod is deleted again outside the timed
//!   region, so every iteration sees the same engine.
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

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_policy::api::{Namespace, Object};
use bulkhead_policy::engine::{Change, Engine};
use bulkhead_policy::labels::pod_identity_labels;
use bulkhead_policy::repository::compile;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

use cluster_gen::{Scale, extra_pods, generate, objects};

const SEED: u64 = 0x5EED_B01C_4EAD;

/// Each pod × each compiled rule: does the rule's subject select the pod?
fn naive_subject_match(objs: &[Object]) -> usize {
    let namespaces: BTreeMap<&str, &Namespace> = objs
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some((n.name.as_str(), n)),
            _ => None,
        })
        .collect();
    let rules: Vec<_> = objs
        .iter()
        .filter_map(|o| match o {
            Object::Policy(p) => Some(compile(p)),
            _ => None,
        })
        .flatten()
        .collect();
    let mut hits = 0;
    for o in objs {
        if let Object::Pod(p) = o {
            let labels = pod_identity_labels(p, namespaces.get(p.namespace.as_str()).copied());
            hits += rules.iter().filter(|r| r.subject.as_ref().is_some_and(|s| s.matches(&labels))).count();
        }
    }
    hits
}

fn engine_benches(c: &mut Criterion) {
    let scale = Scale::from_env();
    let g = generate(scale, SEED);
    let objs = objects(&g);
    assert_eq!(objs.len(), g.scale.namespaces * (1 + g.scale.pods_per_namespace) + g.scale.policies);

    let mut group = c.benchmark_group(format!(
        "engine/{}ns_{}pods_{}pol",
        scale.namespaces,
        scale.namespaces * scale.pods_per_namespace,
        scale.policies
    ));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.warm_up_time(Duration::from_secs(2));

    group.bench_function("full_resolution", |b| {
        b.iter_batched(|| objs.clone(), |o| Engine::from_objects(o), BatchSize::PerIteration)
    });
    group.bench_function("baseline_decode", |b| b.iter(|| objects(black_box(&g))));
    group.bench_function("baseline_naive_subject_match", |b| b.iter(|| naive_subject_match(black_box(&objs))));

    let mut engine = Engine::from_objects(objs.clone());
    drop(objs);
    let pods = extra_pods(&g, 200, SEED ^ 0xADD);
    let mut next = 0usize;
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("incremental_pod_add", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let pod = pods[next % pods.len()].clone();
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
    group.finish();
}

criterion_group!(benches, engine_benches);
criterion_main!(benches);
