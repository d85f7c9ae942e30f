//! The guest as gdbstub sees it: registers, memory, breakpoints, resume and step.
//!
//! Registers are read once per stop and written back when the guest resumes (only if gdb changed
//! them). They come from KVM, or, when guest-rt's #BP/#DB handler reported a CPL 3 trap, from the
//! [`DebugArea`] it saved them in.
//!
//! Which kind of breakpoint, decided the same way on every host: before a guest registers its
//! debug area, and for guests that never do (Solo5's), every breakpoint is a hardware one (the
//! four debug registers, shared with watchpoints, through `KVM_SET_GUEST_DEBUG`). Once registered,
//! gdb's `break` in a user page above the guest's CPL 0 code is an `int3`, written through
//! `/proc/self/mem` (the text is read-only on the host), and watchpoints are refused. An `int3` is
//! never written into CPL 0 code: it kills the instruction emulator of nested KVM-PVM hosts.

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
use guest_abi::{DEBUG_AREA_MAGIC, DebugArea, PTE_PRESENT, PTE_PS, PTE_USER};
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
/// RFLAGS: trap flag (single step by the guest's own #DB).
const RFLAGS_TF: u64 = 1 << 8;
const INT3: u8 = 0xcc;

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

/// Where the registers gdb sees come from at this stop.
#[derive(Clone, Copy, Debug)]
enum Source {
    Kvm,
    /// A CPL 3 #BP/#DB reported through the guest's debug area at this GPA.
    Area(u64),
}

/// A guest that registered its debug area.
#[derive(Clone, Copy, Debug)]
struct Registered {
    area: u64,
    cpl0_text_end: u64,
}

