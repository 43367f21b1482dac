//! Killing a command together with everything it started.
//!
//! Probes and agent hooks run commands in their own process group
//! (`process_group(0)`), so a timeout or a cancellation can kill the whole
//! group: a shell script's children would otherwise outlive it and could act
//! later, at a stale epoch.

/// Kills a command's process group unless disarmed: on [`kill`](Self::kill)
/// and when dropped (the caller's future was dropped).
///
/// The group id is the leader's pid, which the kernel may hand out again
/// once the leader is reaped: the caller disarms the killer right after
/// reaping it, and never before.
#[derive(Debug)]
pub(crate) struct GroupKiller {
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    /// Armed for the group led by `pid` (the child spawned with
    /// `process_group(0)`); inert when the pid is unknown.
    pub(crate) fn new(pid: Option<u32>) -> GroupKiller {
        GroupKiller {
            pgid: pid
                .and_then(|p| libc::pid_t::try_from(p).ok())
                .filter(|p| *p > 0),
        }
    }

    /// SIGKILL the group; stays armed (a second kill is harmless until the
    /// leader is reaped).
    pub(crate) fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory effects. `pgid` is the pid of our
            // child, which leads its own group (process_group(0)) and has
            // not been reaped (the caller disarms before or right after
            // reaping), so the id cannot name anybody else's group.
            #[allow(unsafe_code)]
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    /// The leader was reaped: its pid may be reused, never signal it again.
    pub(crate) fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}
