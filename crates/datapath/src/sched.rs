//! Thread priorities. Enforcement lives in the kernel, in the proxy's
//! workers and in the agent's reconciler; the threads that only report on
//! it wait for them. The agent's reporters (turning the kernel's and the
//! proxy's events into flows, writing the flow log) are background threads
//! (`SCHED_IDLE`): a proxy worker that wakes takes the CPU from them at
//! once. At a mere lower nice value a reporter's burst kept the CPU for the
//! rest of its slice, up to a 4 ms tick, which was the DNS proxy's p99 when
//! both share a CPU (BENCHMARKS.md). The proxy's own reporter, which takes
//! a lock its workers also take, stays a normal thread at a lower nice
//! value: a background thread preempted while holding it would stall them.
//! A reporter that falls behind counts what it loses.

/// The nice value reporting threads take.
pub const REPORTER_NICE: i32 = 10;

/// Makes the calling thread a background thread (`SCHED_IDLE`): it runs
/// when no normal thread on its CPU wants to, and any normal thread that
/// wakes preempts it. Linux keeps the policy per thread.
pub fn background_this_thread() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    #[expect(unsafe_code, reason = "sched_setscheduler(2) has no safe wrapper in std or nix")]
    // SAFETY: `param` is a valid sched_param that outlives the call, which
    // only reads it; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

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
    /// Field `n` of this thread's stat (proc(5) numbering).
    fn stat(n: usize) -> i32 {
        std::fs::read_to_string("/proc/thread-self/stat")
            .expect("stat")
            .rsplit(')')
            .next()
            .expect("fields")
            .split_whitespace()
            .nth(n - 3)
            .expect("field")
            .parse::<i32>()
            .expect("number")
    }

    #[test]
    fn a_thread_lowers_only_itself() {
        let nice = || stat(19);
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

    #[test]
    fn a_background_thread_is_only_itself() {
        let policy = || stat(41);
        let before = policy();
        let background = std::thread::spawn(move || {
            super::background_this_thread().expect("sched_setscheduler");
            policy()
        })
        .join()
        .expect("thread");
        assert_eq!(background, libc::SCHED_IDLE);
        assert_eq!(policy(), before, "the calling thread's policy is its own");
    }
}
