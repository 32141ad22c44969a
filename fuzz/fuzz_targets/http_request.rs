//! Fuzz target: a client's bytes through the proxy's HTTP/1.1 request path
//! (see `crates/proxy/tests/exercise_request/mod.rs`, which the corpus
//! replay test shares).

#![no_main]

#[path = "../../crates/proxy/tests/exercise_request/mod.rs"]
mod exercise_request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| exercise_request::exercise(data));