pub struct Debugger {
    ram: GuestRam,
    /// `/proc/self/mem`, opened before the sandbox: the way to write `int3` into read-only text.
    mem: std::fs::File,
    registered: Option<Registered>,
    source: Source,
    area: DebugArea,
    /// `int3`s in guest memory: (address, the byte it replaced).
    int3s: Vec<(u64, u8)>,
    /// The `int3` lifted to step over it (continuing from its address), put back after the step.
    lifted: Option<(u64, u8)>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    regs_dirty: bool,
    slots: [Option<Slot>; HW_SLOTS],
    resume: Option<Resume>,
    /// Continuing from a breakpoint's own address: one step with it disarmed first (the host
    /// ignores RF), then the continue proper.
    stepping_over: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum DebugError {
    #[error("KVM: ioctl ({0}) failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("invalid guest debug area at gpa={0:#x}")]
    Area(u64),
    #[error("cannot write a breakpoint at gpa={0:#x}: {1}")]
    Poke(u64, String),
}

impl Debugger {
    pub fn new(ram: GuestRam, mem: std::fs::File) -> Self {
        Debugger {
            ram,
            mem,
            registered: None,
            source: Source::Kvm,
            area: DebugArea::default(),
            int3s: Vec::new(),
            lifted: None,
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
        self.source = Source::Kvm;
        Ok(())
    }

    /// Is the vCPU at CPL 3, in a guest that registered (so its own #DB can step it)?
    fn cooperative(&self) -> bool {
        self.registered.is_some() && self.sregs.cs.selector & 3 == 3
    }

    /// Before the guest runs again: gdb's register changes, then the debug registers for what it
    /// asked (`resume`).
    pub fn apply(&mut self, vcpu: &VcpuFd) -> Result<(), DebugError> {
        let step = self.resume == Some(Resume::Step);
        if let Source::Area(gpa) = self.source {
            // Back through the guest's handler: rip, registers and TF from the area.
            self.area.rflags = self.lift_for_step(self.area.rip, self.area.rflags, step)?;
            self.ram.write_arg(gpa, self.area).map_err(|_| DebugError::Area(gpa))?;
            return self.arm(vcpu, false, false);
        }
        if self.cooperative() {
            // Stopped at CPL 3 by Ctrl-C or at a hypercall: the guest's own #DB steps it, over
            // the original instruction if an int3 sits at rip.
            let rflags = self.lift_for_step(self.regs.rip, self.regs.rflags, step)?;
            if rflags != self.regs.rflags {
                self.regs.rflags = rflags;
                self.regs_dirty = true;
            }
        }
        if self.regs_dirty {
            vcpu.set_regs(&self.regs).map_err(|e| DebugError::Kvm("KVM_SET_REGS", e))?;
            self.regs_dirty = false;
        }
        let kvm_step = step && !self.cooperative();
        self.stepping_over = !step && self.breaks_at(self.regs.rip);
        self.arm(vcpu, kvm_step || self.stepping_over, self.stepping_over)
    }

    /// Lifts an int3 at `rip` for one step over the original instruction; returns `rflags` with TF
    /// set if the guest's own #DB must stop it after one instruction (a step, or that lift).
    fn lift_for_step(&mut self, rip: u64, rflags: u64, step: bool) -> Result<u64, DebugError> {
        self.lifted = self.int3s.iter().find(|(a, _)| *a == rip).copied();
        if let Some((addr, orig)) = self.lifted {
            self.poke(addr, orig)?;
        }
        Ok(if step || self.lifted.is_some() { rflags | RFLAGS_TF } else { rflags & !RFLAGS_TF })
    }

    /// Did gdb ask for a step that the guest's own #DB carries out (a CPL 3 step)?
    pub fn cooperative_step_pending(&self) -> bool {
        self.resume == Some(Resume::Step) && (matches!(self.source, Source::Area(_)) || self.cooperative())
    }

    /// The guest's report at the debug port: `Ok(None)` for a registration (run on), the stop
    /// for a trap, `Err` for anything a guest may not send (the run then ends as for any bad port
    /// access).
    pub fn guest_report(&mut self, gpa: u64) -> Result<Option<SingleThreadStopReason<u64>>, DebugError> {
        let bad = DebugError::Area(gpa);
        let area: DebugArea = self.ram.read_arg(gpa).map_err(|_| bad.clone())?;
        self.ram.check_write(gpa, size_of::<DebugArea>() as u64).map_err(|_| bad.clone())?;
        if area.magic != DEBUG_AREA_MAGIC {
            return Err(bad);
        }
        match (area.op, self.registered) {
            (guest_abi::DEBUG_OP_REGISTER, None) => {
                self.registered = Some(Registered { area: gpa, cpl0_text_end: area.cpl0_text_end });
                // Breakpoints set before, in user code, become int3s: the debug registers never
                // fire at CPL 3 on some hosts.
                for i in 0..HW_SLOTS {
                    if let Some(Slot { addr, kind: SlotKind::Break }) = self.slots[i]
                        && self.int3_allowed(addr)
                        && self.insert_int3(addr).is_ok()
                    {
                        self.slots[i] = None;
                    }
                }
                Ok(None)
            }
            (guest_abi::DEBUG_OP_TRAP, Some(r)) if r.area == gpa => self.area_trap(gpa, area),
            _ => Err(bad),
        }
    }

    fn area_trap(&mut self, gpa: u64, area: DebugArea) -> Result<Option<SingleThreadStopReason<u64>>, DebugError> {
        self.source = Source::Area(gpa);
        self.area = area;
        if let Some((addr, _)) = self.lifted.take() {
            // The step over a lifted int3 is done: put it back, and continue if that was all.
            self.poke(addr, INT3)?;
            if self.resume == Some(Resume::Continue) && area.vector == 1 {
                self.area.rflags &= !RFLAGS_TF;
                self.ram.write_arg(gpa, self.area).map_err(|_| DebugError::Area(gpa))?;
                return Ok(None);
            }
        }
        let reason = match area.vector {
            3 if self.int3s.iter().any(|(a, _)| *a == area.rip.wrapping_sub(1)) => {
                self.area.rip -= 1;
                SingleThreadStopReason::SwBreak(())
            }
            1 => SingleThreadStopReason::DoneStep,
            _ => SingleThreadStopReason::Signal(Signal::SIGTRAP),
        };
        self.resume = None;
        Ok(Some(reason))
    }

    /// A continue that passed over a lifted int3 without a trap (a hypercall was stepped over):
    /// put it back now.
    pub fn hypercall_step_done(&mut self) -> Result<(), DebugError> {
        if let Some((addr, _)) = self.lifted.take() {
            self.poke(addr, INT3)?;
        }
        self.resume = None;
        Ok(())
    }

    /// Writes one byte of guest text through `/proc/self/mem`.
    fn poke(&self, gpa: u64, byte: u8) -> Result<(), DebugError> {
        use std::os::unix::fs::FileExt;
        self.ram.check(gpa, 1).map_err(|_| DebugError::Area(gpa))?;
        let host = self.ram.host_base() as u64 + gpa;
        self.mem.write_at(&[byte], host).map(|_| ()).map_err(|e| DebugError::Poke(gpa, e.to_string()))
    }

    fn peek(&self, gpa: u64) -> Option<u64> {
        let slice = self.ram.slice(gpa, 8).ok()?;
        let mut b = [0u8; 8];
        slice.copy_to(&mut b);
        Some(u64::from_le_bytes(b))
    }

    /// An int3 may go at `addr` only in a registered guest, above its CPL 0 code, in a page
    /// the guest's own page tables mark user.
    fn int3_allowed(&self, addr: u64) -> bool {
        let Some(r) = self.registered else { return false };
        if addr < r.cpl0_text_end {
            return false;
        }
        let mut table = self.sregs.cr3 & !0xfff;
        for (level, shift) in [39u64, 30, 21, 12].iter().enumerate() {
            let Some(entry) = self.peek(table + ((addr >> shift) & 511) * 8) else { return false };
            if entry & (PTE_PRESENT | PTE_USER) != PTE_PRESENT | PTE_USER {
                return false;
            }
            if level > 0 && entry & PTE_PS != 0 {
                return true;
            }
            table = entry & 0x000f_ffff_ffff_f000;
        }
        true
    }

    fn insert_int3(&mut self, addr: u64) -> Result<(), DebugError> {
        let orig = self.ram.slice(addr, 1).map_err(|_| DebugError::Area(addr))?;
        let mut b = [0u8];
        orig.copy_to(&mut b);
        self.poke(addr, INT3)?;
        self.int3s.push((addr, b[0]));
        Ok(())
    }

    /// No more debugging (gdb detached or is gone): the guest runs on as without it.
    pub fn release(&mut self, vcpu: &VcpuFd) -> Result<(), DebugError> {
        self.slots = [None; HW_SLOTS];
        for (addr, orig) in std::mem::take(&mut self.int3s) {
            self.poke(addr, orig)?;
        }
        self.resume = Some(Resume::Continue);
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
        if let Source::Area(_) = self.source {
            let (a, g) = (&self.area, &self.area.gprs);
            regs.regs =
                [g[0], g[1], g[2], g[3], g[4], g[5], g[6], a.rsp, g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14]];
            regs.rip = a.rip;
            regs.eflags = a.rflags as u32;
            (regs.segments.cs, regs.segments.ss) = (a.cs as u32, a.ss as u32);
            (regs.segments.ds, regs.segments.es) = (a.ss as u32, a.ss as u32);
            return Ok(());
        }
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
        if let Source::Area(_) = self.source {
            let (a, r) = (&mut self.area, &regs.regs);
            a.gprs = [r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]];
            a.rsp = r[7];
            a.rip = regs.rip;
            a.rflags = (a.rflags & !0xffff_ffff) | u64::from(regs.eflags);
            return Ok(());
        }
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
        if self.int3_allowed(addr) {
            return Ok(self.insert_int3(addr).is_ok());
        }
        Ok(self.add_slot(addr, SlotKind::Break))
    }
    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if let Some(i) = self.int3s.iter().position(|(a, _)| *a == addr) {
            let (addr, orig) = self.int3s.remove(i);
            if self.lifted.is_some_and(|(a, _)| a == addr) {
                self.lifted = None;
            }
            return Ok(self.poke(addr, orig).is_ok());
        }
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
        // A registered guest's code runs at CPL 3, where the debug registers may never fire:
        // refused on every host rather than silently never triggering.
        if self.registered.is_some()
            || kind == WatchKind::Read
            || ![1, 2, 4, 8].contains(&len)
            || !addr.is_multiple_of(len)
        {
            return Ok(false);
        }
        Ok(self.add_slot(addr, SlotKind::Watch(kind, len)))
    }
    fn remove_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(addr, SlotKind::Watch(kind, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_enable_type_and_length() {
        assert_eq!(dr7_bits(0, SlotKind::Break), 0b1);
        assert_eq!(dr7_bits(3, SlotKind::HwBreak), 1 << 6);
        // Slot 1, write, 4 bytes: L1 (bit 2), R/W1 = 01 (bits 20-21), LEN1 = 11 (bits 22-23).
        assert_eq!(dr7_bits(1, SlotKind::Watch(WatchKind::Write, 4)), (1 << 2) | (0b01 << 20) | (0b11 << 22));
        // Slot 2, access, 8 bytes: L2 (bit 4), R/W2 = 11 (bits 24-25), LEN2 = 10 (bits 26-27).
        assert_eq!(dr7_bits(2, SlotKind::Watch(WatchKind::ReadWrite, 8)), (1 << 4) | (0b11 << 24) | (0b10 << 26));
    }
}
