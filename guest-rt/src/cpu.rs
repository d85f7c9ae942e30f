//! The privileged CPU structures: identity page tables with the user bit, GDT, TSS (with the I/O
//! permission bitmap that opens the hypercall ports to CPL 3) and IDT.
//!
//! Everything is built at compile time: each instruction the entry code runs at CPL 0 costs about
//! a microsecond on a nested (emulating) host, so `_start` only patches in what the compiler cannot
//! know (the TSS address and stacks) and cuts the memory map at `mem_size`. The structures live in
//! the `.data.guest_rt.priv*` sections, which the linker script places first in the data segment
//! (inside PT0's 4 KiB pages) so that `_start` can take their user bit away.

use core::mem::offset_of;
use core::ptr;

use guest_abi::{
    BOOT_GDT_CODE_SEL, BOOT_GDT_DATA_SEL, BOOT_INFO_GPA, GUEST_MIN_BASE, Hypercall, MEM_ALIGN, MEM_MAX,
    NET_RING_KICK_PORT, PTE_PRESENT, PTE_PS, PTE_RW, PTE_USER, TENDER_DEBUG_PORT,
};

pub(crate) const PAGE_SIZE: u64 = 0x1000;
const TABLE_ENTRIES: usize = 512;
/// One page directory per GiB, 2 MiB pages: the 4 GiB maximum of guest memory.
pub(crate) const PD_ENTRIES: usize = (MEM_MAX / MEM_ALIGN) as usize;
const PD_PAGES: usize = PD_ENTRIES / TABLE_ENTRIES;

/// The boot GDT's kernel selectors stay valid in ours, so CS never has to be reloaded at CPL 0.
pub(crate) const KERNEL_CS: u16 = BOOT_GDT_CODE_SEL;
pub(crate) const USER_DS: u16 = 0x18 | 3;
pub(crate) const USER_CS: u16 = 0x20 | 3;
pub(crate) const TSS_SEL: u16 = 0x28;

/// Number of CPU exception vectors the IDT covers.
pub(crate) const TRAP_VECTORS: usize = 32;
/// The trap stubs sit at the very start of the image, one every `TRAP_STUB_SIZE` bytes, so that the
/// IDT can be a compile-time constant. The linker script asserts the address.
pub(crate) const TRAP_STUBS_GPA: u64 = GUEST_MIN_BASE;
pub(crate) const TRAP_STUB_SIZE: u64 = 16;
/// IST slot (1-based) of the exception stack: every exception switches to it, whatever the CPL.
const TRAP_IST: u64 = 1;

/// An entry of any paging level. It is a pointer so that entries pointing at the next table can be
/// written at compile time (the linker fills in the address); frame entries carry no provenance.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct Pte(*const u8);

#[repr(C, align(4096))]
pub(crate) struct Table<const N: usize>(pub(crate) [Pte; N]);

/// A page-table entry pointing at a lower-level table.
const fn table_entry<T>(table: *const T, offset: usize) -> Pte {
    Pte(table.cast::<u8>().wrapping_add(offset + (PTE_PRESENT | PTE_RW | PTE_USER) as usize))
}

const fn frame_entry(addr: u64, flags: u64) -> Pte {
    Pte(ptr::without_provenance((addr | flags) as usize))
}

const fn pml4(pdpt: *const Table<TABLE_ENTRIES>) -> Table<TABLE_ENTRIES> {
    let mut t = [frame_entry(0, 0); TABLE_ENTRIES];
    t[0] = table_entry(pdpt, 0);
    Table(t)
}

const fn pdpt(pd: *const Table<PD_ENTRIES>) -> Table<TABLE_ENTRIES> {
    let mut t = [frame_entry(0, 0); TABLE_ENTRIES];
    let mut i = 0;
    while i < PD_PAGES {
        t[i] = table_entry(pd, i * PAGE_SIZE as usize);
        i += 1;
    }
    Table(t)
}

