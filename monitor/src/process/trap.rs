//! The guest's way into tender in process mode: signals. Every handler enters through
//! `tender_signal_entry`, an assembly prologue that swaps the FS base (the guest's out, tender's
//! in, and back on the way out) around [`on_signal`], on the alternate signal stack. A run ends
//! by "landing": the handler rewrites the signal context so that `rt_sigreturn` resumes
//! `tender_landing` on tender's saved stack, which returns from `tender_enter_guest`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use guest_abi::{NET_RING_KICK_PORT, SOLO5_EXIT_ABORT, TrapFrame};

use super::decode::{self, Insn, Op, Port};
use crate::hypercalls::{Hypercalls, Next, decode_out};
use crate::outcome::{GuestError, HypercallError, RunEnd, Trap};
use crate::signals;

/// tender's own FS base (its thread data), loaded by the prologue before any Rust code runs.
static TENDER_FS: AtomicU64 = AtomicU64::new(0);
/// The watchdog thread's FS base: a signal that interrupts the watchdog keeps it (`watchdog.rs`);
/// until it runs, a non-canonical value no FS base can have.
static WATCHDOG_FS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Set by the landing: the guest's thread is back in tender, which ends the process itself.
static LANDED: AtomicBool = AtomicBool::new(false);
/// tender's stack pointer inside `tender_enter_guest`, where a landing resumes.
static SAVED_RSP: AtomicU64 = AtomicU64::new(0);
/// Guest memory `[start, end)`: a signal that interrupts code there interrupted the guest.
static GUEST_START: AtomicU64 = AtomicU64::new(0);
static GUEST_END: AtomicU64 = AtomicU64::new(0);
/// The run in progress, null when the guest is not running.
static SESSION: AtomicPtr<Session<'static>> = AtomicPtr::new(std::ptr::null_mut());

/// RFLAGS for tender after a landing: interrupts on (IF, as in any user context), DF clear.
const LANDING_RFLAGS: i64 = 0x202;

/// What the handlers need while the guest runs; it lives on tender's stack in [`run_guest`].
struct Session<'a> {
    calls: &'a mut Hypercalls,
    kick_fd: Option<RawFd>,
    timeout: Option<u64>,
    end: Option<RunEnd>,
    rip: u64,
    /// The guest's registers and FS base where the run ended (for a core dump).
    last: GuestState,
}

/// The guest's general registers (as in a signal context) and FS base.
#[derive(Clone, Copy, Default)]
pub(super) struct GuestState {
    pub gregs: Regs,
    pub fs_base: u64,
}

unsafe extern "C" {
    /// Saves tender's callee-saved registers and stack, sets the FS base to 0 and jumps to
    /// `entry` with RSP = `stack`, RDI = `boot_info`. Returns when a handler lands the run.
    fn tender_enter_guest(entry: u64, stack: u64, boot_info: u64);
    /// The prologue every handler of `install` enters through.
    fn tender_signal_entry();
    /// Where a landing resumes.
    fn tender_landing();
}

core::arch::global_asm!(
    r#"
    .pushsection .text.tender_process, "ax", @progbits
    .globl tender_enter_guest
    .type tender_enter_guest, @function
tender_enter_guest:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, {saved_rsp}(%rip)
    xor %eax, %eax
    wrfsbase %rax
    mov %rdi, %rax
    mov %rsi, %rsp
    mov %rdx, %rdi
    xor %ebx, %ebx
    xor %ebp, %ebp
    xor %ecx, %ecx
    xor %edx, %edx
    xor %esi, %esi
    xor %r8d, %r8d
    xor %r9d, %r9d
    xor %r10d, %r10d
    xor %r11d, %r11d
    xor %r12d, %r12d
    xor %r13d, %r13d
    xor %r14d, %r14d
    xor %r15d, %r15d
    cld
    jmp *%rax
    .size tender_enter_guest, . - tender_enter_guest

    .globl tender_landing
    .type tender_landing, @function
tender_landing:
    // The guest's x87 and SSE control state came back with rt_sigreturn: reset it for tender.
    fninit
    push $0x1f80
    ldmxcsr (%rsp)
    add $8, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
    .size tender_landing, . - tender_landing

    // Entered by the kernel on the alternate stack with RDI = signal, RSI = siginfo,
    // RDX = ucontext, RSP = 8 mod 16. The interrupted FS base is kept in the slot pushed here
    // (nested handlers each keep their own); the Rust handler gets the slot's address in RCX and
    // may rewrite it to resume with another FS base. On the watchdog's thread, whose FS base is
    // its own, the FS base stays.
    .globl tender_signal_entry
    .type tender_signal_entry, @function
tender_signal_entry:
    rdfsbase %rax
    push %rax
    cmp {watchdog_fs}(%rip), %rax
    je 1f
    mov {tender_fs}(%rip), %rax
    wrfsbase %rax
1:
    mov %rsp, %rcx
    call {handler}
    pop %rax
    wrfsbase %rax
    ret
    .size tender_signal_entry, . - tender_signal_entry
    .popsection
    "#,
    saved_rsp = sym SAVED_RSP,
    tender_fs = sym TENDER_FS,
    watchdog_fs = sym WATCHDOG_FS,
    handler = sym on_signal,
    options(att_syntax)
);

