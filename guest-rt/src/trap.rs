//! CPU exceptions: one-line report, then HALT with status 255 and the trap report as cookie.
//!
//! Each IDT gate points at a 16-byte stub (at a fixed address, see [`crate::cpu`]) that pushes
//! the vector (and a zero where the CPU pushes no error code). The common CPL 0 code stores the
//! hardware frame into [`TRAP_REPORT`] (in `.bss`: a HALT cookie must end below `mem_size`) and
//! `iretq`s to [`report_trap`] at CPL 3 on a stack of its own, since the faulting one may be the
//! culprit. A fault while reporting HALTs straight from CPL 0 with the first report.

/// Vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: u32 =
    1 << 8 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 17 | 1 << 21 | 1 << 29 | 1 << 30;

/// Vector number of a page fault, the one exception whose CR2 is meaningful.
const PAGE_FAULT: u64 = 14;

/// The mnemonic of an exception vector.
pub(crate) fn vector_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
        "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX",
        "#31",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("?")
}

/// Writes the report line, without its newline, into `out`.
pub(crate) fn format_report(out: &mut impl core::fmt::Write, r: &guest_abi::TrapReport) -> core::fmt::Result {
    let f = &r.frame;
    write!(
        out,
        "guest-rt: trap: vector={} ({}) error={:#x} rip={:#x}",
        r.vector,
        vector_name(r.vector),
        f.error_code,
        f.rip
    )?;
    if r.vector == PAGE_FAULT {
        write!(out, " addr={:#x}", f.cr2)?;
    }
    Ok(())
}

#[cfg(not(test))]
pub(crate) use handler::register_debug;

#[cfg(not(test))]
mod handler {
    use core::mem::offset_of;

    use guest_abi::{
        DEBUG_AREA_MAGIC, DEBUG_OP_REGISTER, DEBUG_OP_TRAP, DebugArea, HcHalt, Hypercall, SOLO5_EXIT_ABORT,
        TENDER_DEBUG_PORT, TRAP_REPORT_MAGIC, TrapFrame, TrapReport, X86_RFLAGS_INIT,
    };

    use crate::cpu;

    /// Read by the CPL 3 reporter and by the tender (HALT cookie), written only at CPL 0.
    static mut TRAP_REPORT: TrapReport = TrapReport {
        frame: TrapFrame { cr2: 0, error_code: 0, rip: 0, cs: 0, rflags: 0, rsp: 0, ss: 0 },
        magic: 0,
        vector: 0,
    };
    /// Non-zero once a trap is being reported.
    static mut TRAP_BUSY: u8 = 0;
    /// The HALT argument of a fault while reporting.
    static mut TRAP_HALT: HcHalt = HcHalt { cookie: 0, exit_status: 0, _pad: 0 };

    /// Where the #BP and #DB handlers save the interrupted context for the debugger (tender's
    /// debug extension). Not user-accessible memory would do too; plain `.bss` keeps it simple.
    static mut DEBUG_AREA: DebugArea = DebugArea {
        magic: 0,
        op: 0,
        vector: 0,
        cpl0_text_end: 0,
        gprs: [0; 15],
        rip: 0,
        cs: 0,
        rflags: 0,
        rsp: 0,
        ss: 0,
    };
    /// Non-zero once the debugger knows the area: #BP and #DB then go to it instead of aborting.
    static mut DEBUG_ON: u8 = 0;

    unsafe extern "C" {
        /// End of the code that runs at CPL 0 (the linker script puts it first).
        static __guest_rt_cpl0_text_end: u8;
    }

    /// Tells the debugger where the area is (only when the tender offers TENDER_FEATURE_DEBUG).
    pub(crate) fn register_debug() {
        let area = &raw mut DEBUG_AREA;
        // SAFETY: one CPL 3 thread; nothing else touches the area before DEBUG_ON is set.
        unsafe {
            (*area).magic = DEBUG_AREA_MAGIC;
            (*area).op = DEBUG_OP_REGISTER;
            (*area).cpl0_text_end = (&raw const __guest_rt_cpl0_text_end) as u64;
            core::arch::asm!("out dx, eax", in("dx") TENDER_DEBUG_PORT, in("eax") area as u64 as u32, options(nostack, preserves_flags));
            (&raw mut DEBUG_ON).write_volatile(1);
        }
    }

    const REPORT_STACK_SIZE: usize = 16 * 1024;
    #[repr(C, align(16))]
    struct ReportStack([u8; REPORT_STACK_SIZE]);
    static mut REPORT_STACK: ReportStack = ReportStack([0; REPORT_STACK_SIZE]);

