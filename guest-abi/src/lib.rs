//! The Solo5 hvt ABI, version 2: the one source of truth for the tender and the guest runtime.
//!
//! Every number and layout here is a fact of the ABI (see `SOLO5_HVT_ABI.md`); sizes and offsets
//! are asserted at compile time, so a mistake here fails the build rather than a guest.
#![no_std]

use core::mem::{offset_of, size_of};

/// `HVT_ABI_VERSION`.
pub const ABI_VERSION: u32 = 2;
/// ABI target number of hvt in the ABI note.
pub const ABI_TARGET_HVT: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Guest memory layout
// ---------------------------------------------------------------------------------------------

/// Lowest address an ELF segment or the entry point may use (`HVT_GUEST_MIN_BASE`).
pub const GUEST_MIN_BASE: u64 = 0x10_0000;
/// Where the boot info lives; RDI points here at entry.
pub const BOOT_INFO_GPA: u64 = 0x1_0000;
/// Size of the guest command-line buffer, including its NUL.
pub const CMDLINE_SIZE: usize = 8192;
/// Boot GDT and page tables written by the tender.
pub const BOOT_GDT_GPA: u64 = 0x1000;
pub const BOOT_PML4_GPA: u64 = 0x2000;
pub const BOOT_PDPT_GPA: u64 = 0x3000;
pub const BOOT_PD_GPA: u64 = 0x4000;
pub const BOOT_PT0_GPA: u64 = 0x8000;
/// Guest memory is a multiple of this (2 MiB), between one unit and 4 GiB.
pub const MEM_ALIGN: u64 = 2 << 20;
pub const MEM_MIN: u64 = MEM_ALIGN;
pub const MEM_MAX: u64 = 4 << 30;
/// Default guest memory, in MiB.
pub const MEM_DEFAULT_MIB: u64 = 512;
/// Size of the optional shared-memory ring area placed at `mem_size`.
pub const NET_RING_AREA_SIZE: u64 = 2 << 20;

// ---------------------------------------------------------------------------------------------
// Initial vCPU state
// ---------------------------------------------------------------------------------------------

pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_NE: u64 = 1 << 5;
pub const X86_CR0_WP: u64 = 1 << 16;
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR0 at entry: 0x80010021.
pub const X86_CR0_INIT: u64 = X86_CR0_PE | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const X86_CR4_OSFXSR: u64 = 1 << 9;
pub const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4 at entry: 0x620.
pub const X86_CR4_INIT: u64 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
pub const X86_EFER_LME: u64 = 1 << 8;
pub const X86_EFER_LMA: u64 = 1 << 10;
/// EFER at entry: 0x500.
pub const X86_EFER_INIT: u64 = X86_EFER_LME | X86_EFER_LMA;
/// RFLAGS at entry (only the reserved bit 1).
pub const X86_RFLAGS_INIT: u64 = 0x2;
/// Boot GDT selectors and descriptors.
pub const BOOT_GDT_CODE_SEL: u16 = 0x08;
pub const BOOT_GDT_DATA_SEL: u16 = 0x10;
pub const BOOT_GDT_ENTRIES: [u64; 3] = [0, 0x00AF_9900_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// Page-table entry bits.
pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_USER: u64 = 1 << 2;
pub const PTE_PS: u64 = 1 << 7;

// ---------------------------------------------------------------------------------------------
// Hypercalls
// ---------------------------------------------------------------------------------------------

/// Hypercall `nr` is an `outl` of the argument struct's GPA to port `HYPERCALL_PIO_BASE + nr`.
pub const HYPERCALL_PIO_BASE: u16 = 0x500;
/// Port of the optional net-ring kick (ioeventfd).
pub const NET_RING_KICK_PORT: u16 = 0x600;

/// Hypercall numbers.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    Walltime = 1,
    Puts = 2,
    Poll = 3,
    BlockWrite = 4,
    BlockRead = 5,
    NetWrite = 6,
    NetRead = 7,
    Halt = 8,
}

impl Hypercall {
    /// Number of hypercall ports, including the reserved number 0.
    pub const COUNT: u16 = 9;

