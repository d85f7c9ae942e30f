//! The filter really filters: each case forks a child that installs it and then makes one call.

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use std::sync::atomic::{AtomicU64, Ordering};

use tender_seccomp::{Allowlist, BLOCK_IO_MAX, BlockFile, EXACT_BLOCK_FILES, Mode, Watchdog, install};

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

/// The block file of `base()`: fd 100, 64 KiB.
const BLOCK_SIZE: u64 = 64 << 10;

fn base() -> Allowlist {
    Allowlist {
        output_fds: vec![1, 2],
        block_files: vec![BlockFile { fd: 100, size: BLOCK_SIZE }],
        ..Default::default()
    }
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

/// `pread64` or `pwrite64` on the block fd with (count, offset) from these statics (fn pointers
/// cannot capture; set before forking). fd 100 is not open in the child: a call the filter lets
/// through fails with EBADF, touching nothing.
static IO_CALL: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn block_io() -> i64 {
    let [nr, count, offset] = IO_CALL.each_ref().map(|v| v.load(Ordering::SeqCst));
    let nr = nr as libc::c_long;
    // SAFETY: fd 100 is not open: the kernel looks at no buffer (EBADF), if the filter lets the
    // call through at all.
    unsafe { libc::syscall(nr, 100, std::ptr::null_mut::<u8>(), count, offset) }
}

/// Held while [`IO_CALL`] is set and its child runs: the tests run on parallel threads, and one
/// test's values must not reach another's child.
static IO_CALL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check_block_io(nr: libc::c_long, cases: &[(Allowlist, u64, u64, bool)]) {
    let _one_at_a_time = IO_CALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for &(ref allow, count, offset, pass) in cases {
        for (slot, value) in IO_CALL.iter().zip([nr as u64, count, offset]) {
            slot.store(value, Ordering::SeqCst);
        }
        let status = in_sandbox(allow, Mode::Kill, block_io);
        assert_eq!(!killed_by_sigsys(status), pass, "syscall {nr}, count {count}, offset {offset}: {status:?}");
    }
}

/// Up to EXACT_BLOCK_FILES block files, a write passes only if it ends inside the file.
#[test]
fn block_writes_stay_inside_the_file() {
    let max = BLOCK_IO_MAX;
    let big = Allowlist { block_files: vec![BlockFile { fd: 100, size: 4 * max }], ..base() };
    let cases = [
        (base(), 512, 0, true),
        (base(), 512, BLOCK_SIZE - 512, true),
        (base(), 1, BLOCK_SIZE - 1, true),
        (base(), BLOCK_SIZE, 0, true),
        (base(), 512, BLOCK_SIZE - 511, false),
        (base(), 2, BLOCK_SIZE - 1, false),
        (base(), 1, BLOCK_SIZE, false),
        (base(), BLOCK_SIZE + 1, 0, false),
        (base(), 512, u64::MAX - 511, false),
        (big.clone(), max, 3 * max, true),
        (big, max + 1, 0, false),
    ];
    check_block_io(libc::SYS_pwrite64, &cases);
}

/// Reads, and writes with more block files than the filter has room for exact rules: a call
/// passes if it starts inside the file and moves at most BLOCK_IO_MAX bytes.
#[test]
fn coarse_block_io_starts_inside_the_file() {
    let many = Allowlist {
        block_files: (0..=EXACT_BLOCK_FILES as i32).map(|i| BlockFile { fd: 100 + i, size: BLOCK_SIZE }).collect(),
        ..base()
    };
    for (nr, allow) in [(libc::SYS_pread64, base()), (libc::SYS_pwrite64, many)] {
        let cases = [
            (allow.clone(), 512, BLOCK_SIZE - 512, true),
            (allow.clone(), 512, BLOCK_SIZE - 1, true),
            (allow.clone(), BLOCK_IO_MAX, 0, true),
            (allow.clone(), 512, BLOCK_SIZE, false),
            (allow.clone(), BLOCK_IO_MAX + 1, 0, false),
            (allow.clone(), 512, u64::MAX, false),
        ];
        check_block_io(nr, &cases);
    }
}

/// The largest filters still fit the kernel's 4,096 instructions: 63 block files, or the most
/// block files with exact rules beside taps for every other manifest entry, a ring, a core dump
/// and the report.
#[test]
fn the_largest_filters_compile() {
    let files = |n: i32| (0..n).map(|i| BlockFile { fd: 100 + i, size: 1 << 40 }).collect::<Vec<_>>();
    let full = |blocks: i32| Allowlist {
        output_fds: vec![1, 2, 3],
        block_files: files(blocks),
        tap_fds: (blocks..63).map(|i| 100 + i).collect(),
        exit_file_fds: vec![4],
        core_dump: Some((5, 6)),
        epoll_fd: Some(7),
        timer_fd: Some(8),
        ring_kick_fd: Some(9),
        ring_progress_fd: Some(10),
        ring_epoll_fd: Some(11),
        ring_fault_pid: Some(1),
        vcpu_fd: Some(12),
        ..Default::default()
    };
    for blocks in [63, EXACT_BLOCK_FILES as i32, 1] {
        if let Err(e) = full(blocks).compile(Mode::Kill) {
            panic!("{blocks} block files: {e}");
        }
    }
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

/// The process the `kill` cases aim at (set before forking; fn pointers cannot capture).
static KILL_TARGET: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn kill_target_usr1() -> i64 {
    let pid = KILL_TARGET.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: kill(2) of a `sleep` the test started.
    unsafe { libc::syscall(libc::SYS_kill, pid, libc::SIGUSR1) }
}

fn kill_target_sigkill() -> i64 {
    let pid = KILL_TARGET.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_kill, pid, libc::SIGKILL) }
}