/// All of the 4 GiB as 2 MiB user pages, except the first 2 MiB, which PT0 maps in 4 KiB pages.
/// `_start` cuts everything from `mem_size` on (but the shared ring).
const fn pd(pt0: *const Table<TABLE_ENTRIES>) -> Table<PD_ENTRIES> {
    let mut t = [frame_entry(0, 0); PD_ENTRIES];
    t[0] = table_entry(pt0, 0);
    let mut i = 1;
    while i < PD_ENTRIES {
        t[i] = frame_entry(i as u64 * MEM_ALIGN, PTE_PRESENT | PTE_RW | PTE_USER | PTE_PS);
        i += 1;
    }
    Table(t)
}

/// The first 2 MiB: nothing below the boot info (null pointers fault), the boot info, manifest and
/// command line read-only, the image read-write. `_start` takes the user bit away from the pages
/// holding these privileged structures.
pub(crate) const fn pt0() -> Table<TABLE_ENTRIES> {
    let mut t = [frame_entry(0, 0); TABLE_ENTRIES];
    let mut i = 0;
    while i < TABLE_ENTRIES {
        let addr = i as u64 * PAGE_SIZE;
        t[i] = if addr < BOOT_INFO_GPA {
            frame_entry(0, 0)
        } else if addr < GUEST_MIN_BASE {
            frame_entry(addr, PTE_PRESENT | PTE_USER)
        } else {
            frame_entry(addr, PTE_PRESENT | PTE_RW | PTE_USER)
        };
        i += 1;
    }
    Table(t)
}

// ---------------------------------------------------------------------------------------------
// GDT
// ---------------------------------------------------------------------------------------------

/// Code and data descriptors with the accessed bit preset, so the CPU never writes them.
const GDT_KERNEL_CODE64: u64 = 0x00AF_9B00_0000_FFFF;
const GDT_KERNEL_DATA: u64 = 0x00CF_9300_0000_FFFF;
const GDT_USER_DATA: u64 = 0x00CF_F300_0000_FFFF;
const GDT_USER_CODE64: u64 = 0x00AF_FB00_0000_FFFF;
/// Present, DPL 0, available 64-bit TSS.
const GDT_TSS_TYPE: u64 = 0x89 << 40;

pub(crate) const GDT_ENTRIES: usize = 7;

/// The TSS descriptor lacks its base: `_start` ORs in `tss_address << 16`, which is exact because
/// the linker script keeps the TSS below 16 MiB (base bits 24..63 stay zero).
pub(crate) const fn gdt() -> [u64; GDT_ENTRIES] {
    let mut g = [0; GDT_ENTRIES];
    g[(KERNEL_CS / 8) as usize] = GDT_KERNEL_CODE64;
    g[(BOOT_GDT_DATA_SEL / 8) as usize] = GDT_KERNEL_DATA;
    g[(USER_DS / 8) as usize] = GDT_USER_DATA;
    g[(USER_CS / 8) as usize] = GDT_USER_CODE64;
    g[(TSS_SEL / 8) as usize] = TSS_LIMIT as u64 | GDT_TSS_TYPE;
    g
}

// ---------------------------------------------------------------------------------------------
// TSS and I/O permission bitmap
// ---------------------------------------------------------------------------------------------

/// The bitmap must reach the last byte of the highest open port (a 4-byte `outl`).
const IO_PORT_END: usize = TENDER_DEBUG_PORT as usize + 4;
const IO_BITMAP_BYTES: usize = IO_PORT_END.div_ceil(8);

#[repr(C, packed(4))]
pub(crate) struct Tss {
    _reserved0: u32,
    pub(crate) rsp: [u64; 3],
    _reserved1: u64,
    pub(crate) ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    io_map_base: u16,
    /// One bit per port, 1 = closed, then the 0xFF byte the CPU may read past the last port.
    io_bitmap: [u8; IO_BITMAP_BYTES + 1],
}

