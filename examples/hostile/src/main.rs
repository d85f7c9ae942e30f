//! A hostile guest: each run makes ONE attack on the tender through the ABI (the first word of
//! the command line names it). If the tender answers instead of ending the run, the guest prints
//! what it got and exits 0, so a test sees exactly how the tender reacted. The table of attacks
//! and expected outcomes is in monitor/tests/hostile.rs.
#![no_std]
#![no_main]

extern crate alloc;

use guest_rt::abi::{HcBlock, HcPoll, HcPuts, HcWalltime, Hypercall};
use guest_rt::hypercall::{self, hypercall};
use guest_rt::{BlockDevice, println};

guest_rt::unikernel!(main, block: ["storage"]);

/// Lives in .rodata: mapped read-only on the host by the tender.
static RODATA_WALLTIME: HcWalltime = HcWalltime { nsecs: 0 };
static RODATA_POLL: HcPoll = HcPoll { timeout_nsecs: 0, ready_set: 0, ret: 0, _pad: 0 };

/// An `outl` of `value` to `port` (what a hypercall is), for pointers no Rust reference can hold.
fn raw_out(port: u16, value: u32) {
    // SAFETY: an attack on the tender; the guest's own memory is not touched.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack)) };
}

fn puts_raw(data: u64, len: u64) {
    let mut arg = HcPuts { data, len };
    // SAFETY: the tender checks (data, len); that check is what is under attack.
    unsafe { hypercall(Hypercall::Puts, &mut arg) };
}

fn block_raw(nr: Hypercall, handle: u64, offset: u64, data: u64, len: u64) -> i32 {
    let mut arg = HcBlock { handle, offset, data, len, ..Default::default() };
    // SAFETY: as above; the tender must refuse or answer EINVAL.
    unsafe { hypercall(nr, &mut arg) };
    arg.ret
}

fn text_address() -> u64 {
    main as fn() -> i32 as usize as u64
}

fn main() -> i32 {
    let mem = guest_rt::mem_size();
    let attack = guest_rt::cmdline().split_whitespace().next().unwrap_or("");
    println!("hostile: {attack}");
    match attack {
        // Buffers outside guest RAM, straddling its end, wrapping around 2^64.
        "puts-out-of-range" => puts_raw(mem + 0x1000, 16),
        "puts-straddle" => puts_raw(mem - 8, 16),
        "puts-ends-at-mem-size" => puts_raw(mem - 16, 16),
        "puts-wrap" => puts_raw(0x20_0000, u64::MAX - 0x1000),
        "puts-huge" => puts_raw(0x20_0000, 1 << 62),
        // The low area is guest RAM: the ABI lets the guest print it (it is all zeros).
        "puts-low-area" => puts_raw(0x1000, 8),
        // The argument struct itself outside RAM, and at the very end of it.
        "struct-out-of-range" => raw_out(Hypercall::Walltime.port(), (mem + 0x1000) as u32),
        "struct-straddle" => raw_out(Hypercall::Walltime.port(), (mem - 4) as u32),
        // Handles: none of these is a block device.
        "bad-handles" => {
            let mut buf = [0u8; 512];
            let p = buf.as_mut_ptr() as u64;
            for h in [0u64, 2, 63, 64, 1 << 32, 1 << 63, u64::MAX] {
                println!("hostile: handle {h:#x}: ret={}", block_raw(Hypercall::BlockRead, h, 0, p, 512));
            }
        }
        // Offsets and lengths against a real device; block 0 must survive all of it.
        "block-ranges" => return block_ranges(),
        "block-buffer-out-of-range" => {
            block_raw(Hypercall::BlockRead, 1, 0, mem, 512);
        }
        // Out-parameters aimed at read-only memory: .rodata and .text.
        "walltime-into-rodata" => raw_out(Hypercall::Walltime.port(), &RODATA_WALLTIME as *const _ as u32),
        "poll-into-rodata" => raw_out(Hypercall::Poll.port(), &RODATA_POLL as *const _ as u32),
        "block-read-into-text" => {
            block_raw(Hypercall::BlockRead, 1, 0, text_address() & !0xfff, 512);
        }
        // A store into the guest's own text: the host mapping is read-only.
        "write-text" => {
            let p = core::ptr::with_exposed_provenance_mut::<u8>(text_address() as usize);
            // SAFETY: not safe: the attack itself.
            unsafe { p.write_volatile(0xcc) };
        }
        // Port accesses the ABI does not allow (inside the ports guest-rt's TSS opens).
        "outb" => {
            // SAFETY: an attack on the tender.
            unsafe { core::arch::asm!("out dx, al", in("dx") 0x501u16, in("al") 0u8, options(nostack)) };
        }
        "inl" => {
            let v: u32;
            // SAFETY: an attack on the tender.
            unsafe { core::arch::asm!("in eax, dx", in("dx") 0x501u16, out("eax") v, options(nostack)) };
            println!("hostile: inl gave {v}");
        }
        "rep-outsd" => {
            let data = [0u32; 2];
            // SAFETY: an attack on the tender: two dwords in one exit.
            unsafe {
                core::arch::asm!("rep outsd", in("dx") 0x501u16, inout("rsi") data.as_ptr() => _, inout("rcx") 2u64 => _, options(nostack))
            };
        }
        "port-outside-bitmap" => raw_out(0x500, 0),
        // HALT with a cookie that does not fit, and one that does.
        "halt-cookie-straddle" => hypercall::halt(9, mem - 100),
        "halt-cookie-out-of-range" => hypercall::halt(9, mem + 0x1000),
        "halt-cookie-ok" => hypercall::halt(9, 0x20_0000),
        // Privileged instruction at CPL 3: the CPU refuses, guest-rt reports the trap.
        "hlt" => {
            // SAFETY: an attack (it faults).
            unsafe { core::arch::asm!("hlt") };
        }
        "loop" => loop {
            core::hint::spin_loop();
        },
        _ => {
            println!("hostile: unknown attack");
            return 2;
        }
    }
    println!("hostile: the tender answered and the guest goes on");
    0
}

fn block_ranges() -> i32 {
    let Ok(disk) = BlockDevice::open("storage") else { return 3 };
    let (cap, bs) = (disk.capacity(), disk.block_size());
    let mut known = alloc::vec![0x5au8; bs as usize];
    if disk.write(0, &known).is_err() {
        return 3;
    }
    let p = known.as_mut_ptr() as u64;
    let cases = [
        ("offset at capacity", Hypercall::BlockWrite, cap, bs),
        ("offset past capacity", Hypercall::BlockWrite, cap + bs, bs),
        ("offset+len past capacity", Hypercall::BlockWrite, cap - bs, 2 * bs),
        ("offset+len overflows", Hypercall::BlockWrite, u64::MAX - bs + 1, 2 * bs),
        ("huge len", Hypercall::BlockWrite, 0, u64::MAX),
        ("negative len", Hypercall::BlockRead, 0, (-512i64) as u64),
        ("misaligned offset", Hypercall::BlockWrite, 1, bs),
        ("partial block", Hypercall::BlockWrite, 0, bs - 1),
    ];
    for (what, nr, offset, len) in cases {
        println!("hostile: {what}: ret={}", block_raw(nr, 1, offset, p, len));
    }
    let mut back = alloc::vec![0u8; bs as usize];
    let intact = disk.read(0, &mut back).is_ok() && back.iter().all(|&b| b == 0x5a);
    println!("hostile: block 0 intact: {intact}");
    if intact { 0 } else { 1 }
}
