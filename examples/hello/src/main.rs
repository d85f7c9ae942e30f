//! Hello world, plus modes chosen by the first word of the command line:
//! `fail [N]` exits with N (default 1), `panic` panics, `fault` reads an unmapped address,
//! `alloc` exercises the heap, `time [MS]` the clocks (yielding MS ms, default 10).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use guest_rt::println;

guest_rt::unikernel!(main);

fn main() -> i32 {
    let cmdline = guest_rt::cmdline();
    println!("Hello, world!");
    println!("cmdline: {cmdline}");
    let mut words = cmdline.split_ascii_whitespace();
    match words.next() {
        Some("fail") => words.next().and_then(|n| n.parse().ok()).unwrap_or(1),
        Some("panic") => panic!("hello: panicking as asked"),
        Some("fault") => fault(),
        Some("alloc") => alloc_check(),
        Some("time") => time_check(words.next().and_then(|ms| ms.parse().ok()).unwrap_or(10)),
        _ => 0,
    }
}

fn fault() -> i32 {
    let unmapped = core::ptr::without_provenance::<u8>(0x8);
    // SAFETY: not safe at all: the page is unmapped on purpose, to show the trap report.
    i32::from(unsafe { unmapped.read_volatile() })
}

fn alloc_check() -> i32 {
    // 2 MiB of u32, a 150 kB string grown piece by piece, and a 1 MiB box.
    let v: Vec<u32> = (0..1 << 19).collect();
    let mut s = String::new();
    for i in 0..100_000 {
        s.push_str(if i % 2 == 0 { "ab" } else { "c" });
    }
    let ok = v.iter().enumerate().all(|(i, &x)| x == i as u32) && s.len() == 150_000 && s.ends_with("abc");
    drop(v);
    let boxed = alloc::boxed::Box::new([7u8; 1 << 20]);
    if ok && boxed.iter().all(|&b| b == 7) {
        println!("alloc ok");
        0
    } else {
        println!("alloc FAILED");
        1
    }
}

fn time_check(ms: u64) -> i32 {
    let start = guest_rt::monotonic_ns();
    let wall = guest_rt::wall_clock_ns();
    println!("monotonic: {start} ns");
    println!("wall clock: {}.{:09} s since the epoch", wall / 1_000_000_000, wall % 1_000_000_000);
    guest_rt::yield_until(start + ms * 1_000_000);
    println!("yielded: {} ms", (guest_rt::monotonic_ns() - start) / 1_000_000);
    0
}
