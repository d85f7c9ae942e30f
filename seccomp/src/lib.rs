//! tender's sandbox: a seccomp-BPF allowlist built at run time from the fds the run actually
//! uses, so that a compromised monitor can do little beyond what the guest could already ask of
//! it. Every allowed call, and why, is listed in `docs/SECCOMP.md`; this file is the filter
//! itself. Anything not allowed kills the process (default) or is logged by the kernel (`Log`).

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// `KVM_RUN` and `KVM_GET_REGS` ioctl request numbers (`_IO(0xAE, 0x80)`, `_IOR(0xAE, 0x81, kvm_regs)`).
pub const KVM_RUN: u64 = 0xAE80;
pub const KVM_GET_REGS: u64 = 0x8090_AE81;
/// `KVM_GET_SREGS` (`_IOR(0xAE, 0x83, kvm_sregs)`), used for crash dumps.
pub const KVM_GET_SREGS: u64 = 0x8138_AE83;
/// For a debugger only: `KVM_SET_REGS` (`_IOW(0xAE, 0x82, kvm_regs)`), `KVM_SET_SREGS`
/// (`_IOW(0xAE, 0x84, kvm_sregs)`), `KVM_SET_GUEST_DEBUG` (`_IOW(0xAE, 0x9b, kvm_guest_debug)`).
pub const KVM_SET_REGS: u64 = 0x4090_AE82;
pub const KVM_SET_SREGS: u64 = 0x4138_AE84;
pub const KVM_SET_GUEST_DEBUG: u64 = 0x4048_AE9B;

/// The largest `pread64`/`pwrite64` on a block file that the filter lets through. The monitor
/// moves a block request in pieces whose length is a power of two up to this (`BlockIo`), so
/// that the filter can check each piece against the file's size (see [`BlockFile`]).
pub const BLOCK_IO_MAX: u64 = 1 << 20;

/// The most block files whose `pwrite64` the filter bounds exactly ([`BlockFile`]); the ABI
/// allows 63 devices, each filter has room for this many at about 300 instructions each.
pub const EXACT_BLOCK_FILES: usize = 8;

/// `TUNATTACHFILTER` (`_IOW('T', 213, struct sock_fprog)`): a tap's receive filter, replaced when
/// the guest's address changes (`monitor/src/devices/rx_filter`).
pub const TUNATTACHFILTER: u64 = 0x4010_54d5;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// What happens to a call outside the allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kill the whole process (SIGSYS). The default.
    Kill,
    /// Allow it, but have the kernel log it (audit / dmesg). For debugging.
    Log,
}

/// A block device's backing file: `pread64` and `pwrite64` on `fd`, inside `size`.
///
/// A filter cannot add two arguments, so "offset + count <= size" for `pwrite64` is checked as
/// one rule per power of two `c` up to [`BLOCK_IO_MAX`]: `count <= c && offset <= size - c`. A
/// call that passes one of them ends inside the file (`offset + count <= size - c + c`), whatever
/// its arguments; and every piece the monitor moves (a power-of-two `count` ending inside the
/// file) passes the rule for its own `count`. So not even a forged call can grow the file or
/// write past its end. Those 21 rules cost about 300 BPF instructions per file, and a filter
/// has at most 4,096: with more than [`EXACT_BLOCK_FILES`] block files, and for `pread64`
/// always (reading past the end of a file reads nothing), one coarser rule stands instead:
/// `count <= BLOCK_IO_MAX && offset < size`, which lets a forged write grow a file by less
/// than `BLOCK_IO_MAX` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFile {
    pub fd: RawFd,
    /// The file's size in bytes when the run started.
    pub size: u64,
}

