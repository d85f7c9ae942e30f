//! The guest side of the shared ring (ABI section 9), which [`NetDevice`](crate::NetDevice)
//! uses when the tender offers it. Sending copies the frame to a slot of ours and posts it: no
//! exit, unless the tender's I/O thread has gone to sleep and asked for a kick (port 0x600,
//! handled inside KVM). Receiving posts a read and spins at CPL 3 until the tender commits it.
//!
//! Every wait for the tender's thread (a commit, room in the ring, the last frames leaving)
//! spins for at most [`SPIN_NS`], then sleeps in POLL, with timeouts that double from
//! [`WAIT_FIRST_NS`] up to [`WAIT_MAX_NS`], and looks again after each. On a host with more busy
//! VMs than CPUs the thread may not be running at all: a guest that spun for it would only take
//! the CPU it needs. tender ends such a POLL as soon as its thread has made progress; under
//! solo5-hvt the POLL ends at its timeout or when a frame arrives.
//! Frames larger than a slot use the NET_WRITE hypercall, after the posted ones have left, so
//! frames keep their order.
//!
//! When the tender also offers `TENDER_FEATURE_BLOCK_RING` (tender does; solo5-hvt does not),
//! [`BlockDevice`](crate::BlockDevice) posts its requests here too, straight from the caller's
//! buffer, and spins for the commit as a receive does.
//!
//! When the tender offers `TENDER_FEATURE_WAIT_READ` (tender does), a busy-poll for the next
//! frame ([`recv_posted`] with a wait) posts one read that the tender's thread holds until a
//! frame arrives or the wait is over, and watches for its commit meanwhile: the thread sleeps in
//! the kernel instead of answering AGAIN to read after read on a second CPU.
//!
//! When the tender offers `TENDER_FEATURE_RX_HINT` (tender does), a frame read by hypercall
//! comes with a note in the ring of whether another one waits; if none does, the network stack
//! skips its next read ([`drained`]), which would find nothing and cost an exit.
//!
//! The same code runs on solo5-hvt, which implements the net ring only: block requests then
//! use the hypercalls, and reads are answered at once.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

use guest_abi::{
    HVT_FEATURE_RING_IO, NET_RING_COM_HEAD, NET_RING_COM_TAIL, NET_RING_COMMITS_OFFSET, NET_RING_ENT_HEAD,
    NET_RING_ENT_TAIL, NET_RING_ENTRIES, NET_RING_ENTRIES_OFFSET, NET_RING_KICK_PORT, NET_RING_NEEDS_KICK,
    NET_RING_OP_READ, NET_RING_OP_WRITE, NET_RING_RX_WAITING, NET_RING_SLOT_SIZE, NetRingCommit, NetRingEntry,
    RING_OP_BLOCK_READ, RING_OP_BLOCK_WRITE, TENDER_FEATURE_BLOCK_RING, TENDER_FEATURE_RX_HINT,
    TENDER_FEATURE_WAIT_READ,
};

use crate::boot::boot_info;

/// Frames in flight at most. Entries in flight are fewer than this, so the slot of the entry
/// being posted (`ent_tail % SLOTS`) is never one the tender has yet to read.
const SLOTS: u32 = 256;
const _: () = assert!(SLOTS <= NET_RING_ENTRIES && NET_RING_ENTRIES.is_multiple_of(SLOTS));

struct Slots(UnsafeCell<[[u8; NET_RING_SLOT_SIZE]; SLOTS as usize]>);
// SAFETY: guest-rt runs on one vCPU with no threads and no interrupt handlers that send.
unsafe impl Sync for Slots {}
static SLOT_BUFFERS: Slots = Slots(UnsafeCell::new([[0; NET_RING_SLOT_SIZE]; SLOTS as usize]));

/// How long a wait for the tender's thread spins before it sleeps: the thread's turn-around
/// when it is awake is a few microseconds; waking it from its sleep takes tens on a loaded host.
pub const SPIN_NS: u64 = 50_000;
/// Entries of ours at most that the tender's thread may still be carrying out when the guest,
/// about to sleep for frames, waits for it instead ([`settle`]): a reply or an ACK, not a window
/// of segments, which takes the thread longer to send than a sleep costs.
const SETTLE_ENTRIES: u32 = 4;
/// How long [`settle`] spins at most. In a transfer into the guest the thread's `write` of an
/// ACK is where the host's TCP sends its next segments to the tap, and it took 20 to 500 µs on
/// the nested development host.
pub const SETTLE_NS: u64 = 300_000;
/// The first POLL timeout of a wait that stopped spinning, and the longest.
pub const WAIT_FIRST_NS: u64 = 50_000;
pub const WAIT_MAX_NS: u64 = 1_000_000;

