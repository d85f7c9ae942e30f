//! The runtime of tender unikernels: a `#![no_std]` binary for the host target, booted by any
//! Solo5 hvt (ABI v2) tender.
//!
//! `_start` (see `boot`) sets up page tables, GDT, TSS and IDT of its own and drops to CPL 3;
//! all Rust code, the application's included, runs at CPL 3. A guest declares itself with
//! [`unikernel!`], which also writes the ABI and manifest notes the tender checks:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! guest_rt::unikernel!(main, block: ["storage"], net: ["service0"]);
//! fn main() -> i32 {
//!     guest_rt::println!("cmdline: {}", guest_rt::cmdline());
//!     0
//! }
//! ```
//!
//! Guests link with `guest-build`'s linker script (one line in their `build.rs`).
#![cfg_attr(not(test), no_std)]
// Host unit tests leave out the guest-only boot path, which is what uses the rest.
#![cfg_attr(test, allow(dead_code))]

extern crate alloc;

mod boot;
mod bootinfo;
pub mod console;
mod cpu;
pub mod device;
mod heap;
pub mod hypercall;
pub mod net;
pub mod ring;
pub mod time;
mod trap;

#[cfg(not(test))]
mod mem;
#[cfg(not(test))]
mod panic;

pub use bootinfo::{cmdline, mem_size};
pub use console::puts;
pub use device::{BlockDevice, NetDevice};
pub use guest_abi as abi;
pub use heap::{STACK_RESERVE, heap_free};
pub use time::{monotonic_ns, wall_clock_ns, yield_until};

use guest_abi::{MftEntry, SOLO5_EXIT_ABORT};

/// Ends the unikernel with `status` (the tender's exit status, truncated to 8 bits by the OS),
/// once the frames it sent through the net ring have left.
pub fn exit(status: i32) -> ! {
    ring::flush();
    hypercall::halt(status, 0)
}

/// Ends the unikernel with status 255, as Solo5's `solo5_abort` does.
pub fn abort() -> ! {
    exit(SOLO5_EXIT_ABORT)
}

/// Copies the device list of [`unikernel!`] into the manifest array, checking at compile time that
/// names are unique per type.
#[doc(hidden)]
pub const fn __manifest_entries<const N: usize>(devices: &[MftEntry]) -> [MftEntry; N] {
    assert!(devices.len() == N);
    let mut out = [MftEntry::RESERVED; N];
    let mut i = 0;
    while i < N {
        let mut j = 1;
        while j < i {
            assert!(
                devices[i].dev_type != devices[j].dev_type || !same_name(&devices[i].name, &devices[j].name),
                "a device name is declared twice"
            );
            j += 1;
        }
        out[i] = devices[i];
        i += 1;
    }
    out
}

const fn same_name(a: &[u8], b: &[u8]) -> bool {
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares the unikernel: its `main` (`fn() -> i32`, the return value is the exit status) and its
/// devices, by name, in manifest order (block devices first, then net devices; handles are 1, 2,
/// ... in that order).
///
/// ```ignore
/// guest_rt::unikernel!(main);
/// guest_rt::unikernel!(main, block: ["storage"], net: ["service0", "service1"]);
/// ```
///
/// Emits the Solo5 ABI note and manifest note, and the entry `guest-rt` calls at CPL 3.
#[macro_export]
macro_rules! unikernel {
    ($main:path $(, block: [$($block:literal),* $(,)?])? $(, net: [$($net:literal),* $(,)?])? $(,)?) => {
        #[used]
        #[unsafe(link_section = ".note.solo5.abi")]
        static __GUEST_RT_ABI_NOTE: $crate::abi::AbiNote = $crate::abi::AbiNote::HVT;

        const __GUEST_RT_DEVICES: &[$crate::abi::MftEntry] = &[
            $crate::abi::MftEntry::RESERVED,
            $($($crate::abi::MftEntry::new($block, $crate::abi::MFT_DEV_BLOCK_BASIC),)*)?
            $($($crate::abi::MftEntry::new($net, $crate::abi::MFT_DEV_NET_BASIC),)*)?
        ];

        #[used]
        #[unsafe(link_section = ".note.solo5.manifest")]
        static __GUEST_RT_MANIFEST: $crate::abi::ManifestNote<{ __GUEST_RT_DEVICES.len() }> =
            $crate::abi::ManifestNote::new($crate::__manifest_entries(__GUEST_RT_DEVICES));

        #[unsafe(no_mangle)]
        fn __guest_rt_main() -> i32 {
            $main()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::{MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC};

    #[test]
    fn same_name_on_both_types_is_fine() {
        let d = [MftEntry::RESERVED, MftEntry::new("a", MFT_DEV_BLOCK_BASIC), MftEntry::new("a", MFT_DEV_NET_BASIC)];
        let m: [MftEntry; 3] = __manifest_entries(&d);
        assert_eq!(m[2].dev_type, MFT_DEV_NET_BASIC);
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn duplicate_names_are_rejected() {
        let d = [MftEntry::RESERVED, MftEntry::new("a", MFT_DEV_NET_BASIC), MftEntry::new("a", MFT_DEV_NET_BASIC)];
        let _: [MftEntry; 3] = __manifest_entries(&d);
    }
}
