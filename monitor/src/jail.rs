//! The jail: the walls around the monitor besides the seccomp filter (`--user`, `--chroot`,
//! `--unshare`, and the limits every run gets), after Firecracker's jailer.
//!
//! The order of a start, and why each step comes where it does:
//!
//! 1. [`Jail::new`] (before anything is opened): the user and group are looked up (the user
//!    database is not reachable from a chroot), the chroot directory is opened and judged by its
//!    owner and mode, and tender must be root for any of the three options.
//! 2. `Vm::new` opens everything the run uses: the kernel, /dev/kvm and the VM, taps, block
//!    files; `main` has opened the report; `--dumpcore` opens its unnamed core file and then
//!    forks its link helper (`dumpcore`), which keeps root and the directory.
//! 3. [`Jail::enter`]: every other fd is closed (with `close_range`: `/proc/self/fd` is gone
//!    after a chroot), then new mount, IPC and UTS namespaces, the chroot, the supplementary
//!    groups cleared, the gid and the uid dropped, tender made non-dumpable, RLIMIT_CORE 0.
//! 4. `Vm::confine` starts the ring's I/O thread only now, so that it is born inside every wall
//!    above, and writes the boot info once it knows whether the ring is there.
//! 5. [`Jail::bound_heap`]: RLIMIT_DATA, just above what is mapped now (the guest's memory and
//!    the thread's stack included), bounds the `brk` the filter allows.
//! 6. `sandbox::enter` (in `Vm::run`): no-new-privs and the seccomp filter on every thread.
//! 7. The guest's first instruction.
//!
//! A step that fails stops the start with one line naming the step; there is no half-jailed
//! run. Every system call here runs before the filter, which does not grow for the jail.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};

/// Heap growth allowed after the filter is on, over what is mapped then: room for the error
/// messages of a failing run (the hot path allocates nothing, and the report's buffer is
/// reserved before).
const HEAP_HEADROOM: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{option} needs root (tender runs as uid {euid})")]
    NotRoot { option: &'static str, euid: u32 },
    #[error("--user={0}: unknown user")]
    UnknownUser(String),
    #[error("--user={0}: unknown group")]
    UnknownGroup(String),
    #[error("--user={0}: uid {1} is not in the user database, so it has no primary group; give one (--user={1}:GID)")]
    NoPrimaryGroup(String, u32),
    #[error("--user={0}: cannot read the user database: {1}")]
    Lookup(String, std::io::Error),
    #[error("--chroot={dir}: {reason}")]
    ChrootDir { dir: String, reason: String },
    #[error("cannot {step}: {err}")]
    Step { step: Step, err: std::io::Error },
}

/// A step of the jail, as its error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    OpenStatm,
    CloseFds,
    Namespace(&'static str),
    Chroot(String),
    Groups,
    Gid(u32),
    Uid(u32),
    Dumpable,
    CoreLimit,
    DataLimit,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::OpenStatm => write!(f, "open /proc/self/statm (to size RLIMIT_DATA)"),
            Step::CloseFds => write!(f, "close the file descriptors the run does not use"),
            Step::Namespace(kind) => write!(f, "create a new {kind} namespace"),
            Step::Chroot(dir) => write!(f, "enter the chroot {dir}"),
            Step::Groups => write!(f, "clear the supplementary groups"),
            Step::Gid(gid) => write!(f, "drop to group {gid}"),
            Step::Uid(uid) => write!(f, "drop to user {uid}"),
            Step::Dumpable => write!(f, "make tender non-dumpable"),
            Step::CoreLimit => write!(f, "set RLIMIT_CORE to 0"),
            Step::DataLimit => write!(f, "bound the heap with RLIMIT_DATA"),
        }
    }
}

fn failed(step: Step) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError::Step { step, err: e.into() }
}

/// The jail of one run, resolved and checked, not yet entered.
#[derive(Default)]
pub struct Jail {
    /// `--user`: (uid, gid).
    ids: Option<(u32, u32)>,
    /// `--chroot`: the directory as given (for messages) and opened (what is entered).
    root: Option<(String, File)>,
    unshare: bool,
    /// Read after the ring's thread has started, to size RLIMIT_DATA; None: no bound.
    statm: Option<File>,
}

