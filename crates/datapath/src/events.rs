//! Reading the datapath's event ring buffer.
//!
//! The ring buffer is a pinned map, so a reader can be taken from the
//! loaded [`crate::Datapath`] and moved to a thread of its own: the agent's
//! requests never wait behind event decoding, and a burst of events never
//! waits behind a policy update. Waiting uses `poll(2)` on the map's fd.

use std::os::fd::AsFd;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::abi::RawEvent;

/// The consumer side of `bh_events`.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Waits up to `timeout` for events, then hands every available one
    /// to `f`; returns how many there were. A record too short to be an
    /// event (which only a layout mismatch could produce) is skipped.
    pub fn wait(&mut self, timeout: Duration, mut f: impl FnMut(RawEvent)) -> std::io::Result<usize> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(ev) = RawEvent::decode(&item) {
                f(ev);
                n += 1;
            }
        }
        Ok(n)
    }
}
