//! `ping` on two NICs, `service0` and `service1`, each with its own `--ipv4=`.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../common.rs"]
mod common;

guest_rt::unikernel!(main, net: ["service0", "service1"]);

fn main() -> i32 {
    common::serve(&["service0", "service1"])
}
