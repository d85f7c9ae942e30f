//! A hostile guest: each run makes ONE attack on the tender through the ABI (the first word of
//! the command line names it). If the tender answers instead of ending the run, the guest prints
//! what it got (`ret=2`, ...) and exits with [`ANSWERED`] (42), so a test sees exactly how the
//! tender reacted. The table of attacks and expected outcomes heads tests/hostile.rs.
//!
//! Needs one block device, `storage` (at least 4 blocks of 512 bytes). The net attacks are the
//! second binary, `hostile-net` (src/bin/net.rs).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;

use guest_rt::abi::{
    HcBlock, HcNet, HcPoll, HcPuts, HcWalltime, Hypercall, NET_RING_OP_READ, NET_RING_OP_WRITE, RING_OP_BLOCK_READ,
    RING_OP_BLOCK_WRITE, TRAP_REPORT_MAGIC, TrapFrame, TrapReport,
};
use guest_rt::hypercall::{self, hypercall};
use guest_rt::{BlockDevice, println};

mod raw_ring;
use raw_ring::{RawRing, block_entry, entry};

guest_rt::unikernel!(main, block: ["storage"]);

/// Exit status of a run where the tender answered the attack and the guest went on.
const ANSWERED: i32 = 42;
/// Exit status when the attack could not even be set up (no device, unexpected geometry).
const SETUP_FAILED: i32 = 3;
/// Exit status of an unknown attack name.
const UNKNOWN: i32 = 2;

/// Lives in .rodata: mapped read-only on the host by the tender.
static RODATA_WALLTIME: HcWalltime = HcWalltime { nsecs: 0 };
static RODATA_POLL: HcPoll = HcPoll { timeout_nsecs: 0, ready_set: 0, ret: 0, _pad: 0 };

/// A BLOCK_WRITE/BLOCK_READ argument struct with a pointer in it, so that it can be a `static`
/// (in .rodata: the linker script puts `.data.rel.ro` there). Same layout as [`HcBlock`].
#[repr(C)]
struct RoBlock {
    handle: u64,
    offset: u64,
    data: *const u8,
    len: u64,
    ret: i32,
    _pad: u32,
}
// SAFETY: never written (it is in read-only memory); only its address is used.
unsafe impl Sync for RoBlock {}
const _: () = assert!(size_of::<RoBlock>() == size_of::<HcBlock>());

/// What a BLOCK_WRITE whose struct is read-only would write, if the tender let it through.
static PATTERN: [u8; 512] = [0xee; 512];
static RODATA_BLOCK_WRITE: RoBlock =
    RoBlock { handle: 1, offset: 0, data: (&raw const PATTERN).cast(), len: 512, ret: 0, _pad: 0 };

/// A trap report the guest made up: HALT(255) with it as cookie.
static FORGED_TRAP: TrapReport = TrapReport {
    frame: TrapFrame { cr2: 0x1bad, error_code: 0x77, rip: 0xdead_beef, cs: 0, rflags: 0, rsp: 0x5555, ss: 0 },
    magic: TRAP_REPORT_MAGIC,
    vector: 77,
};

unsafe extern "C" {
    /// Start of the data segment (guest-build's linker script): the page before it is .rodata.
    static __guest_rt_priv_start: u8;
    /// CPL 0 payloads (below), entered through an IDT gate the attack plants.
    fn hostile_cpl0_hlt();
    fn hostile_cpl0_port_0x500();
    fn hostile_cpl0_port_0x4ff();
    fn hostile_cpl0_mmio_read();
    fn hostile_cpl0_mmio_write();
}