fn kill_init_usr1() -> i64 {
    // SAFETY: the filter refuses it before the kernel sees it (that is what is tested).
    unsafe { libc::syscall(libc::SYS_kill, 1, libc::SIGUSR1) }
}

/// With a ring, `kill` is allowed for exactly one pid (tender's own) and SIGUSR1.
#[test]
fn kill_only_sigusr1_to_the_ring_pid() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    KILL_TARGET.store(sleeper.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let allow = Allowlist { ring_fault_pid: Some(sleeper.id()), ..base() };
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, kill_target_sigkill)), "another signal");
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, kill_init_usr1)), "another pid");
    assert!(killed_by_sigsys(in_sandbox(&base(), Mode::Kill, kill_target_usr1)), "no ring, no kill");
    match in_sandbox(&allow, Mode::Kill, kill_target_usr1) {
        WaitStatus::Exited(_, 1) => {}
        other => panic!("kill(ring pid, SIGUSR1) must be allowed, got {other:?}"),
    }
    let status = sleeper.wait().expect("wait for sleep");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGUSR1), "the allowed kill went through");
}

/// With a ring, its kick eventfd may be read and written; other fds stay closed to `read`.
#[test]
fn ring_kick_fd_is_readable_and_writable() {
    let rules = Allowlist { ring_kick_fd: Some(42), ..base() }.rules();
    let without = base().rules();
    for nr in [libc::SYS_read, libc::SYS_write] {
        let with_ring = rules.get(&nr).map_or(0, Vec::len);
        let plain = without.get(&nr).map_or(0, Vec::len);
        assert_eq!(with_ring, plain + 1, "one more fd for syscall {nr}");
    }
}

fn ppoll_two(sigmask: bool) -> i64 {
    let mut fds = [libc::pollfd { fd: 2, events: 0, revents: 0 }, libc::pollfd { fd: 1, events: 0, revents: 0 }];
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let mask = [0u64; 1];
    let mask_ptr = if sigmask { mask.as_ptr() } else { std::ptr::null() };
    // SAFETY: ppoll of two pollfds of ours with a zero timeout; the mask, if any, is 8 bytes.
    unsafe { libc::syscall(libc::SYS_ppoll, fds.as_mut_ptr(), 2, &zero, mask_ptr, 8) }
}

fn ppoll_three() -> i64 {
    let mut fds = [libc::pollfd { fd: 2, events: 0, revents: 0 }; 3];
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as above, three pollfds, no mask.
    unsafe { libc::syscall(libc::SYS_ppoll, fds.as_mut_ptr(), 3, &zero, std::ptr::null::<u64>(), 8) }
}

fn ppoll_plain() -> i64 {
    ppoll_two(false)
}

