//! The guest's initial memory: loaded segments, boot GDT, page tables, boot info, manifest and
//! command line, laid out exactly as ABI sections 3, 4 and 6 say.

use guest_abi::{
    BOOT_GDT_ENTRIES, BOOT_GDT_GPA, BOOT_INFO_GPA, BOOT_PD_GPA, BOOT_PDPT_GPA, BOOT_PML4_GPA, BOOT_PT0_GPA, BootInfo,
    CMDLINE_SIZE, GUEST_MIN_BASE, MEM_ALIGN, PTE_PRESENT, PTE_PS, PTE_RW,
};

use crate::elf::Kernel;
use crate::manifest::Manifest;
use crate::memory::{GuestRam, MemoryError};

/// First GPA the guest may see: everything below it stays unmapped so null pointers fault.
const LOW_UNMAPPED_END: u64 = BOOT_INFO_GPA;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Guest command line too long (max={} characters)", CMDLINE_SIZE - 1)]
    CmdlineTooLong,
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Where the boot-time structures ended up: the boot info, to be written by [`write_boot_info`]
/// once the ring's fields are known.
pub struct BootLayout {
    pub boot_info: BootInfo,
}

/// Copies the kernel image in and protects its read-only segments on the host; with `exec`
/// (process mode, where the guest runs from this mapping) its text becomes executable.
pub fn load_kernel(ram: &mut GuestRam, kernel: &Kernel, image: &[u8], exec: bool) -> Result<(), MemoryError> {
    for seg in &kernel.segments {
        // Bounds were checked by the ELF validation; `get` keeps this panic-free regardless.
        let bytes = image.get(seg.file_offset..seg.file_offset + seg.file_size).ok_or(MemoryError::Setup(seg.vaddr))?;
        // The rest of the segment up to p_memsz is already zero: guest RAM starts zeroed.
        ram.write_setup(seg.vaddr, bytes)?;
    }
    for seg in kernel.segments.iter().filter(|s| !s.writable) {
        ram.protect_read_only(seg.start, seg.end, exec && seg.executable)?;
    }
    Ok(())
}

/// Joins the guest arguments with single spaces, as solo5-hvt does, and checks the size.
pub fn guest_cmdline(args: &[String]) -> Result<Vec<u8>, BootError> {
    let joined = args.join(" ");
    if joined.len() >= CMDLINE_SIZE {
        return Err(BootError::CmdlineTooLong);
    }
    Ok(joined.into_bytes())
}

/// Writes page tables and the boot GDT (for a VM: a process-mode guest has neither, and no
/// memory below the boot info), the manifest and the command line; returns the boot info for
/// [`write_boot_info`], without the ring (`net_ring` and `host_features` zero).
pub fn write_low_memory(
    ram: &GuestRam,
    kernel: &Kernel,
    manifest: &Manifest,
    cmdline: &[u8],
    tsc_hz: u64,
) -> Result<BootLayout, BootError> {
    if ram.base() == 0 {
        write_page_tables(ram)?;
        let gdt: Vec<u8> = BOOT_GDT_ENTRIES.iter().flat_map(|d| d.to_le_bytes()).collect();
        ram.write_setup(BOOT_GDT_GPA, &gdt)?;
    }

    let mft_gpa = BOOT_INFO_GPA + size_of::<BootInfo>() as u64;
    let mft = manifest.to_guest_bytes();
    let cmdline_gpa = mft_gpa + mft.len() as u64;
    ram.write_setup(mft_gpa, &mft)?;
    // The buffer is zero already, so the NUL terminator is there.
    ram.write_setup(cmdline_gpa, cmdline)?;

    let boot_info = BootInfo {
        mem_size: ram.limit(),
        kernel_end: kernel.kernel_end,
        cpu_cycle_freq: tsc_hz,
        cmdline: cmdline_gpa,
        mft: mft_gpa,
        host_features: 0,
        guest_features: 0,
        net_ring: 0,
    };
    Ok(BootLayout { boot_info })
}

/// Writes the boot info, once the ring's start is known: `net_ring` is its GPA and
/// `host_features` its feature bits when it runs, both zero when it does not.
pub fn write_boot_info(
    ram: &GuestRam,
    mut boot_info: BootInfo,
    net_ring: u64,
    host_features: u32,
) -> Result<(), BootError> {
    boot_info.net_ring = net_ring;
    boot_info.host_features = host_features;
    ram.write_arg(BOOT_INFO_GPA, boot_info).map_err(|_| MemoryError::Setup(BOOT_INFO_GPA))?;
    Ok(())
}

/// Identity map: PML4 -> PDPT -> 4 page directories of 2 MiB pages, except the first 2 MiB,
/// mapped through PT0 with 4 KiB pages (nothing below 0x10000, read-only up to 0x100000).
/// The whole allocation is mapped (the shared ring too); nothing beyond it.
fn write_page_tables(ram: &GuestRam) -> Result<(), MemoryError> {
    let rw = PTE_PRESENT | PTE_RW;
    ram.write_setup(BOOT_PML4_GPA, &(BOOT_PDPT_GPA | rw).to_le_bytes())?;
    let pdpt: Vec<u8> = (0..4u64).flat_map(|i| ((BOOT_PD_GPA + i * 0x1000) | rw).to_le_bytes()).collect();
    ram.write_setup(BOOT_PDPT_GPA, &pdpt)?;

    let pt0: Vec<u8> = (0..512u64)
        .map(|i| i * 0x1000)
        .map(|addr| match addr {
            a if a < LOW_UNMAPPED_END => 0,
            a if a < GUEST_MIN_BASE => a | PTE_PRESENT,
            a => a | rw,
        })
        .flat_map(u64::to_le_bytes)
        .collect();
    ram.write_setup(BOOT_PT0_GPA, &pt0)?;

    let pages = ram.total() / MEM_ALIGN;
    let pd: Vec<u8> = (0..pages)
        .map(|i| if i == 0 { BOOT_PT0_GPA | rw } else { (i * MEM_ALIGN) | rw | PTE_PS })
        .flat_map(u64::to_le_bytes)
        .collect();
    ram.write_setup(BOOT_PD_GPA, &pd)?;
    Ok(())
}
