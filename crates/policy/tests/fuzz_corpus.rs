//! Replays the committed fuzz corpus (`fuzz/corpus/policy`) through the same
//! pipeline as the fuzz target, so every input the fuzzer ever kept stays a
//! regression test in CI (no input may panic).

mod exercise;

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