/// The fds a run uses; every fd-taking call is allowed on exactly these.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    /// The vCPU: `KVM_RUN` (and `KVM_GET_REGS`/`KVM_GET_SREGS` to report how a run ended).
    pub vcpu_fd: Option<RawFd>,
    /// Console and error output: `write` only (normally 1 and 2).
    pub output_fds: Vec<RawFd>,
    /// Taps: `read`, `write`, and `ioctl(TUNATTACHFILTER)`.
    pub tap_fds: Vec<RawFd>,
    /// Block backing files: `pread64` and `pwrite64`, inside the file.
    pub block_files: Vec<BlockFile>,
    /// Files written at exit (report, core dump): `write`, `pwrite64`.
    pub exit_file_fds: Vec<RawFd>,
    /// A core dump armed with `--dumpcore`: (unnamed file, socket to its link helper). The file
    /// may be written; one byte on the socket asks the helper, a separate process, to name it,
    /// and its answer is read back; `mincore` finds the resident guest pages.
    pub core_dump: Option<(RawFd, RawFd)>,
    /// The poll set: `epoll_wait`/`epoll_pwait`.
    pub epoll_fd: Option<RawFd>,
    /// The poll timer: `timerfd_settime`.
    pub timer_fd: Option<RawFd>,
    /// The shared ring's kick eventfd: `read` (the I/O thread sleeps on it) and `write` (the vCPU
    /// thread wakes it to stop it). With it, the I/O thread may also `ppoll` two fds (a tap and
    /// this eventfd) without a signal mask: a read that waits for a frame.
    pub ring_kick_fd: Option<RawFd>,
    /// The eventfd the ring's thread writes when it consumed entries while the guest waited for
    /// it in POLL: `write`.
    pub ring_progress_fd: Option<RawFd>,
    /// The epoll set such a POLL waits on: `epoll_wait`/`epoll_pwait`.
    pub ring_epoll_fd: Option<RawFd>,
    /// With a ring, the tender's own pid: its I/O thread may `kill(pid, SIGUSR1)` to stop the
    /// vCPU when the guest breaks the ring's rules or a block file fails.
    pub ring_fault_pid: Option<u32>,
    /// Only in `tender-debug --gdb` runs: the debugger's connection (`read`, `write`, `recvfrom`),
    /// and the vCPU may also be written (`KVM_SET_REGS`, `KVM_SET_SREGS`, `KVM_SET_GUEST_DEBUG`).
    pub debugger_fd: Option<RawFd>,
    /// Only in `tender-debug --gdb` runs: `/proc/self/mem`, opened before the filter, through
    /// which `pwrite64` puts breakpoints into the guest's text (read-only on the host).
    pub debugger_mem_fd: Option<RawFd>,
    /// Only in `--mode=process` runs: the watchdog thread (`Watchdog`).
    pub watchdog: Option<Watchdog>,
}

/// Process mode's watchdog thread: it sleeps on its own epoll set (`epoll_wait`/`epoll_pwait`)
/// and may forward the signal that ends the run to the guest's thread (`tgkill(pid, tid, sig)`
/// with one of `SIGNALS`).
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    pub epoll_fd: RawFd,
    pub pid: u32,
    pub tid: u32,
}

impl Watchdog {
    /// The signals that end a run.
    pub const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGALRM, libc::SIGUSR1];
}

fn on_fd(fd: RawFd) -> SeccompRule {
    rule(vec![cond(0, SeccompCmpOp::Eq, fd as u64)])
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Only fails for an argument index above 5; ours are constants below that.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("valid seccomp condition")
}

/// A 64-bit argument compared whole (`cond` compares the low 32 bits, enough for fds and flags).
fn cond64(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).expect("valid seccomp condition")
}

/// `pread64`/`pwrite64(fd, buf, count, offset)` that start inside `file` and move at most
/// `BLOCK_IO_MAX` bytes (see [`BlockFile`]).
fn starts_inside(file: &BlockFile) -> Vec<SeccompRule> {
    vec![rule(vec![
        cond(0, SeccompCmpOp::Eq, file.fd as u64),
        cond64(2, SeccompCmpOp::Le, BLOCK_IO_MAX),
        cond64(3, SeccompCmpOp::Lt, file.size),
    ])]
}

