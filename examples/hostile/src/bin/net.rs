//! Attacks on the net hypercalls and on the shared net ring (needs a net device `service`), one
//! per run like `hostile`: when the tender answers, the guest prints what it got and exits 42.
//! The `ring-*` attacks write the ring directly, the way a broken or hostile runtime could.
#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use guest_rt::abi::{
    HcBlock, HcNet, Hypercall, NET_RING_COM_HEAD, NET_RING_COM_TAIL, NET_RING_ENT_HEAD, NET_RING_ENT_TAIL,
    NET_RING_KICK_PORT, NET_RING_OP_READ, NET_RING_OP_WRITE, NetRingEntry,
};
use guest_rt::hypercall::hypercall;
use guest_rt::{NetDevice, println};

#[path = "../raw_ring.rs"]
mod raw_ring;
use raw_ring::{RawRing, entry, kick};

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

/// A ring attack that the tender must end: the guest spins until it is stopped.
fn until_stopped() -> i32 {
    let deadline = guest_rt::monotonic_ns() + 10_000_000_000;
    while guest_rt::monotonic_ns() < deadline {}
    println!("hostile-net: still running 10 s after the attack");
    5
}

fn ring_attack(attack: &str, ring: RawRing, h: u64, p: u64, mem: u64, max: u64) -> i32 {
    let (write, read) = (NET_RING_OP_WRITE, NET_RING_OP_READ);
    match attack {
        "ring-write-out-of-range" => ring.post(&[entry(write, h, mem - 10, 60)]),
        "ring-read-out-of-range" => ring.post(&[entry(read, h, mem - 10, 1514)]),
        "ring-read-huge" => ring.post(&[entry(read, h, p, u32::MAX)]),
        "ring-read-into-text" => ring.post(&[entry(read, h, main as fn() -> i32 as usize as u64, 1514)]),
        "ring-read-into-ring" => ring.post(&[entry(read, h, ring.0, 1514)]),
        // A waiting read (tender's TENDER_FEATURE_WAIT_READ) is checked like any read.
        "ring-read-waiting-into-text" => {
            ring.post(&[NetRingEntry { offset: u64::MAX, ..entry(read, h, main as fn() -> i32 as usize as u64, 1514) }])
        }
        // Waiting reads that ask to wait ~584 years: each is answered (AGAIN once tender's cap is
        // over, or a frame the host's network stack sent).
        "ring-wait-forever" => {
            for _ in 0..100 {
                let Some(c) = ring.call(NetRingEntry { offset: u64::MAX, ..entry(read, h, p, 1514) }) else {
                    return 6;
                };
                if c.ret != 0 && c.ret != 1 {
                    println!("hostile-net: waiting read ret={}", c.ret);
                }
            }
            println!("hostile-net: 100 waiting reads answered");
        }
        // The tail a whole ring and more ahead of the head.
        "ring-index-jump" => ring.publish(ring.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed).wrapping_add(5000)),
        "ring-index-behind" => ring.publish(ring.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed).wrapping_sub(1)),
        // Reads on bad handles are answered EINVAL; writes on them, unknown operations and
        // frames of impossible sizes are dropped; the ring goes on.
        "ring-bad-entries" => {
            let bad = [0u64, h + 1, 63, 64, u64::from(u32::MAX)];
            let mut entries: [NetRingEntry; 15] = Default::default();
            for (i, b) in bad.iter().enumerate() {
                entries[i] = entry(read, *b, p, 1514);
                entries[5 + i] = entry(write, *b, p, 60);
            }
            entries[10] = entry(0, h, p, 60);
            entries[11] = entry(u32::MAX, h, p, 60);
            entries[12] = entry(write, h, p, 0);
            entries[13] = entry(write, h, p, 13);
            entries[14] = entry(write, h, p, max as u32 + 1);
            let first_commit = ring.index(NET_RING_COM_HEAD).load(Ordering::Relaxed);
            ring.post(&entries);
            if !ring.wait_taken() {
                return 6;
            }
            for i in 0..5 {
                println!("hostile-net: ring read ret={}", ring.commit(first_commit + i).ret);
            }
            println!("hostile-net: every entry taken");
        }
        // The host-owned indices overwritten: the tender keeps its own and answers a read where
        // its own count says.
        "ring-forged-host-indices" => {
            ring.index(NET_RING_ENT_HEAD).store(0x1234_5678, Ordering::Relaxed);
            ring.index(NET_RING_COM_TAIL).store(0xdead_beef, Ordering::Relaxed);
            ring.post(&[entry(read, h, p, 1514)]);
            let deadline = guest_rt::monotonic_ns() + 10_000_000_000;
            while ring.index(NET_RING_COM_TAIL).load(Ordering::Acquire) == 0xdead_beef {
                if guest_rt::monotonic_ns() > deadline {
                    return 6;
                }
            }
            let c = ring.commit(0);
            println!("hostile-net: com_tail={} ret={}", ring.index(NET_RING_COM_TAIL).load(Ordering::Relaxed), c.ret);
        }
        "ring-kick-storm" => (0..10_000).for_each(|_| kick()),
        // The kick is a 4-byte write: KVM only turns those into the eventfd signal.
        "ring-kick-byte" => {
            // SAFETY: a 1-byte write to the kick port; the tender must refuse it.
            unsafe { core::arch::asm!("out dx, al", in("dx") NET_RING_KICK_PORT, in("al") 0u8, options(nostack)) };
        }
        // A bad entry and HALT at once, without waiting: the tender's last pass finds it.
        "ring-write-out-of-range-then-halt" => {
            ring.post(&[entry(write, h, mem - 10, 60)]);
            guest_rt::hypercall::halt(ANSWERED, 0);
        }
        _ => return 2,
    }
    if attack.ends_with("out-of-range") || attack.starts_with("ring-read-") || attack.starts_with("ring-index-") {
        return until_stopped();
    }
    println!("hostile-net: the tender answered and the guest goes on");
    ANSWERED
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
    if attack.starts_with("ring-") {
        let Some(base) = guest_rt::ring::address() else {
            println!("hostile-net: the tender offers no net ring");
            return 7;
        };
        return ring_attack(attack, RawRing(base), h, p, mem, max);
    }
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
