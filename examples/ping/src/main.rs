//! Answers ARP and ICMP echo at `--ipv4=ADDRESS/PREFIX` on the net device `service`;
//! `--count=N` stops after N echo requests.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "common.rs"]
mod common;

guest_rt::unikernel!(main, net: ["service"]);

fn main() -> i32 {
    common::serve(&["service"])
}
