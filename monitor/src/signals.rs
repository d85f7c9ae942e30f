//! SIGINT and SIGTERM end the run cleanly (status 1), as solo5-hvt does; so does SIGALRM, which
//! `--timeout` arms, and SIGUSR1, which the ring's I/O thread sends when the guest breaks the
//! ring's rules (the run loop then reports the guest's fault rather than a signal).
//!
//! The handler only records the signal and sets the vCPU's `immediate_exit`, so a signal that
//! arrives just before KVM_RUN still stops the guest; the run loop does the rest.

use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static PENDING: AtomicI32 = AtomicI32::new(0);
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// An eventfd in POLL's epoll set: a signal that lands just before `epoll_wait` still wakes it.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    note(sig);
}

/// What every handler of these signals does, in both modes: records `sig`, wakes a POLL in
/// progress, and stops a vCPU about to enter the guest. Async-signal-safe.
pub fn note(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
    let wake = WAKE_FD.load(Ordering::SeqCst);
    if wake >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; the eventfd stays open for the whole run.
        let _ = unsafe { libc::write(wake, one.as_ptr().cast(), one.len()) };
    }
    let flag = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: `flag` points at `kvm_run.immediate_exit` of the live vCPU (set by `install`,
        // cleared by `uninstall` before the vCPU is dropped); a byte store is signal-safe.
        unsafe { flag.write_volatile(1) };
    }
}

/// Installs the handlers (without SA_RESTART, so blocking calls return EINTR).
/// `immediate_exit` is the vCPU's `kvm_run.immediate_exit` byte.
/// With `timeout_secs`, SIGALRM is armed to fire that many seconds from now.
/// `wake_fd` is an eventfd the handler writes to, so that a blocking wait notices the signal.
pub fn install(immediate_exit: *mut u8, wake_fd: i32, timeout_secs: Option<u64>) -> nix::Result<()> {
    IMMEDIATE_EXIT.store(immediate_exit, Ordering::SeqCst);
    WAKE_FD.store(wake_fd, Ordering::SeqCst);
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGALRM, Signal::SIGUSR1] {
        // SAFETY: the handler only does atomic stores and one volatile byte store.
        unsafe { sigaction(sig, &action) }?;
    }
    if let Some(secs) = timeout_secs {
        let secs = libc::c_uint::try_from(secs).unwrap_or(libc::c_uint::MAX);
        // SAFETY: alarm only arms the process's real-time timer.
        unsafe { libc::alarm(secs) };
    }
    Ok(())
}

/// Forgets the vCPU pointer (call before the vCPU goes away).
pub fn uninstall() {
    IMMEDIATE_EXIT.store(std::ptr::null_mut(), Ordering::SeqCst);
    WAKE_FD.store(-1, Ordering::SeqCst);
}

/// The signal that asked the run to end, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
