//! A unikernel VM: setup from a [`Config`], then the run: the vCPU loop under KVM, or the guest
//! on tender's own thread in process mode (`process`).
//!
//! The hypercall path, start to end: `Vm::run_loop` gets `KVM_EXIT_IO` (or the process-mode trap
//! handler decodes the faulting `out`) → `decode_out` → `Hypercalls::dispatch` → one handler per
//! hypercall (`walltime`, `puts`, `poll`, block and net handlers in `devices/`) → the result goes
//! back into the guest's struct.

use std::os::fd::{AsRawFd, RawFd};

use std::time::Instant;

use guest_abi::{BOOT_INFO_GPA, BootInfo, GUEST_MIN_BASE, SOLO5_EXIT_ABORT, TENDER_FEATURE_PROCESS};
use kvm_ioctls::VcpuExit;

use crate::attach::{attach_devices, memory_layout, ring_features};
use crate::boot;
use crate::config::{Config, Mode};
use crate::devices::Device;

use crate::devices::poll::Poller;
use crate::devices::ring::{Ring, RingFault, Target};
use crate::dumpcore::CoreDump;
use crate::elf::{self, Kernel};
use crate::kvm::Machine;

use crate::error::Error;
pub use crate::hypercalls::decode_out;
use crate::hypercalls::{Hypercalls, Next};
use crate::jail::Jail;
use crate::memory::GuestRam;
use crate::observe::{Control, Observer, Stop, Stopped};
use crate::outcome::{GuestError, HypercallError, RunEnd};
use crate::process::{self, ProcessGuest};
use crate::report::{DeviceStats, Stats};
use crate::sandbox::{self, SeccompMode};
use crate::signals;
use tender_seccomp::{Allowlist, BlockFile};

/// What runs the guest's instructions.
enum Cpu {
    /// A KVM VM with one vCPU.
    Kvm(Machine),
    /// tender's own main thread (`--mode=process`).
    Process(ProcessGuest),
}

impl Cpu {
    /// The KVM VM, when there is one.
    fn kvm(&self) -> Option<&Machine> {
        match self {
            Cpu::Kvm(m) => Some(m),
            Cpu::Process(_) => None,
        }
    }
}

pub struct Vm {
    // Field order matters for drop: the vCPU and VM go before the memory they map, and the ring's
    // thread is stopped before the taps and files it uses (in `calls`) are closed.
    cpu: Cpu,
    /// Guest memory, the devices, POLL and the counters: what the hypercalls reach.
    calls: Hypercalls,
    /// Where the ring goes, when the memory layout has room for one; it starts in `confine`.
    ring_gpa: Option<u64>,
    /// The `host_features` bits a running ring sets (its net and block halves).
    ring_features: u32,
    /// `--ring-spin`: how long the ring's thread spins before it sleeps, in µs.
    ring_spin_us: u32,
    /// Written into guest memory by `confine`, once the ring's start is known.
    boot_info: Option<BootInfo>,
    /// Files the caller still writes at exit (the report), kept open by the jail and allowed by
    /// the filter.
    exit_files: Vec<RawFd>,
    /// `tender-debug --gdb`: advertise `TENDER_FEATURE_DEBUG` to the guest.
    debugger: bool,
    seccomp: SeccompMode,
    timeout: Option<u64>,
    core: Option<CoreDump>,
    started: Instant,
    /// Problems that did not stop the run: the ring falling back to hypercalls (setup), its
    /// thread not stopping in time (end of the run).
    pub warnings: Vec<String>,
}

impl Vm {
    /// Validates the kernel and the devices and builds the VM, ready to run.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let started = Instant::now();
        let elf_err = |source| Error::Elf { path: config.kernel.display().to_string(), source };
        let image = elf::read_image(&config.kernel).map_err(elf_err)?;
        let kernel = Kernel::parse(&image, config.mem_bytes).map_err(elf_err)?;
        let cmdline = boot::guest_cmdline(&config.guest_args)?;
        let (devices, manifest) = attach_devices(config, &kernel.manifest)?;

