//! `--mode=process`: the guest runs on tender's own main thread, at the host addresses of its
//! guest-physical memory, and reaches tender only through signals (docs/PROCESS_MODE.md).
//!
//! [`ProcessGuest::new`] checks the CPU and calibrates the TSC; [`ProcessGuest::arm`] (before the
//! filter) makes the alternate signal stack and installs the handlers of `trap`;
//! [`ProcessGuest::run`] jumps to the guest and returns once a handler has landed the run.

mod decode;
mod scrub;
mod trap;
mod watchdog;

pub use scrub::{ScrubError, scrub_args_and_env};

use std::os::fd::RawFd;

use guest_abi::BOOT_INFO_GPA;
use kvm_bindings::{kvm_regs, kvm_sregs};
use tender_seccomp::Watchdog;

use crate::hypercalls::Hypercalls;
use crate::outcome::RunEnd;

/// Usable size of the alternate signal stack: the hypercall handlers run on it.
const ALT_STACK_SIZE: usize = 256 << 10;
const PAGE: usize = 4096;
/// How long the TSC is measured against CLOCK_MONOTONIC_RAW at start.
const TSC_CALIBRATION_NS: u64 = 5_000_000;
/// `HWCAP2_FSGSBASE` in `AT_HWCAP2`: the kernel lets user mode run `rdfsbase`/`wrfsbase`.
const HWCAP2_FSGSBASE: u64 = 1 << 1;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("--mode=process needs user-mode FSGSBASE (Linux 5.9 or later on a CPU with FSGSBASE)")]
    NoFsgsbase,
    #[error("--mode=process: cannot make the signal stack: {0}")]
    AltStack(std::io::Error),
    #[error("--mode=process: cannot install the trap handler: {0}")]
    Handler(std::io::Error),
    #[error("--mode=process: cannot start the watchdog: {0}")]
    Watchdog(std::io::Error),
}

/// A guest to run on this thread.
pub struct ProcessGuest {
    entry: u64,
    /// Initial RSP: `mem_size - 8`, as an hvt tender starts a vCPU.
    stack: u64,
    /// The calibrated TSC frequency, for the boot info.
    pub tsc_hz: u64,
    /// The guest's RIP when the run ended (for messages).
    rip: u64,
    /// The watchdog thread, once `arm` started it.
    watchdog: Option<Watchdog>,
    /// The guest's registers where the run ended.
    last: trap::GuestState,
}

impl ProcessGuest {
    pub fn new(entry: u64, mem_size: u64) -> Result<Self, ProcessError> {
        // SAFETY: getauxval only reads the process's auxiliary vector.
        if unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE == 0 {
            return Err(ProcessError::NoFsgsbase);
        }
        Ok(ProcessGuest {
            entry,
            stack: mem_size - 8,
            tsc_hz: calibrate_tsc(),
            rip: 0,
            watchdog: None,
            last: Default::default(),
        })
    }

    /// Makes the alternate signal stack (with a guard page below it), installs the handlers,
    /// for every signal that may arrive on the guest's thread, and starts the watchdog. Call
    /// after `signals::install` (whose state the handlers share; `wake_fd` is its eventfd) and
    /// before the filter, which forbids all three.
    pub fn arm(&mut self, wake_fd: RawFd, timeout: Option<u64>) -> Result<(), ProcessError> {
        let len = ALT_STACK_SIZE + PAGE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK;
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(ProcessError::AltStack(std::io::Error::last_os_error()));
        }
        // SAFETY: the first page of the mapping just made; an overflow of the stack above it
        // faults there instead of running into whatever lies below.
        if unsafe { libc::mprotect(base, PAGE, libc::PROT_NONE) } != 0 {
            return Err(ProcessError::AltStack(std::io::Error::last_os_error()));
        }
        // SAFETY: `base + PAGE` is inside the mapping, which is never unmapped.
        let stack = libc::stack_t { ss_sp: unsafe { base.byte_add(PAGE) }, ss_flags: 0, ss_size: ALT_STACK_SIZE };
        // SAFETY: `stack` describes memory that stays mapped for the life of the process.
        if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
            return Err(ProcessError::AltStack(std::io::Error::last_os_error()));
        }
        trap::install().map_err(ProcessError::Handler)?;
        self.watchdog = Some(watchdog::start(wake_fd, timeout).map_err(ProcessError::Watchdog)?);
        Ok(())
    }

    /// What the filter must allow the watchdog, once started.
    pub fn watchdog(&self) -> Option<Watchdog> {
        self.watchdog
    }

    /// Runs the guest until a handler ends the run. `kick_fd` is the ring's kick eventfd, when a
    /// ring runs.
    pub fn run(&mut self, calls: &mut Hypercalls, kick_fd: Option<RawFd>, timeout: Option<u64>) -> RunEnd {
        let (end, rip, last) = trap::run_guest(calls, kick_fd, timeout, self.entry, self.stack, BOOT_INFO_GPA);
        self.rip = rip;
        self.last = last;
        end
    }

    /// The guest's RIP when the run ended.
    pub fn rip(&self) -> u64 {
        self.rip
    }

    /// The guest's registers where the run ended, as KVM would give them (for a core dump):
    /// the general registers from the signal context of the landing, the FS base the guest
    /// had, CS and SS as Linux's user segments.
    pub fn registers(&self) -> (kvm_regs, kvm_sregs) {
        let g = |r: libc::c_int| self.last.gregs[r as usize] as u64;
        let regs = kvm_regs {
            rax: g(libc::REG_RAX),
            rbx: g(libc::REG_RBX),
            rcx: g(libc::REG_RCX),
            rdx: g(libc::REG_RDX),
            rsi: g(libc::REG_RSI),
            rdi: g(libc::REG_RDI),
            rsp: g(libc::REG_RSP),
            rbp: g(libc::REG_RBP),
            r8: g(libc::REG_R8),
            r9: g(libc::REG_R9),
            r10: g(libc::REG_R10),
            r11: g(libc::REG_R11),
            r12: g(libc::REG_R12),
            r13: g(libc::REG_R13),
            r14: g(libc::REG_R14),
            r15: g(libc::REG_R15),
            rip: g(libc::REG_RIP),
            rflags: g(libc::REG_EFL),
        };
        let mut sregs = kvm_sregs::default();
        // CSGSFS: CS in bits 0-15, SS in bits 48-63 (Linux 4.14 and later).
        let csgsfs = g(libc::REG_CSGSFS);
        sregs.cs.selector = csgsfs as u16;
        sregs.ss.selector = (csgsfs >> 48) as u16;
        sregs.fs.base = self.last.fs_base;
        (regs, sregs)
    }
}

/// The TSC frequency in Hz, measured against CLOCK_MONOTONIC_RAW and rounded to kHz (what KVM
/// reports under KVM). The TSC of the hosts tender runs on is invariant.
fn calibrate_tsc() -> u64 {
    let now = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let (t0, c0) = (now(), rdtsc());
    let (mut t1, mut c1) = (t0, c0);
    while t1.saturating_sub(t0) < TSC_CALIBRATION_NS {
        (t1, c1) = (now(), rdtsc());
    }
    let hz = u128::from(c1.wrapping_sub(c0)) * 1_000_000_000 / u128::from(t1 - t0);
    (hz as u64 + 500) / 1000 * 1000
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter, which Linux lets user mode read.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsc_is_calibrated_to_khz() {
        let hz = super::calibrate_tsc();
        assert_eq!(hz % 1000, 0);
        assert!(hz > 100_000_000, "{hz}");
    }
}
