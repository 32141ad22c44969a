//! Replays the committed fuzz corpora (`fuzz/corpus/policy`,
//! `fuzz/corpus/http_path`) through the same code as the fuzz targets, so
//! every input the fuzzer ever kept stays a regression test in CI (no input
//! may panic or break a target's checks).

mod exercise;
mod exercise_path;

use std::path::Path;

#[test]
fn fuzz_corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/policy");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus is committed") {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        exercise::exercise(&data);
        n += 1;
    }
    assert!(n > 1000, "only {n} corpus files in {}", dir.display());
}

#[test]
fn http_path_corpus_keeps_its_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/http_path");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus is committed") {
        let path = entry.expect("dir entry").path();
        exercise_path::exercise(&std::fs::read(&path).expect("readable corpus file"));
        n += 1;
    }
    assert!(n > 100, "only {n} corpus files in {}", dir.display());
}
