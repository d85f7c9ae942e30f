//! Hypercalls: an `outl` of the argument struct's address to port `0x500 + nr`. The tender reads
//! and writes the struct in place, so the asm clobbers memory (the default for `asm!`).
//!
//! The wrappers return Solo5 result codes (`SOLO5_R_*`) as they come.

use guest_abi::{HcBlock, HcHalt, HcNet, HcPoll, HcPuts, HcWalltime, Hypercall};

/// Issues hypercall `nr` with `arg`.
///
/// # Safety
///
/// `arg` must be the argument struct of `nr`, and every guest address in it must be valid for
/// what the tender does there (reads, or writes for the read calls).
pub unsafe fn hypercall<T>(nr: Hypercall, arg: &mut T) {
    // Guest memory is at most 4 GiB, so the address fits the 32 bits the ABI passes.
    let gpa = arg as *mut T as u64 as u32;
    // SAFETY: the caller vouches for the struct; the tender accesses only what it describes.
    unsafe { core::arch::asm!("out dx, eax", in("dx") nr.port(), in("eax") gpa, options(nostack, preserves_flags)) };
}

/// Wall-clock time, in nanoseconds since the Unix epoch.
pub fn walltime() -> u64 {
    let mut arg = HcWalltime::default();
    // SAFETY: WALLTIME only writes its own struct.
    unsafe { hypercall(Hypercall::Walltime, &mut arg) };
    arg.nsecs
}

/// Writes `data` to the console as it is, in one exit.
pub fn puts(data: &[u8]) {
    let mut arg = HcPuts { data: data.as_ptr() as u64, len: data.len() as u64 };
    // SAFETY: the tender reads `data`, which is borrowed for the call.
    unsafe { hypercall(Hypercall::Puts, &mut arg) };
}

/// Waits at most `timeout_ns` for a net device to become readable; returns the ready set (bit `i`
/// is the device with manifest index `i`).
pub fn poll(timeout_ns: u64) -> u64 {
    let mut arg = HcPoll { timeout_nsecs: timeout_ns, ..Default::default() };
    // SAFETY: POLL only writes its own struct.
    unsafe { hypercall(Hypercall::Poll, &mut arg) };
    arg.ready_set
}

/// Ends the run with `status`; `cookie` is 0 or the address of up to 512 bytes for the tender.
pub fn halt(status: i32, cookie: u64) -> ! {
    let mut arg = HcHalt { cookie, exit_status: status, _pad: 0 };
    // SAFETY: the tender reads the struct (and the cookie area, which it range-checks).
    unsafe { hypercall(Hypercall::Halt, &mut arg) };
    // The tender never resumes a halted guest.
    loop {
        core::hint::spin_loop();
    }
}

/// Writes `data` at byte `offset` of block device `handle`.
pub fn block_write(handle: u64, offset: u64, data: &[u8]) -> i32 {
    let mut arg = HcBlock { handle, offset, data: data.as_ptr() as u64, len: data.len() as u64, ..Default::default() };
    // SAFETY: the tender reads `data`, which is borrowed for the call.
    unsafe { hypercall(Hypercall::BlockWrite, &mut arg) };
    arg.ret
}

/// Reads `data.len()` bytes at byte `offset` of block device `handle` into `data`.
pub fn block_read(handle: u64, offset: u64, data: &mut [u8]) -> i32 {
    let mut arg =
        HcBlock { handle, offset, data: data.as_mut_ptr() as u64, len: data.len() as u64, ..Default::default() };
    // SAFETY: the tender writes at most `data.len()` bytes into `data`, borrowed mutably.
    unsafe { hypercall(Hypercall::BlockRead, &mut arg) };
    arg.ret
}

/// Sends one Ethernet frame on net device `handle`.
pub fn net_write(handle: u64, frame: &[u8]) -> i32 {
    let mut arg = HcNet { handle, data: frame.as_ptr() as u64, len: frame.len() as u64, ..Default::default() };
    // SAFETY: the tender reads `frame`, which is borrowed for the call.
    unsafe { hypercall(Hypercall::NetWrite, &mut arg) };
    arg.ret
}

/// Receives one frame from net device `handle` into `buf`; returns the result code and the length.
pub fn net_read(handle: u64, buf: &mut [u8]) -> (i32, usize) {
    let mut arg = HcNet { handle, data: buf.as_mut_ptr() as u64, len: buf.len() as u64, ..Default::default() };
    // SAFETY: the tender writes at most `buf.len()` bytes into `buf`, borrowed mutably.
    unsafe { hypercall(Hypercall::NetRead, &mut arg) };
    (arg.ret, (arg.len as usize).min(buf.len()))
}
