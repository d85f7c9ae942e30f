//! The C memory functions the compiler calls. They are string instructions in inline asm: a Rust
//! loop here could be recognised by the compiler as, and turned into, a call to itself.
//!
//! The direction flag is clear on entry to any function (SysV ABI; RFLAGS starts at 0x2).

use core::arch::asm;

/// # Safety
/// C `memcpy`: `dest` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// C `memmove`: `dest` and `src` valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src` or past its end: a forward copy never reads a byte it wrote.
        // SAFETY: as for memcpy.
        unsafe { memcpy(dest, src, n) };
    } else {
        // SAFETY: the caller guarantees both ranges; n > 0 here, and copying backwards from the
        // last byte handles the overlap. DF is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
    }
    dest
}

/// # Safety
/// C `memset`: `dest` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// C `memcmp`: `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (end_a, end_b): (*const u8, *const u8);
    // SAFETY: the caller guarantees both ranges; `repe cmpsb` stops one past the first difference
    // (or after the last byte), which we read back below.
    unsafe {
        asm!("repe cmpsb", inout("rcx") n => _, inout("rsi") a => end_a, inout("rdi") b => end_b,
             options(readonly, nostack));
    }
    // SAFETY: both pointers advanced by at least one byte inside their ranges.
    unsafe { i32::from(*end_a.sub(1)) - i32::from(*end_b.sub(1)) }
}

/// # Safety
/// C `bcmp`: as `memcmp`, only zero or non-zero matters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
