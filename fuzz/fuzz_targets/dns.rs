//! Fuzz target: bytes as a client's DNS query and as an upstream's answer,
//! through the DNS proxy's message code (see
//! `crates/proxy/tests/exercise_dns/mod.rs`, which the corpus replay test
//! shares).

#![no_main]

#[path = "../../crates/proxy/tests/exercise_dns/mod.rs"]
mod exercise_dns;

libfuzzer_sys::fuzz_target!(|data: &[u8]| exercise_dns::exercise(data));