/// `pwrite64(fd, buf, count, offset)` that stay inside `file` (see [`BlockFile`]).
fn inside(file: &BlockFile) -> Vec<SeccompRule> {
    (0..=BLOCK_IO_MAX.trailing_zeros())
        .map(|bit| 1u64 << bit)
        .filter(|&c| c <= file.size)
        .map(|c| {
            rule(vec![
                cond(0, SeccompCmpOp::Eq, file.fd as u64),
                cond64(2, SeccompCmpOp::Le, c),
                cond64(3, SeccompCmpOp::Le, file.size - c),
            ])
        })
        .collect()
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    // Only fails for an empty condition list; every caller passes at least one.
    SeccompRule::new(conditions).expect("valid seccomp rule")
}

impl Allowlist {
    /// Every fd the allowlist names: the fds a run keeps open.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let core = self.core_dump.iter().flat_map(|&(file, link)| [file, link]);
        self.vcpu_fd
            .iter()
            .chain(&self.output_fds)
            .chain(&self.tap_fds)
            .chain(self.block_files.iter().map(|b| &b.fd))
            .chain(&self.exit_file_fds)
            .chain(&self.epoll_fd)
            .chain(&self.timer_fd)
            .chain(&self.ring_kick_fd)
            .chain(&self.ring_progress_fd)
            .chain(&self.ring_epoll_fd)
            .chain(&self.debugger_fd)
            .chain(&self.debugger_mem_fd)
            .copied()
            .chain(self.watchdog.map(|w| w.epoll_fd))
            .chain(core)
    }

    /// The rules, syscall number → alternatives (an empty list allows the call outright).
    pub fn rules(&self) -> BTreeMap<i64, Vec<SeccompRule>> {
        let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let mut add = |nr: libc::c_long, rules: Vec<SeccompRule>| {
            if !rules.is_empty() {
                r.entry(nr).or_default().extend(rules);
            }
        };
        let fds = |v: &[RawFd]| v.iter().map(|&fd| on_fd(fd)).collect::<Vec<_>>();

        if let Some(fd) = self.vcpu_fd {
            let debugging: &[u64] =
                if self.debugger_fd.is_some() { &[KVM_SET_REGS, KVM_SET_SREGS, KVM_SET_GUEST_DEBUG] } else { &[] };
            let ioctls = [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
                .iter()
                .chain(debugging)
                .map(|&req| rule(vec![cond(0, SeccompCmpOp::Eq, fd as u64), cond(1, SeccompCmpOp::Eq, req)]))
                .collect();
            add(libc::SYS_ioctl, ioctls);
        }
        let filters = self
            .tap_fds
            .iter()
            .map(|&fd| rule(vec![cond(0, SeccompCmpOp::Eq, fd as u64), cond(1, SeccompCmpOp::Eq, TUNATTACHFILTER)]))
            .collect();
        add(libc::SYS_ioctl, filters);
        let core_link = self.core_dump.map(|(_, link)| link);
        let writable: Vec<RawFd> = self
            .output_fds
            .iter()
            .chain(&self.tap_fds)
            .chain(&self.exit_file_fds)
            .chain(&self.ring_kick_fd)
            .chain(&self.ring_progress_fd)
            .chain(&core_link)
            .chain(&self.debugger_fd)
            .copied()
            .collect();
        add(libc::SYS_write, fds(&writable));
        let readable: Vec<RawFd> =
            self.tap_fds.iter().chain(&self.ring_kick_fd).chain(&core_link).chain(&self.debugger_fd).copied().collect();
        if let Some(fd) = self.debugger_fd {
            // Ctrl-C from gdb while the guest runs: a look at the connection without blocking.
            add(libc::SYS_recvfrom, fds(&[fd]));
        }
        add(libc::SYS_read, fds(&readable));
        if self.ring_kick_fd.is_some() {
            // ppoll's fds are in memory, out of the filter's sight: the count (a tap and the kick
            // eventfd) and the absent signal mask are what can be checked; it only waits.
            add(libc::SYS_ppoll, vec![rule(vec![cond(1, SeccompCmpOp::Eq, 2), cond(3, SeccompCmpOp::Eq, 0)])]);
        }
        if let Some(pid) = self.ring_fault_pid {
            let own_usr1 =
                rule(vec![cond(0, SeccompCmpOp::Eq, u64::from(pid)), cond(1, SeccompCmpOp::Eq, libc::SIGUSR1 as u64)]);
            add(libc::SYS_kill, vec![own_usr1]);
        }
        if let Some(w) = self.watchdog {
            let forward = Watchdog::SIGNALS
                .iter()
                .map(|&sig| {
                    rule(vec![
                        cond(0, SeccompCmpOp::Eq, u64::from(w.pid)),
                        cond(1, SeccompCmpOp::Eq, u64::from(w.tid)),
                        cond(2, SeccompCmpOp::Eq, sig as u64),
                    ])
                })
                .collect();
            add(libc::SYS_tgkill, forward);
        }
        add(libc::SYS_pread64, self.block_files.iter().flat_map(starts_inside).collect());
        let exact = self.block_files.len() <= EXACT_BLOCK_FILES;
        add(
            libc::SYS_pwrite64,
            self.block_files.iter().flat_map(|f| if exact { inside(f) } else { starts_inside(f) }).collect(),
        );
        let pwritable: Vec<RawFd> = self.exit_file_fds.iter().chain(&self.debugger_mem_fd).copied().collect();
        add(libc::SYS_pwrite64, fds(&pwritable));
        let watchdog_epoll = self.watchdog.map(|w| w.epoll_fd);
        let epolls: Vec<RawFd> =
            self.epoll_fd.iter().chain(&self.ring_epoll_fd).chain(&watchdog_epoll).copied().collect();
        add(libc::SYS_epoll_wait, fds(&epolls));
        add(libc::SYS_epoll_pwait, fds(&epolls));
        if let Some(fd) = self.timer_fd {
            add(libc::SYS_timerfd_settime, fds(&[fd]));
        }
        // No call that takes a path: the core's name is given by the link helper.
        if let Some((file, _)) = self.core_dump {
            add(libc::SYS_pwrite64, fds(&[file]));
        }
        // Clocks for WALLTIME when the vDSO is unavailable: only the two clocks the ABI uses.
        add(
            libc::SYS_clock_gettime,
            vec![
                rule(vec![cond(0, SeccompCmpOp::Eq, libc::CLOCK_REALTIME as u64)]),
                rule(vec![cond(0, SeccompCmpOp::Eq, libc::CLOCK_MONOTONIC as u64)]),
            ],
        );
        // The end of the run (the process ends with `_exit`, which is exit_group; no thread ever
        // exits alone), signal delivery (SIGINT/SIGTERM/SIGALRM/SIGUSR1 handlers return through
        // rt_sigreturn), and brk: the only way the allocator may grow the heap, for the error
        // messages of a failing run (the hot path allocates nothing; mmap stays forbidden), up to
        // the RLIMIT_DATA the monitor sets before the filter.
        for nr in [libc::SYS_exit_group, libc::SYS_rt_sigreturn, libc::SYS_brk] {
            r.insert(nr, Vec::new());
        }
        if self.core_dump.is_some() {
            r.insert(libc::SYS_mincore, Vec::new());
        }
        r
    }

    /// Compiles the allowlist into a BPF program.
    pub fn compile(&self, mode: Mode) -> Result<BpfProgram, SandboxError> {
        let mismatch = match mode {
            Mode::Kill => SeccompAction::KillProcess,
            Mode::Log => SeccompAction::Log,
        };
        let filter = SeccompFilter::new(self.rules(), mismatch, SeccompAction::Allow, TargetArch::x86_64)
            .map_err(|e| SandboxError::Build(e.to_string()))?;
        filter.try_into().map_err(|e: seccompiler::BackendError| SandboxError::Build(e.to_string()))
    }
}

/// Sets PR_SET_NO_NEW_PRIVS and installs `program` on every thread of the process.
pub fn install(program: &BpfProgram) -> Result<(), SandboxError> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Install(std::io::Error::last_os_error().to_string()));
    }
    seccompiler::apply_filter_all_threads(program).map_err(|e| SandboxError::Install(e.to_string()))
}