/// Spins until `done()` or until `spin_ns` have passed on the clock `now`; whether `done()`.
fn spin_until(spin_ns: u64, mut now: impl FnMut() -> u64, mut done: impl FnMut() -> bool) -> bool {
    let start = now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            core::hint::spin_loop();
        }
        if now().wrapping_sub(start) > spin_ns {
            return false;
        }
    }
}

/// Waits until `done()`: spins for `spin_ns`, then sleeps in POLL between looks.
fn wait_until(spin_ns: u64, mut done: impl FnMut() -> bool) {
    if spin_until(spin_ns, crate::monotonic_ns, &mut done) {
        return;
    }
    let mut timeout = WAIT_FIRST_NS;
    while !done() {
        // The ready set is not lost: a tap with a frame stays readable for the next POLL.
        crate::hypercall::poll(timeout);
        timeout = (timeout * 2).min(WAIT_MAX_NS);
    }
}

static DISABLED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// The command-line option that keeps every device on the hypercalls (see [`disable`]).
pub const NO_RING_OPTION: &str = "--no-ring";

/// Makes every later send, receive and block request use the hypercalls even when the tender
/// offers the ring (to compare the two, or to test the hypercall path).
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// The command line's words without [`NO_RING_OPTION`], which, given anywhere, is applied first.
/// For unikernels without the network stack (its `parse_args` does the same for the others).
pub fn args() -> impl Iterator<Item = &'static str> + Clone {
    let words = crate::cmdline().split_whitespace();
    if words.clone().any(|w| w == NO_RING_OPTION) {
        disable();
    }
    words.filter(|w| *w != NO_RING_OPTION)
}

/// Whether sends and receives go through the ring.
pub fn active() -> bool {
    ring().is_some()
}

/// Whether block requests go through the ring.
pub fn block_active() -> bool {
    block_ring().is_some()
}

/// Where the tender put the ring, if it offers one for frames (for code that drives the ring
/// itself).
pub fn address() -> Option<u64> {
    offered(HVT_FEATURE_RING_IO)
}

/// Where the tender put the ring, if it offers it for block requests.
pub fn block_address() -> Option<u64> {
    offered(TENDER_FEATURE_BLOCK_RING)
}

fn offered(feature: u32) -> Option<u64> {
    let info = boot_info();
    (info.host_features & feature != 0 && info.net_ring != 0).then_some(info.net_ring)
}

#[derive(Clone, Copy)]
struct Ring(*mut u8);

fn ring() -> Option<Ring> {
    address().filter(|_| !DISABLED.load(Ordering::Relaxed)).map(|a| Ring(a as *mut u8))
}

fn block_ring() -> Option<Ring> {
    block_address().filter(|_| !DISABLED.load(Ordering::Relaxed)).map(|a| Ring(a as *mut u8))
}

