//! Thread priorities. Enforcement lives in the kernel and in the proxy's
//! workers; the threads that only report on it (turning events into
//! flows, writing the flow log, streaming the proxy's L7 events) run at a
//! lower priority, so that under load their bursts wait for enforcement,
//! not the other way round. A reporter that falls behind counts what it
//! loses.

/// The nice value reporting threads take.
pub const REPORTER_NICE: i32 = 10;

/// Lowers the calling thread's priority to `nice` (Linux keeps nice values
/// per thread).
pub fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    let who = libc::id_t::try_from(tid).map_err(std::io::Error::other)?;
    #[expect(unsafe_code, reason = "setpriority(2) has no safe wrapper in std or nix")]
    // SAFETY: setpriority takes three integers and reads or writes no
    // memory of this process.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_lowers_only_itself() {
        let nice = || {
            std::fs::read_to_string("/proc/thread-self/stat")
                .expect("stat")
                .rsplit(')')
                .next()
                .expect("fields")
                .split_whitespace()
                .nth(16)
                .expect("nice")
                .parse::<i32>()
                .expect("number")
        };
        let before = nice();
        let lowered = std::thread::spawn(move || {
            super::lower_this_thread(super::REPORTER_NICE).expect("setpriority");
            nice()
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, super::REPORTER_NICE);
        assert_eq!(nice(), before, "the calling thread's priority is its own");
    }
}
