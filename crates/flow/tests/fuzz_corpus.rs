//! Replays the committed fuzz corpus (`fuzz/corpus/flowlog`) through the
//! same code as the fuzz target, so every input the fuzzer kept stays a
//! regression test (no input may panic).

mod exercise;

use std::path::Path;

#[test]
fn fuzz_corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/flowlog");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the flowlog fuzz corpus is committed") {
        let data = std::fs::read(entry.expect("dir entry").path()).expect("readable corpus file");
        exercise::exercise(&data);
        n += 1;
    }
    assert!(n >= 10, "only {n} corpus files in {}", dir.display());
}
