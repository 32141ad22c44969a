//! Fuzz target: untrusted flow-log bytes (segments and HEAD) through the
//! verifier and the record decoder, and untrusted flow JSON through the
//! decoder and the filters (see `crates/flow/tests/exercise/mod.rs`, which
//! the corpus-replay test shares).

#![no_main]

#[path = "../../crates/flow/tests/exercise/mod.rs"]
mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| exercise::exercise(data));