    pub const fn from_nr(nr: u16) -> Option<Self> {
        Some(match nr {
            1 => Self::Walltime,
            2 => Self::Puts,
            3 => Self::Poll,
            4 => Self::BlockWrite,
            5 => Self::BlockRead,
            6 => Self::NetWrite,
            7 => Self::NetRead,
            8 => Self::Halt,
            _ => return None,
        })
    }

    pub const fn port(self) -> u16 {
        HYPERCALL_PIO_BASE + self as u16
    }
}

/// `solo5_result_t`.
pub const SOLO5_R_OK: i32 = 0;
pub const SOLO5_R_AGAIN: i32 = 1;
pub const SOLO5_R_EINVAL: i32 = 2;
pub const SOLO5_R_EUNSPEC: i32 = 3;

/// Exit status of an abort (`solo5_abort`, a panic, a CPU exception).
pub const SOLO5_EXIT_ABORT: i32 = 255;
/// Size of the area a HALT cookie points at.
pub const HALT_COOKIE_MAX: u64 = 512;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HcWalltime {
    pub nsecs: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HcPuts {
    pub data: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HcPoll {
    pub timeout_nsecs: u64,
    pub ready_set: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// BLOCK_WRITE and BLOCK_READ share this layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HcBlock {
    pub handle: u64,
    pub offset: u64,
    pub data: u64,
    pub len: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// NET_WRITE and NET_READ share this layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HcNet {
    pub handle: u64,
    pub data: u64,
    pub len: u64,
    pub ret: i32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HcHalt {
    pub cookie: u64,
    pub exit_status: i32,
    pub _pad: u32,
}

/// What the guest runtime's exception handler leaves at the HALT cookie: the trap frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub cr2: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// What guest-rt leaves at the HALT cookie on a CPU exception: the Solo5 trap frame, then a
/// marker and the vector. A tender that knows only Solo5's 7-word frame reads the same prefix;
/// tender shows the vector when the marker is there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapReport {
    pub frame: TrapFrame,
    pub magic: u64,
    pub vector: u64,
}

/// `TrapReport::magic`: "TNDTRAP1".
pub const TRAP_REPORT_MAGIC: u64 = u64::from_le_bytes(*b"TNDTRAP1");

// ---------------------------------------------------------------------------------------------
// Boot info
// ---------------------------------------------------------------------------------------------

/// `host_features` bit: the shared-memory net ring is active (Solo5's).
pub const HVT_FEATURE_RING_IO: u32 = 1 << 0;
/// `host_features` bit, a tender extension (solo5-hvt never sets it): the ring at `net_ring`
/// also carries block requests ([`RING_OP_BLOCK_WRITE`], [`RING_OP_BLOCK_READ`]). The highest
/// bit, to stay clear of bits Solo5 may add.
pub const TENDER_FEATURE_BLOCK_RING: u32 = 1 << 31;
/// `host_features` bit, a tender extension: the guest runs as a process (`--mode=process`), at
/// CPL 3 from its first instruction, with no page tables, GDT or IDT of its own to build. guest-rt's
/// `_start` then jumps straight to its Rust start.
pub const TENDER_FEATURE_PROCESS: u32 = 1 << 30;

/// `host_features` bit, a tender extension set only by `tender-debug --gdb`: a debugger is
/// attached, and the guest may register a [`DebugArea`] at [`TENDER_DEBUG_PORT`] so that its
/// CPL 3 code can be debugged through its own #BP and #DB handlers.
pub const TENDER_FEATURE_DEBUG: u32 = 1 << 29;

/// `host_features` bit, a tender extension (solo5-hvt never sets it): a NET_READ entry may ask
/// the host to wait for a frame. Its `offset` (reserved in Solo5's ring) is then the longest
/// wait in nanoseconds: a host thread that finds the tap empty sleeps until a frame arrives
/// (then reads it into the buffer and commits OK) or the wait is over (then commits AGAIN),
/// instead of committing AGAIN at once. The host caps the wait ([`NET_RING_WAIT_MAX_NS`]) and
/// may end it early (with AGAIN); 0 asks for no wait. A guest that busy-polls for a frame thus
/// posts one read and watches for its commit, with no exit and no second CPU kept busy.
pub const TENDER_FEATURE_WAIT_READ: u32 = 1 << 28;
/// The longest wait a NET_READ entry gets with [`TENDER_FEATURE_WAIT_READ`].
pub const NET_RING_WAIT_MAX_NS: u64 = 1_000_000;

/// `host_features` bit, a tender extension (solo5-hvt never sets it; offered with the net ring):
/// after each NET_READ hypercall that returned a frame, the host stores in the ring, at
/// [`NET_RING_RX_WAITING`], the set of net devices (bit `handle`) that had another frame waiting
/// at that moment. A guest that finds its device's bit clear may skip the read that would find
/// nothing: a frame that arrives later makes its next POLL return at once. A hint only: the
/// host may set bits for devices with nothing waiting.
pub const TENDER_FEATURE_RX_HINT: u32 = 1 << 27;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootInfo {
    /// Guest-usable RAM in bytes (excludes the net ring); the stack starts at the top.
    pub mem_size: u64,
    pub kernel_end: u64,
    /// TSC frequency in Hz.
    pub cpu_cycle_freq: u64,
    pub cmdline: u64,
    pub mft: u64,
    pub host_features: u32,
    pub guest_features: u32,
    pub net_ring: u64,
}

// ---------------------------------------------------------------------------------------------
// Debugging (tender extension, only with TENDER_FEATURE_DEBUG)
// ---------------------------------------------------------------------------------------------

/// An `outl` of a [`DebugArea`]'s GPA to this port reports to the debugger. Without
/// [`TENDER_FEATURE_DEBUG`] it is an unknown port: the run ends (exit 1).
pub const TENDER_DEBUG_PORT: u16 = 0x604;
/// `DebugArea::op`: register the area (once, at boot, from CPL 3).
pub const DEBUG_OP_REGISTER: u64 = 1;
/// `DebugArea::op`: a #BP or #DB trap, the interrupted context saved in the area. The debugger
/// may change it; the handler returns to what the area holds when the `outl` completes.
pub const DEBUG_OP_TRAP: u64 = 2;
/// `DebugArea::magic`: "TNDDBG01".
pub const DEBUG_AREA_MAGIC: u64 = u64::from_le_bytes(*b"TNDDBG01");

/// The context of a trapped CPL 3 instruction, as the guest's #BP/#DB handler saved it, and what
/// the guest tells the debugger at registration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugArea {
    pub magic: u64,
    pub op: u64,
    /// 1 (#DB) or 3 (#BP).
    pub vector: u64,
    /// Code below this address runs at CPL 0 (entry and trap stubs): never a place for an `int3`.
    pub cpl0_text_end: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, r8 to r15 (rsp is in the frame).
    pub gprs: [u64; 15],
    /// The hardware frame: rip (after the `int3` for #BP), cs, rflags, rsp, ss.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// ---------------------------------------------------------------------------------------------
// ELF notes and the manifest
// ---------------------------------------------------------------------------------------------

/// Name of every Solo5 note, with its NUL.
pub const NOTE_NAME: [u8; 6] = *b"Solo5\0";
/// Note types: "ABI1" and "MFT1" as little-endian u32.
pub const NOTE_TYPE_ABI: u32 = 0x3149_4241;
pub const NOTE_TYPE_MANIFEST: u32 = 0x3154_464d;
/// Size of an ELF note header plus the padded "Solo5" name.
pub const NOTE_HEADER_SIZE: usize = 20;
/// Largest accepted descriptor of each note.
pub const NOTE_ABI_MAX_DESC: u32 = 32;
pub const NOTE_MANIFEST_MAX_DESC: u32 = 6668;
/// The manifest payload is 8-byte aligned, so it starts 4 bytes after the 20-byte header.
pub const NOTE_MANIFEST_PAD: usize = 4;

pub const MFT_VERSION: u32 = 1;
/// Maximum number of manifest entries, including the reserved entry 0.
pub const MFT_MAX_ENTRIES: u32 = 64;
/// Length of an entry's name buffer; names are NUL-terminated, so at most 67 characters.
pub const MFT_NAME_SIZE: usize = 68;
pub const MFT_NAME_MAX: usize = MFT_NAME_SIZE - 1;

/// Manifest entry types.
pub const MFT_DEV_BLOCK_BASIC: u32 = 1;
pub const MFT_DEV_NET_BASIC: u32 = 2;
pub const MFT_RESERVED_FIRST: u32 = 0x4000_0000;

/// Payload of the ABI note.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiInfo {
    pub target: u32,
    pub version: u32,
    pub reserved: [u32; 2],
}

/// The ABI note as it sits in the ELF: header, name, payload.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug)]
pub struct AbiNote {
    pub namesz: u32,
    pub descsz: u32,
    pub note_type: u32,
    pub name: [u8; 8],
    pub abi: AbiInfo,
}

impl AbiNote {
    /// The note an hvt guest built for this ABI carries.
    pub const HVT: AbiNote = AbiNote {
        namesz: NOTE_NAME.len() as u32,
        descsz: size_of::<AbiInfo>() as u32,
        note_type: NOTE_TYPE_ABI,
        name: *b"Solo5\0\0\0",
        abi: AbiInfo { target: ABI_TARGET_HVT, version: ABI_VERSION, reserved: [0, 0] },
    };
}

/// `struct mft_block_basic`: capacity in bytes and block size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MftBlockBasic {
    pub capacity: u64,
    pub block_size: u16,
    pub _pad: [u8; 6],
}

