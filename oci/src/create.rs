//! `create`: decide who runs the container, and for a unikernel check everything, then leave
//! its process waiting in the container's namespaces, with its pid in `--pid-file`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::ForkResult;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::detect::{self, Unikernel};
use crate::init::{self, Init};
use crate::plan::{PlanError, plan};
use crate::state::{Owner, Record, Root, StateError, start_time};
use crate::urunc::{self, Urunc};
use crate::{cgroup, console, passthrough};

/// urunc's packaging file in the rootfs.
const URUNC_JSON: &str = "/urunc.json";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error(transparent)]
    Detect(#[from] detect::DetectError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}: {1}")]
    Kernel(String, tender::elf::ElfError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Pass(#[from] passthrough::PassError),
    #[error(transparent)]
    Urunc(#[from] urunc::UruncError),
    #[error("urunc block {0}: not a file in the rootfs, or the unikernel has not exactly one block device")]
    UruncBlock(String),
    #[error("--systemd-cgroup: unikernel containers get cgroupfs cgroups only (no systemd here)")]
    Systemd,
    #[error("process.terminal is set but no --console-socket was given")]
    NoConsoleSocket,
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error("{step}: {err}")]
    Sys { step: &'static str, err: nix::Error },
    #[error("{step}: {err}")]
    Io { step: &'static str, err: std::io::Error },
    #[error("{0}")]
    Init(String),
}

pub struct CreateArgs<'a> {
    pub root: &'a Root,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    /// `--systemd-cgroup`: passed to runc for its containers, refused for a unikernel.
    pub systemd_cgroup: bool,
    /// The whole command line, for runc.
    pub raw: &'a [String],
}

/// Returns the exit status (runc's, for a container passed through).
pub fn create(a: &CreateArgs) -> Result<i32, CreateError> {
    let bundle = std::fs::canonicalize(a.bundle)
        .map_err(|e| CreateError::Bundle { path: a.bundle.display().to_string(), reason: e.to_string() })?;
    let bad = |reason: String| CreateError::Bundle { path: bundle.display().to_string(), reason };
    let spec = Spec::load(bundle.join("config.json")).map_err(|e| bad(e.to_string()))?;
    let root_path = spec.root().as_ref().map(|r| r.path().clone()).ok_or_else(|| bad("no root.path".into()))?;
    let rootfs = bundle.join(root_path);
    let args = spec.process().as_ref().and_then(|p| p.args().clone()).unwrap_or_default();
    let json = match detect::open_in_root(&rootfs, URUNC_JSON)? {
        Some(f) => Some(
            std::io::read_to_string(std::io::Read::take(f, 64 << 10))
                .map_err(|err| CreateError::Io { step: "reading urunc.json", err })?,
        ),
        None => None,
    };
    let urunc = urunc::parse(&spec.annotations().clone().unwrap_or_default(), json.as_deref())?;
    let kernel = urunc.as_ref().map(|u| &u.binary).or(args.first());
    let found = match kernel {
        Some(path) => match detect::open_in_root(&rootfs, path)? {
            Some(file) => detect::unikernel(file, path)?,
            None => None,
        },
        None => None,
    };
    let Some(unikernel) = found else { return pass_through(a, &spec, &bundle) };
    if a.systemd_cgroup {
        return Err(CreateError::Systemd);
    }
    let dir = a.root.create_dir(a.id)?;
    let result = create_unikernel(a, &spec, &bundle, &dir, unikernel, urunc.map(|u| (u, rootfs)));
    if result.is_err() {
        if let Ok(r) = a.root.load(a.id)
            && let Some(cg) = r.made_cgroup()
        {
            cgroup::remove(cg);
        }
        let _ = a.root.remove(a.id);
    }
    result.map(|()| 0)
}

fn pass_through(a: &CreateArgs, spec: &Spec, bundle: &Path) -> Result<i32, CreateError> {
    a.root.create_dir(a.id)?;
    let record = Record::new(a.id, Owner::Runc, bundle, spec.annotations().clone().unwrap_or_default());
    a.root.save(&record)?;
    let status = passthrough::run(a.raw, &a.root.runc_root());
    if !matches!(status, Ok(0)) {
        let _ = a.root.remove(a.id);
    }
    Ok(status?)
}

fn create_unikernel(
    a: &CreateArgs,
    spec: &Spec,
    bundle: &Path,
    dir: &Path,
    uk: Unikernel,
    urunc: Option<(Urunc, PathBuf)>,
) -> Result<(), CreateError> {
    let process = spec.process().as_ref();
    let console_socket = match (process.and_then(|p| p.terminal()).unwrap_or(false), a.console_socket) {
        (false, _) => None,
        (true, None) => return Err(CreateError::NoConsoleSocket),
        (true, Some(s)) => Some(s),
    };
    let args_kernel = process.and_then(|p| p.args().as_ref()).and_then(|a| a.first());
    let kernel_path = urunc.as_ref().map(|(u, _)| &u.binary).or(args_kernel).cloned().unwrap_or_default();
    // The manifest's net devices decide the network; the full check, with this memory size,
    // runs in the container's process on the very fds tender gets.
    let manifest = tender::elf::Kernel::parse(&uk.image, guest_abi::MEM_MAX)
        .map_err(|e| CreateError::Kernel(kernel_path.clone(), e))?
        .manifest;
    let nets: Vec<String> = manifest.devices(tender::manifest::DeviceKind::Net).map(|(_, n)| n).collect();
    let mut plan = plan(spec, &nets, urunc.as_ref().map(|(u, _)| u))?;
    let mut keep = Vec::new();
    if let Some((Urunc { block: Some(block), .. }, rootfs)) = urunc {
        let blocks: Vec<String> = manifest.devices(tender::manifest::DeviceKind::Block).map(|(_, n)| n).collect();
        let (Some(file), [name]) = (detect::open_in_root(&rootfs, &block)?, blocks.as_slice()) else {
            return Err(CreateError::UruncBlock(block));
        };
        // tender opens the very file checked inside the rootfs, through the fd kept open.
        let path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
        plan.blocks.push(crate::plan::Block { name: name.clone(), path, sector_size: None });
        keep.push(file);
    }

    let mut record = Record::new(a.id, Owner::Tender, bundle, spec.annotations().clone().unwrap_or_default());
    let chroot = dir.join("root");
    let fifo = dir.join("exec.fifo");
    let io = |step| move |err| CreateError::Io { step, err };
    std::fs::create_dir(&chroot).map_err(io("chroot directory"))?;
    std::fs::set_permissions(&chroot, std::os::unix::fs::PermissionsExt::from_mode(0o555))
        .map_err(io("chroot directory"))?;
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600))
        .map_err(|err| CreateError::Sys { step: "exec fifo", err })?;
    let linux = spec.linux().as_ref();
    if let Some(cg) = cgroup::create(
        a.id,
        linux.and_then(|l| l.cgroups_path().as_deref()),
        linux.and_then(|l| l.resources().as_ref()),
    )? {
        record.cgroup = Some(cg.path);
        record.cgroup_made = cg.made;
    }
    if let Err(e) = a.root.save(&record) {
        // The caller's clean-up finds the cgroup through the saved record, which is not there.
        if let Some(cg) = record.made_cgroup() {
            cgroup::remove(cg);
        }
        return Err(e.into());
    }

    let tender = tender_binary()?;
    let terminal = console_socket.map(console::open).transpose()?;
    let init = Init {
        plan,
        kernel: uk.file,
        image: uk.image,
        rlimits: process.and_then(|p| p.rlimits().clone()).unwrap_or_default(),
        tender,
        chroot,
        fifo,
        keep,
        terminal,
    };
    let namespaces = linux.and_then(|l| l.namespaces().clone()).unwrap_or_default();
    let (pid, uplink) = spawn(init, &namespaces, record.cgroup.as_deref())?;
    // A network namespace the container joined outlives it: `delete` removes the uplink's filter.
    let netns = namespaces.iter().find(|n| n.typ() == LinuxNamespaceType::Network).and_then(|n| n.path().clone());
    if let (Some(ns), Some(u)) = (netns, uplink) {
        record.netns = Some(ns);
        record.uplink = Some(u);
    }
    let recorded = (|| {
        record.pid = pid;
        record.start_time = start_time(pid).ok_or_else(|| CreateError::Init("the container process died".into()))?;
        a.root.save(&record)?;
        if let Some(p) = a.pid_file {
            std::fs::write(p, pid.to_string()).map_err(io("pid file"))?;
        }
        Ok(())
    })();
    if recorded.is_err() {
        // Nothing will start or delete it: end the waiting process (and with it the tap and the
        // kernel fd) before the caller removes its cgroup and state.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        if let (Some(ns), Some(u)) = (&record.netns, record.uplink) {
            crate::network::disconnect_in(ns, u);
        }
    }
    recorded
}