/// Up to and including the terminating byte of the bitmap (not the struct's tail padding).
pub(crate) const TSS_LIMIT: usize = offset_of!(Tss, io_bitmap) + IO_BITMAP_BYTES;
pub(crate) const TSS_RSP0: usize = offset_of!(Tss, rsp);
pub(crate) const TSS_IST1: usize = offset_of!(Tss, ist) + (TRAP_IST as usize - 1) * 8;

/// Opens exactly the bytes an `outl` touches on each hypercall port, on the net-ring kick port and
/// on tender's debug port (used only when a debugger is attached: the tender refuses it otherwise).
pub(crate) const fn io_bitmap() -> [u8; IO_BITMAP_BYTES + 1] {
    const fn open(map: &mut [u8; IO_BITMAP_BYTES + 1], port: u16) {
        let mut p = port as usize;
        while p < port as usize + 4 {
            map[p / 8] &= !(1 << (p % 8));
            p += 1;
        }
    }
    let mut map = [0xFF; IO_BITMAP_BYTES + 1];
    let mut nr = 0;
    while nr < Hypercall::COUNT {
        if let Some(hc) = Hypercall::from_nr(nr) {
            open(&mut map, hc.port());
        }
        nr += 1;
    }
    open(&mut map, NET_RING_KICK_PORT);
    open(&mut map, TENDER_DEBUG_PORT);
    map
}

/// The stack fields are filled in by `_start` (their addresses are link-time values).
pub(crate) const fn tss() -> Tss {
    Tss {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        io_map_base: offset_of!(Tss, io_bitmap) as u16,
        io_bitmap: io_bitmap(),
    }
}

// ---------------------------------------------------------------------------------------------
// IDT
// ---------------------------------------------------------------------------------------------

/// Present, DPL 0, 64-bit interrupt gate.
const IDT_INTERRUPT_GATE: u64 = 0x8E;

const fn gate(handler: u64) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | (KERNEL_CS as u64) << 16
        | TRAP_IST << 32
        | IDT_INTERRUPT_GATE << 40
        | ((handler >> 16) & 0xFFFF) << 48;
    [low, handler >> 32]
}

pub(crate) const fn idt() -> [[u64; 2]; TRAP_VECTORS] {
    let mut idt = [[0; 2]; TRAP_VECTORS];
    let mut v = 0;
    while v < TRAP_VECTORS {
        idt[v] = gate(TRAP_STUBS_GPA + v as u64 * TRAP_STUB_SIZE);
        v += 1;
    }
    idt
}

// ---------------------------------------------------------------------------------------------
// The statics themselves (only in the guest: a host test binary has no use for them)
// ---------------------------------------------------------------------------------------------

#[cfg(not(test))]
pub(crate) use statics::*;

#[cfg(not(test))]
mod statics {
    use super::*;

    #[unsafe(link_section = ".data.guest_rt.priv.pt")]
    pub(crate) static mut PML4: Table<TABLE_ENTRIES> = pml4(&raw const PDPT);
    #[unsafe(link_section = ".data.guest_rt.priv.pt")]
    static mut PDPT: Table<TABLE_ENTRIES> = pdpt(&raw const PD);
    #[unsafe(link_section = ".data.guest_rt.priv.pt")]
    pub(crate) static mut PD: Table<PD_ENTRIES> = pd(&raw const PT0);
    #[unsafe(link_section = ".data.guest_rt.priv.pt")]
    pub(crate) static mut PT0: Table<TABLE_ENTRIES> = pt0();

    /// Written by the CPU (TSS busy bit), hence writable.
    #[unsafe(link_section = ".data.guest_rt.priv")]
    pub(crate) static mut GDT: [u64; GDT_ENTRIES] = gdt();
    #[unsafe(link_section = ".data.guest_rt.priv")]
    pub(crate) static mut TSS: Tss = tss();
    #[unsafe(link_section = ".data.guest_rt.priv")]
    pub(crate) static IDT: [[u64; 2]; TRAP_VECTORS] = idt();