impl Jail {
    /// Resolves `--user`, checks and opens `--chroot`, and checks that tender may do what is
    /// asked. Nothing is entered yet.
    pub fn new(user: Option<&str>, chroot: Option<&Path>, unshare: bool) -> Result<Self, JailError> {
        let euid = nix::unistd::geteuid().as_raw();
        for (given, option) in [(user.is_some(), "--user"), (chroot.is_some(), "--chroot"), (unshare, "--unshare")] {
            if given && euid != 0 {
                return Err(JailError::NotRoot { option, euid });
            }
        }
        let ids = user.map(resolve_user).transpose()?;
        let root = chroot.map(open_root).transpose()?;
        let statm = File::open("/proc/self/statm").map_err(|err| JailError::Step { step: Step::OpenStatm, err })?;
        Ok(Jail { ids, root, unshare, statm: Some(statm) })
    }

    /// Step 3 of the start (see the module's documentation): closes every fd but `keep` and
    /// stdin/stdout/stderr, then unshares, enters the chroot and drops the ids.
    pub fn enter(&mut self, keep: &[RawFd]) -> Result<(), JailError> {
        let mut keep: Vec<RawFd> = keep.to_vec();
        keep.extend(self.root.as_ref().map(|(_, dir)| dir.as_raw_fd()));
        keep.extend(self.statm.as_ref().map(File::as_raw_fd));
        close_all_except(&mut keep).map_err(|err| JailError::Step { step: Step::CloseFds, err })?;
        if self.unshare {
            for (flag, kind) in [
                (CloneFlags::CLONE_NEWNS, "mount"),
                (CloneFlags::CLONE_NEWIPC, "IPC"),
                (CloneFlags::CLONE_NEWUTS, "UTS"),
            ] {
                nix::sched::unshare(flag).map_err(failed(Step::Namespace(kind)))?;
            }
        }
        if let Some((dir, fd)) = self.root.take() {
            // Into the directory that was checked, not whatever the path names by now.
            let enter = || {
                nix::unistd::fchdir(&fd)?;
                nix::unistd::chroot(".")?;
                nix::unistd::chdir("/")
            };
            enter().map_err(failed(Step::Chroot(dir)))?;
        }
        if let Some((uid, gid)) = self.ids {
            nix::unistd::setgroups(&[]).map_err(failed(Step::Groups))?;
            let gid_ = Gid::from_raw(gid);
            nix::unistd::setresgid(gid_, gid_, gid_).map_err(failed(Step::Gid(gid)))?;
            let uid_ = Uid::from_raw(uid);
            nix::unistd::setresuid(uid_, uid_, uid_).map_err(failed(Step::Uid(uid)))?;
        }
        // After the uid change, which resets it: no process of the same uid may ptrace tender or
        // read its memory, and no core of tender (guest memory) is ever written.
        nix::sys::prctl::set_dumpable(false).map_err(failed(Step::Dumpable))?;
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(failed(Step::CoreLimit))?;
        Ok(())
    }

    /// Step 5: bounds the data segment (and so `brk`) to what is mapped now plus
    /// [`HEAP_HEADROOM`]. Soft and hard alike, so it cannot be raised again.
    pub fn bound_heap(&mut self) -> Result<(), JailError> {
        let Some(statm) = self.statm.take() else {
            return Ok(());
        };
        let step = |err| JailError::Step { step: Step::DataLimit, err };
        let mut text = [0u8; 256];
        let n = statm.read_at(&mut text, 0).map_err(step)?;
        // SAFETY: sysconf only reads a configuration value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let data_pages = std::str::from_utf8(&text[..n])
            .ok()
            .and_then(|t| t.split_whitespace().nth(5))
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or_else(|| step(std::io::Error::other("unexpected /proc/self/statm")))?;
        let limit = data_pages.saturating_mul(page).saturating_add(HEAP_HEADROOM);
        setrlimit(Resource::RLIMIT_DATA, limit, limit).map_err(|e| step(e.into()))
    }
}