/// `struct mft_net_basic`: MAC and MTU (without the Ethernet header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MftNetBasic {
    pub mac: [u8; 6],
    pub mtu: u16,
    pub _pad: [u8; 8],
}

/// One manifest entry (104 bytes). The device union is kept as raw bytes; the accessors give the
/// typed views. `host_private` is the tender's own field (solo5-hvt keeps a host fd there); this
/// tender leaves it zero in the guest's copy so that no host fd number is revealed.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct MftEntry {
    pub name: [u8; MFT_NAME_SIZE],
    pub dev_type: u32,
    pub device: [u8; 16],
    pub host_private: u64,
    pub attached: u8,
    pub _pad: [u8; 7],
}

impl MftEntry {
    /// The reserved entry 0 that every manifest starts with.
    pub const RESERVED: MftEntry = MftEntry::new_raw([0; MFT_NAME_SIZE], MFT_RESERVED_FIRST);

    pub const fn new_raw(name: [u8; MFT_NAME_SIZE], dev_type: u32) -> Self {
        MftEntry { name, dev_type, device: [0; 16], host_private: 0, attached: 0, _pad: [0; 7] }
    }

    /// A device entry with the given name; panics at compile time on a bad name.
    pub const fn new(name: &str, dev_type: u32) -> Self {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty() && bytes.len() <= MFT_NAME_MAX, "bad device name length");
        let mut buf = [0u8; MFT_NAME_SIZE];
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i].is_ascii_alphanumeric(), "device names are [A-Za-z0-9]");
            buf[i] = bytes[i];
            i += 1;
        }
        Self::new_raw(buf, dev_type)
    }

    /// The name up to its NUL (or all 68 bytes if there is none).
    pub fn name_bytes(&self) -> &[u8] {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(MFT_NAME_SIZE);
        &self.name[..len]
    }

    pub fn block(&self) -> MftBlockBasic {
        let d = &self.device;
        MftBlockBasic {
            capacity: u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]),
            block_size: u16::from_le_bytes([d[8], d[9]]),
            _pad: [0; 6],
        }
    }

    pub fn set_block(&mut self, b: MftBlockBasic) {
        self.device = [0; 16];
        self.device[..8].copy_from_slice(&b.capacity.to_le_bytes());
        self.device[8..10].copy_from_slice(&b.block_size.to_le_bytes());
    }

    pub fn net(&self) -> MftNetBasic {
        let d = &self.device;
        MftNetBasic { mac: [d[0], d[1], d[2], d[3], d[4], d[5]], mtu: u16::from_le_bytes([d[6], d[7]]), _pad: [0; 8] }
    }

    pub fn set_net(&mut self, n: MftNetBasic) {
        self.device = [0; 16];
        self.device[..6].copy_from_slice(&n.mac);
        self.device[6..8].copy_from_slice(&n.mtu.to_le_bytes());
    }
}

