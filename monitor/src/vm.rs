//! A unikernel VM: setup from a [`Config`], then the vCPU loop and hypercall dispatch.
//!
//! The hypercall path, start to end: `Vm::run` gets `KVM_EXIT_IO` → `Vm::hypercall` decodes
//! port and argument pointer → one handler per hypercall (`walltime`, `puts`, `poll`, block and
//! net handlers in `devices/`) → the result goes back into the guest's struct.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use std::time::Instant;

use guest_abi::{
    HALT_COOKIE_MAX, HYPERCALL_PIO_BASE, HcBlock, HcHalt, HcNet, HcPoll, HcPuts, HcWalltime, Hypercall,
    SOLO5_EXIT_ABORT, SOLO5_R_EINVAL, SOLO5_R_OK, TRAP_REPORT_MAGIC, TrapReport,
};
use kvm_ioctls::VcpuExit;

use crate::attach::{attach_devices, memory_layout, ring_features};
use crate::boot;
use crate::config::Config;
use crate::devices::Device;
use crate::devices::net::NetDevice;

use crate::devices::poll::{Poller, Wait};
use crate::devices::ring::{Ring, RingFault, Target};
use crate::dumpcore::CoreDump;
use crate::elf::Kernel;
use crate::kvm::Machine;

use crate::error::Error;
use crate::memory::GuestRam;
use crate::outcome::{GuestError, HypercallError, RunEnd, Trap};
use crate::report::{DeviceStats, Stats};
use crate::sandbox::{self, SeccompMode};
use crate::signals;
use tender_seccomp::Allowlist;

/// Largest kernel file tender reads (it must fit in guest memory anyway).
const MAX_KERNEL_FILE: u64 = guest_abi::MEM_MAX;

/// Result of one hypercall: keep running, or the guest halted.
enum Next {
    Resume,
    Halt(i32, Option<Trap>),
}

pub struct Vm {
    // Field order matters for drop: the vCPU and VM go before the memory they map.
    machine: Machine,
    ram: GuestRam,
    /// The shared ring's I/O thread, when one is running. Before `devices`: it is stopped (on
    /// drop) before the taps and files it uses are closed.
    ring: Option<Ring>,
    devices: Vec<Device>,
    poller: Poller,
    seccomp: SeccompMode,
    timeout: Option<u64>,
    core: Option<CoreDump>,
    started: Instant,
    pub stats: Stats,
    /// Problems that did not stop the run: the ring falling back to hypercalls (setup), its
    /// thread not stopping in time (end of the run).
    pub warnings: Vec<String>,
}

impl Vm {
    /// Validates the kernel and the devices and builds the VM, ready to run.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let started = Instant::now();
        let image = read_kernel(&config.kernel)?;
        let elf_err = |source| Error::Elf { path: config.kernel.display().to_string(), source };
        let kernel = Kernel::parse(&image, config.mem_bytes).map_err(elf_err)?;
        let cmdline = boot::guest_cmdline(&config.guest_args)?;
        let (devices, manifest) = attach_devices(config, &kernel.manifest)?;

        let poller = Poller::new()?;
        for (handle, dev) in devices.iter().enumerate() {
            if let Device::Net(net) = dev {
                poller.watch(net.fd(), handle as u64)?;
            }
        }

