//! Hooks for a debugger (`tender-debug --gdb`): an observer of the vCPU's stops, with access to
//! its registers and to guest memory. `tender` itself runs with `()`, whose hooks are empty and
//! inline away: the run loop is generic over the observer, so a plain run pays nothing for them.

use kvm_bindings::kvm_debug_exit_arch;
use kvm_ioctls::VcpuFd;
use tender_seccomp::Allowlist;

use crate::memory::GuestRam;
use crate::outcome::RunEnd;

/// Why the vCPU stopped for the observer.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// `KVM_EXIT_DEBUG`: a hardware breakpoint or a single step (KVM_SET_GUEST_DEBUG).
    Debug(kvm_debug_exit_arch),
    /// `KVM_RUN` (or a POLL) was cut short by a signal that does not end the run: the observer's
    /// own, which set `immediate_exit` (the observer clears it).
    Interrupted,
    /// An `out` to a port the monitor does not serve (`port`, the value written); the vCPU is
    /// past the instruction.
    Port { port: u16, value: u32 },
}

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Run the guest on (the stop was the observer's).
    Resume,
    /// The stop is not the observer's: the run loop handles it as it would without one.
    NotMine,
    /// End the run (`RunEnd::Killed`).
    Kill,
}

/// The stopped vCPU and guest memory, lent to the observer.
pub struct Stopped<'a> {
    pub vcpu: &'a mut VcpuFd,
    pub ram: &'a GuestRam,
}

/// Watches a run. Every method has a default that changes nothing.
pub trait Observer {
    /// Adds what the observer needs to the sandbox (it is installed before [`Observer::start`]).
    #[inline(always)]
    fn sandbox(&self, _allow: &mut Allowlist) {}

    /// The guest is at its first instruction.
    #[inline(always)]
    fn start(&mut self, _vcpu: Stopped<'_>) -> Control {
        Control::Resume
    }

    /// The vCPU stopped for `why`.
    #[inline(always)]
    fn stop(&mut self, _vcpu: Stopped<'_>, _why: Stop) -> Control {
        Control::NotMine
    }

    /// A hypercall was carried out and the guest is about to resume (a single step over the
    /// `out` stops here: KVM loses the step's trap over port I/O that exits).
    #[inline(always)]
    fn hypercall_done(&mut self, _vcpu: Stopped<'_>) -> Control {
        Control::Resume
    }

    /// The run ended (after tender's own line about it, before the process exits).
    #[inline(always)]
    fn end(&mut self, _end: &RunEnd) {}
}

/// No observer: a plain run.
impl Observer for () {}