impl Ring {
    fn index(self, offset: usize) -> &'static AtomicU32 {
        // SAFETY: the tender maps the ring (NET_RING_SIZE bytes, 64-byte aligned indices) at
        // `net_ring` for the whole run, and guest-rt's page tables keep it mapped for CPL 3. The
        // host writes the indices with atomic stores too.
        unsafe { &*self.0.add(offset).cast::<AtomicU32>() }
    }

    /// Room for one more entry (`limit` entries in flight at most).
    fn wait_for_room(self, limit: u32) -> u32 {
        let tail = self.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed);
        wait_until(SPIN_NS, || tail.wrapping_sub(self.index(NET_RING_ENT_HEAD).load(Ordering::Acquire)) < limit - 1);
        tail
    }

    /// Writes the entry at `tail`, publishes it, and kicks the tender if it is asleep.
    fn post(self, tail: u32, entry: NetRingEntry) {
        let at = NET_RING_ENTRIES_OFFSET + (tail % NET_RING_ENTRIES) as usize * size_of::<NetRingEntry>();
        // SAFETY: inside the ring (see `index`); the tender reads this entry only after the
        // release store of `ent_tail` below.
        unsafe { self.0.add(at).cast::<NetRingEntry>().write_volatile(entry) };
        self.index(NET_RING_ENT_TAIL).store(tail.wrapping_add(1), Ordering::Release);
        // Store-load barrier (mfence), paired with the tender's "needs_kick = 1; mfence; look at
        // ent_tail": one of the two sides sees the other's store.
        fence(Ordering::SeqCst);
        if self.index(NET_RING_NEEDS_KICK).load(Ordering::Relaxed) != 0 {
            // SAFETY: an `out` to the kick port, which the TSS opens for CPL 3; KVM turns it into
            // an eventfd signal without touching guest state.
            unsafe {
                core::arch::asm!("out dx, eax", in("dx") NET_RING_KICK_PORT, in("eax") 0u32, options(nostack, preserves_flags))
            };
        }
    }

    /// Posts `entry`, which the tender answers with a commit, and waits for that commit, spinning
    /// for `spin_ns` before it sleeps. guest-rt has one such entry in flight at a time (one vCPU,
    /// no threads); commits with another id (code driving the ring itself) are passed over.
    fn call(self, entry: NetRingEntry, spin_ns: u64) -> NetRingCommit {
        let tail = self.wait_for_room(NET_RING_ENTRIES);
        self.post(tail, entry);
        loop {
            let head = self.index(NET_RING_COM_HEAD).load(Ordering::Relaxed);
            wait_until(spin_ns, || self.index(NET_RING_COM_TAIL).load(Ordering::Acquire) != head);
            let at = NET_RING_COMMITS_OFFSET + (head % NET_RING_ENTRIES) as usize * size_of::<NetRingCommit>();
            // SAFETY: inside the ring; the tender wrote this commit before its release store of
            // `com_tail`, which the acquire load above saw.
            let commit = unsafe { self.0.add(at).cast::<NetRingCommit>().read_volatile() };
            self.index(NET_RING_COM_HEAD).store(head.wrapping_add(1), Ordering::Release);
            if commit.id == entry.id {
                return commit;
            }
        }
    }

    /// Whether the tender's thread sleeps with nothing left to do: a frame then costs less by
    /// hypercall (one exit, served on the vCPU's own thread) than through the ring (a kick, the
    /// thread's wake-up on another CPU, and the guest waiting for it).
    fn asleep(self) -> bool {
        self.index(NET_RING_NEEDS_KICK).load(Ordering::Relaxed) != 0
            && self.index(NET_RING_ENT_HEAD).load(Ordering::Acquire)
                == self.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed)
    }

    /// The tender's receive hint (`TENDER_FEATURE_RX_HINT`).
    fn rx_waiting(self) -> u64 {
        // SAFETY: inside the ring (see `index`), 8-byte aligned (guest-abi asserts it); the host
        // writes it with atomic stores.
        unsafe { &*self.0.add(NET_RING_RX_WAITING).cast::<AtomicU64>() }.load(Ordering::Acquire)
    }

    /// [`settle`] on this ring, with `now` as the clock.
    fn settle(self, limit_ns: u64, now: impl FnMut() -> u64) -> bool {
        let tail = self.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed);
        let head = || self.index(NET_RING_ENT_HEAD).load(Ordering::Acquire);
        let pending = tail.wrapping_sub(head());
        // An asleep thread has nothing of ours left (it sleeps only on an empty ring); a guest
        // that kicked it waits for its wake-up in POLL, as any wait for the thread does.
        if pending == 0 || pending > SETTLE_ENTRIES || self.index(NET_RING_NEEDS_KICK).load(Ordering::Relaxed) != 0 {
            return false;
        }
        spin_until(limit_ns, now, || head() == tail)
    }

    /// Waits until the tender has carried out every posted entry.
    fn drain(self) {
        let tail = self.index(NET_RING_ENT_TAIL).load(Ordering::Relaxed);
        wait_until(SPIN_NS, || self.index(NET_RING_ENT_HEAD).load(Ordering::Acquire) == tail);
    }
}

/// Waits until the tender has sent every frame posted so far. [`crate::exit`] calls it: a tender
/// may stop its I/O thread at HALT without looking at the ring again (solo5-hvt does).
pub(crate) fn flush() {
    if let Some(ring) = ring().or_else(block_ring) {
        ring.drain();
    }
}

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Called when the guest is about to sleep in POLL for frames: if the tender's thread is awake
/// and still carrying out a few entries of ours ([`SETTLE_ENTRIES`]: an ACK, a reply), spins
/// until it is done, for at most [`SETTLE_NS`]. True if it is done: the caller looks for frames
/// again instead of sleeping. In a transfer into the guest the host sends its next segments
/// while the thread writes the guest's ACK; a guest that slept meanwhile was woken by them with
/// a POLL exit, a sleep and a wake-up of the vCPU's thread (on the development host, twice per
/// 64 KiB window and up to 500 µs each). `false` when there is no ring.
pub(crate) fn settle() -> bool {
    ring().is_some_and(|ring| ring.settle(SETTLE_NS, crate::monotonic_ns))
}