    /// The CPL 0 stack of the trap stubs: they only store the hardware frame and `iretq` away.
    pub(crate) const EXCEPTION_STACK_SIZE: usize = 1024;
    #[repr(C, align(16))]
    pub(crate) struct ExceptionStack(pub(crate) [u8; EXCEPTION_STACK_SIZE]);
    #[unsafe(link_section = ".data.guest_rt.priv")]
    pub(crate) static mut EXCEPTION_STACK: ExceptionStack = ExceptionStack([0; EXCEPTION_STACK_SIZE]);
}

// Compile-time facts the entry assembly relies on.
const _: () = {
    assert!(offset_of!(Tss, io_bitmap) == 104);
    assert!(offset_of!(Tss, ist) == 36);
    assert!(PD_PAGES == 4);
    assert!((TRAP_VECTORS as u64 * TRAP_STUB_SIZE) < 0x1_0000);
};

#[cfg(test)]
mod tests {
    use super::*;

    fn port_open(map: &[u8], port: usize) -> bool {
        map[port / 8] & (1 << (port % 8)) == 0
    }

    #[test]
    fn io_bitmap_opens_exactly_the_hypercall_kick_and_debug_ports() {
        let map = io_bitmap();
        assert_eq!(map.len(), 0xC1 + 1);
        assert_eq!(*map.last().unwrap(), 0xFF);
        let open: Vec<usize> = (0..IO_BITMAP_BYTES * 8).filter(|&p| port_open(&map, p)).collect();
        let expected: Vec<usize> = (0x501..=0x50B).chain(0x600..=0x607).collect();
        assert_eq!(open, expected);
    }

    #[test]
    fn pt0_layout() {
        let t = pt0();
        let e = |addr: u64| t.0[(addr / PAGE_SIZE) as usize].0 as u64;
        assert_eq!(e(0), 0);
        assert_eq!(e(0xF000), 0);
        assert_eq!(e(0x10000), 0x10000 | PTE_PRESENT | PTE_USER);
        assert_eq!(e(0xFF000), 0xFF000 | PTE_PRESENT | PTE_USER);
        assert_eq!(e(0x100000), 0x100000 | PTE_PRESENT | PTE_RW | PTE_USER);
        assert_eq!(e(0x1FF000), 0x1FF000 | PTE_PRESENT | PTE_RW | PTE_USER);
    }

    #[test]
    fn pd_maps_2mib_user_pages() {
        let t = pd(ptr::null());
        assert_eq!(t.0[0].0 as u64, PTE_PRESENT | PTE_RW | PTE_USER);
        assert_eq!(t.0[1].0 as u64, 0x20_0000 | PTE_PRESENT | PTE_RW | PTE_USER | PTE_PS);
        assert_eq!(t.0[PD_ENTRIES - 1].0 as u64, 0xFFE0_0000 | PTE_PRESENT | PTE_RW | PTE_USER | PTE_PS);
    }

    #[test]
    fn idt_gate_points_at_the_stub() {
        let g = idt()[14];
        let handler = (g[0] & 0xFFFF) | ((g[0] >> 48) << 16) | (g[1] << 32);
        assert_eq!(handler, 0x100000 + 14 * 16);
        assert_eq!((g[0] >> 16) & 0xFFFF, 0x08);
        assert_eq!((g[0] >> 32) & 0x7, 1);
        assert_eq!((g[0] >> 40) & 0xFF, 0x8E);
    }

    #[test]
    fn gdt_selectors() {
        let g = gdt();
        assert_eq!(g[0], 0);
        assert_eq!(g[1], GDT_KERNEL_CODE64);
        assert_eq!((g[3] >> 45) & 3, 3, "user data is DPL 3");
        assert_eq!((g[4] >> 45) & 3, 3, "user code is DPL 3");
        assert_eq!(g[5] & 0xFFFF, TSS_LIMIT as u64);
        assert_eq!(g[6], 0);
    }
}
