//! Measures, from inside the guest, what each hypercall costs and how fast the block device is.
//! Used by `scripts/bench.sh`; the figures are in docs/PERFORMANCE.md.
//!
//! `bench calls N` times N of each cheap hypercall (WALLTIME, PUTS of 0 bytes, POLL with a 0
//! timeout) and N block reads and writes of 512 B and 64 KiB; `bench seq BATCH PASSES` reads and
//! then writes the whole disk sequentially in requests of BATCH bytes, PASSES times each (default
//! 1), and prints the median pass (a pass over a small, cached image takes milliseconds, so one
//! pass is at the mercy of whatever else the host does then). Block requests go through the
//! tender's block ring when it offers one; `--no-ring` keeps them on the hypercalls.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use guest_rt::{BlockDevice, hypercall, monotonic_ns, println};

guest_rt::unikernel!(main, block: ["storage"]);

fn per_call(n: u64, mut f: impl FnMut(u64)) -> u64 {
    f(0); // warm up (first touch of buffers and host pages)
    let start = monotonic_ns();
    for i in 0..n {
        f(i);
    }
    (monotonic_ns() - start) / n.max(1)
}

fn calls(disk: &BlockDevice, n: u64) {
    println!(
        "bench: walltime: {} ns per call",
        per_call(n, |_| {
            let _ = hypercall::walltime();
        })
    );
    println!("bench: puts(0 bytes): {} ns per call", per_call(n, |_| hypercall::puts(&[])));
    println!(
        "bench: poll(0): {} ns per call",
        per_call(n, |_| {
            let _ = hypercall::poll(0);
        })
    );
    for size in [512usize, 64 << 10] {
        let mut buf = vec![0u8; size];
        let slots = (disk.capacity() / size as u64).max(1);
        let read = per_call(n, |i| {
            let _ = disk.read(i % slots * size as u64, &mut buf);
        });
        let write = per_call(n, |i| {
            let _ = disk.write(i % slots * size as u64, &buf);
        });
        println!("bench: block_read({size} B): {read} ns per call");
        println!("bench: block_write({size} B): {write} ns per call");
    }
}

fn seq(disk: &BlockDevice, batch: u64, passes: usize) {
    let batch = (batch / disk.block_size()).max(1) * disk.block_size();
    let mut buf = vec![0u8; batch as usize];
    for (what, write) in [("read", false), ("write", true)] {
        let mut times = vec![0u64; passes.max(1)];
        for time in times.iter_mut() {
            let start = monotonic_ns();
            let mut offset = 0;
            while offset < disk.capacity() {
                let len = batch.min(disk.capacity() - offset) as usize;
                let r = if write { disk.write(offset, &buf[..len]) } else { disk.read(offset, &mut buf[..len]) };
                if r.is_err() {
                    println!("bench: I/O error at {offset}");
                    guest_rt::exit(1);
                }
                offset += len as u64;
            }
            *time = (monotonic_ns() - start).max(1);
        }
        times.sort_unstable();
        let ns = times[times.len() / 2];
        println!(
            "bench: sequential {what}, {batch} B per request: {} MB/s (median of {} passes over {} bytes, {} us)",
            disk.capacity() * 1000 / ns,
            times.len(),
            disk.capacity(),
            ns / 1000
        );
    }
}

fn main() -> i32 {
    let mut args = guest_rt::ring::args();
    let mode = args.next().unwrap_or("calls");
    let arg: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let passes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let Ok(disk) = BlockDevice::open("storage") else {
        println!("bench: no storage device");
        return 2;
    };
    println!("bench: block ring {}", if guest_rt::ring::block_active() { "on" } else { "off" });
    match mode {
        "calls" => calls(&disk, arg),
        "seq" => seq(&disk, arg, passes),
        _ => {
            println!("bench: unknown mode {mode}");
            return 2;
        }
    }
    0
}
