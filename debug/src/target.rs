//! The guest as gdbstub sees it: registers, memory, breakpoints, resume and step.
//!
//! Registers are read once per stop and written back when the guest resumes (only if gdb changed
//! them). Breakpoints and watchpoints share the four debug registers and act through
//! `KVM_SET_GUEST_DEBUG`: a `break` (gdb's software breakpoint) becomes a hardware one, since an
//! `int3` in CPL 0 code kills this host's instruction emulator and KVM never sees one at CPL 3.

use gdbstub::arch::Arch;
use gdbstub::common::Signal;
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep, SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::X86_64_SSE;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, kvm_debug_exit_arch, kvm_guest_debug,
    kvm_regs, kvm_sregs,
};
use kvm_ioctls::VcpuFd;
use tender::memory::GuestRam;

/// x86 has four address debug registers.
pub const HW_SLOTS: usize = 4;
/// DR6: single step (BS).
const DR6_BS: u64 = 1 << 14;

type Regs = <X86_64_SSE as Arch>::Registers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotKind {
    /// gdb's `break` (Z0), kept in a debug register.
    Break,
    /// gdb's `hbreak` (Z1).
    HwBreak,
    /// A watchpoint of `len` bytes.
    Watch(WatchKind, u64),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    addr: u64,
    kind: SlotKind,
}

/// What gdb asked for when it resumed the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    Continue,
    Step,
}

pub struct Debugger {
    ram: GuestRam,
    regs: kvm_regs,
    sregs: kvm_sregs,
    regs_dirty: bool,
    slots: [Option<Slot>; HW_SLOTS],
    resume: Option<Resume>,
    /// Continuing from a breakpoint's own address: one step with it disarmed first (the host
    /// ignores RF), then the continue proper.
    stepping_over: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("KVM: ioctl ({0}) failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

impl Debugger {
    pub fn new(ram: GuestRam) -> Self {
        Debugger {
            ram,
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            regs_dirty: false,
            slots: [None; HW_SLOTS],
            resume: None,
            stepping_over: false,
        }
    }

    /// Takes in the registers of a stopped vCPU.
    pub fn load(&mut self, vcpu: &VcpuFd) -> Result<(), DebugError> {
        self.regs = vcpu.get_regs().map_err(|e| DebugError::Kvm("KVM_GET_REGS", e))?;
        self.sregs = vcpu.get_sregs().map_err(|e| DebugError::Kvm("KVM_GET_SREGS", e))?;
        self.regs_dirty = false;
        Ok(())
    }

    /// Before the guest runs again: gdb's register changes, then the debug registers for what it
    /// asked (`resume`).
    pub fn apply(&mut self, vcpu: &VcpuFd) -> Result<(), DebugError> {
        if self.regs_dirty {
            vcpu.set_regs(&self.regs).map_err(|e| DebugError::Kvm("KVM_SET_REGS", e))?;
            self.regs_dirty = false;
        }
        let step = self.resume == Some(Resume::Step);
        self.stepping_over = !step && self.breaks_at(self.regs.rip);
        self.arm(vcpu, step || self.stepping_over, self.stepping_over)
    }

    /// No more debugging (gdb detached or is gone): the guest runs on as without it.
    pub fn release(&mut self, vcpu: &VcpuFd) -> Result<(), DebugError> {
        self.slots = [None; HW_SLOTS];
        self.resume = None;
        self.apply(vcpu)?;
        let off = kvm_guest_debug::default();
        vcpu.set_guest_debug(&off).map_err(|e| DebugError::Kvm("KVM_SET_GUEST_DEBUG", e))
    }

    fn breaks_at(&self, rip: u64) -> bool {
        self.slots.iter().flatten().any(|s| s.addr == rip && !matches!(s.kind, SlotKind::Watch(..)))
    }

    fn arm(&self, vcpu: &VcpuFd, single_step: bool, skip_rip: bool) -> Result<(), DebugError> {
        let mut dbg = kvm_guest_debug { control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, ..Default::default() };
        if single_step {
            dbg.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if skip_rip && slot.addr == self.regs.rip && !matches!(slot.kind, SlotKind::Watch(..)) {
                continue;
            }
            dbg.arch.debugreg[i] = slot.addr;
            dbg.arch.debugreg[7] |= dr7_bits(i, slot.kind);
        }
        vcpu.set_guest_debug(&dbg).map_err(|e| DebugError::Kvm("KVM_SET_GUEST_DEBUG", e))
    }

    /// A `KVM_EXIT_DEBUG`: the stop to report to gdb, or None when it was tender's own step over
    /// a breakpoint (the guest then simply continues, re-armed).
    pub fn debug_exit(
        &mut self,
        vcpu: &VcpuFd,
        arch: kvm_debug_exit_arch,
    ) -> Result<Option<SingleThreadStopReason<u64>>, DebugError> {
        if self.stepping_over && self.resume == Some(Resume::Continue) {
            self.stepping_over = false;
            self.load(vcpu)?;
            if !self.breaks_at(self.regs.rip) {
                self.arm(vcpu, false, false)?;
                return Ok(None);
            }
        }
        self.resume = None;
        let hit = (0..HW_SLOTS).find(|&i| arch.dr6 & (1 << i) != 0).and_then(|i| self.slots[i]);
        Ok(Some(match hit {
            Some(Slot { kind: SlotKind::Break, .. }) => SingleThreadStopReason::SwBreak(()),
            Some(Slot { kind: SlotKind::HwBreak, .. }) => SingleThreadStopReason::HwBreak(()),
            Some(Slot { addr, kind: SlotKind::Watch(kind, _) }) => {
                SingleThreadStopReason::Watch { tid: (), kind, addr }
            }
            None if arch.dr6 & DR6_BS != 0 => SingleThreadStopReason::DoneStep,
            None => SingleThreadStopReason::Signal(Signal::SIGTRAP),
        }))
    }

    fn add_slot(&mut self, addr: u64, kind: SlotKind) -> bool {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(Slot { addr, kind });
                true
            }
            None => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("tender-debug: no free debug register for {addr:#x}: at most {HW_SLOTS} breakpoints and watchpoints in all\n").as_bytes(),
                );
                false
            }
        }
    }

    fn remove_slot(&mut self, addr: u64, kind: SlotKind) -> bool {
        match self.slots.iter_mut().find(|s| matches!(s, Some(s) if s.addr == addr && s.kind == kind)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }
}

