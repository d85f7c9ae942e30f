//! How long [`Stack::wait`](super::Stack::wait) busy-polls before it sleeps in POLL, after
//! request traffic. The window adapts as KVM's halt polling does: it grows (from
//! [`START_NS`], doubling, up to `--poll-spin`) when the guest slept and the next frame came
//! sooner after it began to wait than the ceiling, so that a longer spin would have caught it;
//! it shrinks (halving, to 0 below [`START_NS`]) when a spin found nothing and the frame came
//! later than the ceiling or not at all. A client that answers quickly gets its frames read
//! with no exit; a slow one (or a host too busy to run it soon) costs no spinning.

/// The first window, and the smallest.
pub(crate) const START_NS: u64 = 10_000;

#[derive(Default)]
pub(crate) struct Window {
    ns: u64,
}

impl Window {
    /// The spin to make now, under the ceiling `max`.
    pub(crate) fn current(&self, max: u64) -> u64 {
        self.ns.min(max)
    }

    /// After a spin of `spun` ns that found no frame, the guest slept `slept` ns in POLL, which
    /// ended with a frame or not.
    pub(crate) fn after_sleep(&mut self, max: u64, spun: u64, slept: u64, frame: bool) {
        if frame && spun.saturating_add(slept) <= max {
            self.ns = self.ns.saturating_mul(2).max(START_NS).min(max);
        } else if spun > 0 {
            self.ns /= 2;
            if self.ns < START_NS {
                self.ns = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 100_000;

    #[test]
    fn grows_while_frames_come_soon_and_shrinks_when_spins_fail() {
        let mut w = Window::default();
        assert_eq!(w.current(MAX), 0, "no spinning before any traffic");
        w.after_sleep(MAX, 0, 40_000, true);
        assert_eq!(w.current(MAX), START_NS);
        for _ in 0..10 {
            w.after_sleep(MAX, w.current(MAX), 5_000, true);
        }
        assert_eq!(w.current(MAX), MAX, "grows up to the ceiling");
        assert_eq!(w.current(MAX / 4), MAX / 4, "a lower ceiling caps it at once");
        w.after_sleep(MAX, MAX, 5_000_000, true);
        assert_eq!(w.current(MAX), MAX / 2, "a late frame halves it");
        w.after_sleep(MAX, MAX / 2, 0, false);
        assert_eq!(w.current(MAX), MAX / 4, "a timeout too");
        for _ in 0..4 {
            w.after_sleep(MAX, w.current(MAX), 5_000_000, true);
        }
        assert_eq!(w.current(MAX), 0, "down to nothing");
        w.after_sleep(MAX, 0, 5_000_000, true);
        assert_eq!(w.current(MAX), 0, "a late frame does not grow it");
        w.after_sleep(MAX, 0, 50_000, false);
        assert_eq!(w.current(MAX), 0, "nor does a timeout");
    }
}
