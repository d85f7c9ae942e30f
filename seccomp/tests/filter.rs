//! The filter really filters: each case forks a child that installs it and then makes one call.

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use tender_seccomp::{Allowlist, Mode, install};

/// Runs `call` in a child under `allow`'s filter; returns how the child ended.
fn in_sandbox(allow: &Allowlist, mode: Mode, call: fn() -> i64) -> WaitStatus {
    // Compile before forking: the child only installs, calls and exits (no allocation).
    let program = allow.compile(mode).expect("filter compiles");
    // SAFETY: the child runs only raw syscalls (prctl, seccomp, the call, _exit) and touches no
    // lock that another test thread could hold.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match install(&program) {
                Ok(()) => (call() >= 0) as i32,
                Err(_) => 3,
            };
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    }
}

fn base() -> Allowlist {
    Allowlist { output_fds: vec![1, 2], block_fds: vec![100], ..Default::default() }
}

fn write_empty_to_stderr() -> i64 {
    // SAFETY: a zero-length write reads no memory.
    unsafe { libc::syscall(libc::SYS_write, 2, std::ptr::null::<u8>(), 0) }
}

fn write_empty_to_fd_7() -> i64 {
    // SAFETY: as above; fd 7 need not exist, the filter decides first.
    unsafe { libc::syscall(libc::SYS_write, 7, std::ptr::null::<u8>(), 0) }
}

fn getpid_call() -> i64 {
    // SAFETY: getpid has no arguments.
    unsafe { libc::syscall(libc::SYS_getpid) }
}

fn pread_wrong_fd() -> i64 {
    // SAFETY: zero-length read into no memory; the filter decides before the fd is looked at.
    unsafe { libc::syscall(libc::SYS_pread64, 101, std::ptr::null_mut::<u8>(), 0, 0) }
}

fn open_file() -> i64 {
    // SAFETY: a static NUL-terminated path.
    unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) }
}

#[test]
fn allowed_call_on_allowed_fd_passes() {
    match in_sandbox(&base(), Mode::Kill, write_empty_to_stderr) {
        WaitStatus::Exited(_, 1) => {}
        other => panic!("write(2) must be allowed, got {other:?}"),
    }
}

fn killed_by_sigsys(status: WaitStatus) -> bool {
    matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _))
}

#[test]
fn forbidden_syscall_kills_with_sigsys() {
    assert!(killed_by_sigsys(in_sandbox(&base(), Mode::Kill, getpid_call)));
    assert!(killed_by_sigsys(in_sandbox(&base(), Mode::Kill, open_file)));
}

#[test]
fn allowed_syscall_on_the_wrong_fd_kills() {
    assert!(killed_by_sigsys(in_sandbox(&base(), Mode::Kill, write_empty_to_fd_7)));
    assert!(killed_by_sigsys(in_sandbox(&base(), Mode::Kill, pread_wrong_fd)));
}

#[test]
fn log_mode_allows_but_does_not_kill() {
    match in_sandbox(&base(), Mode::Log, getpid_call) {
        WaitStatus::Exited(_, 1) => {}
        other => panic!("log mode must let the call through, got {other:?}"),
    }
}