/// The signals whose handlers may run on the guest's thread: CPU exceptions, and those that
/// end a run (`signals`).
const TRAP_SIGNALS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP];
const END_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGALRM, libc::SIGUSR1];

/// Records tender's FS base and installs `tender_signal_entry` for every signal that may arrive
/// on the guest's thread, on the alternate stack.
pub(super) fn install() -> std::io::Result<()> {
    let fs: u64;
    // SAFETY: reads this thread's FS base; `ProcessGuest::new` checked that the kernel allows it.
    unsafe { core::arch::asm!("rdfsbase {}", out(reg) fs, options(nomem, nostack, preserves_flags)) };
    TENDER_FS.store(fs, Ordering::SeqCst);
    for sig in TRAP_SIGNALS.iter().chain(&END_SIGNALS) {
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags) before it is filled.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = tender_signal_entry as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: the entry keeps the ABI of an SA_SIGINFO handler (see the assembly above).
        if unsafe { libc::sigaction(*sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Records the watchdog thread's FS base (call on that thread).
pub(super) fn set_watchdog_fs(fs: u64) {
    WATCHDOG_FS.store(fs, Ordering::SeqCst);
}

/// Whether the guest's thread is back in tender (it then ends the run and the process itself).
pub(super) fn landed() -> bool {
    LANDED.load(Ordering::SeqCst)
}

/// Runs the guest at `entry` until a handler lands; returns how the run ended, the guest's last
/// RIP, and its registers where the run ended.
pub(super) fn run_guest(
    calls: &mut Hypercalls,
    kick_fd: Option<RawFd>,
    timeout: Option<u64>,
    entry: u64,
    stack: u64,
    boot_info: u64,
) -> (RunEnd, u64, GuestState) {
    GUEST_START.store(calls.ram.base(), Ordering::SeqCst);
    GUEST_END.store(calls.ram.total(), Ordering::SeqCst);
    let mut session = Session { calls, kick_fd, timeout, end: None, rip: entry, last: GuestState::default() };
    SESSION.store((&raw mut session).cast(), Ordering::SeqCst);
    // SAFETY: guest memory is mapped at `entry` and below `stack`; the guest comes back only
    // through a handler's landing, which restores every register tender's ABI needs and its FS
    // base. A signal before the jump finds SAVED_RSP not yet set for this call but also finds RIP
    // outside guest memory, so it only records itself (`on_signal`).
    unsafe { tender_enter_guest(entry, stack, boot_info) };
    SESSION.store(std::ptr::null_mut(), Ordering::SeqCst);
    let end = session.end.take().unwrap_or_else(|| RunEnd::HostError("the guest left without an outcome".into()));
    (end, session.rip, session.last)
}

/// Every signal on the guest's thread, with tender's FS base loaded. `fs_slot` holds the FS
/// base the prologue restores on the way out.
extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::ucontext_t, fs_slot: *mut u64) {
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler; nothing else refers
    // to it while the handler runs.
    let ctx = unsafe { &mut *uc };
    let rip = ctx.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    let in_guest = (GUEST_START.load(Ordering::SeqCst)..GUEST_END.load(Ordering::SeqCst)).contains(&rip);
    let session = SESSION.load(Ordering::SeqCst);
    if END_SIGNALS.contains(&sig) {
        signals::note(sig);
        // Guest code was interrupted: end the run now. In tender's code (a hypercall in
        // progress), POLL wakes up and the trap handler lands after the hypercall.
        if in_guest && !session.is_null() {
            // SAFETY: the session lives in `run_guest`'s frame until the landing; the guest was
            // interrupted, so no other handler holds it.
            let session = unsafe { &mut *session };
            let end = RunEnd::from_signal(sig, session.timeout);
            land(session, ctx, fs_slot, end);
        }
        return;
    }
    if session.is_null() {
        // A fault in tender's own code: let it kill the process as it would without us.
        // SAFETY: resets this signal's action; the faulting instruction runs again and kills.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        return;
    }
    // SAFETY: as above; trap signals are blocked while their handler runs, and an end signal's
    // handler never touches the session while tender's code runs.
    let session = unsafe { &mut *session };
    session.rip = rip;
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let si_code = unsafe { (*info).si_code };
    let end = match trap(session, ctx, sig, si_code, in_guest, fs_slot) {
        Some(end) => end,
        None => return,
    };
    land(session, ctx, fs_slot, end);
}

/// Handles a trap of the guest; `None` resumes the guest (the context is already updated).
fn trap(
    session: &mut Session<'_>,
    ctx: &mut libc::ucontext_t,
    sig: libc::c_int,
    si_code: libc::c_int,
    in_guest: bool,
    fs_slot: *mut u64,
) -> Option<RunEnd> {
    if let Some(pending) = signals::pending() {
        return Some(RunEnd::from_signal(pending, session.timeout));
    }
    let regs = &mut ctx.uc_mcontext.gregs;
    let rip = regs[libc::REG_RIP as usize] as u64;
    // A privileged instruction or an `out` raises #GP, which Linux delivers as SIGSEGV with
    // SI_KERNEL.
    if sig == libc::SIGSEGV && si_code == libc::SI_KERNEL && in_guest {
        let mut code = [0u8; decode::MAX_LEN];
        let n = session.calls.ram.read_code(rip, &mut code);
        if let Some(insn) = decode::decode(&code[..n]) {
            let resumes = match emulate(session, regs, insn, fs_slot) {
                Emulated::Resume => {
                    regs[libc::REG_RIP as usize] = regs[libc::REG_RIP as usize].wrapping_add(insn.len as i64);
                    true
                }
                Emulated::Jumped => true,
                Emulated::End(end) => return Some(end),
                Emulated::Fault => false,
            };
            if resumes {
                // A signal that ends the run and came while tender's code ran (a hypercall, the
                // ring's SIGUSR1 after a kick) only recorded itself: land now, or a guest that
                // makes no further hypercall would run on until the watchdog's grace ends.
                return signals::pending().map(|sig| RunEnd::from_signal(sig, session.timeout));
            }
        }
    }
    // A CPU exception: the run ends as a guest-rt abort on one does under KVM.
    let frame = TrapFrame {
        cr2: ctx.uc_mcontext.gregs[libc::REG_CR2 as usize] as u64,
        error_code: ctx.uc_mcontext.gregs[libc::REG_ERR as usize] as u64,
        rip,
        cs: ctx.uc_mcontext.gregs[libc::REG_CSGSFS as usize] as u64 & 0xffff,
        rflags: ctx.uc_mcontext.gregs[libc::REG_EFL as usize] as u64,
        rsp: ctx.uc_mcontext.gregs[libc::REG_RSP as usize] as u64,
        // CSGSFS holds SS in its top 16 bits (Linux 4.14 and later).
        ss: ctx.uc_mcontext.gregs[libc::REG_CSGSFS as usize] as u64 >> 48,
    };
    let vector = ctx.uc_mcontext.gregs[libc::REG_TRAPNO as usize] as u64;
    Some(RunEnd::Halted { status: SOLO5_EXIT_ABORT, trap: Some(Trap { frame, vector: Some(vector) }) })
}

/// The general registers of a signal context.
type Regs = [libc::greg_t; 23];

/// What [`emulate`] did.
enum Emulated {
    /// Resume after the instruction.
    Resume,
    /// Resume where the instruction went (RIP already set).
    Jumped,
    /// The run ends.
    End(RunEnd),
    /// The instruction faults as it would at CPL 0: the guest's CPU exception.
    Fault,
}

/// `IA32_FS_BASE`, the only MSR a guest may write.
const MSR_FS_BASE: u32 = 0xC000_0100;
/// What `lretq` pops: RIP, then CS (not used: the process has one code segment).
const FAR_RETURN_FRAME: u64 = 16;

/// Emulates `insn`, which trapped at the guest's RIP: `out` (hypercalls and the ring's kick),
/// `in` (refused), and the privileged instructions of Solo5's start and exit
/// (docs/PROCESS_MODE.md, Solo5 guests). `fs_slot` is the FS base the guest resumes with.
fn emulate(session: &mut Session<'_>, regs: &mut Regs, insn: Insn, fs_slot: *mut u64) -> Emulated {
    let port_of = |port: Port, regs: &Regs| match port {
        Port::Dx => regs[libc::REG_RDX as usize] as u16,
        Port::Imm(p) => u16::from(p),
    };
    match insn.op {
        Op::Out { port, size } => {
            let port = port_of(port, regs);
            let value = (regs[libc::REG_RAX as usize] as u32).to_le_bytes();
            match out(session, port, &value[..size]) {
                None => Emulated::Resume,
                Some(end) => Emulated::End(end),
            }
        }
        Op::In { port, size } => {
            let error = GuestError::Port { port: port_of(port, regs), size, direction: "in" };
            Emulated::End(RunEnd::GuestError { error, rip: session.rip })
        }
        Op::Wrmsr => {
            let value = (regs[libc::REG_RDX as usize] as u64) << 32 | u64::from(regs[libc::REG_RAX as usize] as u32);
            // A non-canonical base is a #GP under KVM too (and `wrfsbase` would fault on the
            // way out of the handler).
            let canonical = ((value << 16) as i64 >> 16) as u64 == value;
            if regs[libc::REG_RCX as usize] as u32 != MSR_FS_BASE || !canonical {
                return Emulated::Fault;
            }
            // SAFETY: `fs_slot` is the prologue's slot on this handler's stack frame.
            unsafe { fs_slot.write(value) };
            Emulated::Resume
        }
        Op::LoadDescriptorTable | Op::MovToSegment => Emulated::Resume,
        Op::FarReturn => {
            // Pop RIP and CS (ignored) from the guest's stack, which must lie in guest memory.
            let rsp = regs[libc::REG_RSP as usize] as u64;
            let mut frame = [0u8; FAR_RETURN_FRAME as usize];
            let read = session.calls.ram.slice(rsp, FAR_RETURN_FRAME).map(|s| s.copy_to(&mut frame[..]));
            if !matches!(read, Ok(n) if n == frame.len()) {
                return Emulated::Fault;
            }
            let mut target = [0u8; 8];
            target.copy_from_slice(&frame[..8]);
            regs[libc::REG_RIP as usize] = u64::from_le_bytes(target) as i64;
            regs[libc::REG_RSP as usize] = (rsp + FAR_RETURN_FRAME) as i64;
            Emulated::Jumped
        }
    }
}

/// An `out` of `data` to `port`: the ring's kick, or a hypercall through the same dispatch as
/// the KVM loop. `None`: resume after it.
fn out(session: &mut Session<'_>, port: u16, data: &[u8]) -> Option<RunEnd> {
    let rip = session.rip;
    if let (NET_RING_KICK_PORT, 4, Some(fd)) = (port, data.len(), session.kick_fd) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local buffer to the ring's eventfd, as KVM's ioeventfd
        // would; a failure (the counter full) still leaves the thread awake.
        let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        return None;
    }
    let result =
        decode_out(port, data).map_err(HypercallError::Guest).and_then(|(nr, gpa)| session.calls.dispatch(nr, gpa));
    match result {
        Ok(Next::Resume) => signals::pending().map(|sig| RunEnd::from_signal(sig, session.timeout)),
        Ok(Next::Halt(status, trap)) => Some(RunEnd::Halted { status, trap }),
        Err(HypercallError::Guest(error)) => Some(RunEnd::GuestError { error, rip }),
        // Only a signal interrupts a hypercall.
        Err(HypercallError::Interrupted) => {
            Some(RunEnd::from_signal(signals::pending().unwrap_or(libc::SIGINT), session.timeout))
        }
        Err(e) => Some(RunEnd::HostError(e.to_string())),
    }
}

/// Ends the run: `rt_sigreturn` will resume `tender_landing` on tender's stack, with tender's FS
/// base and no signal blocked.
fn land(session: &mut Session<'_>, ctx: &mut libc::ucontext_t, fs_slot: *mut u64, end: RunEnd) {
    session.end = Some(end);
    LANDED.store(true, Ordering::SeqCst);
    // SAFETY: `fs_slot` is the prologue's slot on this handler's stack frame.
    session.last = GuestState { gregs: ctx.uc_mcontext.gregs, fs_base: unsafe { fs_slot.read() } };
    let regs = &mut ctx.uc_mcontext.gregs;
    regs[libc::REG_RIP as usize] = tender_landing as *const () as usize as i64;
    regs[libc::REG_RSP as usize] = SAVED_RSP.load(Ordering::SeqCst) as i64;
    regs[libc::REG_EFL as usize] = LANDING_RFLAGS;
    // SAFETY: `fs_slot` is the prologue's slot on this handler's stack frame.
    unsafe { fs_slot.write(TENDER_FS.load(Ordering::SeqCst)) };
    // SAFETY: sigemptyset writes the mask it is given.
    unsafe { libc::sigemptyset(&mut ctx.uc_sigmask) };
}