/// Header of `struct mft`; `entries` entries of `MftEntry` follow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MftHeader {
    pub version: u32,
    pub entries: u32,
}

/// Size in bytes of a manifest with `entries` entries.
pub const fn mft_size(entries: u32) -> usize {
    size_of::<MftHeader>() + entries as usize * size_of::<MftEntry>()
}

/// The manifest note as it sits in the ELF, for a manifest of `N` entries (entry 0 reserved).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct ManifestNote<const N: usize> {
    pub namesz: u32,
    pub descsz: u32,
    pub note_type: u32,
    pub name: [u8; 8],
    pub _pad: u32,
    pub header: MftHeader,
    pub entries: [MftEntry; N],
}

impl<const N: usize> ManifestNote<N> {
    /// Builds the note; `entries[0]` must be [`MftEntry::RESERVED`].
    pub const fn new(entries: [MftEntry; N]) -> Self {
        assert!(N >= 1 && N <= MFT_MAX_ENTRIES as usize, "a manifest has 1..=64 entries");
        assert!(entries[0].dev_type == MFT_RESERVED_FIRST, "entry 0 must be reserved");
        ManifestNote {
            namesz: NOTE_NAME.len() as u32,
            descsz: (NOTE_MANIFEST_PAD + mft_size(N as u32)) as u32,
            note_type: NOTE_TYPE_MANIFEST,
            name: *b"Solo5\0\0\0",
            _pad: 0,
            header: MftHeader { version: MFT_VERSION, entries: N as u32 },
            entries,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Optional shared-memory net ring (ABI section 9), and tender's block extension of it
// ---------------------------------------------------------------------------------------------

/// Entries (and commits) in the ring; the free-running u32 indices are masked with this - 1.
pub const NET_RING_ENTRIES: u32 = 1024;
pub const NET_RING_OP_WRITE: u32 = 1;
pub const NET_RING_OP_READ: u32 = 2;
/// Tender extension (with [`TENDER_FEATURE_BLOCK_RING`]): BLOCK_WRITE of `len` bytes at `data`
/// to byte `offset` of block device `handle`. Answered by a commit, as a read is.
pub const RING_OP_BLOCK_WRITE: u32 = 3;
/// Tender extension: BLOCK_READ, as [`RING_OP_BLOCK_WRITE`] the other way.
pub const RING_OP_BLOCK_READ: u32 = 4;
/// Bytes of the ring structure at `boot_info.net_ring`.
pub const NET_RING_SIZE: usize = 49_280;
pub const NET_RING_ENTRIES_OFFSET: usize = 128;
pub const NET_RING_COMMITS_OFFSET: usize = 32_896;
/// Guest-written indices (cache line 0).
pub const NET_RING_ENT_TAIL: usize = 0;
pub const NET_RING_COM_HEAD: usize = 4;
/// Host-written indices and the "about to sleep, kick me" flag (cache line 1).
pub const NET_RING_ENT_HEAD: usize = 64;
pub const NET_RING_COM_TAIL: usize = 68;
pub const NET_RING_NEEDS_KICK: usize = 72;
/// Tender extension ([`TENDER_FEATURE_RX_HINT`]): a host-written u64, the net devices that had a
/// frame waiting after the last NET_READ hypercall that returned one.
pub const NET_RING_RX_WAITING: usize = 80;
/// Largest frame a guest posts through the ring (its per-slot copy); larger ones use NET_WRITE.
pub const NET_RING_SLOT_SIZE: usize = 2048;
/// How many times the host I/O thread looks at an empty ring before it asks for a kick.
pub const NET_RING_SPIN_ITERS: u32 = 4096;

/// A submission: written by the guest at `entries[ent_tail % NET_RING_ENTRIES]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetRingEntry {
    pub operation: u32,
    pub handle: u32,
    /// GPA of the frame (write), of the receive buffer (read), or of the block request's data.
    pub data: u64,
    pub len: u32,
    pub id: u32,
    /// Byte offset on the device for the block operations (a tender extension); for NET_READ
    /// with [`TENDER_FEATURE_WAIT_READ`], the longest wait for a frame in ns; reserved in
    /// Solo5's ring.
    pub offset: u64,
}

/// The result of a NET_READ or block entry: written by the host at
/// `commits[com_tail % NET_RING_ENTRIES]`. Net writes have none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetRingCommit {
    pub id: u32,
    pub ret: i32,
    pub len: u32,
    pub _reserved: u32,
}

// ---------------------------------------------------------------------------------------------
// Layout assertions: these are the fact sheet's numbers.
// ---------------------------------------------------------------------------------------------

const _: () = {
    assert!(size_of::<HcWalltime>() == 8);
    assert!(size_of::<HcPuts>() == 16);
    assert!(size_of::<HcPoll>() == 24);
    assert!(offset_of!(HcPoll, ready_set) == 8);
    assert!(offset_of!(HcPoll, ret) == 16);
    assert!(size_of::<HcBlock>() == 40);
    assert!(offset_of!(HcBlock, offset) == 8);
    assert!(offset_of!(HcBlock, data) == 16);
    assert!(offset_of!(HcBlock, len) == 24);
    assert!(offset_of!(HcBlock, ret) == 32);
    assert!(size_of::<HcNet>() == 32);
    assert!(offset_of!(HcNet, data) == 8);
    assert!(offset_of!(HcNet, len) == 16);
    assert!(offset_of!(HcNet, ret) == 24);
    assert!(size_of::<HcHalt>() == 16);
    assert!(offset_of!(HcHalt, exit_status) == 8);
    assert!(size_of::<TrapFrame>() == 56);
    assert!(size_of::<TrapReport>() == 72 && size_of::<TrapReport>() as u64 <= HALT_COOKIE_MAX);

    assert!(size_of::<BootInfo>() == 56);
    assert!(size_of::<DebugArea>() == 192);
    assert!(offset_of!(BootInfo, kernel_end) == 8);
    assert!(offset_of!(BootInfo, cpu_cycle_freq) == 16);
    assert!(offset_of!(BootInfo, cmdline) == 24);
    assert!(offset_of!(BootInfo, mft) == 32);
    assert!(offset_of!(BootInfo, host_features) == 40);
    assert!(offset_of!(BootInfo, guest_features) == 44);
    assert!(offset_of!(BootInfo, net_ring) == 48);

    assert!(size_of::<MftEntry>() == 104);
    assert!(offset_of!(MftEntry, dev_type) == 68);
    assert!(offset_of!(MftEntry, device) == 72);
    assert!(offset_of!(MftEntry, host_private) == 88);
    assert!(offset_of!(MftEntry, attached) == 96);
    assert!(size_of::<MftBlockBasic>() == 16);
    assert!(offset_of!(MftBlockBasic, block_size) == 8);
    assert!(size_of::<MftNetBasic>() == 16);
    assert!(offset_of!(MftNetBasic, mtu) == 6);
    assert!(size_of::<MftHeader>() == 8);
    assert!(mft_size(64) + NOTE_MANIFEST_PAD == NOTE_MANIFEST_MAX_DESC as usize);

    assert!(size_of::<AbiNote>() == NOTE_HEADER_SIZE + 16);
    assert!(offset_of!(ManifestNote<1>, header) == NOTE_HEADER_SIZE + NOTE_MANIFEST_PAD);
    assert!(size_of::<ManifestNote<2>>() == 24 + 8 + 2 * 104);

    assert!(BOOT_INFO_GPA + size_of::<BootInfo>() as u64 == 0x10038);
    assert!(X86_CR0_INIT == 0x8001_0021);
    assert!(X86_CR4_INIT == 0x620);
    assert!(X86_EFER_INIT == 0x500);
    assert!(size_of::<NetRingEntry>() == 32);
    assert!(offset_of!(NetRingEntry, data) == 8);
    assert!(offset_of!(NetRingEntry, len) == 16);
    assert!(offset_of!(NetRingEntry, id) == 20);
    assert!(size_of::<NetRingCommit>() == 16);
    assert!(offset_of!(NetRingCommit, ret) == 4);
    assert!(offset_of!(NetRingCommit, len) == 8);
    assert!(NET_RING_COMMITS_OFFSET == NET_RING_ENTRIES_OFFSET + 32 * NET_RING_ENTRIES as usize);
    assert!(NET_RING_SIZE == NET_RING_COMMITS_OFFSET + 16 * NET_RING_ENTRIES as usize);
    assert!(NET_RING_SIZE as u64 <= NET_RING_AREA_SIZE);
    assert!(NET_RING_RX_WAITING > NET_RING_NEEDS_KICK && NET_RING_RX_WAITING + 8 <= NET_RING_ENTRIES_OFFSET);
    assert!(NET_RING_RX_WAITING.is_multiple_of(8));
};
