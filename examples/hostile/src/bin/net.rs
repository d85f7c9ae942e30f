//! Attacks on the net hypercalls (needs a net device `service`).
#![no_std]
#![no_main]

use guest_rt::abi::{HcNet, Hypercall};
use guest_rt::hypercall::hypercall;
use guest_rt::{NetDevice, println};

guest_rt::unikernel!(main, net: ["service"]);

fn net_raw(nr: Hypercall, handle: u64, data: u64, len: u64) -> (i32, u64) {
    let mut arg = HcNet { handle, data, len, ..Default::default() };
    // SAFETY: the tender checks (data, len) and the handle; that is what is under attack.
    unsafe { hypercall(nr, &mut arg) };
    (arg.ret, arg.len)
}

fn main() -> i32 {
    let Ok(nic) = NetDevice::open("service") else { return 3 };
    let mem = guest_rt::mem_size();
    let mut buf = [0u8; 65536];
    let p = buf.as_mut_ptr() as u64;
    let h = nic.handle();
    let attack = guest_rt::cmdline().split_whitespace().next().unwrap_or("");
    println!("hostile-net: {attack}");
    match attack {
        "oversize-frame" => {
            println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, nic.max_frame() as u64 + 1).0)
        }
        "empty-frame" => println!("hostile-net: ret={}", net_raw(Hypercall::NetWrite, h, p, 0).0),
        "tiny-read" => {
            // Wait for a frame (the test pings), then read it into one byte.
            let deadline = guest_rt::monotonic_ns() + 20_000_000_000;
            while guest_rt::device::wait(deadline) & nic.ready_bit() == 0 {
                if guest_rt::monotonic_ns() > deadline {
                    return 4;
                }
            }
            let (ret, len) = net_raw(Hypercall::NetRead, h, p, 1);
            println!("hostile-net: ret={ret} len={len}");
        }
        "wrong-handles" => {
            for bad in [0u64, h + 1, 63, 1 << 63] {
                println!("hostile-net: handle {bad:#x}: ret={}", net_raw(Hypercall::NetWrite, bad, p, 60).0);
            }
        }
        "read-out-of-range" => {
            net_raw(Hypercall::NetRead, h, mem - 10, 1514);
        }
        _ => return 2,
    }
    0
}