// Code the attacks run at CPL 0, after planting a DPL 3 gate for #BP that points here. Each
// one ends the run if the tender is right; if it were resumed it would spin (the test's
// timeout would show it).
core::arch::global_asm!(
    r#"
    .pushsection .text.hostile_cpl0, "ax", @progbits
    .globl hostile_cpl0_hlt
hostile_cpl0_hlt:
    hlt
    jmp hostile_cpl0_hlt

    .globl hostile_cpl0_port_0x500
hostile_cpl0_port_0x500:
    mov dx, 0x500
    xor eax, eax
    out dx, eax
2:  jmp 2b

    .globl hostile_cpl0_port_0x4ff
hostile_cpl0_port_0x4ff:
    mov dx, 0x4ff
    xor eax, eax
    out dx, eax
2:  jmp 2b

    // Map the 2 MiB page at GPA 0xffe00000 (no guest RAM there with --mem < 4094) through the
    // runtime's own page tables (PML4[0] -> PDPT[3] -> PD[511]) and touch it: an MMIO exit.
    .globl hostile_cpl0_mmio_read
hostile_cpl0_mmio_read:
    call hostile_map_top
    mov eax, dword ptr [rdx]
2:  jmp 2b

    .globl hostile_cpl0_mmio_write
hostile_cpl0_mmio_write:
    call hostile_map_top
    mov dword ptr [rdx], 0x12345678
2:  jmp 2b

hostile_map_top:
    movabs rcx, 0x000ffffffffff000
    mov rax, cr3
    and rax, rcx
    mov rax, qword ptr [rax]
    and rax, rcx
    mov rax, qword ptr [rax + 3 * 8]
    and rax, rcx
    mov edx, 0xffe00083
    mov qword ptr [rax + 511 * 8], rdx
    mov edx, 0xffe00000
    invlpg [rdx]
    ret
    .popsection
    "#
);

/// An `outl` of `value` to `port` (what a hypercall is), for pointers no Rust reference can hold.
fn raw_out(port: u16, value: u32) {
    // SAFETY: an attack on the tender; the guest's own memory is not touched by the instruction
    // (the tender may write at `value`, which the attack chose).
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack)) };
}

fn addr<T>(p: &T) -> u32 {
    p as *const T as usize as u32
}

fn puts_raw(data: u64, len: u64) {
    let mut arg = HcPuts { data, len };
    // SAFETY: the tender checks (data, len); that check is what is under attack.
    unsafe { hypercall(Hypercall::Puts, &mut arg) };
}

fn block_raw(nr: Hypercall, handle: u64, offset: u64, data: u64, len: u64) -> i32 {
    let mut arg = HcBlock { handle, offset, data, len, ..Default::default() };
    // SAFETY: as above; the tender must refuse or answer EINVAL. Where `data` is a real buffer
    // it is one the caller owns for the call.
    unsafe { hypercall(nr, &mut arg) };
    arg.ret
}

fn net_raw(nr: Hypercall, handle: u64, data: u64, len: u64) -> i32 {
    let mut arg = HcNet { handle, data, len, ..Default::default() };
    // SAFETY: as above.
    unsafe { hypercall(nr, &mut arg) };
    arg.ret
}

/// One direct system call that tender's filter must refuse (the process dies of SIGSYS). If it
/// returns, the guest says what it got and exits [`ANSWERED`]. `path`, when given, is the file
/// to create (`openat`) or to link (`linkat`, to `PATH.link`).
fn raw_syscall(attack: &str, path: Option<&str>) -> i32 {
    let mut name = [0u8; 256];
    let mut link = [0u8; 256];
    let path = path.unwrap_or("/tmp/tender-hostile").as_bytes();
    let Some(n) = (path.len() + 6 <= name.len()).then_some(path.len()) else {
        return SETUP_FAILED;
    };
    name[..n].copy_from_slice(path);
    link[..n].copy_from_slice(path);
    link[n..n + 5].copy_from_slice(b".link");
    let (at_fdcwd, sig_segv) = (-100i64 as u64, 11);
    let zeroed = [0u64; 4];
    let (nr, args): (u64, [u64; 5]) = match attack {
        "syscall-openat" => (257, [at_fdcwd, name.as_ptr() as u64, 0o101, 0o600, 0]),
        "syscall-linkat" => (265, [at_fdcwd, name.as_ptr() as u64, at_fdcwd, link.as_ptr() as u64, 0]),
        "syscall-exit" => (60, [0; 5]),
        "syscall-rt_sigaction" => (13, [sig_segv, zeroed.as_ptr() as u64, 0, 8, 0]),
        "syscall-mmap" => (9, [0, 4096, 3, 0x22, u64::MAX]),
        "syscall-mprotect" => (10, [text_address() & !0xfff, 4096, 7, 0, 0]),
        "syscall-sigaltstack" => (131, [zeroed.as_ptr() as u64, 0, 0, 0, 0]),
        _ => return UNKNOWN,
    };
    let ret = syscall(nr, args);
    println!("hostile: {attack} returned {ret}");
    ANSWERED
}