fn ppoll_with_mask() -> i64 {
    ppoll_two(true)
}

/// With a ring, its thread may `ppoll` two fds (a tap and the kick eventfd: a waiting read)
/// without a signal mask, and nothing else; without a ring not at all.
#[test]
fn ppoll_only_two_fds_without_a_mask_with_a_ring() {
    let allow = Allowlist { ring_kick_fd: Some(42), ..base() };
    match in_sandbox(&allow, Mode::Kill, ppoll_plain) {
        WaitStatus::Exited(_, 1) => {}
        other => panic!("ppoll of two fds must be allowed with a ring, got {other:?}"),
    }
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, ppoll_with_mask)), "a signal mask");
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, ppoll_three)), "three fds");
    assert!(killed_by_sigsys(in_sandbox(&base(), Mode::Kill, ppoll_plain)), "no ring, no ppoll");
}

/// Calls system call `NR` with a path in every argument that may hold one (fds -100, AT_FDCWD,
/// in between): whatever the call, the filter must decide before the kernel reads a path.
fn path_call<const NR: libc::c_long>() -> i64 {
    let p = c"/tmp/tender-filter-test".as_ptr();
    // SAFETY: every pointer argument is a static NUL-terminated string; the filter kills the
    // process before the call runs (that is what is tested).
    unsafe { libc::syscall(NR, libc::AT_FDCWD, p, libc::AT_FDCWD, p, 0) }
}

/// One system call made inside the sandbox.
type Call = fn() -> i64;

fn thread_exit() -> i64 {
    // SAFETY: as above: the filter refuses it before the kernel sees it.
    unsafe { libc::syscall(libc::SYS_exit, 0) }
}

fn brk_query() -> i64 {
    // SAFETY: brk(0) only reports the current break.
    unsafe { libc::syscall(libc::SYS_brk, 0) }
}

/// A `--dumpcore` run with a ring (the largest filter): no call that takes a path survives, the
/// core's name being given by a helper process; `exit` (a lone thread's exit) is gone too, and
/// `brk` stays (bounded by RLIMIT_DATA, set by the monitor).
#[test]
fn a_dumpcore_filter_kills_every_call_that_takes_a_path() {
    let allow = Allowlist {
        vcpu_fd: Some(10),
        tap_fds: vec![11],
        exit_file_fds: vec![12],
        core_dump: Some((13, 14)),
        epoll_fd: Some(15),
        timer_fd: Some(16),
        ring_kick_fd: Some(17),
        ring_fault_pid: Some(1),
        ..base()
    };
    let path_calls: [(&str, Call); 24] = [
        ("linkat", path_call::<{ libc::SYS_linkat }>),
        ("link", path_call::<{ libc::SYS_link }>),
        ("unlinkat", path_call::<{ libc::SYS_unlinkat }>),
        ("unlink", path_call::<{ libc::SYS_unlink }>),
        ("openat", path_call::<{ libc::SYS_openat }>),
        ("open", path_call::<{ libc::SYS_open }>),
        ("openat2", path_call::<{ libc::SYS_openat2 }>),
        ("creat", path_call::<{ libc::SYS_creat }>),
        ("renameat", path_call::<{ libc::SYS_renameat }>),
        ("renameat2", path_call::<{ libc::SYS_renameat2 }>),
        ("rename", path_call::<{ libc::SYS_rename }>),
        ("symlinkat", path_call::<{ libc::SYS_symlinkat }>),
        ("mkdirat", path_call::<{ libc::SYS_mkdirat }>),
        ("mknodat", path_call::<{ libc::SYS_mknodat }>),
        ("fchmodat", path_call::<{ libc::SYS_fchmodat }>),
        ("fchownat", path_call::<{ libc::SYS_fchownat }>),
        ("truncate", path_call::<{ libc::SYS_truncate }>),
        ("newfstatat", path_call::<{ libc::SYS_newfstatat }>),
        ("statx", path_call::<{ libc::SYS_statx }>),
        ("readlinkat", path_call::<{ libc::SYS_readlinkat }>),
        ("faccessat", path_call::<{ libc::SYS_faccessat }>),
        ("chdir", path_call::<{ libc::SYS_chdir }>),
        ("chroot", path_call::<{ libc::SYS_chroot }>),
        ("execve", path_call::<{ libc::SYS_execve }>),
    ];
    for (name, call) in path_calls {
        assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, call)), "{name} must be killed");
    }
    for nr in [libc::SYS_linkat, libc::SYS_exit] {
        assert!(!allow.rules().contains_key(&nr), "syscall {nr} is not in the allowlist");
    }
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, thread_exit)), "exit must be killed");
    match in_sandbox(&allow, Mode::Kill, brk_query) {
        WaitStatus::Exited(_, 1) => {}
        other => panic!("brk must be allowed, got {other:?}"),
    }
}