/// DR7 enable, type and length bits of debug register `i`.
fn dr7_bits(i: usize, kind: SlotKind) -> u64 {
    let (rw, len) = match kind {
        SlotKind::Break | SlotKind::HwBreak => (0b00, 0b00),
        SlotKind::Watch(kind, len) => {
            let rw = if kind == WatchKind::Write { 0b01 } else { 0b11 };
            let len = match len {
                1 => 0b00,
                2 => 0b01,
                8 => 0b10,
                _ => 0b11,
            };
            (rw, len)
        }
    };
    (1 << (2 * i)) | (rw << (16 + 4 * i)) | (len << (18 + 4 * i))
}

impl Target for Debugger {
    type Arch = X86_64_SSE;
    type Error = DebugError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl SingleThreadBase for Debugger {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        let r = &self.regs;
        *regs = X86_64CoreRegs::default();
        regs.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ];
        regs.rip = r.rip;
        regs.eflags = r.rflags as u32;
        let s = &self.sregs;
        regs.segments.cs = u32::from(s.cs.selector);
        regs.segments.ss = u32::from(s.ss.selector);
        regs.segments.ds = u32::from(s.ds.selector);
        regs.segments.es = u32::from(s.es.selector);
        regs.segments.fs = u32::from(s.fs.selector);
        regs.segments.gs = u32::from(s.gs.selector);
        Ok(())
    }

    /// General registers, rip and rflags; segments and FPU/SSE state are not written.
    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        let r = &mut self.regs;
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ] = regs.regs;
        r.rip = regs.rip;
        r.rflags = (r.rflags & !0xffff_ffff) | u64::from(regs.eflags);
        self.regs_dirty = true;
        Ok(())
    }

    /// Guest virtual addresses are physical ones (Solo5 and guest-rt identity-map memory).
    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        // The ABI's range rule keeps the last byte of guest memory out of reach: good enough here.
        let len = (data.len() as u64).min(self.ram.limit().saturating_sub(start).saturating_sub(1));
        let Ok(slice) = self.ram.slice(start, len) else {
            return Err(TargetError::NonFatal);
        };
        slice.copy_to(&mut data[..len as usize]);
        Ok(len as usize)
    }

    /// Only where the guest itself may write (never its text or read-only data).
    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        match self.ram.slice_mut(start, data.len() as u64) {
            Ok(slice) => {
                slice.copy_from(data);
                Ok(())
            }
            Err(_) => Err(TargetError::NonFatal),
        }
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Debugger {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Some(Resume::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Debugger {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Some(Resume::Step);
        Ok(())
    }
}

impl Breakpoints for Debugger {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Debugger {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_slot(addr, SlotKind::Break))
    }
    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(addr, SlotKind::Break))
    }
}

impl HwBreakpoint for Debugger {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_slot(addr, SlotKind::HwBreak))
    }
    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(addr, SlotKind::HwBreak))
    }
}

impl HwWatchpoint for Debugger {
    /// x86 debug registers watch 1, 2, 4 or 8 aligned bytes, for writes or for any access (not
    /// reads alone): anything else is refused, never silently widened.
    fn add_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        if kind == WatchKind::Read || ![1, 2, 4, 8].contains(&len) || !addr.is_multiple_of(len) {
            return Ok(false);
        }
        Ok(self.add_slot(addr, SlotKind::Watch(kind, len)))
    }
    fn remove_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(addr, SlotKind::Watch(kind, len)))
    }
}