/// Frames received by hypercall in a row while the thread slept: after [`BURST`] of them the
/// next receive goes through the ring, which wakes the thread for the rest of the burst. A read
/// posted to the ring also starts a burst: until the guest next sleeps in POLL ([`end_burst`]),
/// its frames take the ring, and a thread that fell asleep in between is kicked awake rather
/// than passed over by a hypercall (a reply to a frame a busy-poll found costs no exit).
static BY_CALL: AtomicU32 = AtomicU32::new(0);
const BURST: u32 = 2;
/// Reads by hypercall that found nothing, since the guest last slept in POLL: a guest that
/// looks again and again (a busy-poll of the NIC) goes through the ring after [`BURST`] of
/// them. A wake-up for one frame makes one (the look for a second frame).
static EMPTY_BY_CALL: AtomicU32 = AtomicU32::new(0);
/// Frames sent by hypercall since the guest last slept in POLL: after [`BURST`] of them (a window
/// of TCP segments) the next send goes through the ring. Counted apart from the receives, so
/// that the reply to a frame (one read, one send) leaves the look for a second frame on the
/// hypercalls too.
static SENT_BY_CALL: AtomicU32 = AtomicU32::new(0);

/// Net devices (bit `handle`) whose last frame came by hypercall with the tender's hint
/// (`TENDER_FEATURE_RX_HINT`) that nothing else was waiting: see [`drained`].
static DRAINED: AtomicU64 = AtomicU64::new(0);

/// Whether the frame just received for `handle` was, by the tender's hint, the last one waiting
/// (clears the note): the caller may skip the read that would find nothing, one exit of the
/// four that answering one frame costs an idle service. A frame that arrives meanwhile makes
/// the next POLL return at once.
pub(crate) fn drained(handle: u64) -> bool {
    DRAINED.fetch_and(!device_bit(handle), Ordering::Relaxed) & device_bit(handle) != 0
}

/// Device `handle`'s bit in [`DRAINED`] and in the tender's hint.
fn device_bit(handle: u64) -> u64 {
    1 << (handle % 64)
}

/// Called when the guest goes to sleep in POLL with nothing to do ([`crate::device::wait`]): the
/// burst is over, and the next frame that finds the thread asleep goes by hypercall again.
pub(crate) fn end_burst() {
    BY_CALL.store(0, Ordering::Relaxed);
    EMPTY_BY_CALL.store(0, Ordering::Relaxed);
    SENT_BY_CALL.store(0, Ordering::Relaxed);
}

