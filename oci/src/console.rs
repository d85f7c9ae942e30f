//! `process.terminal` with `--console-socket`: a pseudo-terminal whose master goes to the engine
//! over its unix socket (SCM_RIGHTS, the terminal's name as the message, as runc sends it), and
//! whose slave becomes the container's controlling terminal and stdio.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console: cannot make a terminal: {0}")]
    Pty(nix::Error),
    #[error("console socket {path}: {err}")]
    Socket { path: String, err: std::io::Error },
    #[error("console socket {path}: sending the terminal: {err}")]
    Send { path: String, err: nix::Error },
}

/// Makes the terminal and sends its master to the engine listening on `socket`. Returns the
/// slave; the master is closed here, so the container never holds it.
pub fn open(socket: &Path) -> Result<OwnedFd, ConsoleError> {
    let path = socket.display().to_string();
    let pty = nix::pty::openpty(None, None).map_err(ConsoleError::Pty)?;
    let name = nix::unistd::ttyname(&pty.slave).map_err(ConsoleError::Pty)?;
    let stream = UnixStream::connect(socket).map_err(|err| ConsoleError::Socket { path: path.clone(), err })?;
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(name.as_os_str().as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|err| ConsoleError::Send { path, err })?;
    Ok(pty.slave)
}

/// In the container's process: a new session whose controlling terminal is `slave`, which
/// becomes stdin, stdout and stderr.
pub fn adopt(slave: &OwnedFd) -> Result<(), nix::Error> {
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal a terminal from another
    // session) and changes only this process's controlling terminal.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(nix::Error::last());
    }
    for target in 0..3 {
        // SAFETY: dup2 onto 0, 1 and 2 replaces this process's stdio with the terminal; nothing
        // else in this process holds those numbers as owned fds.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(nix::Error::last());
        }
    }
    // The original number goes away at exec: tender holds the terminal as 0, 1 and 2 only.
    nix::fcntl::fcntl(slave, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(())
}