        let poller = Poller::new()?;
        for (handle, dev) in devices.iter().enumerate() {
            if let Device::Net(net) = dev {
                poller.watch(net.fd(), handle as u64)?;
            }
        }

        let has_net = devices.iter().any(|d| matches!(d, Device::Net(_)));
        let has_block = devices.iter().any(|d| matches!(d, Device::Block(_)));
        let (total, limit) = memory_layout(config.mem_bytes, has_net, has_block);
        if kernel.kernel_end > limit {
            let reason = format!("kernel ends at {:#x}, above the memory left below the net ring", kernel.kernel_end);
            return Err(Error::Kernel { path: config.kernel.display().to_string(), reason });
        }
        let process = config.mode == Mode::Process;
        let mut ram =
            if process { GuestRam::new_at(BOOT_INFO_GPA, total, limit)? } else { GuestRam::new(total, limit)? };
        boot::load_kernel(&mut ram, &kernel, &image, process)?;
        let cpu = if process {
            Cpu::Process(ProcessGuest::new(kernel.entry, ram.limit())?)
        } else {
            let machine = Machine::new(&ram)?;
            machine.set_boot_state(kernel.entry, ram.limit())?;
            Cpu::Kvm(machine)
        };
        let tsc_hz = match &cpu {
            Cpu::Kvm(m) => m.tsc_hz,
            Cpu::Process(p) => p.tsc_hz,
        };
        let layout = boot::write_low_memory(&ram, &kernel, &manifest, &cmdline, tsc_hz)?;
        let core = match &config.dumpcore {
            Some(dir) => Some(CoreDump::arm(dir, ram.limit())?),
            None => None,
        };
        let stats = Stats {
            devices: devices
                .iter()
                .map(|d| {
                    let kind = match d {
                        Device::Block(_) => "block",
                        Device::Net(_) => "net",
                        Device::None => "",
                    };
                    DeviceStats { name: d.name().into(), kind, ..Default::default() }
                })
                .collect(),
            ..Default::default()
        };
        Ok(Vm {
            cpu,
            calls: Hypercalls { ring: None, ram, devices, poller, stats },
            ring_gpa: (total > limit).then_some(limit),
            ring_features: ring_features(has_net, has_block),
            ring_spin_us: config.ring_spin_us,
            boot_info: Some(layout.boot_info),
            exit_files: Vec::new(),
            debugger: config.debugger,
            seccomp: config.seccomp,
            timeout: config.timeout,
            core,
            started,
            warnings: Vec::new(),
        })
    }

    /// Takes the built VM into the jail, in the order `jail` documents: the core dump's link
    /// helper is forked, the jail entered (every other fd closed, namespaces, chroot, ids), and
    /// only then the ring's I/O thread started, so that it runs inside every wall; the boot info
    /// is written once the ring's start is known, and the heap bounded last. `exit_files` are fds
    /// the caller will still write at exit (the report). Any error stops the start.
    /// `observer` (a debugger) may keep fds of its own open.
    pub fn confine<O: Observer>(&mut self, jail: &mut Jail, exit_files: &[RawFd], observer: &O) -> Result<(), Error> {
        let Some(boot_info) = self.boot_info.take() else {
            return Ok(());
        };
        if let Some(core) = self.core.as_mut() {
            core.start_linker()?;
        }
        self.exit_files = exit_files.to_vec();
        let mut allow = self.allowlist();
        observer.sandbox(&mut allow);
        let vm_fd = self.cpu.kvm().map(|m| m.vm.as_raw_fd());
        // POLL's second epoll set is allowed only once the ring runs, but it must outlive the jail's
        // closing of fds for the ring to join it.
        let ring_poll = self.ring_gpa.map(|_| self.calls.poller.ring_fd());
        let keep: Vec<RawFd> = allow.fds().chain(vm_fd).chain(ring_poll).collect();
        if let Cpu::Process(_) = self.cpu {
            // The guest will share this address space: nothing of the caller's command line or
            // environment stays for it to read. Before the jail, which may hide /proc.
            process::scrub_args_and_env()?;
        }
        jail.enter(&keep)?;
        self.calls.ring = self.ring_gpa.and_then(|gpa| self.start_ring(gpa));
        if let Some(ring) = &self.calls.ring {
            self.calls.poller.watch_ring(ring.progress())?;
        }
        let (net_ring, mut features) = match (&self.calls.ring, self.ring_gpa) {
            (Some(_), Some(gpa)) => (gpa, self.ring_features),
            _ => (0, 0),
        };
        if let Cpu::Process(_) = self.cpu {
            features |= TENDER_FEATURE_PROCESS;
        }
        if self.debugger {
            features |= guest_abi::TENDER_FEATURE_DEBUG;
        }
        let ram = &mut self.calls.ram;
        boot::write_boot_info(ram, boot_info, net_ring, features)?;
        if let Cpu::Process(_) = self.cpu {
            // Under KVM guest-rt's page tables keep the boot info, manifest and command line
            // read-only; here the host mapping does.
            ram.protect_read_only(BOOT_INFO_GPA, GUEST_MIN_BASE, false)?;
        }
        self.calls.stats.net_ring = features & guest_abi::HVT_FEATURE_RING_IO != 0;
        self.calls.stats.block_ring = features & guest_abi::TENDER_FEATURE_BLOCK_RING != 0;
        jail.bound_heap()?;
        Ok(())
    }

    /// Starts the ring's I/O thread at `gpa`; on failure, a warning and the guest uses the
    /// hypercalls.
    fn start_ring(&mut self, gpa: u64) -> Option<Ring> {
        let targets = self
            .calls
            .devices
            .iter()
            .map(|d| match d {
                Device::Net(n) => Target::Net(n.io().clone()),
                Device::Block(b) => Target::Block(b.io()),
                Device::None => Target::None,
            })
            .collect();
        // The thread takes a copy of `ram` with its read-only ranges (set by `new`).
        let spin = std::time::Duration::from_micros(u64::from(self.ring_spin_us));
        Ring::start(self.cpu.kvm().map(|m| &m.vm), &self.calls.ram, gpa, targets, spin)
            .map_err(|e| self.warnings.push(format!("I/O ring not available ({e}), using hypercalls")))
            .ok()
    }

    /// Runs the guest until it halts, breaks a rule, or a signal ends the run.
    ///
    /// Before the first instruction, tender (unless `--seccomp=off`) locks itself into the
    /// syscall allowlist; a VM not yet confined is first taken through [`Vm::confine`] with an
    /// empty jail (every other fd is still closed). After that the process must not free or
    /// close anything: callers end the process without dropping the `Vm`.
    /// `exit_files` are fds the caller will still write at exit (the report).
    pub fn run(&mut self, exit_files: &[RawFd]) -> RunEnd {
        self.run_observed(exit_files, &mut ())
    }

    /// [`run`](Self::run), with `observer` watching the vCPU's stops (a debugger; KVM mode only).
    pub fn run_observed<O: Observer>(&mut self, exit_files: &[RawFd], observer: &mut O) -> RunEnd {
        if let Err(e) = self.confine(&mut Jail::default(), exit_files, observer) {
            return RunEnd::HostError(e.to_string());
        }
        let immediate_exit = match &mut self.cpu {
            Cpu::Kvm(m) => &mut m.vcpu.get_kvm_run().immediate_exit as *mut u8,
            Cpu::Process(_) => std::ptr::null_mut(),
        };
        let wake_fd = self.calls.poller.fds()[2];
        if let Err(e) = signals::install(immediate_exit, wake_fd, self.timeout) {
            return RunEnd::HostError(format!("cannot install signal handlers: {e}"));
        }
        if let Cpu::Process(p) = &mut self.cpu
            && let Err(e) = p.arm(wake_fd, self.timeout)
        {
            return RunEnd::HostError(e.to_string());
        }
        let mut allow = self.allowlist();
        observer.sandbox(&mut allow);
        if let Err(e) = sandbox::enter(&allow, self.seccomp) {
            return RunEnd::HostError(format!("{e} (use --seccomp=off to run without it)"));
        }
        self.calls.stats.to_first_instruction = Some(self.started.elapsed());
        let mut end = match &mut self.cpu {
            Cpu::Kvm(_) => self.run_loop(observer),
            Cpu::Process(p) => {
                let kick = self.calls.ring.as_ref().map(Ring::kick_fd);
                p.run(&mut self.calls, kick, self.timeout)
            }
        };
        if let Some(ring) = &self.calls.ring {
            if !ring.stop() {
                self.warnings.push("the ring's I/O thread did not stop in time: frames sent last may be lost, and a block request in progress may be cut short".into());
            }
            // The thread's fault, whether it stopped the vCPU (SIGUSR1) or was found by the last
            // pass over the ring after the guest halted, decides how the run ended.
            if let Some(fault) = ring.fault()
                && !matches!(end, RunEnd::GuestError { .. } | RunEnd::HostError(_))
            {
                end = match fault {
                    RingFault::Host { handle, op, errno } => {
                        RunEnd::HostError(match self.calls.device(u64::from(handle)) {
                            Some(dev @ (Device::Block(_) | Device::Net(_))) => {
                                HypercallError::host_io(dev.name(), op, errno).to_string()
                            }
                            // A host fault always names a device's handle; its own text otherwise.
                            _ => fault.to_string(),
                        })
                    }
                    RingFault::Kick { .. } => RunEnd::HostError(fault.to_string()),
                    guest => RunEnd::GuestError { error: GuestError::Ring(guest), rip: self.rip() },
                };
            }
            for (stats, counters) in self.calls.stats.devices.iter_mut().zip(ring.counters()) {
                stats.add(counters.load());
            }
        }
        signals::uninstall();
        end
    }

    /// The fds the run uses, for the sandbox.
    fn allowlist(&self) -> Allowlist {
        let [epoll, timer, wake] = self.calls.poller.fds();
        let mut allow = Allowlist {
            vcpu_fd: self.cpu.kvm().map(|m| m.vcpu.as_raw_fd()),
            // 1 and 2 for PUTS and messages; the wake-up eventfd for the signal handler.
            output_fds: vec![1, 2, wake],
            epoll_fd: Some(epoll),
            timer_fd: Some(timer),
            ring_kick_fd: self.calls.ring.as_ref().map(Ring::kick_fd),
            ring_progress_fd: self.calls.ring.as_ref().map(Ring::progress_fd),
            ring_epoll_fd: self.calls.ring.as_ref().map(|_| self.calls.poller.ring_fd()),
            ring_fault_pid: self.calls.ring.as_ref().map(|_| std::process::id()),
            exit_file_fds: self.exit_files.clone(),
            core_dump: self.core.as_ref().map(|c| {
                let [file, link] = c.fds();
                (file, link)
            }),
            watchdog: match &self.cpu {
                Cpu::Kvm(_) => None,
                Cpu::Process(p) => p.watchdog(),
            },
            ..Default::default()
        };
        for dev in &self.calls.devices {
            match dev {
                Device::Block(b) => allow.block_files.push(BlockFile { fd: b.raw_fd(), size: b.capacity() }),
                Device::Net(n) => allow.tap_fds.push(n.raw_fd()),
                Device::None => {}
            }
        }
        allow
    }

    /// The KVM run loop (only called with `Cpu::Kvm`).
    fn run_loop<O: Observer>(&mut self, observer: &mut O) -> RunEnd {
        let Cpu::Kvm(machine) = &mut self.cpu else {
            return RunEnd::HostError("internal error: no vCPU".into());
        };
        if observer.start(Stopped { vcpu: &mut machine.vcpu, ram: &self.calls.ram }) == Control::Kill {
            return RunEnd::Killed;
        }
        loop {
            if let Some(sig) = signals::pending() {
                return RunEnd::from_signal(sig, self.timeout);
            }
            // A stop that may be the observer's: handled after the match, which borrows the vCPU.
            let mut stop = None;
            let result = match machine.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let decoded = decode_out(port, data);
                    if let (Err(GuestError::Port { .. }), Ok(bytes)) = (&decoded, <[u8; 4]>::try_from(data)) {
                        stop = Some(Stop::Port { port, value: u32::from_le_bytes(bytes) });
                    }
                    Ok(decoded)
                }
                Ok(VcpuExit::Debug(arch)) => {
                    stop = Some(Stop::Debug(arch));
                    Err(GuestError::Unhandled(kvm_bindings::KVM_EXIT_DEBUG))
                }
                Ok(VcpuExit::IoIn(port, data)) => Err(GuestError::Port { port, size: data.len(), direction: "in" }),
                Ok(VcpuExit::MmioWrite(gpa, _)) => Err(GuestError::Mmio { op: "write", gpa }),
                Ok(VcpuExit::MmioRead(gpa, _)) => Err(GuestError::Mmio { op: "read", gpa }),
                Ok(VcpuExit::MemoryFault { gpa, .. }) => Err(GuestError::Mmio { op: "access", gpa }),
                Ok(VcpuExit::Hlt) => Err(GuestError::Hlt),
                Ok(VcpuExit::Shutdown) => Err(GuestError::Shutdown),
                Ok(VcpuExit::FailEntry(reason, _)) => Err(GuestError::FailEntry(reason)),
                Ok(VcpuExit::InternalError) => Err(GuestError::Internal(internal_suberror(machine))),
                Ok(VcpuExit::Intr) => continue,
                Ok(_) => Err(GuestError::Unhandled(machine.vcpu.get_kvm_run().exit_reason)),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    stop = Some(Stop::Interrupted);
                    Err(GuestError::Unhandled(0))
                }
                Err(e) if e.errno() == libc::EFAULT => Err(GuestError::TranslationFault),
                Err(e) => return RunEnd::HostError(format!("KVM: ioctl (KVM_RUN) failed: {e}")),
            };
            if let Some(why) = stop {
                match observer.stop(Stopped { vcpu: &mut machine.vcpu, ram: &self.calls.ram }, why) {
                    Control::Resume => continue,
                    Control::Kill => return RunEnd::Killed,
                    // Without an observer, an interrupted KVM_RUN just runs again.
                    Control::NotMine if matches!(why, Stop::Interrupted) => continue,
                    Control::NotMine => {}
                }
            }
            let outcome = match result {
                Ok(Ok((nr, gpa))) => self.calls.dispatch(nr, gpa),
                Ok(Err(e)) | Err(e) => Err(HypercallError::Guest(e)),
            };
            match outcome {
                Ok(Next::Resume) => {
                    let stopped = Stopped { vcpu: &mut machine.vcpu, ram: &self.calls.ram };
                    if observer.hypercall_done(stopped) == Control::Kill {
                        return RunEnd::Killed;
                    }
                }
                Ok(Next::Halt(status, trap)) => return RunEnd::Halted { status, trap },
                Err(HypercallError::Guest(error)) => {
                    return RunEnd::GuestError { error, rip: machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0) };
                }
                Err(HypercallError::Interrupted) => continue,
                Err(e) => return RunEnd::HostError(e.to_string()),
            }
        }
    }

    fn rip(&self) -> u64 {
        match &self.cpu {
            Cpu::Kvm(m) => m.vcpu.get_regs().map(|r| r.rip).unwrap_or(0),
            Cpu::Process(p) => p.rip(),
        }
    }

    /// The counters of the run, for the report.
    pub fn stats(&self) -> &Stats {
        &self.calls.stats
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
        let (regs, sregs) = match &self.cpu {
            Cpu::Kvm(machine) => {
                (machine.vcpu.get_regs().unwrap_or_default(), machine.vcpu.get_sregs().unwrap_or_default())
            }
            Cpu::Process(p) => p.registers(),
        };
        Some(match core.write(&self.calls.ram, &regs, &sregs, trap.as_ref()) {
            Ok(what) => format!("dumpcore: guest core written: {what}"),
            Err(e) => format!("dumpcore: cannot write the guest core: {e}"),
        })
    }

    /// Guest memory, for a debugger's reads and writes.
    pub fn ram(&self) -> &GuestRam {
        &self.calls.ram
    }
}

fn internal_suberror(machine: &mut Machine) -> u32 {
    let run = machine.vcpu.get_kvm_run();
    // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member of the
    // union; it is plain integers.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}
