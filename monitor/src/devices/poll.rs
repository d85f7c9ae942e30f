//! POLL: wait for a frame on any net device or for a timeout. A tap that reports an error or
//! hang-up ends the wait, and the run: epoll would report it again at once, for ever.
//!
//! With the shared ring, a guest that waits for the ring's I/O thread sleeps in POLL too; that
//! wait uses a second epoll set, with the thread's progress eventfd instead of the taps (see
//! `ring::Ring::enter_poll`).

use std::os::fd::{AsFd, RawFd};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// epoll data values of the timer and of the signal wake-up; net devices use their manifest
/// index (< 64).
const TIMER_TOKEN: u64 = u64::MAX;
const WAKE_TOKEN: u64 = u64::MAX - 1;
const PROGRESS_TOKEN: u64 = u64::MAX - 2;
/// At most 63 devices plus the timer can be ready at once.
const MAX_EVENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot set up the poll set: {0}")]
    Setup(nix::Error),
}

pub struct Poller {
    epoll: Epoll,
    /// The timer, the wake-up and the ring's progress eventfd: a wait for the ring's thread.
    ring_epoll: Epoll,
    timer: TimerFd,
    /// Written by the signal handler (see `signals`): a signal always ends a wait.
    wake: nix::sys::eventfd::EventFd,
}

/// How a wait ended.
pub enum Wait {
    Ready {
        ready_set: u64,
        count: i32,
    },
    /// A signal arrived; the run loop decides what to do.
    Interrupted,
    /// epoll reported an error or hang-up on the tap of net device `handle` (its interface was
    /// deleted): it would report it again at once, so the run must end.
    HangUp(u64),
}

impl Poller {
    pub fn new() -> Result<Self, PollError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(PollError::Setup)?;
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK)
            .map_err(PollError::Setup)?;
        epoll.add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TIMER_TOKEN)).map_err(PollError::Setup)?;
        let wake = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map_err(PollError::Setup)?;
        epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN)).map_err(PollError::Setup)?;
        let ring_epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(PollError::Setup)?;
        ring_epoll.add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TIMER_TOKEN)).map_err(PollError::Setup)?;
        ring_epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN)).map_err(PollError::Setup)?;
        Ok(Poller { epoll, ring_epoll, timer, wake })
    }

    /// Watches a net device's tap, reported as bit `handle` of the ready set.
    pub fn watch(&self, fd: impl AsFd, handle: u64) -> Result<(), PollError> {
        self.epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, handle)).map_err(PollError::Setup)
    }

    /// Watches the ring's progress eventfd (edge-triggered: the thread writes it, nobody reads
    /// it) in the ring set.
    pub fn watch_ring(&self, fd: impl AsFd) -> Result<(), PollError> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        self.ring_epoll.add(fd, EpollEvent::new(flags, PROGRESS_TOKEN)).map_err(PollError::Setup)
    }

    /// The epoll set, the timer and the signal wake-up eventfd.
    pub fn fds(&self) -> [RawFd; 3] {
        use std::os::fd::AsRawFd;
        [self.epoll.0.as_raw_fd(), self.timer.as_fd().as_raw_fd(), self.wake.as_fd().as_raw_fd()]
    }

    /// The ring's epoll set.
    pub fn ring_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring_epoll.0.as_raw_fd()
    }

    /// Waits until a device is readable (or, with `ring`, until the ring's thread made
    /// progress) or `timeout_ns` passed. A zero timeout only looks.
    pub fn wait(&self, timeout_ns: u64, ring: bool) -> Result<Wait, nix::Error> {
        let mut events = [EpollEvent::empty(); MAX_EVENTS];
        let timeout = if timeout_ns == 0 {
            EpollTimeout::ZERO
        } else {
            let d = Duration::from_nanos(timeout_ns);
            self.timer.set(Expiration::OneShot(TimeSpec::from_duration(d)), TimerSetTimeFlags::empty())?;
            EpollTimeout::NONE
        };
        let set = if ring { &self.ring_epoll } else { &self.epoll };
        let n = match set.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::Error::EINTR) => return Ok(Wait::Interrupted),
            Err(e) => return Err(e),
        };
        let mut ready_set = 0u64;
        let mut count = 0;
        // A stale timer event (an earlier deadline) only ends a wait early, which the ABI allows.
        for ev in &events[..n] {
            let token = ev.data();
            if token == WAKE_TOKEN {
                // Only a signal writes it, and a signal ends the run: no need to drain it.
                return Ok(Wait::Interrupted);
            }
            if token < 64 && ev.events().intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
                return Ok(Wait::HangUp(token));
            }
            if token < 64 {
                ready_set |= 1 << token;
                count += 1;
            }
        }
        Ok(Wait::Ready { ready_set, count })
    }
}
