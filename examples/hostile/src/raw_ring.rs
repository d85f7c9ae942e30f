//! The shared ring driven by hand, the way a broken or hostile runtime could: shared by both
//! hostile bins, each of which uses part of it.
#![allow(dead_code)]

use core::sync::atomic::{AtomicU32, Ordering, fence};

use guest_rt::abi::{
    NET_RING_COM_HEAD, NET_RING_COM_TAIL, NET_RING_COMMITS_OFFSET, NET_RING_ENT_HEAD, NET_RING_ENT_TAIL,
    NET_RING_ENTRIES, NET_RING_ENTRIES_OFFSET, NET_RING_KICK_PORT, NET_RING_NEEDS_KICK, NetRingCommit, NetRingEntry,
};

/// The ring at `base`, driven by hand.
#[derive(Clone, Copy)]
pub struct RawRing(pub u64);

impl RawRing {
    pub fn index(self, offset: usize) -> &'static AtomicU32 {
        // SAFETY: the tender maps the ring at `base` for the whole run (it offered it).
        unsafe { &*((self.0 as usize + offset) as *const AtomicU32) }
    }

    /// Posts `entries` one after the other and kicks the tender if it sleeps.
    pub fn post(self, entries: &[NetRingEntry]) {
        let mut tail = self.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed);
        for e in entries {
            let at = self.0 as usize + NET_RING_ENTRIES_OFFSET + (tail % NET_RING_ENTRIES) as usize * 32;
            // SAFETY: an entry slot inside the ring.
            unsafe { (at as *mut NetRingEntry).write_volatile(*e) };
            tail = tail.wrapping_add(1);
        }
        self.publish(tail);
    }

    pub fn publish(self, tail: u32) {
        self.index(NET_RING_ENT_TAIL).store(tail, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.index(NET_RING_NEEDS_KICK).load(Ordering::Relaxed) != 0 {
            kick();
        }
    }

    /// Waits (at most ~10 s) until the tender has taken every posted entry.
    pub fn wait_taken(self) -> bool {
        let tail = self.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed);
        let deadline = guest_rt::monotonic_ns() + 10_000_000_000;
        while self.index(NET_RING_ENT_HEAD).load(Ordering::Acquire) != tail {
            if guest_rt::monotonic_ns() > deadline {
                return false;
            }
        }
        true
    }

    /// Posts one entry that the tender answers with a commit and returns the commit (`None`
    /// if none came within ~10 s).
    pub fn call(self, e: NetRingEntry) -> Option<NetRingCommit> {
        let head = self.index(NET_RING_COM_HEAD).load(Ordering::Relaxed);
        self.post(&[e]);
        let deadline = guest_rt::monotonic_ns() + 10_000_000_000;
        while self.index(NET_RING_COM_TAIL).load(Ordering::Acquire) == head {
            if guest_rt::monotonic_ns() > deadline {
                return None;
            }
        }
        self.index(NET_RING_COM_HEAD).store(head.wrapping_add(1), Ordering::Release);
        Some(self.commit(head))
    }

    pub fn commit(self, n: u32) -> NetRingCommit {
        let at = self.0 as usize + NET_RING_COMMITS_OFFSET + (n % NET_RING_ENTRIES) as usize * 16;
        // SAFETY: a commit slot inside the ring.
        unsafe { (at as *const NetRingCommit).read_volatile() }
    }
}

pub fn kick() {
    // SAFETY: the kick port; KVM signals the tender's eventfd.
    unsafe { core::arch::asm!("out dx, eax", in("dx") NET_RING_KICK_PORT, in("eax") 0u32, options(nostack)) };
}

pub fn entry(operation: u32, handle: u64, data: u64, len: u32) -> NetRingEntry {
    NetRingEntry { operation, handle: handle as u32, data, len, ..Default::default() }
}

/// A block entry (tender's extension of the ring): `len` bytes at `data`, device byte `offset`.
pub fn block_entry(operation: u32, handle: u64, offset: u64, data: u64, len: u32) -> NetRingEntry {
    NetRingEntry { offset, ..entry(operation, handle, data, len) }
}
