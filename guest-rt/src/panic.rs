//! The panic handler: one line, then abort (status 255).

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    // A panic while printing the first one must not recurse.
    if !PANICKING.swap(true, Ordering::Relaxed) {
        match info.location() {
            Some(at) => crate::println!("guest-rt: panic: {} at {}:{}", info.message(), at.file(), at.line()),
            None => crate::println!("guest-rt: panic: {}", info.message()),
        }
    }
    crate::abort()
}

/// The precompiled `alloc` (built to unwind) refers to the unwinder's personality routine from its
/// landing pads; without LTO they reach the linker. With `panic = "abort"` nothing ever unwinds, so
/// this is never called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {
    crate::abort()
}

/// Likewise for the landing pads' resume call (reached from `alloc::fmt::format`, for one).
#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    crate::abort()
}