fn set_regs_on_fd_50() -> i64 {
    // SAFETY: the filter decides before the fd (not a vCPU) or the pointer is looked at.
    unsafe { libc::syscall(libc::SYS_ioctl, 50, tender_seccomp::KVM_SET_REGS, std::ptr::null::<u8>()) }
}

fn recv_on_fd_9() -> i64 {
    // SAFETY: zero-length receive into no memory; the filter decides first.
    unsafe { libc::syscall(libc::SYS_recvfrom, 9, std::ptr::null_mut::<u8>(), 0, libc::MSG_DONTWAIT, 0, 0) }
}

/// What `tender-debug --gdb` adds is only there when it asks: a plain run's filter is unchanged.
#[test]
fn only_a_debugger_run_may_write_the_vcpu_or_receive() {
    let plain = Allowlist { vcpu_fd: Some(50), ..base() };
    let rules = plain.rules();
    assert_eq!(rules[&libc::SYS_ioctl].len(), 3, "KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS only");
    assert!(!rules.contains_key(&libc::SYS_recvfrom));
    assert!(killed_by_sigsys(in_sandbox(&plain, Mode::Kill, set_regs_on_fd_50)));
    assert!(killed_by_sigsys(in_sandbox(&plain, Mode::Kill, recv_on_fd_9)));

    let debugging = Allowlist { debugger_fd: Some(9), ..plain };
    assert_eq!(debugging.rules()[&libc::SYS_ioctl].len(), 6);
    assert!(!killed_by_sigsys(in_sandbox(&debugging, Mode::Kill, set_regs_on_fd_50)));
    assert!(!killed_by_sigsys(in_sandbox(&debugging, Mode::Kill, recv_on_fd_9)));
}

fn tgkill_target(sig: libc::c_int) -> i64 {
    let pid = KILL_TARGET.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: tgkill(2) of a `sleep` the test started (its only thread: tid = pid).
    unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, sig) }
}

fn tgkill_target_term() -> i64 {
    tgkill_target(libc::SIGTERM)
}

fn tgkill_target_kill() -> i64 {
    tgkill_target(libc::SIGKILL)
}

fn tgkill_self_term() -> i64 {
    // SAFETY: the filter refuses it before the kernel sees it (that is what is tested).
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGTERM) }
}

/// Process mode's watchdog may sleep on its epoll set and `tgkill` the guest's thread with a
/// signal that ends a run; nothing else.
#[test]
fn watchdog_tgkills_only_the_guest_thread_with_an_ending_signal() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    let pid = sleeper.id();
    KILL_TARGET.store(pid as i32, std::sync::atomic::Ordering::SeqCst);
    let allow = Allowlist { watchdog: Some(Watchdog { epoll_fd: 77, pid, tid: pid }), ..base() };
    let rules = allow.rules();
    assert!(!base().rules().contains_key(&libc::SYS_tgkill), "no watchdog, no tgkill");
    assert!(rules[&libc::SYS_epoll_wait].len() == 1 && rules[&libc::SYS_epoll_pwait].len() == 1);
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, tgkill_target_kill)), "another signal");
    assert!(killed_by_sigsys(in_sandbox(&allow, Mode::Kill, tgkill_self_term)), "another thread");
    match in_sandbox(&allow, Mode::Kill, tgkill_target_term) {
        WaitStatus::Exited(_, 1) => {}
        other => panic!("tgkill(guest thread, SIGTERM) must be allowed, got {other:?}"),
    }
    let status = sleeper.wait().expect("wait for sleep");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "the allowed tgkill went through");
}
