//! Unix signals for the processes rbee starts (`rbee up`'s daemons, a hive's workers): send one to a
//! process or a process group, check that a process exists, and have a child get SIGTERM when its
//! parent dies. This is the one module of the workspace allowed `unsafe` (each call has its `SAFETY`).
#![allow(unsafe_code)]

/// The signals rbee sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain and exit.
    Term,
    /// SIGKILL.
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `sig` to `target`: a pid, or `-pgid` for a whole process group. Returns whether it was
/// delivered. 0 and -1 (our own group, every process) are refused.
pub fn send(target: i32, sig: Signal) -> bool {
    kill(target, sig.number())
}

/// Sends `sig` to the one process `pid` (never a group); returns whether it was delivered.
pub fn send_to_pid(pid: u32, sig: Signal) -> bool {
    match i32::try_from(pid) {
        Ok(pid) if pid > 0 => send(pid, sig),
        _ => false,
    }
}

/// True when the process (or, for `-pgid`, the group) exists: `kill(target, 0)`.
pub fn alive(target: i32) -> bool {
    kill(target, 0)
}

fn kill(target: i32, sig: libc::c_int) -> bool {
    if target == 0 || target == -1 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    unsafe { libc::kill(target, sig) == 0 }
}

/// On Linux the child gets SIGTERM when its parent dies without stopping it (even by SIGKILL), so a
/// killed parent leaves no orphan. The kernel sends it when the *thread* that forked exits: a parent
/// must spawn from a thread that lives as long as it does (the CLI's single-threaded runtime, or a tokio
/// runtime's worker threads, which live until the runtime shuts down; not its blocking pool's).
pub fn die_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_groups_zero_and_all_are_refused() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(-1));
        assert!(!send_to_pid(0, Signal::Term));
        assert!(!send_to_pid(u32::MAX, Signal::Term));
    }
}