/// Posts `frame` for device `handle`; `None` when it must go by hypercall (no ring, too big, or
/// the tender's thread asleep and no burst under way).
pub(crate) fn send(handle: u64, frame: &[u8]) -> Option<i32> {
    let ring = ring()?;
    if ring.asleep() && BY_CALL.load(Ordering::Relaxed) < BURST && SENT_BY_CALL.load(Ordering::Relaxed) < BURST {
        SENT_BY_CALL.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if frame.len() > NET_RING_SLOT_SIZE {
        ring.drain();
        return None;
    }
    let tail = ring.wait_for_room(SLOTS);
    let slot = (tail % SLOTS) as usize;
    // SAFETY: fewer than SLOTS entries are in flight (`wait_for_room`), so the tender is done with
    // this slot; nothing else in the guest touches the slots.
    let buf = unsafe { &mut (*SLOT_BUFFERS.0.get())[slot] };
    buf[..frame.len()].copy_from_slice(frame);
    let entry = NetRingEntry {
        operation: NET_RING_OP_WRITE,
        handle: handle as u32,
        data: buf.as_ptr() as u64,
        len: frame.len() as u32,
        id: next_id(),
        offset: 0,
    };
    ring.post(tail, entry);
    Some(guest_abi::SOLO5_R_OK)
}

/// Receives one frame for device `handle` into `buf` through the ring: (result code, length).
/// `None` when there is no ring.
pub(crate) fn recv(handle: u64, buf: &mut [u8]) -> Option<(i32, usize)> {
    let ring = ring()?;
    if ring.asleep() && BY_CALL.load(Ordering::Relaxed) < BURST && EMPTY_BY_CALL.load(Ordering::Relaxed) < BURST {
        let (code, len) = crate::hypercall::net_read(handle, buf);
        if code == guest_abi::SOLO5_R_OK {
            BY_CALL.fetch_add(1, Ordering::Relaxed);
            if boot_info().host_features & TENDER_FEATURE_RX_HINT != 0 && ring.rx_waiting() & device_bit(handle) == 0 {
                DRAINED.fetch_or(device_bit(handle), Ordering::Relaxed);
            }
        } else {
            BY_CALL.store(0, Ordering::Relaxed);
            EMPTY_BY_CALL.fetch_add(1, Ordering::Relaxed);
        }
        return Some((code, len));
    }
    recv_posted(handle, buf, 0)
}

/// Receives one frame for device `handle` into `buf` by posting a read, whether the tender's
/// thread is awake or not; `None` when there is no ring. When the tender offers waiting reads
/// (`TENDER_FEATURE_WAIT_READ`), a `wait_ns` above 0 asks its thread to wait that long for a
/// frame before it answers AGAIN: the thread sleeps in the kernel meanwhile, and the guest
/// watches for the commit (memory reads, no exit) for as long, then sleeps in POLL as any wait
/// for the thread does. Without them the read is answered at once.
pub(crate) fn recv_posted(handle: u64, buf: &mut [u8], wait_ns: u64) -> Option<(i32, usize)> {
    let ring = ring()?;
    BY_CALL.store(BURST, Ordering::Relaxed);
    let wait_ns = if boot_info().host_features & TENDER_FEATURE_WAIT_READ != 0 {
        wait_ns.min(guest_abi::NET_RING_WAIT_MAX_NS)
    } else {
        0
    };
    let entry = NetRingEntry {
        operation: NET_RING_OP_READ,
        handle: handle as u32,
        data: buf.as_mut_ptr() as u64,
        len: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        id: next_id(),
        offset: wait_ns,
    };
    let commit = ring.call(entry, SPIN_NS.saturating_add(wait_ns));
    Some((commit.ret, (commit.len as usize).min(buf.len())))
}

/// Reads (`read`) the `len` bytes at `data` from byte `offset` of block device `handle`, or
/// writes them there, through the ring; returns the result code. `None` when the tender offers
/// no block ring or the request is over 4 GiB: then it goes by hypercall.
pub(crate) fn block(handle: u64, read: bool, offset: u64, data: u64, len: usize) -> Option<i32> {
    let ring = block_ring()?;
    let entry = NetRingEntry {
        operation: if read { RING_OP_BLOCK_READ } else { RING_OP_BLOCK_WRITE },
        handle: u32::try_from(handle).ok()?,
        data,
        len: u32::try_from(len).ok()?,
        id: next_id(),
        offset,
    };
    Some(ring.call(entry, SPIN_NS).ret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in test memory, indices zero (u64s keep the indices aligned).
    fn fake_ring() -> (std::vec::Vec<u64>, Ring) {
        let mut memory = std::vec![0u64; guest_abi::NET_RING_SIZE / 8];
        let ring = Ring(memory.as_mut_ptr().cast());
        (memory, ring)
    }

    #[test]
    fn settle_waits_only_for_a_few_entries_an_awake_thread_is_carrying_out() {
        let (_memory, ring) = fake_ring();
        let clock = core::cell::Cell::new(0u64);
        let tick = || {
            clock.set(clock.get() + 1_000);
            clock.get()
        };
        assert!(!ring.settle(10_000, tick), "nothing posted: nothing to wait for");
        ring.index(NET_RING_ENT_TAIL).store(1, Ordering::Relaxed);
        ring.index(NET_RING_NEEDS_KICK).store(1, Ordering::Relaxed);
        assert!(!ring.settle(10_000, tick), "the thread asleep");
        ring.index(NET_RING_NEEDS_KICK).store(0, Ordering::Relaxed);
        ring.index(NET_RING_ENT_TAIL).store(SETTLE_ENTRIES + 1, Ordering::Relaxed);
        assert!(!ring.settle(10_000, tick), "a window of segments");
        ring.index(NET_RING_ENT_TAIL).store(SETTLE_ENTRIES, Ordering::Relaxed);
        let before = clock.get();
        assert!(!ring.settle(10_000, tick), "never carried out: the spin is bounded");
        assert!(clock.get() - before <= 12_000, "it gave up once its time was up");
    }

    #[test]
    fn settle_returns_once_the_thread_has_carried_out_the_entries() {
        let (_memory, ring) = fake_ring();
        ring.index(NET_RING_ENT_TAIL).store(2, Ordering::Relaxed);
        let head = ring.index(NET_RING_ENT_HEAD);
        let start = std::time::Instant::now();
        let now = || start.elapsed().as_nanos() as u64;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                head.store(2, Ordering::Release);
            });
            assert!(ring.settle(60_000_000_000, now), "carried out while it waited");
        });
    }
}
