//! Fuzz target: an untrusted HTTP request target through normalization and
//! an HTTP rule (see `crates/policy/tests/exercise_path/mod.rs`, which the
//! corpus-replay test shares).

#![no_main]

#[path = "../../crates/policy/tests/exercise_path/mod.rs"]
mod exercise_path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| exercise_path::exercise(data));
