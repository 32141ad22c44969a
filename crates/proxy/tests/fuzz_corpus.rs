//! Replays the committed fuzz corpora (`fuzz/corpus/http_request`,
//! `fuzz/corpus/dns`) through the same code as the fuzz targets, so every
//! input the fuzzer kept stays a regression test in CI.

mod exercise_dns;
mod exercise_request;

use std::path::Path;

/// Runs `exercise` on every file of `fuzz/corpus/<target>`; there must be
/// more than `at_least`.
fn replay(target: &str, at_least: usize, exercise: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus is committed") {
        let path = entry.expect("dir entry").path();
        exercise(&std::fs::read(&path).expect("readable corpus file"));
        n += 1;
    }
    assert!(n > at_least, "only {n} corpus files in {}", dir.display());
}

#[test]
fn http_request_corpus_keeps_its_checks() {
    replay("http_request", 100, exercise_request::exercise);
}

#[test]
fn dns_corpus_keeps_its_checks() {
    replay("dns", 10, exercise_dns::exercise);
}