/// `syscall-pwrite FD OFFSET`: 512 bytes of 0xAA written straight to tender's fd FD at byte
/// OFFSET, as a subverted guest in process mode would aim at a block file. If it returns, the
/// guest says what it got and exits [`ANSWERED`].
fn raw_pwrite() -> i32 {
    let mut words = guest_rt::cmdline().split_whitespace().skip(1).map(str::parse::<u64>);
    let (Some(Ok(fd)), Some(Ok(offset))) = (words.next(), words.next()) else {
        return SETUP_FAILED;
    };
    let data = [0xAAu8; 512];
    let ret = syscall(18, [fd, data.as_ptr() as u64, data.len() as u64, offset, 0]);
    println!("hostile: syscall-pwrite {fd} {offset} returned {ret}");
    ANSWERED
}

/// System call `nr` with `args`, made by the guest itself.
fn syscall(nr: u64, args: [u64; 5]) -> i64 {
    let ret: i64;
    // SAFETY: an attack on the host, not on guest memory: the callers pass pointers to locals
    // (or, for mprotect, guest text the call may not change).
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") args[0], in("rsi") args[1],
            in("rdx") args[2], in("r10") args[3], in("r8") args[4], in("r9") 0u64,
            lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

fn text_address() -> u64 {
    main as fn() -> i32 as usize as u64
}

fn rodata_end() -> u64 {
    (&raw const __guest_rt_priv_start) as u64
}

fn main() -> i32 {
    let mem = guest_rt::mem_size();
    let attack = guest_rt::cmdline().split_whitespace().next().unwrap_or("");
    println!("hostile: {attack}");
    match attack {
        // PUTS buffers outside guest RAM, straddling its end, ending exactly at it (the rule is
        // strict: gpa + len < mem_size), wrapping around 2^64, huge or negative as an i64.
        "puts-out-of-range" => puts_raw(mem + 0x1000, 16),
        "puts-straddle" => puts_raw(mem - 8, 16),
        "puts-ends-at-mem-size" => puts_raw(mem - 16, 16),
        "puts-empty-at-mem-size" => puts_raw(mem, 0),
        "puts-wrap" => puts_raw(0x20_0000, u64::MAX - 0x1000),
        "puts-wrap-gpa" => puts_raw(u64::MAX - 7, 16),
        "puts-huge" => puts_raw(0x20_0000, 1 << 62),
        "puts-negative-len" => puts_raw(0x20_0000, (-16i64) as u64),
        // What the rule allows: the last byte but one, an empty buffer, the low area (guest RAM:
        // the ABI lets the guest print it, all zeros), and a big buffer (4 MiB in one call).
        "puts-just-below-end" => puts_raw(mem - 2, 1),
        "puts-empty" => puts_raw(0x20_0000, 0),
        // Where a Rust empty slice points (`puts("")`).
        "puts-empty-dangling" => puts_raw(1, 0),
        "puts-low-area" => puts_raw(0x1000, 8),
        "puts-large" => puts_raw(0x1_0000, 4 << 20),
        // The argument struct itself outside RAM, straddling the end, ending exactly at it.
        "struct-out-of-range" => raw_out(Hypercall::Walltime.port(), (mem + 0x1000) as u32),
        "struct-straddle" => raw_out(Hypercall::Walltime.port(), (mem - 4) as u32),
        "struct-ends-at-mem-size" => raw_out(Hypercall::Walltime.port(), (mem - 8) as u32),
        // ... and in the low area, which is RAM: the tender writes the time there.
        "struct-low-area" => raw_out(Hypercall::Walltime.port(), 0x9000),
        // Handles: none of these is a block device.
        "bad-handles" => {
            let mut buf = [0u8; 512];
            let p = buf.as_mut_ptr() as u64;
            for h in [0u64, 2, 63, 64, 1 << 32, 1 << 63, u64::MAX] {
                println!("hostile: handle {h:#x}: ret={}", block_raw(Hypercall::BlockRead, h, 0, p, 512));
            }
        }
        // A net call on the block device's handle (no net device is attached at all).
        "net-call-on-block-handle" => {
            let mut frame = [0u8; 60];
            let p = frame.as_mut_ptr() as u64;
            println!("hostile: NET_WRITE: ret={}", net_raw(Hypercall::NetWrite, 1, p, 60));
            println!("hostile: NET_READ: ret={}", net_raw(Hypercall::NetRead, 1, p, 60));
        }
        // Offsets and lengths against a real device; what was written before must survive.
        "block-ranges" => return block_ranges(None),
        a if a.starts_with("ring-block-") => return block_ring_attack(a, mem),
        "block-buffer-out-of-range" => {
            block_raw(Hypercall::BlockRead, 1, 0, mem, 512);
        }
        // A write whose source straddles the end of RAM: nothing may reach the file.
        "block-write-buffer-straddle" => {
            block_raw(Hypercall::BlockWrite, 1, 0, mem - 256, 512);
        }
        // The BLOCK_WRITE struct in .rodata: the tender cannot write `ret` back, so it must
        // refuse before writing the block (the test checks the file).
        "block-write-struct-in-rodata" => raw_out(Hypercall::BlockWrite.port(), addr(&RODATA_BLOCK_WRITE)),
        "block-read-struct-in-rodata" => raw_out(Hypercall::BlockRead.port(), addr(&RODATA_BLOCK_WRITE)),
        // Out-parameters aimed at read-only memory: .rodata and .text, and straddling the end of
        // .rodata into writable data.
        "walltime-into-rodata" => raw_out(Hypercall::Walltime.port(), addr(&RODATA_WALLTIME)),
        "walltime-into-text" => raw_out(Hypercall::Walltime.port(), text_address() as u32),
        "poll-into-rodata" => raw_out(Hypercall::Poll.port(), addr(&RODATA_POLL)),
        "block-read-into-text" => {
            block_raw(Hypercall::BlockRead, 1, 0, text_address() & !0xfff, 512);
        }
        "block-read-into-rodata" => {
            block_raw(Hypercall::BlockRead, 1, 0, PATTERN.as_ptr() as u64, 512);
        }
        "block-read-straddling-rodata" => {
            block_raw(Hypercall::BlockRead, 1, 0, rodata_end() - 256, 512);
        }
        // Stores into the guest's own text and rodata: the host mapping is read-only.
        "write-text" => {
            let p = core::ptr::with_exposed_provenance_mut::<u8>(text_address() as usize);
            // SAFETY: not safe: the attack itself.
            unsafe { p.write_volatile(0xcc) };
        }
        "write-rodata" => {
            let p = core::ptr::with_exposed_provenance_mut::<u8>(PATTERN.as_ptr() as usize);
            // SAFETY: not safe: the attack itself.
            unsafe { p.write_volatile(0) };
        }
        // Port accesses the ABI does not allow. These ports are open in guest-rt's TSS I/O
        // bitmap, so they reach the tender.
        "outb" => {
            // SAFETY: an attack on the tender.
            unsafe { core::arch::asm!("out dx, al", in("dx") 0x501u16, in("al") 0u8, options(nostack)) };
        }
        "outw" => {
            // SAFETY: an attack on the tender.
            unsafe { core::arch::asm!("out dx, ax", in("dx") 0x501u16, in("ax") 0u16, options(nostack)) };
        }
        "inl" => {
            let v: u32;
            // SAFETY: an attack on the tender.
            unsafe { core::arch::asm!("in eax, dx", in("dx") 0x501u16, out("eax") v, options(nostack)) };
            println!("hostile: inl gave {v}");
        }
        "outb-0x509" => {
            // SAFETY: an attack on the tender: one past the last hypercall port.
            unsafe { core::arch::asm!("out dx, al", in("dx") 0x509u16, in("al") 0u8, options(nostack)) };
        }
        "outl-0x600" => raw_out(0x600, 0),
        "rep-outsd" => {
            // Two dwords, each the address of a WALLTIME struct, in one instruction.
            let mut a = HcWalltime::default();
            let mut b = HcWalltime::default();
            let data = [&raw mut a as usize as u32, &raw mut b as usize as u32];
            // SAFETY: an attack on the tender; the tender may write `a` and `b` (ours, alive).
            unsafe {
                core::arch::asm!("rep outsd", in("dx") Hypercall::Walltime.port(), inout("rsi") data.as_ptr() => _,
                    inout("rcx") 2u64 => _, options(nostack))
            };
            // SAFETY: plain reads of our own locals, which the tender may have written.
            let (a, b) = unsafe { ((&raw const a).read_volatile(), (&raw const b).read_volatile()) };
            println!("hostile: rep outsd: first filled: {}, second filled: {}", a.nsecs != 0, b.nsecs != 0);
        }
        // Ports guest-rt's I/O bitmap keeps closed at CPL 3: the CPU raises #GP in the guest.
        "outl-0x500" => raw_out(0x500, 0),
        "outl-0x4ff" => raw_out(0x4ff, 0),
        "outl-0x509" => raw_out(0x509, 0),
        // HALT with a cookie that does not fit, and ones that do.
        "halt-cookie-straddle" => hypercall::halt(9, mem - 100),
        "halt-cookie-ends-at-mem-size" => hypercall::halt(9, mem - 512),
        "halt-cookie-out-of-range" => hypercall::halt(9, mem + 0x1000),
        "halt-cookie-wrap" => hypercall::halt(9, u64::MAX - 100),
        "halt-cookie-ok" => hypercall::halt(9, 0x20_0000),
        "halt-cookie-last-fit" => hypercall::halt(9, mem - 513),
        "halt-cookie-in-text" => hypercall::halt(9, text_address()),
        "halt-forged-trap" => hypercall::halt(255, addr(&FORGED_TRAP).into()),
        "halt-status-minus-1" => hypercall::halt(-1, 0),
        "halt-status-256" => hypercall::halt(256, 0),
        // Privileged instruction at CPL 3: the CPU refuses, guest-rt reports the trap.
        "hlt" => {
            // SAFETY: an attack (it faults).
            unsafe { core::arch::asm!("hlt") };
        }
        // The tender writes wherever the guest points, guest-rt's own CPL 0 structures included:
        // with zeroed exception gates, #UD cannot be delivered, nor #NP/#DF: a triple fault.
        "triple-fault" => return triple_fault(),
        // Plant a DPL 3 gate for #BP through the tender, then `int3`: CPL 0 code, which guest-rt
        // never gives the application, reaches the exits that need it.
        "cpl0-hlt" => return at_cpl0(hostile_cpl0_hlt),
        "cpl0-port-0x500" => return at_cpl0(hostile_cpl0_port_0x500),
        "cpl0-port-0x4ff" => return at_cpl0(hostile_cpl0_port_0x4ff),
        "cpl0-mmio-read" => return at_cpl0(hostile_cpl0_mmio_read),
        "cpl0-mmio-write" => return at_cpl0(hostile_cpl0_mmio_write),
        // Process mode (docs/PROCESS_MODE.md): the guest makes system calls itself, and only the
        // filter stands in the way. Under KVM, `syscall` is #UD (the guest never enabled it).
        "syscall-pwrite" => return raw_pwrite(),
        a if a.starts_with("syscall-") => return raw_syscall(a, guest_rt::cmdline().split_whitespace().nth(1)),
        // Runs that only end from outside: a busy loop, and a POLL that waits ~584 years.
        "loop" => loop {
            core::hint::spin_loop();
        },
        "poll-forever" => {
            let mut arg = HcPoll { timeout_nsecs: u64::MAX, ..Default::default() };
            // SAFETY: POLL writes only its own struct.
            unsafe { hypercall(Hypercall::Poll, &mut arg) };
            println!("hostile: POLL returned ret={}", arg.ret);
        }
        _ => {
            println!("hostile: unknown attack");
            return UNKNOWN;
        }
    }
    println!("hostile: the tender answered and the guest goes on");
    ANSWERED
}

/// The block requests of `block-ranges` through tender's block ring: answered the same way, and
/// a bad buffer ends the run from the ring's I/O thread.
fn block_ring_attack(attack: &str, mem: u64) -> i32 {
    let Some(base) = guest_rt::ring::block_address() else {
        println!("hostile: the tender offers no block ring");
        return SETUP_FAILED;
    };
    let ring = RawRing(base);
    let mut buf = vec![0u8; 1024];
    let p = buf.as_mut_ptr() as u64;
    let (read, write) = (RING_OP_BLOCK_READ, RING_OP_BLOCK_WRITE);
    let fatal = match attack {
        "ring-block-ranges" => return block_ranges(Some(ring)),
        // Handles that are no block device, and net operations on the block device: EINVAL
        // for each operation with a commit, the net write dropped.
        "ring-block-bad-handles" => {
            for h in [0u64, 2, 63, u64::from(u32::MAX)] {
                let ret = ring.call(block_entry(read, h, 0, p, 512)).map(|c| c.ret);
                println!("hostile: ring block read on handle {h:#x}: ret={ret:?}");
            }
            ring.post(&[entry(NET_RING_OP_WRITE, 1, p, 60)]);
            let ret = ring.call(entry(NET_RING_OP_READ, 1, p, 1514)).map(|c| c.ret);
            println!("hostile: ring net read on the block handle: ret={ret:?}");
            false
        }
        "ring-block-read-out-of-range" => {
            ring.post(&[block_entry(read, 1, 0, mem - 10, 512)]);
            true
        }
        "ring-block-write-out-of-range" => {
            ring.post(&[block_entry(write, 1, 0, mem - 256, 512)]);
            true
        }
        "ring-block-read-into-text" => {
            ring.post(&[block_entry(read, 1, 0, text_address() & !0xfff, 512)]);
            true
        }
        "ring-block-read-into-ring" => {
            ring.post(&[block_entry(read, 1, 0, base, 512)]);
            true
        }
        _ => {
            println!("hostile: unknown attack");
            return UNKNOWN;
        }
    };
    if fatal {
        // The tender must end the run; give it ~10 s.
        let deadline = guest_rt::monotonic_ns() + 10_000_000_000;
        while guest_rt::monotonic_ns() < deadline {}
        println!("hostile: still running 10 s after the attack");
        return 5;
    }
    println!("hostile: the tender answered and the guest goes on");
    ANSWERED
}

/// The range cases by hypercall, or through `ring` (lengths over 4 GiB become 2^32 - 1 there,
/// the most an entry holds).
fn block_ranges(ring: Option<RawRing>) -> i32 {
    let Ok(disk) = BlockDevice::open("storage") else { return SETUP_FAILED };
    let (cap, bs) = (disk.capacity(), disk.block_size());
    let mut known = vec![0x5au8; bs as usize];
    if disk.write(0, &known).is_err() {
        return SETUP_FAILED;
    }
    let p = known.as_mut_ptr() as u64;
    let cases = [
        ("offset at capacity", cap, bs),
        ("offset past capacity", cap + bs, bs),
        ("offset+len past capacity", cap - bs, 2 * bs),
        ("offset+len overflows", u64::MAX - bs + 1, 2 * bs),
        ("offset+len wraps to 0", bs, u64::MAX - bs + 1),
        ("huge len", 0, u64::MAX),
        ("len over isize::MAX", 0, 1 << 63),
        ("negative len", 0, (-512i64) as u64),
        ("misaligned offset", 1, bs),
        ("offset half a block", bs / 2, bs),
        ("partial block", 0, bs - 1),
        ("block and a bit", 0, bs + 1),
    ];
    for nr in [Hypercall::BlockWrite, Hypercall::BlockRead] {
        for (what, offset, len) in cases {
            let ret = match ring {
                None => block_raw(nr, disk.handle(), offset, p, len),
                Some(ring) => {
                    let op = if nr == Hypercall::BlockRead { RING_OP_BLOCK_READ } else { RING_OP_BLOCK_WRITE };
                    let len = u32::try_from(len).unwrap_or(u32::MAX);
                    ring.call(block_entry(op, disk.handle(), offset, p, len)).map_or(-1, |c| c.ret)
                }
            };
            println!("hostile: {nr:?} {what}: ret={ret}");
        }
    }
    // A refused read must not have touched the buffer; the block written first is still there.
    let buffer_intact = known.iter().all(|&b| b == 0x5a);
    let mut back = vec![0u8; bs as usize];
    let block_intact = disk.read(0, &mut back).is_ok() && back.iter().all(|&b| b == 0x5a);
    println!("hostile: read buffer intact: {buffer_intact}");
    println!("hostile: block 0 intact: {block_intact}");
    if !(buffer_intact && block_intact) {
        return 1;
    }
    println!("hostile: the tender answered and the guest goes on");
    ANSWERED
}

/// The IDT's base, from `sidt` (not privileged: guest-rt does not set CR4.UMIP).
fn idt_base() -> u64 {
    let mut idtr = [0u8; 10];
    // SAFETY: stores 10 bytes into our buffer.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack)) };
    let mut base = [0u8; 8];
    base.copy_from_slice(&idtr[2..]);
    u64::from_le_bytes(base)
}

/// guest-rt's IDT: 32 gates of 16 bytes.
const IDT_BYTES: u64 = 32 * 16;

/// Copies `IDT_BYTES` from `src` to `dst` (guest physical = virtual addresses, any of them,
/// CPL 0 pages too) through the tender: BLOCK_WRITE from `src` to the last block-sized area of
/// the disk, BLOCK_READ from there to `dst`.
fn copy_through_tender(disk: &BlockDevice, dst: u64, src: u64) -> bool {
    let scratch = disk.capacity() - IDT_BYTES;
    block_raw(Hypercall::BlockWrite, disk.handle(), scratch, src, IDT_BYTES) == 0
        && block_raw(Hypercall::BlockRead, disk.handle(), scratch, dst, IDT_BYTES) == 0
}

fn scratch_disk() -> Option<BlockDevice> {
    let disk = BlockDevice::open("storage").ok()?;
    (disk.block_size() == 512 && disk.capacity() >= 4 * 512).then_some(disk)
}

fn triple_fault() -> i32 {
    let Some(disk) = scratch_disk() else { return SETUP_FAILED };
    let zeros = [0u8; IDT_BYTES as usize];
    if !copy_through_tender(&disk, idt_base(), zeros.as_ptr() as u64) {
        return SETUP_FAILED;
    }
    // SAFETY: not safe: the attack (every exception gate is gone).
    unsafe { core::arch::asm!("ud2", options(nostack)) };
    println!("hostile: still running after ud2 with an empty IDT");
    ANSWERED
}

/// Points the #BP gate at `payload` with DPL 3, then executes `int3`.
fn at_cpl0(payload: unsafe extern "C" fn()) -> i32 {
    let Some(disk) = scratch_disk() else { return SETUP_FAILED };
    let idt = idt_base();
    let mut gates = [0u8; IDT_BYTES as usize];
    if !copy_through_tender(&disk, gates.as_mut_ptr() as u64, idt) {
        return SETUP_FAILED;
    }
    const BP: usize = 3 * 16;
    let mut low = [0u8; 8];
    low.copy_from_slice(&gates[BP..BP + 8]);
    let old = u64::from_le_bytes(low);
    // Keep guest-rt's code selector and IST; present, DPL 3, 64-bit interrupt gate.
    let handler = payload as usize as u64;
    let new = (handler & 0xffff) | (old & 0x0000_00ff_ffff_0000) | (0xee << 40) | ((handler >> 16) & 0xffff) << 48;
    gates[BP..BP + 8].copy_from_slice(&new.to_le_bytes());
    gates[BP + 8..BP + 16].copy_from_slice(&(handler >> 32).to_le_bytes());
    if !copy_through_tender(&disk, idt, gates.as_ptr() as u64) {
        return SETUP_FAILED;
    }
    // SAFETY: not safe: the attack (enters `payload` at CPL 0).
    unsafe { core::arch::asm!("int3", options(nostack)) };
    println!("hostile: returned from the CPL 0 payload");
    ANSWERED
}
