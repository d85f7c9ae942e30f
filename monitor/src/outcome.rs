//! How a run ends, and the errors a hypercall can end it with: the types the devices, the ring,
//! the report and the run loop share. This module sits below all of them, so that imports in the
//! monitor run one way (devices and the report never import `vm`).

use crate::devices::ring::RingFault;
use crate::devices::{IoError, host_io_error};
use crate::memory::GuestFault;
use guest_abi::TrapFrame;

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The guest called HALT. `trap` is the trap frame its runtime left at the cookie on an
    /// abort caused by a CPU exception.
    Halted { status: i32, trap: Option<Trap> },
    /// The guest broke the rules; the run was ended.
    GuestError { error: GuestError, rip: u64 },
    /// A host-side failure during the run (a block file's I/O error, a tap that went away, a
    /// closed stdout, a KVM failure).
    HostError(String),
    /// SIGINT, SIGTERM or SIGUSR1 (from outside; the ring's own SIGUSR1 becomes a guest fault).
    Signal(i32),
    /// `--timeout` seconds passed.
    Timeout(u64),
    /// A debugger attached with `tender-debug --gdb` killed the guest.
    Killed,
}

/// A CPU exception the guest's runtime reported at HALT.
#[derive(Clone, Copy, Debug)]
pub struct Trap {
    pub frame: TrapFrame,
    /// Known when the runtime left a [`guest_abi::TrapReport`] (guest-rt does; Solo5 does not).
    pub vector: Option<u64>,
}

impl RunEnd {
    /// The process exit status: the guest's own status on HALT, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunEnd::Halted { status, .. } => *status as u8,
            _ => 1,
        }
    }

    /// tender's line about how the run ended (after `tender: `), if it prints one.
    pub fn message(&self) -> Option<String> {
        Some(match self {
            RunEnd::Halted { trap: Some(t), status } => format!(
                "guest aborted (status {status}) on a CPU exception{}: rip={:#x} rsp={:#x} error={:#x} cr2={:#x}",
                t.vector.map(|v| format!(" (vector {v})")).unwrap_or_default(),
                t.frame.rip,
                t.frame.rsp,
                t.frame.error_code,
                t.frame.cr2
            ),
            RunEnd::Halted { .. } => return None,
            RunEnd::GuestError { error, rip } => format!("{error}, rip={rip:#x}"),
            RunEnd::HostError(msg) => msg.clone(),
            RunEnd::Signal(sig) => format!("exiting on signal {sig}"),
            RunEnd::Timeout(secs) => format!("guest still running after --timeout={secs}s, stopped"),
            RunEnd::Killed => "guest killed by the debugger".into(),
        })
    }

    /// The end of a run stopped by `sig`: SIGALRM is `--timeout` (when one was given). A SIGUSR1
    /// from the ring's thread becomes its fault in `Vm::run`.
    pub fn from_signal(sig: i32, timeout: Option<u64>) -> Self {
        match (sig, timeout) {
            (libc::SIGALRM, Some(secs)) => RunEnd::Timeout(secs),
            _ => RunEnd::Signal(sig),
        }
    }
}

/// Guest behaviour that ends the run (exit 1).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestError {
    #[error("{0}")]
    Access(GuestFault),
    #[error("Invalid guest port access: port={port:#x}, size={size}, direction={direction}")]
    Port { port: u16, size: usize, direction: &'static str },
    #[error("Invalid guest hypercall: num={0}")]
    Hypercall(u16),
    #[error("guest halted the CPU (hlt)")]
    Hlt,
    #[error("guest triple fault (KVM_EXIT_SHUTDOWN)")]
    Shutdown,
    #[error("guest access to unmapped or read-only memory: {op} at gpa={gpa:#x}")]
    Mmio { op: &'static str, gpa: u64 },
    #[error("KVM: host/guest translation fault (guest write to read-only memory)")]
    TranslationFault,
    #[error("KVM: internal error exit: suberror={0:#x} (emulation failure or triple fault)")]
    Internal(u32),
    #[error("KVM: entry failure: hw_entry_failure_reason={0:#x}")]
    FailEntry(u64),
    #[error("KVM: unhandled exit: exit_reason={0:#x}")]
    Unhandled(u32),
    #[error("{0}")]
    Ring(RingFault),
}

/// A hypercall that cannot complete normally.
#[derive(Debug, thiserror::Error)]
pub enum HypercallError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("Fatal error on {device}: {op} failed: {err}")]
    HostIo { device: String, op: &'static str, err: std::io::Error },
    #[error("{0}")]
    Host(String),
    /// A signal arrived while waiting.
    #[error("interrupted")]
    Interrupted,
}

impl From<GuestFault> for HypercallError {
    fn from(f: GuestFault) -> Self {
        HypercallError::Guest(GuestError::Access(f))
    }
}

impl HypercallError {
    /// A failed host read or write of device `device` (`errno`, 0 for an early end of file), a
    /// block file or a tap: the run ends the same way whether the request came by hypercall,
    /// through the ring, or (a tap that went away) from POLL.
    pub fn host_io(device: &str, op: &'static str, errno: i32) -> Self {
        HypercallError::HostIo { device: device.into(), op, err: host_io_error(errno) }
    }

    /// A request to device `device` (a block file or a tap) that could not be answered.
    pub fn device(device: &str, e: IoError) -> Self {
        match e {
            IoError::Guest(fault) => fault.into(),
            IoError::Host { op, errno } => Self::host_io(device, op, errno),
        }
    }
}
