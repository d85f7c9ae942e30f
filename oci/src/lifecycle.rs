//! `start`, `state`, `kill` and `delete` of a unikernel container, by its record.

use std::io::Read as _;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cgroup;
use crate::state::{Record, Root, StateError, Status};

/// How long `start` waits for the waiting process to answer on the fifo, and `delete --force`
/// for a killed container to be gone: bounds, not timings.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("container {id} is {status:?}, not created: it cannot be started")]
    NotCreated { id: String, status: Status },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is still running: stop it first, or delete --force")]
    Running(String),
    #[error("container {0}: its process did not take the start signal")]
    StartFailed(String),
    #[error("unknown signal {0:?}")]
    BadSignal(String),
    #[error("signal to container {id}: {err}")]
    Kill { id: String, err: nix::Error },
    #[error("container {0} is still there after SIGKILL")]
    Unkillable(String),
    #[error("{0}: tender-oci runs a unikernel as its only process; there is nothing to exec, pause or list")]
    Unsupported(&'static str),
}

pub fn start(root: &Root, record: &mut Record) -> Result<(), LifecycleError> {
    let status = record.status();
    if !status.can_start() {
        return Err(LifecycleError::NotCreated { id: record.id.clone(), status });
    }
    let fifo = root.dir(&record.id)?.join("exec.fifo");
    let fail = || LifecycleError::StartFailed(record.id.clone());
    // Non-blocking, so a process that died meanwhile cannot hang us; poll waits for its byte.
    let mut f =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).map_err(|_| fail())?;
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    let ready = nix::poll::poll(&mut fds, PollTimeout::try_from(WAIT.as_millis() as i32).unwrap_or(PollTimeout::MAX));
    let mut byte = [0u8; 1];
    if !matches!(ready, Ok(1)) || !matches!(f.read(&mut byte), Ok(1)) {
        return Err(fail());
    }
    let _ = std::fs::remove_file(&fifo);
    record.started = true;
    root.save(record)?;
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt as _;

/// A signal by number or name, with or without `SIG`.
pub fn parse_signal(s: &str) -> Result<Signal, LifecycleError> {
    let bad = || LifecycleError::BadSignal(s.into());
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| bad())
}

/// Signals the container's process; with `all`, every process in its cgroup too, and a stopped
/// container is then no error (there is nothing left to signal), as with runc.
pub fn signal(record: &Record, sig: Signal, all: bool) -> Result<(), LifecycleError> {
    if !record.status().can_kill() {
        return if all { Ok(()) } else { Err(LifecycleError::NotRunning(record.id.clone())) };
    }
    kill(Pid::from_raw(record.pid), sig).map_err(|err| LifecycleError::Kill { id: record.id.clone(), err })?;
    if all && let Some(cg) = &record.cgroup {
        for pid in cgroup::procs(cg).into_iter().filter(|p| *p != record.pid) {
            // One may have ended meanwhile.
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
    Ok(())
}

pub fn delete(root: &Root, record: &Record, force: bool) -> Result<(), LifecycleError> {
    let status = record.status();
    if !status.can_delete(force) {
        return Err(LifecycleError::Running(record.id.clone()));
    }
    if status != Status::Stopped {
        let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
        let deadline = Instant::now() + WAIT;
        while record.alive() {
            if Instant::now() > deadline {
                return Err(LifecycleError::Unkillable(record.id.clone()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(cg) = record.made_cgroup() {
        cgroup::remove(cg);
    }
    root.remove(&record.id)?;
    // Last: this moves the process into the pod's network namespace.
    if let (Some(ns), Some(u)) = (&record.netns, record.uplink) {
        crate::network::disconnect_in(ns, u);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        for s in ["15", "TERM", "SIGTERM", "term"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGTERM, "{s}");
        }
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        for s in ["0x", "NOPE", "999", ""] {
            assert!(parse_signal(s).is_err(), "{s}");
        }
    }
}
