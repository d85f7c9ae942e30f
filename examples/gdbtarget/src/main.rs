//! The guest of the gdb tests (`monitor/tests/debug.rs`); build it with `--profile debug-guest`
//! to debug it with symbols and frame info.
//!
//! No argument: prints `answer: N` with N = `step(ANSWER)` and exits with N. `busy`: computes
//! forever at CPL 3. `poll`: waits in POLL forever.

#![no_std]
#![no_main]

guest_rt::unikernel!(main);

/// gdb's `set var ANSWER = ...` changes what the guest prints (exported, so it stays in memory).
#[unsafe(no_mangle)]
pub static mut ANSWER: u32 = 41;

/// A function to break in.
#[inline(never)]
#[unsafe(no_mangle)]
pub fn step(x: u32) -> u32 {
    core::hint::black_box(x) + 1
}

fn main() -> i32 {
    match guest_rt::cmdline() {
        "busy" => {
            let mut n = 0u64;
            loop {
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        "poll" => loop {
            guest_rt::hypercall::poll(1_000_000_000);
        },
        _ => {}
    }
    // SAFETY: one thread; only a debugger writes it, while the guest is stopped.
    let answer = step(unsafe { (&raw const ANSWER).read_volatile() });
    guest_rt::println!("answer: {answer}");
    answer as i32
}
