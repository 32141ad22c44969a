//! Fuzz target: untrusted policy / cluster YAML or JSON through the whole
//! pure pipeline (see `crates/policy/tests/exercise/mod.rs`, which the
//! corpus-replay test shares).

#![no_main]

#[path = "../../crates/policy/tests/exercise/mod.rs"]
mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| exercise::exercise(data));
