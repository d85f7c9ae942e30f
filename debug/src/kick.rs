//! Ctrl-C from gdb while the guest runs. The connection is set to raise SIGIO on the vCPU thread
//! when data arrives (`O_ASYNC`, set up before the sandbox); the handler sets the vCPU's
//! `immediate_exit`, so KVM_RUN (or a POLL) returns EINTR and the stub looks at what gdb sent.
//! No thread and no extra system call while the guest runs.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicPtr, Ordering};

/// `F_SETOWN_EX` and its argument (fcntl(2)), which the libc crate does not define.
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_sigio(_: libc::c_int) {
    let flag = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: `flag` is the live vCPU's `kvm_run.immediate_exit` (set by `arm`, which the stub
        // calls with the vCPU it is lent; the vCPU lives until the process exits).
        unsafe { flag.write_volatile(1) };
    }
}

/// Makes data on `fd` raise SIGIO on the calling (vCPU) thread.
pub fn watch(fd: RawFd) -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: a plain handler (SA_RESTART: reads and writes of the connection restart; KVM_RUN
    // and epoll_wait return EINTR regardless) that only does one volatile byte store.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigio as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        check(libc::sigaction(libc::SIGIO, &action, std::ptr::null_mut()))?;
        let owner = FOwnerEx { kind: F_OWNER_TID, pid: libc::gettid() };
        check(libc::fcntl(fd, F_SETOWN_EX, &owner))?;
        let flags = libc::fcntl(fd, libc::F_GETFL);
        check(flags)?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC))
    }
}

/// Points the handler at the vCPU's `immediate_exit` byte.
pub fn arm(immediate_exit: *mut u8) {
    IMMEDIATE_EXIT.store(immediate_exit, Ordering::SeqCst);
}
