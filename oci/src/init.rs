//! The container's process, between `create` and `start`: inside the container's namespaces it
//! applies the rlimits, prepares the network, checks everything with the monitor library, tells
//! `create` it is ready, waits on the exec fifo for `start`, then becomes tender.

use std::ffi::CString;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use oci_spec::runtime::PosixRlimit;
use tender::config::{BlockSpec, Config, NetSpec};
use tender::devices::net::TapSource;

use crate::plan::{NetLaunch, Plan, tender_command};
use crate::{console, network};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("terminal: {0}")]
    Terminal(nix::Error),
    #[error("rlimit {0}: {1}")]
    Rlimit(String, nix::Error),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error("{0}")]
    Check(String),
    #[error("exec fifo: {0}")]
    Fifo(std::io::Error),
    #[error("exec {0}: {1}")]
    Exec(String, nix::Error),
}

/// Everything the process needs, prepared by `create` before the fork.
pub struct Init {
    pub plan: Plan,
    pub kernel: File,
    pub image: Vec<u8>,
    pub rlimits: Vec<PosixRlimit>,
    pub tender: PathBuf,
    pub chroot: PathBuf,
    pub fifo: PathBuf,
    /// Files tender reaches as `/proc/self/fd/N` (a urunc block image in the rootfs).
    pub keep: Vec<File>,
    /// The slave of the terminal whose master went to the engine (`process.terminal`).
    pub terminal: Option<OwnedFd>,
}

/// Runs in the container's process; never returns. `ready` is the pipe to `create`: one line,
/// `ok` or the error.
pub fn run(init: Init, mut ready: File) -> ! {
    let err = match prepare(&init) {
        Ok((argv, uplink)) => {
            // The uplink's index, for `delete` to remove its filter.
            let _ = writeln!(ready, "ok {}", uplink.map(|u| u.to_string()).unwrap_or_default());
            drop(ready);
            match wait_and_exec(&init, &argv) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "tender-oci: {e}");
                    // SAFETY: _exit ends this forked child without running the parent's atexit
                    // handlers or destructors.
                    unsafe { libc::_exit(127) }
                }
            }
        }
        Err(e) => e,
    };
    let _ = writeln!(ready, "{err}");
    // SAFETY: as above.
    unsafe { libc::_exit(1) }
}

/// The tender command, and the index of the uplink that got tc filters.
fn prepare(init: &Init) -> Result<(Vec<CString>, Option<u32>), InitError> {
    if let Some(t) = &init.terminal {
        console::adopt(t).map_err(InitError::Terminal)?;
    }
    for r in &init.rlimits {
        set_rlimit(r)?;
    }
    let mut uplink = None;
    let net = match &init.plan.net {
        Some(_) => {
            let prepared = network::prepare()?;
            let ipv4 = prepared.uplink.as_ref().map(|u| (u.addr.clone(), u.gateway.to_string()));
            uplink = prepared.uplink.as_ref().map(|u| u.index);
            Some(NetLaunch { tap_fd: prepared.tap_fd, mac: prepared.uplink.map(|u| u.mac), ipv4 })
        }
        None => None,
    };
    let argv = command(init, net.as_ref());
    if argv.is_err()
        && let Some(u) = uplink
    {
        // The tap goes with this process; the uplink's filter would stay.
        network::disconnect(u);
    }
    Ok((argv?, uplink))
}

/// Checks everything and makes tender's command line.
fn command(init: &Init, net: Option<&NetLaunch>) -> Result<Vec<CString>, InitError> {
    check(init, net)?;
    let kernel_fd = init.kernel.as_raw_fd();
    let kept = init.keep.iter().map(AsRawFd::as_raw_fd);
    for fd in std::iter::once(kernel_fd).chain(net.map(|n| n.tap_fd)).chain(kept) {
        clear_cloexec(fd);
    }
    let argv = tender_command(&init.tender, &init.plan, kernel_fd, net, &init.chroot);
    argv.into_iter()
        .map(|a| CString::new(a).map_err(|_| InitError::Check("an argument holds a NUL byte".into())))
        .collect()
}

/// The monitor library's own checks, on the very file and tap tender will get: the ELF and
/// manifest for this memory size, and every device against the manifest.
fn check(init: &Init, net: Option<&NetLaunch>) -> Result<(), InitError> {
    let mem = init.plan.mem_mib << 20;
    let kernel = tender::elf::Kernel::parse(&init.image, mem)
        .map_err(|e| InitError::Check(format!("{}: {e}", init.plan.kernel)))?;
    let mut config = Config::new(format!("@{}", init.kernel.as_raw_fd()));
    config.mem_bytes = mem;
    for b in &init.plan.blocks {
        config.blocks.push(BlockSpec { name: Some(b.name.clone()), path: b.path.clone(), block_size: b.sector_size });
    }
    // The check adopts the tap's fd and closes it: give it a duplicate.
    let mut dup = None;
    if let (Some(name), Some(n)) = (&init.plan.net, net) {
        // SAFETY: the tap fd is open and ours for the life of this process.
        let tap = unsafe { std::os::fd::BorrowedFd::borrow_raw(n.tap_fd) };
        let fd = nix::unistd::dup(tap).map_err(|e| InitError::Check(format!("dup of the tap: {e}")))?;
        let fd = std::os::fd::IntoRawFd::into_raw_fd(fd);
        dup = Some(fd);
        config.nets.push(NetSpec { name: Some(name.clone()), source: TapSource::Fd(fd), mac: n.mac });
    }
    let result = tender::attach::attach_devices(&config, &kernel.manifest).map(drop);
    if result.is_err()
        && let Some(fd) = dup
    {
        // SAFETY: `fd` is our duplicate; on an error before adoption it is still open and ours.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    result.map_err(|e| InitError::Check(e.to_string()))
}

fn wait_and_exec(init: &Init, argv: &[CString]) -> Result<std::convert::Infallible, InitError> {
    // Blocks until `start` opens the fifo for reading; the byte tells it we are going.
    let mut fifo = std::fs::OpenOptions::new().write(true).open(&init.fifo).map_err(InitError::Fifo)?;
    fifo.write_all(b"0").map_err(InitError::Fifo)?;
    drop(fifo);
    let env: [CString; 0] = [];
    nix::unistd::execve(&argv[0], argv, &env).map_err(|e| InitError::Exec(init.tender.display().to_string(), e))
}

fn clear_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on an fd this process owns changes only its close-on-exec flag.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
}

fn set_rlimit(r: &PosixRlimit) -> Result<(), InitError> {
    use nix::sys::resource::Resource;
    let name = r.typ().to_string();
    let resource = match name.as_str() {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return Err(InitError::Rlimit(name, nix::Error::EINVAL)),
    };
    nix::sys::resource::setrlimit(resource, r.soft(), r.hard()).map_err(|e| InitError::Rlimit(name, e))
}