    /// CPL 3, on `REPORT_STACK`.
    extern "C" fn report_trap() -> ! {
        // SAFETY: written once at CPL 0 before this runs; nothing writes it afterwards (a second
        // trap halts without touching it).
        let report = unsafe { (&raw const TRAP_REPORT).read_volatile() };
        let mut line = crate::console::LineBuffer::new();
        let _ = super::format_report(&mut line, &report);
        line.push(b"\n");
        line.flush();
        crate::hypercall::halt(SOLO5_EXIT_ABORT, (&raw const TRAP_REPORT) as u64)
    }

    const fn frame(field: usize) -> usize {
        offset_of!(TrapReport, frame) + field
    }

    core::arch::global_asm!(
        r#"
        .pushsection .text.guest_rt.trap_stubs, "ax", @progbits
        .globl __guest_rt_trap_stubs
__guest_rt_trap_stubs:
        .set .Lvec, 0
        .rept {vectors}
        .org __guest_rt_trap_stubs + .Lvec * {stub_size}, 0xCC
        .if (({error_vectors} >> .Lvec) & 1) == 0
        pushq $0
        .endif
        pushq $.Lvec
        jmp __guest_rt_trap_common
        .set .Lvec, .Lvec + 1
        .endr
        .org __guest_rt_trap_stubs + {vectors} * {stub_size}, 0xCC

__guest_rt_trap_common:
        cmpb $0, {debug_on}(%rip)
        je 4f
        cmpq $1, (%rsp)
        je __guest_rt_debug_trap
        cmpq $3, (%rsp)
        je __guest_rt_debug_trap
4:      cmpb $0, {busy}(%rip)
        jne 1f
        movb $1, {busy}(%rip)
        lea {report}(%rip), %rdi
        popq {vector}(%rdi)
        popq {error_code}(%rdi)
        popq {rip}(%rdi)
        popq {cs}(%rdi)
        popq {rflags}(%rdi)
        popq {rsp}(%rdi)
        popq {ss}(%rdi)
        mov %cr2, %rax
        mov %rax, {cr2}(%rdi)
        movabs ${magic}, %rax
        mov %rax, {magic_off}(%rdi)

        pushq ${user_ds}
        lea {stack}+{stack_size}(%rip), %rax
        pushq %rax
        pushq ${rflags_init}
        pushq ${user_cs}
        lea {reporter}(%rip), %rax
        pushq %rax
        iretq

        // #BP or #DB with a debugger attached: save the context, report, return to what the
        // debugger left in the area (it may have moved rip back over the int3, or set TF).
__guest_rt_debug_trap:
        mov %rax, {dbg}+{g0}(%rip)
        mov %rbx, {dbg}+{g0}+8(%rip)
        mov %rcx, {dbg}+{g0}+16(%rip)
        mov %rdx, {dbg}+{g0}+24(%rip)
        mov %rsi, {dbg}+{g0}+32(%rip)
        mov %rdi, {dbg}+{g0}+40(%rip)
        mov %rbp, {dbg}+{g0}+48(%rip)
        mov %r8, {dbg}+{g0}+56(%rip)
        mov %r9, {dbg}+{g0}+64(%rip)
        mov %r10, {dbg}+{g0}+72(%rip)
        mov %r11, {dbg}+{g0}+80(%rip)
        mov %r12, {dbg}+{g0}+88(%rip)
        mov %r13, {dbg}+{g0}+96(%rip)
        mov %r14, {dbg}+{g0}+104(%rip)
        mov %r15, {dbg}+{g0}+112(%rip)
        popq {dbg}+{dvector}(%rip)
        add $8, %rsp
        popq {dbg}+{drip}(%rip)
        popq {dbg}+{dcs}(%rip)
        popq {dbg}+{drflags}(%rip)
        popq {dbg}+{drsp}(%rip)
        popq {dbg}+{dss}(%rip)
        movq ${op_trap}, {dbg}+{dop}(%rip)
        lea {dbg}(%rip), %rax
        mov ${debug_port}, %dx
        outl %eax, %dx
        pushq {dbg}+{dss}(%rip)
        pushq {dbg}+{drsp}(%rip)
        pushq {dbg}+{drflags}(%rip)
        pushq {dbg}+{dcs}(%rip)
        pushq {dbg}+{drip}(%rip)
        mov {dbg}+{g0}(%rip), %rax
        mov {dbg}+{g0}+8(%rip), %rbx
        mov {dbg}+{g0}+16(%rip), %rcx
        mov {dbg}+{g0}+24(%rip), %rdx
        mov {dbg}+{g0}+32(%rip), %rsi
        mov {dbg}+{g0}+40(%rip), %rdi
        mov {dbg}+{g0}+48(%rip), %rbp
        mov {dbg}+{g0}+56(%rip), %r8
        mov {dbg}+{g0}+64(%rip), %r9
        mov {dbg}+{g0}+72(%rip), %r10
        mov {dbg}+{g0}+80(%rip), %r11
        mov {dbg}+{g0}+88(%rip), %r12
        mov {dbg}+{g0}+96(%rip), %r13
        mov {dbg}+{g0}+104(%rip), %r14
        mov {dbg}+{g0}+112(%rip), %r15
        iretq

1:      lea {halt}(%rip), %rax
        lea {report}(%rip), %rdx
        mov %rdx, {halt_cookie}(%rax)
        movl ${abort}, {halt_status}(%rax)
        mov ${halt_port}, %dx
        outl %eax, %dx
2:      jmp 2b
        .popsection
        "#,
        vectors = const cpu::TRAP_VECTORS,
        stub_size = const cpu::TRAP_STUB_SIZE,
        error_vectors = const super::ERROR_CODE_VECTORS,
        vector = const offset_of!(TrapReport, vector),
        error_code = const frame(offset_of!(TrapFrame, error_code)),
        rip = const frame(offset_of!(TrapFrame, rip)),
        cs = const frame(offset_of!(TrapFrame, cs)),
        rflags = const frame(offset_of!(TrapFrame, rflags)),
        rsp = const frame(offset_of!(TrapFrame, rsp)),
        ss = const frame(offset_of!(TrapFrame, ss)),
        cr2 = const frame(offset_of!(TrapFrame, cr2)),
        magic = const TRAP_REPORT_MAGIC,
        magic_off = const offset_of!(TrapReport, magic),
        user_ds = const cpu::USER_DS,
        user_cs = const cpu::USER_CS,
        rflags_init = const X86_RFLAGS_INIT,
        stack_size = const REPORT_STACK_SIZE,
        halt_cookie = const offset_of!(HcHalt, cookie),
        halt_status = const offset_of!(HcHalt, exit_status),
        abort = const SOLO5_EXIT_ABORT,
        halt_port = const Hypercall::Halt.port(),
        busy = sym TRAP_BUSY,
        debug_on = sym DEBUG_ON,
        dbg = sym DEBUG_AREA,
        g0 = const offset_of!(DebugArea, gprs),
        dvector = const offset_of!(DebugArea, vector),
        dop = const offset_of!(DebugArea, op),
        drip = const offset_of!(DebugArea, rip),
        dcs = const offset_of!(DebugArea, cs),
        drflags = const offset_of!(DebugArea, rflags),
        drsp = const offset_of!(DebugArea, rsp),
        dss = const offset_of!(DebugArea, ss),
        op_trap = const DEBUG_OP_TRAP,
        debug_port = const TENDER_DEBUG_PORT,
        report = sym TRAP_REPORT,
        halt = sym TRAP_HALT,
        stack = sym REPORT_STACK,
        reporter = sym report_trap,
        options(att_syntax)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::{TrapFrame, TrapReport};

    #[test]
    fn report_line() {
        let mut r = TrapReport { frame: TrapFrame::default(), magic: 0, vector: 14 };
        r.frame.error_code = 4;
        r.frame.rip = 0x1012ab;
        r.frame.cr2 = 8;
        let mut s = String::new();
        format_report(&mut s, &r).unwrap();
        assert_eq!(s, "guest-rt: trap: vector=14 (#PF) error=0x4 rip=0x1012ab addr=0x8");
        r.vector = 13;
        s.clear();
        format_report(&mut s, &r).unwrap();
        assert_eq!(s, "guest-rt: trap: vector=13 (#GP) error=0x4 rip=0x1012ab");
    }

    #[test]
    fn error_code_vectors() {
        for v in [8, 10, 11, 12, 13, 14, 17, 21, 29, 30] {
            assert_ne!(ERROR_CODE_VECTORS & (1 << v), 0);
        }
        assert_eq!(ERROR_CODE_VECTORS.count_ones(), 10);
        assert_eq!(vector_name(6), "#UD");
        assert_eq!(vector_name(99), "?");
    }
}
