//! Clocks: monotonic time from the TSC (invariant on hvt hosts), wall-clock time from the tender.

use core::sync::atomic::{AtomicU64, Ordering};

/// Fixed-point shift of the ns-per-tick multiplier.
const SCALE_SHIFT: u32 = 32;
const NS_PER_SEC: u64 = 1_000_000_000;

static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static NS_PER_TICK: AtomicU64 = AtomicU64::new(0);

/// `ns per tick << SCALE_SHIFT`; fits in u64 for any frequency of at least 1 Hz, and is exact to
/// better than 1 ppb at GHz frequencies.
const fn multiplier(freq_hz: u64) -> u64 {
    let freq = if freq_hz == 0 { NS_PER_SEC } else { freq_hz };
    (((NS_PER_SEC as u128) << SCALE_SHIFT) / freq as u128) as u64
}

/// 64 x 64 -> 128-bit product, so no tick count can overflow.
const fn ticks_to_ns(ticks: u64, multiplier: u64) -> u64 {
    ((ticks as u128 * multiplier as u128) >> SCALE_SHIFT) as u64
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter, allowed at CPL 3 (CR4.TSD is clear).
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub(crate) fn init(cpu_cycle_freq: u64) {
    NS_PER_TICK.store(multiplier(cpu_cycle_freq), Ordering::Relaxed);
    TSC_AT_BOOT.store(rdtsc(), Ordering::Relaxed);
}

/// Monotonic time in nanoseconds since boot.
pub fn monotonic_ns() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ticks_to_ns(ticks, NS_PER_TICK.load(Ordering::Relaxed))
}

/// Wall-clock time in nanoseconds since the Unix epoch (one hypercall).
pub fn wall_clock_ns() -> u64 {
    crate::hypercall::walltime()
}

/// Blocks until the monotonic `deadline_ns` or until a net device is readable, whichever comes
/// first; returns the set of ready devices (bit `i` = manifest index `i`).
pub fn yield_until(deadline_ns: u64) -> u64 {
    crate::hypercall::poll(deadline_ns.saturating_sub(monotonic_ns()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling() {
        let m = multiplier(2_599_998_000);
        assert!(ticks_to_ns(2_599_998_000, m).abs_diff(NS_PER_SEC) <= 1);
        assert_eq!(ticks_to_ns(0, m), 0);
        // A year of ticks at 5 GHz does not overflow, and the error stays under 1 ppb (the tender
        // gives the frequency in kHz steps, which is coarser than that).
        let year_ns = NS_PER_SEC * 3600 * 24 * 365;
        let ns = ticks_to_ns(5 * year_ns, multiplier(5_000_000_000));
        assert!(ns.abs_diff(year_ns) < year_ns / NS_PER_SEC);
        assert_eq!(ticks_to_ns(1000, multiplier(NS_PER_SEC)), 1000);
        assert_eq!(ticks_to_ns(1, multiplier(1)), NS_PER_SEC);
        assert_eq!(multiplier(0), multiplier(NS_PER_SEC));
    }
}