        let mut warnings = Vec::new();
        let has_net = devices.iter().any(|d| matches!(d, Device::Net(_)));
        let has_block = devices.iter().any(|d| matches!(d, Device::Block(_)));
        let (total, limit) = memory_layout(config.mem_bytes, has_net, has_block);
        if kernel.kernel_end > limit {
            let reason = format!("kernel ends at {:#x}, above the memory left below the net ring", kernel.kernel_end);
            return Err(Error::Kernel { path: config.kernel.display().to_string(), reason });
        }
        let mut ram = GuestRam::new(total, limit)?;
        boot::load_kernel(&mut ram, &kernel, &image)?;
        let machine = Machine::new(&ram)?;
        // After load_kernel: the ring's thread takes a copy of `ram` with its read-only ranges.
        let ring = if total > limit {
            let targets = devices
                .iter()
                .map(|d| match d {
                    Device::Net(n) => Target::Net(n.io()),
                    Device::Block(b) => Target::Block(b.io()),
                    Device::None => Target::None,
                })
                .collect();
            Ring::start(&machine.vm, &ram, limit, targets)
                .map_err(|e| warnings.push(format!("I/O ring not available ({e}), using hypercalls")))
                .ok()
        } else {
            None
        };
        let (net_ring, features) = match ring {
            Some(_) => (limit, ring_features(has_net, has_block)),
            None => (0, 0),
        };
        boot::write_low_memory(&ram, &kernel, &manifest, &cmdline, machine.tsc_hz, net_ring, features)?;
        machine.set_boot_state(kernel.entry, ram.limit())?;
        let core = match &config.dumpcore {
            Some(dir) => Some(CoreDump::arm(dir, ram.limit())?),
            None => None,
        };
        let stats = Stats {
            devices: devices
                .iter()
                .map(|d| match d {
                    Device::Block(b) => DeviceStats { name: b.name.clone(), kind: "block", ..Default::default() },
                    Device::Net(n) => DeviceStats { name: n.name.clone(), kind: "net", ..Default::default() },
                    Device::None => DeviceStats::default(),
                })
                .collect(),
            net_ring: features & guest_abi::HVT_FEATURE_RING_IO != 0,
            block_ring: features & guest_abi::TENDER_FEATURE_BLOCK_RING != 0,
            ..Default::default()
        };
        Ok(Vm {
            machine,
            ram,
            ring,
            devices,
            poller,
            seccomp: config.seccomp,
            timeout: config.timeout,
            core,
            started,
            stats,
            warnings,
        })
    }

    /// Runs the guest until it halts, breaks a rule, or a signal ends the run.
    ///
    /// Before the first instruction, tender closes every fd it does not need and (unless
    /// `--seccomp=off`) locks itself into the syscall allowlist. After that the process must not
    /// free or close anything: callers end the process without dropping the `Vm`.
    /// `exit_files` are fds the caller will still write at exit (the report).
    pub fn run(&mut self, exit_files: &[RawFd]) -> RunEnd {
        let immediate_exit = &mut self.machine.vcpu.get_kvm_run().immediate_exit as *mut u8;
        let wake_fd = self.poller.fds()[2];
        if let Err(e) = signals::install(immediate_exit, wake_fd, self.timeout) {
            return RunEnd::HostError(format!("cannot install signal handlers: {e}"));
        }
        let mut allow = self.allowlist();
        allow.exit_file_fds.extend_from_slice(exit_files);
        let keep: Vec<RawFd> = allow
            .vcpu_fd
            .iter()
            .chain(&allow.tap_fds)
            .chain(&allow.block_fds)
            .chain(&allow.exit_file_fds)
            .chain(&allow.epoll_fd)
            .chain(&allow.timer_fd)
            .chain(&allow.ring_kick_fd)
            .chain(&allow.output_fds)
            .chain(allow.core_dump.iter().flat_map(|(f, d)| [f, d]))
            .chain(std::iter::once(&self.machine.vm.as_raw_fd()))
            .copied()
            .collect();
        sandbox::close_other_fds(&keep);
        if let Err(e) = sandbox::enter(&allow, self.seccomp) {
            return RunEnd::HostError(format!("{e} (use --seccomp=off to run without it)"));
        }
        let mut end = self.run_loop();
        if let Some(ring) = &self.ring {
            if !ring.stop() {
                self.warnings.push("the ring's I/O thread did not stop in time: frames sent last may be lost, and a block request in progress may be cut short".into());
            }
            // The thread's fault, whether it stopped the vCPU (SIGUSR1) or was found by the last
            // pass over the ring after the guest halted, decides how the run ended.
            if let Some(fault) = ring.fault()
                && !matches!(end, RunEnd::GuestError { .. } | RunEnd::HostError(_))
            {
                end = match fault {
                    RingFault::Host { handle, op, errno } => RunEnd::HostError(match self.device(u64::from(handle)) {
                        Some(dev @ (Device::Block(_) | Device::Net(_))) => {
                            HypercallError::host_io(dev.name(), op, errno).to_string()
                        }
                        // A host fault always names a device's handle; its own text otherwise.
                        _ => fault.to_string(),
                    }),
                    RingFault::Kick { .. } => RunEnd::HostError(fault.to_string()),
                    guest => RunEnd::GuestError { error: GuestError::Ring(guest), rip: self.rip() },
                };
            }
            for (stats, counters) in self.stats.devices.iter_mut().zip(ring.counters()) {
                stats.add(counters.load());
            }
        }
        signals::uninstall();
        end
    }

    /// The fds the run uses, for the sandbox.
    fn allowlist(&self) -> Allowlist {
        let [epoll, timer, wake] = self.poller.fds();
        let mut allow = Allowlist {
            vcpu_fd: Some(self.machine.vcpu.as_raw_fd()),
            // 1 and 2 for PUTS and messages; the wake-up eventfd for the signal handler.
            output_fds: vec![1, 2, wake],
            epoll_fd: Some(epoll),
            timer_fd: Some(timer),
            ring_kick_fd: self.ring.as_ref().map(Ring::kick_fd),
            ring_fault_pid: self.ring.as_ref().map(|_| std::process::id()),
            core_dump: self.core.as_ref().map(|c| {
                let [file, dir] = c.fds();
                (file, dir)
            }),
            ..Default::default()
        };
        for dev in &self.devices {
            match dev {
                Device::Block(b) => allow.block_fds.push(b.raw_fd()),
                Device::Net(n) => allow.tap_fds.push(n.raw_fd()),
                Device::None => {}
            }
        }
        allow
    }

    fn run_loop(&mut self) -> RunEnd {
        self.stats.to_first_instruction = Some(self.started.elapsed());
        loop {
            if let Some(sig) = signals::pending() {
                // A SIGUSR1 from the ring's thread becomes its fault in `run`.
                return match (sig, self.timeout) {
                    (libc::SIGALRM, Some(secs)) => RunEnd::Timeout(secs),
                    _ => RunEnd::Signal(sig),
                };
            }
            let result = match self.machine.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => Ok(decode_out(port, data)),
                Ok(VcpuExit::IoIn(port, data)) => Err(GuestError::Port { port, size: data.len(), direction: "in" }),
                Ok(VcpuExit::MmioWrite(gpa, _)) => Err(GuestError::Mmio { op: "write", gpa }),
                Ok(VcpuExit::MmioRead(gpa, _)) => Err(GuestError::Mmio { op: "read", gpa }),
                Ok(VcpuExit::MemoryFault { gpa, .. }) => Err(GuestError::Mmio { op: "access", gpa }),
                Ok(VcpuExit::Hlt) => Err(GuestError::Hlt),
                Ok(VcpuExit::Shutdown) => Err(GuestError::Shutdown),
                Ok(VcpuExit::FailEntry(reason, _)) => Err(GuestError::FailEntry(reason)),
                Ok(VcpuExit::InternalError) => Err(GuestError::Internal(self.internal_suberror())),
                Ok(VcpuExit::Intr) => continue,
                Ok(_) => Err(GuestError::Unhandled(self.machine.vcpu.get_kvm_run().exit_reason)),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) if e.errno() == libc::EFAULT => Err(GuestError::TranslationFault),
                Err(e) => return RunEnd::HostError(format!("KVM: ioctl (KVM_RUN) failed: {e}")),
            };
            let outcome = match result {
                Ok(Ok((nr, gpa))) => self.hypercall(nr, gpa),
                Ok(Err(e)) | Err(e) => Err(HypercallError::Guest(e)),
            };
            match outcome {
                Ok(Next::Resume) => {}
                Ok(Next::Halt(status, trap)) => return RunEnd::Halted { status, trap },
                Err(HypercallError::Guest(error)) => {
                    return RunEnd::GuestError { error, rip: self.rip() };
                }
                Err(HypercallError::Interrupted) => continue,
                Err(e) => return RunEnd::HostError(e.to_string()),
            }
        }
    }

    fn rip(&self) -> u64 {
        self.machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.machine.vcpu.get_kvm_run();
        // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member of the
        // union; it is plain integers.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// Dispatches hypercall `nr` with its argument struct at `gpa`.
    fn hypercall(&mut self, nr: Hypercall, gpa: u64) -> Result<Next, HypercallError> {
        self.stats.hypercalls[nr as usize] += 1;
        match nr {
            Hypercall::Walltime => self.walltime(gpa),
            Hypercall::Puts => self.puts(gpa),
            Hypercall::Poll => self.poll(gpa),
            Hypercall::BlockWrite | Hypercall::BlockRead => self.block(nr, gpa),
            Hypercall::NetWrite | Hypercall::NetRead => self.net(nr, gpa),
            Hypercall::Halt => self.halt(gpa),
        }
        .map(|()| Next::Resume)
        .or_else(|e| match e {
            HaltOr::Halt(status, trap) => Ok(Next::Halt(status, trap)),
            HaltOr::Err(e) => Err(e),
        })
    }

    fn walltime(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let mut arg: HcWalltime = self.ram.read_arg(gpa)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        arg.nsecs = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        Ok(self.ram.write_arg(gpa, arg)?)
    }

    fn puts(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let arg: HcPuts = self.ram.read_arg(gpa)?;
        let buf = self.ram.slice(arg.data, arg.len)?;
        let mut done = 0;
        while done < buf.len() {
            // A reader that stops reading blocks this write; a signal (SIGTERM, --timeout) then
            // cuts it short, and must end the run rather than be followed by another write.
            if signals::pending().is_some() {
                return Err(HypercallError::Interrupted.into());
            }
            // SAFETY: `buf` is a checked range of guest RAM, mapped for this call; the kernel
            // only reads from it.
            let n = unsafe { libc::write(1, buf.ptr_guard().as_ptr().add(done).cast(), buf.len() - done) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(HypercallError::HostIo { device: "console".into(), op: "write", err }.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn poll(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let mut arg: HcPoll = self.ram.read_arg(gpa)?;
        // Check the out-fields before blocking, so a bad pointer fails fast.
        self.ram.check_write(gpa, size_of::<HcPoll>() as u64)?;
        match self.poller.wait(arg.timeout_nsecs) {
            Ok(Wait::Ready { ready_set, count }) => {
                arg.ready_set = ready_set;
                arg.ret = count;
            }
            Ok(Wait::Interrupted) => return Err(HypercallError::Interrupted.into()),
            Ok(Wait::HangUp(handle)) => {
                return Err(match self.device(handle) {
                    Some(Device::Net(dev)) => HypercallError::device(&dev.name, dev.io().hang_up()),
                    _ => HypercallError::Host(format!("poll failed: hang-up on handle {handle}")),
                }
                .into());
            }
            Err(e) => return Err(HypercallError::Host(format!("poll failed: {e}")).into()),
        }
        Ok(self.ram.write_arg(gpa, arg)?)
    }

    fn block(&mut self, nr: Hypercall, gpa: u64) -> Result<(), HaltOr> {
        let mut arg: HcBlock = self.ram.read_arg(gpa)?;
        self.ram.check_write(gpa, size_of::<HcBlock>() as u64)?;
        let read = nr == Hypercall::BlockRead;
        arg.ret = match self.device(arg.handle) {
            Some(Device::Block(dev)) => {
                dev.request(&self.ram, read, &arg).map_err(|e| HypercallError::device(&dev.name, e))?
            }
            _ => SOLO5_R_EINVAL,
        };
        if arg.ret == SOLO5_R_OK {
            self.count(arg.handle, read, arg.len);
        }
        Ok(self.ram.write_arg(gpa, arg)?)
    }

    fn net(&mut self, nr: Hypercall, gpa: u64) -> Result<(), HaltOr> {
        let mut arg: HcNet = self.ram.read_arg(gpa)?;
        self.ram.check_write(gpa, size_of::<HcNet>() as u64)?;
        let read = nr == Hypercall::NetRead;
        let failed = |dev: &NetDevice, e| HypercallError::device(&dev.name, e);
        match self.device(arg.handle) {
            Some(Device::Net(dev)) if read => {
                (arg.ret, arg.len) = dev.io().read(&self.ram, arg.data, arg.len).map_err(|e| failed(dev, e))?;
            }
            Some(Device::Net(dev)) => {
                arg.ret = dev.io().write(&self.ram, arg.data, arg.len).map_err(|e| failed(dev, e))?
            }
            _ => arg.ret = SOLO5_R_EINVAL,
        }
        if arg.ret == SOLO5_R_OK {
            self.count(arg.handle, read, arg.len);
        }
        Ok(self.ram.write_arg(gpa, arg)?)
    }

    fn halt(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let arg: HcHalt = self.ram.read_arg(gpa)?;
        let mut trap = None;
        if arg.cookie != 0 {
            self.ram.check(arg.cookie, HALT_COOKIE_MAX)?;
            if arg.exit_status == SOLO5_EXIT_ABORT {
                let report: TrapReport = self.ram.read_arg(arg.cookie)?;
                let vector = (report.magic == TRAP_REPORT_MAGIC).then_some(report.vector);
                trap = Some(Trap { frame: report.frame, vector });
            }
        }
        Err(HaltOr::Halt(arg.exit_status, trap))
    }

    /// Counts one successful device operation (handle already validated by the caller).
    fn count(&mut self, handle: u64, read: bool, bytes: u64) {
        if let Some(d) = usize::try_from(handle).ok().and_then(|h| self.stats.devices.get_mut(h)) {
            let (ops, total) =
                if read { (&mut d.read_ops, &mut d.read_bytes) } else { (&mut d.write_ops, &mut d.write_bytes) };
            *ops += 1;
            *total += bytes;
        }
    }

    /// Writes the core dump if one is armed and the run ended in an abort or a guest fault.
    /// Returns what to tell the user.
    pub fn dump_core(&mut self, end: &RunEnd) -> Option<String> {
        let trap = match end {
            RunEnd::Halted { status, trap } if *status == SOLO5_EXIT_ABORT => trap.map(|t| t.frame),
            RunEnd::GuestError { .. } => None,
            _ => return None,
        };
        let core = self.core.as_mut()?;
        let regs = self.machine.vcpu.get_regs().unwrap_or_default();
        let sregs = self.machine.vcpu.get_sregs().unwrap_or_default();
        Some(match core.write(&self.ram, &regs, &sregs, trap.as_ref()) {
            Ok(what) => format!("dumpcore: guest core written: {what}"),
            Err(e) => format!("dumpcore: cannot write the guest core: {e}"),
        })
    }

    fn device(&self, handle: u64) -> Option<&Device> {
        usize::try_from(handle).ok().and_then(|h| self.devices.get(h))
    }
}

/// Handlers return this so that HALT can leave the loop through the same `?` path as errors.
enum HaltOr {
    Halt(i32, Option<Trap>),
    Err(HypercallError),
}

impl<E: Into<HypercallError>> From<E> for HaltOr {
    fn from(e: E) -> Self {
        HaltOr::Err(e.into())
    }
}

/// A hypercall is a 4-byte OUT of a 32-bit GPA to port 0x500 + nr; anything else is an error.
pub fn decode_out(port: u16, data: &[u8]) -> Result<(Hypercall, u64), GuestError> {
    let bad_port = GuestError::Port { port, size: data.len(), direction: "out" };
    let Ok(bytes) = <[u8; 4]>::try_from(data) else {
        return Err(bad_port);
    };
    let nr = port.wrapping_sub(HYPERCALL_PIO_BASE);
    if nr >= Hypercall::COUNT {
        return Err(bad_port);
    }
    let call = Hypercall::from_nr(nr).ok_or(GuestError::Hypercall(nr))?;
    Ok((call, u64::from(u32::from_le_bytes(bytes))))
}

fn read_kernel(path: &Path) -> Result<Vec<u8>, Error> {
    let io_err = |e: std::io::Error| Error::Kernel { path: path.display().to_string(), reason: e.to_string() };
    let file = match kernel_fd(path) {
        // `@FD`: a runtime opened and checked this file; reading the fd itself means the file
        // checked is the file run, whatever happens to the path meanwhile.
        Some(fd) => {
            // SAFETY: the fd number came from the command line; it is only borrowed long enough
            // to duplicate it (an fd that is not open makes the dup fail with EBADF).
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            std::fs::File::from(borrowed.try_clone_to_owned().map_err(io_err)?)
        }
        None => std::fs::File::open(path).map_err(io_err)?,
    };
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(Error::Kernel { path: path.display().to_string(), reason: "not a regular file".into() });
    }
    if meta.len() > MAX_KERNEL_FILE {
        return Err(Error::Kernel { path: path.display().to_string(), reason: "file too large".into() });
    }
    // From offset 0 whatever the fd's position, and no more than the size checked above.
    let mut image = vec![0; meta.len() as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut image, 0).map_err(io_err)?;
    Ok(image)
}

/// The fd of a kernel given as `@FD` (as taps are given with `--net:NAME=@FD`); a file whose
/// name starts with `@` is reached as `./@name`.
pub fn kernel_fd(path: &Path) -> Option<RawFd> {
    let digits = path.to_str()?.strip_prefix('@')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
