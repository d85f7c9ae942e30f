//! Attacks on the net hypercalls (needs a net device `service`), one per run like `hostile`:
//! when the tender answers, the guest prints what it got and exits 42.
#![no_std]
#![no_main]

use guest_rt::abi::{HcBlock, HcNet, Hypercall};
use guest_rt::hypercall::hypercall;
use guest_rt::{NetDevice, println};

guest_rt::unikernel!(main, net: ["service"]);

/// Exit status of a run where the tender answered the attack and the guest went on.
const ANSWERED: i32 = 42;

/// A NET_READ struct with a pointer in it, so that it can be a `static` in .rodata. Same layout
/// as [`HcNet`].
#[repr(C)]
struct RoNet {
    handle: u64,
    data: *const u8,
    len: u64,
    ret: i32,
    _pad: u32,
}
// SAFETY: never written (it is in read-only memory); only its address is used.
unsafe impl Sync for RoNet {}
const _: () = assert!(size_of::<RoNet>() == size_of::<HcNet>());

/// Stands for a receive buffer; what matters is where the struct is.
static mut SINK: [u8; 2048] = [0; 2048];
static RODATA_NET_READ: RoNet = RoNet { handle: 1, data: (&raw const SINK).cast(), len: 2048, ret: 0, _pad: 0 };

fn net_raw(nr: Hypercall, handle: u64, data: u64, len: u64) -> (i32, u64) {
    let mut arg = HcNet { handle, data, len, ..Default::default() };
    // SAFETY: the tender checks (data, len) and the handle; that is what is under attack. Where
    // `data` is a real buffer it is one the caller owns for the call.
    unsafe { hypercall(nr, &mut arg) };
    (arg.ret, arg.len)
}

fn block_raw(nr: Hypercall, handle: u64, data: u64, len: u64) -> i32 {
    let mut arg = HcBlock { handle, offset: 0, data, len, ..Default::default() };
    // SAFETY: as above.
    unsafe { hypercall(nr, &mut arg) };
    arg.ret
}

fn main() -> i32 {
    let Ok(nic) = NetDevice::open("service") else { return 3 };
    let mem = guest_rt::mem_size();
    let mut buf = [0u8; 65536];
    // A broadcast frame of ours, so that whatever the tender lets through is harmless.
    buf[..6].fill(0xff);
    buf[6..12].copy_from_slice(&nic.mac());
    buf[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    let p = buf.as_mut_ptr() as u64;
    let h = nic.handle();
    let max = nic.max_frame() as u64;
    let attack = guest_rt::cmdline().split_whitespace().next().unwrap_or("");
    println!("hostile-net: {attack}");
    match attack {
        // Frame lengths: over MTU + 14, exactly that (allowed), under an Ethernet header, 0, and
        // a length no buffer has (EINVAL before the buffer is even looked at).
        "oversize-frame" => println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, max + 1).0),
        "max-frame" => println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, max).0),
        "short-frame" => println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, 13).0),
        "empty-frame" => println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, 0).0),
        "huge-frame" => println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, u64::MAX).0),
        // Receive buffers: 1 byte (the test sends a frame first: it is cut), 0 bytes.
        "tiny-read" => {
            let deadline = guest_rt::monotonic_ns() + 20_000_000_000;
            while guest_rt::device::wait(deadline) & nic.ready_bit() == 0 {
                if guest_rt::monotonic_ns() > deadline {
                    return 4;
                }
            }
            let (ret, len) = net_raw(Hypercall::NetRead, h, p, 1);
            println!("hostile-net: ret={ret} len={len}");
        }
        "empty-read" => {
            let (ret, len) = net_raw(Hypercall::NetRead, h, p, 0);
            println!("hostile-net: ret={ret} len={len}");
        }
        "wrong-handles" => {
            for bad in [0u64, h + 1, 63, 64, 1 << 63, u64::MAX] {
                println!("hostile-net: handle {bad:#x}: ret={}", net_raw(Hypercall::NetWrite, bad, p, 60).0);
            }
        }
        // Block calls on the NIC's handle (no block device is attached at all).
        "block-call-on-net-handle" => {
            println!("hostile-net: BLOCK_WRITE: ret={}", block_raw(Hypercall::BlockWrite, h, p, 512));
            println!("hostile-net: BLOCK_READ: ret={}", block_raw(Hypercall::BlockRead, h, p, 512));
        }
        // Buffers the tender must refuse: past the end of RAM, huge, read-only.
        "read-out-of-range" => {
            net_raw(Hypercall::NetRead, h, mem - 10, 1514);
        }
        "read-huge" => {
            net_raw(Hypercall::NetRead, h, p, u64::MAX);
        }
        "write-out-of-range" => {
            net_raw(Hypercall::NetWrite, h, mem - 10, 60);
        }
        "read-into-text" => {
            net_raw(Hypercall::NetRead, h, main as fn() -> i32 as usize as u64, 1514);
        }
        "read-struct-in-rodata" => {
            // SAFETY: an attack on the tender: the struct is read-only, so `ret` cannot be
            // written back; the tender must refuse before reading a frame.
            unsafe {
                core::arch::asm!("out dx, eax", in("dx") Hypercall::NetRead.port(),
                    in("eax") &raw const RODATA_NET_READ as usize as u32, options(nostack))
            };
        }
        _ => return 2,
    }
    println!("hostile-net: the tender answered and the guest goes on");
    ANSWERED
}