/// tender, beside this binary.
fn tender_binary() -> Result<PathBuf, CreateError> {
    let exe = std::env::current_exe().map_err(|err| CreateError::Io { step: "finding tender", err })?;
    let tender = exe.with_file_name("tender");
    if !tender.is_file() {
        let err = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not found", tender.display()));
        return Err(CreateError::Io { step: "finding tender", err });
    }
    Ok(tender)
}

/// Forks the container's process in its namespaces: a first child joins or makes them, and
/// forks the process itself (so that a new pid namespace has it as pid 1), reports its pid and
/// exits. Returns the pid once the process has said it is ready (with the index of the uplink
/// it connected, if any), or its error.
fn spawn(
    init: Init,
    namespaces: &[oci_spec::runtime::LinuxNamespace],
    cgroup: Option<&str>,
) -> Result<(i32, Option<u32>), CreateError> {
    let sys = |step| move |err| CreateError::Sys { step, err };
    // Open every namespace path before forking, so a bad path is an error here.
    let mut joins = Vec::new();
    let mut unshare = CloneFlags::empty();
    for ns in namespaces {
        let flag = clone_flag(ns.typ());
        match ns.path() {
            Some(p) => {
                let f = File::open(p).map_err(|err| CreateError::Io { step: "opening a namespace", err })?;
                joins.push((OwnedFd::from(f), flag));
            }
            None => unshare |= flag,
        }
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: tender-oci is single-threaded here (no runtime has been started), so the child
    // may run any code; it ends with exec or _exit.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(read);
            let mut out = File::from(write);
            let fail = |out: &mut File, msg: String| -> ! {
                use std::io::Write as _;
                let _ = writeln!(out, "error {msg}");
                // SAFETY: ends the forked child without the parent's destructors.
                unsafe { libc::_exit(1) }
            };
            if let Some(cg) = cgroup
                && let Err(e) = crate::cgroup::join(cg)
            {
                fail(&mut out, e.to_string());
            }
            for (fd, flag) in &joins {
                if let Err(e) = nix::sched::setns(fd.as_fd(), *flag) {
                    fail(&mut out, format!("joining namespace {flag:?}: {e}"));
                }
            }
            drop(joins);
            if let Err(e) = nix::sched::unshare(unshare) {
                fail(&mut out, format!("new namespaces {unshare:?}: {e}"));
            }
            // SAFETY: still single-threaded; the grandchild runs init::run, which ends in exec or _exit.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => init::run(init, out),
                Ok(ForkResult::Parent { child }) => {
                    use std::io::Write as _;
                    let _ = writeln!(out, "pid {child}");
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) }
                }
                Err(e) => fail(&mut out, format!("fork: {e}")),
            }
        }
        ForkResult::Parent { child } => {
            drop(write);
            drop(init);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut lines = BufReader::new(File::from(read)).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let Some(pid) = first.strip_prefix("pid ").and_then(|p| p.parse::<i32>().ok()) else {
                let msg = first.strip_prefix("error ").unwrap_or("the container process died before it was ready");
                return Err(CreateError::Init(msg.into()));
            };
            let second = lines.next().and_then(Result::ok).unwrap_or_default();
            if let Some(uplink) = second.strip_prefix("ok ") {
                return Ok((pid, uplink.parse().ok()));
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let msg = if second.is_empty() { "the container process died before it was ready".into() } else { second };
            Err(CreateError::Init(msg))
        }
    }
}

fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}