/// `USER[:GROUP]`, names or numbers, to (uid, gid). Without GROUP, the user's primary group.
///
/// Names are looked up in /etc/passwd and /etc/group themselves, not through glibc's NSS: the
/// static build cannot load NSS modules (getpwnam crashes in it when a name is not in the
/// files and nsswitch.conf lists another source), and a run must not depend on a directory
/// service. Numbers need no lookup.
fn resolve_user(spec: &str) -> Result<(u32, u32), JailError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |e| JailError::Lookup(spec.to_string(), e);
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(lookup)?;
    // passwd: name:password:uid:gid:...
    let entry = |field: usize, value: &str| {
        let fields = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.get(field) == Some(&value))?;
        Some((fields.get(2)?.parse::<u32>().ok()?, fields.get(3)?.parse::<u32>().ok()?))
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, entry(2, user).map(|(_, gid)| gid)),
        Err(_) if user.is_empty() => return Err(JailError::UnknownUser(spec.to_string())),
        Err(_) => match entry(0, user) {
            Some((uid, gid)) => (uid, Some(gid)),
            None => return Err(JailError::UnknownUser(spec.to_string())),
        },
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) if g.is_empty() => return Err(JailError::UnknownGroup(spec.to_string())),
            // group: name:password:gid:members
            Err(_) => std::fs::read_to_string("/etc/group")
                .map_err(lookup)?
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&g))
                .and_then(|f| f.get(2)?.parse::<u32>().ok())
                .ok_or_else(|| JailError::UnknownGroup(spec.to_string()))?,
        },
        None => primary.ok_or(JailError::NoPrimaryGroup(spec.to_string(), uid))?,
    };
    Ok((uid, gid))
}

/// Opens the chroot directory and checks it by owner and mode (not `access()`, which answers
/// for root): owned by root, no group or other write bit.
fn open_root(dir: &Path) -> Result<(String, File), JailError> {
    let shown = dir.display().to_string();
    let refuse = |reason: String| JailError::ChrootDir { dir: shown.clone(), reason };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| refuse(e.to_string()))?;
    let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
    if meta.uid() != 0 {
        return Err(refuse(format!("owned by uid {}, not root", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("writable by its group or others (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok((shown, file))
}

/// Closes every fd except 0, 1, 2 and `keep` (sorted in place). Allocates nothing and calls only
/// `close_range` (or `close` on kernels before 5.9), so a freshly forked child may use it too.
pub fn close_all_except(keep: &mut [RawFd]) -> std::io::Result<()> {
    keep.sort_unstable();
    let mut first: u32 = 3;
    for &fd in keep.iter() {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd >= first {
            if fd > first {
                close_range(first, fd - 1)?;
            }
            first = fd + 1;
        }
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> std::io::Result<()> {
    // SAFETY: closes fds nothing in the process will use: the caller keeps every fd it owns.
    if unsafe { libc::close_range(first, last, 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit`, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = u32::try_from(limit.rlim_cur).unwrap_or(u32::MAX).min(last.saturating_add(1));
    for fd in first..end {
        // SAFETY: as above; EBADF for fds that are not open is harmless.
        unsafe { libc::close(fd as i32) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_by_name_and_number() {
        assert_eq!(resolve_user("65534:65534").unwrap(), (65534, 65534));
        assert_eq!(resolve_user("root").unwrap(), (0, 0));
        assert_eq!(resolve_user("0:nogroup").unwrap(), (0, 65534));
        assert_eq!(resolve_user("nobody").unwrap().0, 65534);
        assert!(matches!(resolve_user("tnd-no-such-user"), Err(JailError::UnknownUser(_))));
        assert!(matches!(resolve_user(""), Err(JailError::UnknownUser(_))));
        assert!(matches!(resolve_user("0:tnd-no-such-group"), Err(JailError::UnknownGroup(_))));
        assert!(matches!(resolve_user("0:"), Err(JailError::UnknownGroup(_))));
        let e = resolve_user("4000123").unwrap_err().to_string();
        assert!(e.contains("give one (--user=4000123:GID)"), "{e}");
    }
}
