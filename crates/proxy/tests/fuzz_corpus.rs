//! Replays the committed fuzz corpus (`fuzz/corpus/http_request`) through
//! the same code as the fuzz target, so every input the fuzzer kept stays a
//! regression test in CI.

mod exercise_request;

use std::path::Path;

#[test]
fn http_request_corpus_keeps_its_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/http_request");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus is committed") {
        let path = entry.expect("dir entry").path();
        exercise_request::exercise(&std::fs::read(&path).expect("readable corpus file"));
        n += 1;
    }
    assert!(n > 100, "only {n} corpus files in {}", dir.display());
}
