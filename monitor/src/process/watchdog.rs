//! The watchdog: a thread of tender's that ends a process-mode run when the guest's thread does
//! not. A guest may block every signal on its thread with a forged `rt_sigreturn` frame (the
//! call must stay allowed), or loop outside guest memory where a signal only records itself;
//! `--timeout`, SIGINT and SIGTERM must still end the run.
//!
//! The watchdog blocks every signal but those that end a run, so the kernel delivers them to it
//! when the guest's thread blocks them (the ring's thread blocks all). Whichever thread takes
//! one, `signals::note` records it and writes the wake-up eventfd, which the watchdog's epoll
//! set watches (edge-triggered: each write wakes it). The watchdog then forwards the signal to
//! the guest's thread (`tgkill`; harmless if that thread blocks it) and gives it [`GRACE`] to
//! land; if it has not, the watchdog prints the line the run would have printed and ends the
//! process with the same status. The report is not written then (its state is the guest
//! thread's).
//!
//! Everything it does under the filter is allowed there for it (`Allowlist::watchdog`):
//! `epoll_wait` on its set, `tgkill` of the guest's thread, `write` to stderr, `exit_group`.
//! It allocates nothing after it said it is ready: its lines are formatted before.

use std::os::fd::RawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tender_seccomp::Watchdog;

use super::trap;
use crate::outcome::RunEnd;
use crate::signals;

/// How long the guest's thread has to land after a signal that ends the run, before the
/// watchdog ends the process: enough for a hypercall in progress (a large block write) to
/// finish.
const GRACE: Duration = Duration::from_secs(2);

/// What the watchdog prints and exits with for one of `Watchdog::SIGNALS`.
struct Ending {
    sig: libc::c_int,
    line: Vec<u8>,
    status: i32,
}

/// Starts the watchdog; call on the guest's thread, after `signals::install` (whose eventfd
/// `wake_fd` is) and before the filter. Returns what the filter must allow it.
pub(super) fn start(wake_fd: RawFd, timeout: Option<u64>) -> std::io::Result<Watchdog> {
    // SAFETY: a new epoll set; the fd is owned by the watchdog for the life of the process.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
    // SAFETY: adds an fd that stays open for the run to the set just made.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, wake_fd, &mut event) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let endings: Vec<Ending> = Watchdog::SIGNALS
        .iter()
        .map(|&sig| {
            let end = RunEnd::from_signal(sig, timeout);
            let line = format!("tender: {}\n", end.message().unwrap_or_default()).into_bytes();
            Ending { sig, line, status: i32::from(end.exit_code()) }
        })
        .collect();
    // The new thread inherits this mask: everything blocked but the signals that end a run.
    // SAFETY: sigset_t is plain data, filled by sigfillset before use.
    let (mut mask, mut old): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: these only write the sets they are given.
    unsafe {
        libc::sigfillset(&mut mask);
        for sig in Watchdog::SIGNALS {
            libc::sigdelset(&mut mask, sig);
        }
    }
    // SAFETY: swaps this thread's mask; the old one is restored below.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut old) };
    // SAFETY: getpid and gettid have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    let (ready_tx, ready_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("tender-watchdog".into()).spawn(move || {
        let fs: u64;
        // SAFETY: reads this thread's FS base (user-mode FSGSBASE was checked at start).
        unsafe { core::arch::asm!("rdfsbase {}", out(reg) fs, options(nomem, nostack, preserves_flags)) };
        trap::set_watchdog_fs(fs);
        let _ = ready_tx.send(());
        watch(epoll, (pid, tid), &endings)
    });
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    spawned?;
    // The thread's start-up (its own signal stack, made by the standard library) must be done
    // before the filter forbids it.
    ready_rx.recv().map_err(|_| std::io::Error::other("the watchdog thread did not start"))?;
    Ok(Watchdog { epoll_fd: epoll, pid: pid as u32, tid: tid as u32 })
}

/// The watchdog's loop: waits for a signal that ends the run, then for the guest's thread
/// (`guest`: its pid and tid) to land, and ends the process if it does not. It runs under the
/// filter from its first line.
fn watch(epoll: RawFd, guest: (libc::pid_t, libc::pid_t), endings: &[Ending]) -> ! {
    let ending = loop {
        if !trap::landed()
            && let Some(sig) = signals::pending()
            && let Some(ending) = endings.iter().find(|e| e.sig == sig)
        {
            break ending;
        }
        sleep(epoll, None);
    };
    // In case this thread took the signal while the guest's thread still runs guest code with
    // it unblocked. SAFETY: sends a signal to the guest's thread, which lands on it (or, if it
    // blocks it, keeps it pending).
    unsafe { libc::syscall(libc::SYS_tgkill, guest.0, guest.1, ending.sig) };
    let since = Instant::now();
    while !trap::landed() && since.elapsed() < GRACE {
        sleep(epoll, Some(GRACE.saturating_sub(since.elapsed())));
    }
    if !trap::landed() {
        // SAFETY: writes a buffer formatted before the filter to stderr, then ends the process.
        unsafe {
            libc::write(2, ending.line.as_ptr().cast(), ending.line.len());
            libc::_exit(ending.status);
        }
    }
    loop {
        sleep(epoll, None);
    }
}

/// Sleeps until a signal is noted, or `timeout` passes.
fn sleep(epoll: RawFd, timeout: Option<Duration>) {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX).max(1));
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: waits on the watchdog's own set, writing at most one event into `event`.
    unsafe { libc::epoll_wait(epoll, &mut event, 1, ms) };
}
