//! The entry point: `_start` runs at CPL 0 exactly as the hvt tender starts the vCPU, installs the
//! runtime's own CPU structures, and drops to CPL 3 into [`rt_start`], which runs everything else.
//!
//! The CPL 0 part is assembly and as short as it can be: on a nested KVM-PVM host every CPL 0
//! instruction is emulated (~1 µs each) and SSE arithmetic at CPL 0 kills the VM, so no compiled
//! Rust may run before the `iretq`.

use core::sync::atomic::{AtomicPtr, Ordering};

use guest_abi::BootInfo;

/// Set once by [`rt_start`], before `main`.
static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());

/// The boot info the tender left at `BOOT_INFO_GPA`; the page stays mapped read-only.
pub(crate) fn boot_info() -> &'static BootInfo {
    let p = BOOT_INFO.load(Ordering::Relaxed);
    assert!(!p.is_null(), "boot info used before boot");
    // SAFETY: set by `rt_start` from the pointer the tender passed; the tender's boot info lives
    // in a page that stays mapped and is never written again.
    unsafe { &*p }
}

#[cfg(not(test))]
mod entry {
    use core::mem::offset_of;

    use guest_abi::{BootInfo, MEM_ALIGN, NET_RING_AREA_SIZE, PTE_USER, TENDER_FEATURE_PROCESS, X86_RFLAGS_INIT};

    use crate::cpu;

    unsafe extern "Rust" {
        /// The application's `main`, exported by [`crate::unikernel!`].
        safe fn __guest_rt_main() -> i32;
    }

    /// The first Rust code, at CPL 3 on the initial stack (`mem_size - 8`).
    extern "C" fn rt_start(boot: *mut BootInfo) -> ! {
        super::BOOT_INFO.store(boot, core::sync::atomic::Ordering::Relaxed);
        let info = super::boot_info();
        if info.host_features & guest_abi::TENDER_FEATURE_DEBUG != 0 {
            crate::trap::register_debug();
        }
        crate::time::init(info.cpu_cycle_freq);
        crate::heap::init(info.mem_size);
        crate::exit(__guest_rt_main())
    }

    // RDI = boot info, RSP = mem_size - 8, CS = 0x08 (which our GDT keeps), interrupts off.
    // Under tender's process mode the guest is at CPL 3 already, with nothing to build: straight
    // to `rt_start`, on the same stack and with the same alignment as after the `iretq`.
    core::arch::global_asm!(
        r#"
        .pushsection .text.guest_rt.start, "ax", @progbits
        .globl _start
        .type _start, @function
_start:
        testl ${process}, {host_features}(%rdi)
        jnz {rt_start}
        mov %rdi, %rbx
        mov %rsp, %rbp

        // Unmap everything from mem_size on (2 MiB PDEs), except the ring right there.
        mov {mem_size}(%rbx), %rcx
        cmpq $0, {net_ring}(%rbx)
        je 1f
        add ${ring_size}, %rcx
1:      shr ${pde_shift}, %rcx
        lea {pd}(%rip), %rdi
        lea (%rdi, %rcx, 8), %rdi
        neg %rcx
        add ${pd_entries}, %rcx
        xor %eax, %eax
        rep stosq

        // The pages of the privileged structures are not for CPL 3.
        lea __guest_rt_priv_start(%rip), %rax
        shr ${page_shift}, %rax
        lea __guest_rt_priv_end(%rip), %rcx
        shr ${page_shift}, %rcx
        lea {pt0}(%rip), %rdx
2:      andq ${no_user}, (%rdx, %rax, 8)
        inc %rax
        cmp %rcx, %rax
        jb 2b

        lea {exc_stack}+{exc_stack_size}(%rip), %rax
        mov %rax, {tss}+{tss_rsp0}(%rip)
        mov %rax, {tss}+{tss_ist1}(%rip)
        lea {tss}(%rip), %rax
        shl $16, %rax
        or %rax, {gdt}+{tss_sel}(%rip)
        lgdt __guest_rt_gdtr(%rip)
        mov ${tss_sel}, %ax
        ltr %ax
        lidt __guest_rt_idtr(%rip)
        lea {pml4}(%rip), %rax
        mov %rax, %cr3

        // To CPL 3 on the same stack; `lretq` cannot change privilege on this host, `iretq` can.
        pushq ${user_ds}
        pushq %rbp
        pushq ${rflags}
        pushq ${user_cs}
        lea {rt_start}(%rip), %rax
        pushq %rax
        mov %rbx, %rdi
        iretq
        .size _start, . - _start
        .popsection

        .pushsection .rodata.guest_rt.descriptors, "a", @progbits
        .balign 8
__guest_rt_gdtr:
        .short {gdt_limit}
        .quad {gdt}
        .balign 8
__guest_rt_idtr:
        .short {idt_limit}
        .quad {idt}
        .popsection
        "#,
        mem_size = const offset_of!(BootInfo, mem_size),
        host_features = const offset_of!(BootInfo, host_features),
        process = const TENDER_FEATURE_PROCESS,
        net_ring = const offset_of!(BootInfo, net_ring),
        ring_size = const NET_RING_AREA_SIZE,
        pd_entries = const cpu::PD_ENTRIES,
        pde_shift = const MEM_ALIGN.trailing_zeros(),
        page_shift = const cpu::PAGE_SIZE.trailing_zeros(),
        no_user = const !PTE_USER as i64,
        tss_rsp0 = const cpu::TSS_RSP0,
        tss_ist1 = const cpu::TSS_IST1,
        tss_sel = const cpu::TSS_SEL,
        gdt_limit = const cpu::GDT_ENTRIES * 8 - 1,
        idt_limit = const cpu::TRAP_VECTORS * 16 - 1,
        user_ds = const cpu::USER_DS,
        user_cs = const cpu::USER_CS,
        rflags = const X86_RFLAGS_INIT,
        exc_stack_size = const cpu::EXCEPTION_STACK_SIZE,
        pd = sym cpu::PD,
        pt0 = sym cpu::PT0,
        pml4 = sym cpu::PML4,
        gdt = sym cpu::GDT,
        tss = sym cpu::TSS,
        idt = sym cpu::IDT,
        exc_stack = sym cpu::EXCEPTION_STACK,
        rt_start = sym rt_start,
        options(att_syntax)
    );
}
