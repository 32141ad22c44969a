//! bulkhead's test bed: network-namespace pods wired through a CNI chain
//! exactly as a container runtime wires them ([`pods`]), real probes and
//! raw frames between them ([`probe`]), DNS queries ([`dns`]), and the responders that serve a lab
//! pod's container ports ([`respond`]).
//!
//! Used by `bulkhead lab` and by the privileged tests; never by the agent,
//! which is why it is not part of the datapath crate. Its raw-socket code
//! needs `unsafe` (socket2 has no safe constructor for a link-layer
//! address); each block carries a `// SAFETY:` note.

pub mod dns;
pub mod frame;
pub mod h2client;
pub mod pods;
pub mod probe;
pub mod respond;

use std::time::{Duration, Instant};

/// Waits until `cond` holds, looking every 5 ms, for at most `limit`: what
/// tests wait on instead of a fixed sleep (a readiness condition holds as
/// soon as it can, and a slow machine only makes it take longer).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> std::io::Result<()> {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= end {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} did not happen within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Runs `op` again for as long as a signal interrupts it. A blocking
/// receive on a socket with a read timeout is never restarted by the
/// kernel, whatever `SA_RESTART` says, so a test that reads "interrupted"
/// as "nothing arrived" fails when a signal happens to land. Each retry
/// waits the socket's whole timeout again: a signal only lengthens the wait.
pub fn uninterrupted<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}
