//! The shared-memory ring (ABI section 9), with tender's block extension. The guest posts
//! entries to a ring at `boot_info.net_ring` and an I/O thread of the tender carries them out, so
//! a frame or a block request costs no VM exit while the thread is awake. When the thread has
//! looked at an empty ring for a while (`--ring-spin`, [`SPIN_DEFAULT_US`], and not at all while the guest sleeps in POLL,
//! since it cannot post anything then) it sets `needs_kick` and sleeps on an eventfd, which KVM
//! signals when the guest writes port 0x600 (an ioeventfd: the kick never reaches the tender's
//! run loop).
//!
//! A guest that waits for the thread (a commit, room in the ring) spins only for a while, then
//! sleeps in POLL, as guest-rt does: with more busy VMs than CPUs a spinning guest would take the
//! CPU its own I/O thread needs. POLL then waits for the thread's progress instead of the taps
//! ([`Ring::enter_poll`]), and the thread signals an eventfd when it has consumed entries while
//! the guest sleeps.
//!
//! A guest that finds the thread asleep sends and receives its first frames by hypercall (one
//! exit each, on the vCPU's own thread) rather than waking the thread for them: an idle service
//! answering an ARP request now and then never wakes it. A guest that moved many frames through
//! the ring before it slept in POLL (a transfer, a burst: [`BUSY_ENTRIES`]) is busy: its thread
//! spins longer before it sleeps ([`BUSY_SPIN`]), and when its POLL ends with a frame, tender
//! wakes the thread and clears `needs_kick` ([`Ring::leave_poll`]), so that the frames go
//! through the ring and the thread's wake-up overlaps the vCPU's return.
//!
//! Solo5's ring carries NET_WRITE and NET_READ. When tender advertises
//! `TENDER_FEATURE_BLOCK_RING` it also carries BLOCK_WRITE and BLOCK_READ (operations 3 and 4,
//! the device offset in the entry's reserved field), each answered by a commit as a read is.
//!
//! The ring is guest memory: the guest can change any of it at any time. So the thread keeps its
//! own copies of the indices it owns, copies each entry out once before looking at it, and checks
//! every request exactly as the hypercalls do ([`TapIo`], [`BlockIo`]). A buffer outside guest
//! memory or an index more than a ring ahead ends the run as a guest fault, and a failed host read
//! or write of a block device, or a tap that went away, ends it as the hypercall's would: the
//! thread records what happened, stops, and sends SIGUSR1 to the process, which interrupts the
//! vCPU (see `signals`).
//!
//! With `TENDER_FEATURE_WAIT_READ` (tender's extension) a NET_READ entry may ask the thread to
//! wait for a frame (its `offset` is the longest wait): the thread then sleeps in `ppoll` on the
//! tap and its kick eventfd until a frame arrives, the wait (capped at
//! [`NET_RING_WAIT_MAX_NS`]) is over, or it is kicked (told to stop), and only then commits. A
//! guest busy-polling for a reply thus keeps one CPU busy (its own), not two, and the frame
//! reaches it without an exit. The thread waits only when that read is the last entry posted.
//!
//! When the vCPU has stopped, the thread makes one last pass so that frames posted just before
//! HALT still leave. That pass skips block requests: the guest never saw their commits, so, as
//! after a power cut, they may or may not have happened, and skipping them keeps the end of a
//! run short (a ring can hold over 4 TiB of block requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use guest_abi::{
    NET_RING_COM_HEAD, NET_RING_COM_TAIL, NET_RING_COMMITS_OFFSET, NET_RING_ENT_HEAD, NET_RING_ENT_TAIL,
    NET_RING_ENTRIES, NET_RING_ENTRIES_OFFSET, NET_RING_KICK_PORT, NET_RING_NEEDS_KICK, NET_RING_OP_READ,
    NET_RING_OP_WRITE, NET_RING_RX_WAITING, NET_RING_SIZE, NET_RING_WAIT_MAX_NS, NetRingCommit, NetRingEntry,
    RING_OP_BLOCK_READ, RING_OP_BLOCK_WRITE, SOLO5_R_AGAIN, SOLO5_R_EINVAL, SOLO5_R_EUNSPEC, SOLO5_R_OK,
};
use kvm_bindings::{KVMIO, kvm_ioeventfd, kvm_ioeventfd_flag_nr_pio};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::devices::IoError;
use crate::devices::block::BlockIo;
use crate::devices::net::TapIo;
use crate::memory::{Abi, GuestFault, GuestRam};

// kvm-ioctls' `register_ioevent` sets the length from the datamatch type, so "no datamatch" comes
// with length 0 (any width); the ABI asks for a 4-byte PIO kick, as solo5-hvt registers it.
vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);

/// How long the vCPU thread waits for the I/O thread to finish the guest's last writes. The
/// thread normally stops within microseconds; on a loaded host (more busy VMs than cores) it may
/// first wait for a CPU for several scheduler slices, and 200 ms proved too short there.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long the thread looks at an empty ring after its last entry before it sleeps, unless the
/// guest is in POLL: the default of `--ring-spin` (0 to [`SPIN_MAX_US`] µs; 0 sleeps at once).
/// Bounded in time, not in `pause`s: a `pause` costs from a few ns on bare metal to 80 ns here
/// (nested KVM), where solo5-hvt's 4,096 of them took 0.33 ms of CPU after every frame. 20 µs
/// covers the guest's turn-around between a frame and its reply.
pub const SPIN_DEFAULT_US: u32 = 20;
/// The longest `--ring-spin`: beyond a millisecond a spinning thread costs more than the wake-up
/// it saves on any host.
pub const SPIN_MAX_US: u32 = 1000;
/// Entries the guest must have had carried out between two waits for its peer (POLLs, or reads
/// the thread held for a frame) to count as busy: a transfer or a burst (see
/// `Shared::end_period`). The thread then spins [`BUSY_SPIN`] after its last entry, through the
/// guest's POLL too, and is woken when the POLL ends with a frame ([`Ring::leave_poll`]). A
/// request and its reply (a few entries) are not: for them a thread spinning or woken on a CPU
/// the client may be using costs more than it saves.
const BUSY_ENTRIES: u32 = 16;
/// How long the thread of a busy guest ([`BUSY_ENTRIES`]) looks at the ring after its last entry,
/// whether the guest runs or sleeps in POLL (with `--ring-spin` above 0): in a transfer the guest sleeps
/// only until the peer's next segments arrive, a round trip, and a thread that slept meanwhile
/// must be woken and then wait for a CPU (on a small host, behind the very process sending to
/// the guest), which halved TCP throughput into the guest. Bounded, so that a host with more
/// busy guests than CPUs still gets its CPUs back.
pub const BUSY_SPIN: Duration = Duration::from_micros(300);
/// `pause`s between two looks at the clock while spinning.
const SPIN_CHECK: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot create the kick eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("KVM_IOEVENTFD failed: {0}")]
    IoEvent(std::io::Error),
    #[error("cannot start the I/O thread: {0}")]
    Thread(std::io::Error),
    #[error("the ring does not fit in guest memory")]
    Placement,
}

/// What made the I/O thread end the run (exit 1): a guest that broke the ring's rules, a
/// failed host read or write of a block device, or a tap that went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingFault {
    #[error("ring: {0}")]
    Access(GuestFault),
    #[error("ring: ent_tail={tail:#x} is more than {NET_RING_ENTRIES} entries ahead of ent_head={head:#x}")]
    Index { head: u32, tail: u32 },
    /// Not the guest's doing; the run ends as the hypercall's would.
    #[error("device {handle}: {op} failed: {}", crate::devices::host_io_error(*errno))]
    Host { handle: u32, op: &'static str, errno: i32 },
    /// The thread could not sleep on its kick eventfd (it never fails in practice: the fd is
    /// blocking and the thread blocks every signal); rather than spin, the run ends.
    #[error("ring: waiting for the guest's kick failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kick { errno: i32 },
}

/// What the ring's entries for a handle (a manifest index) reach.
#[derive(Clone, Debug)]
pub enum Target {
    None,
    Net(TapIo),
    Block(BlockIo),
}

/// Traffic of one handle, counted by the thread (frames and bytes that went through).
#[derive(Default)]
pub struct Counters {
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
}

/// A snapshot of one handle's [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
}

impl Counters {
    /// The traffic counted so far.
    pub fn load(&self) -> Traffic {
        Traffic {
            read_ops: self.read_ops.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_ops: self.write_ops.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
        }
    }
}

/// What the two threads share. Only atomics: no lock may ever need a futex under seccomp.
struct Shared {
    /// 0 until the thread is past its start-up; then 1 (serving) or 2 (it could not map the ring).
    ready: AtomicU8,
    stop: AtomicBool,
    stopped: AtomicBool,
    /// 0: none; 1: read access; 2: write access; 3: index; 4: host read; 5: host write; 6: kick.
    /// `fault_a`/`fault_b` are stored first.
    fault_kind: AtomicU8,
    fault_a: AtomicU64,
    fault_b: AtomicU64,
    counters: Vec<Counters>,
    /// Our pid, for the SIGUSR1 (getpid is not on the allowlist).
    pid: libc::pid_t,
    /// Set by the vCPU thread while it sleeps in POLL: the guest cannot post, so the thread does
    /// not spin, and it signals `progress` when it consumes entries.
    vcpu_polling: AtomicBool,
    /// Non-blocking; in the poller's ring set (edge-triggered, never read).
    progress: EventFd,
    /// Entries the thread has carried out since the guest last waited for its peer.
    served: AtomicU32,
    /// Whether the guest moved [`BUSY_ENTRIES`] or more through the ring before its current (or
    /// last) wait for its peer: set by [`Shared::end_period`].
    busy: AtomicBool,
}

impl Shared {
    /// Ends a period of the guest's activity, when it starts to wait for its peer (a POLL, or a
    /// read the thread holds until a frame arrives): the guest is busy if it moved
    /// [`BUSY_ENTRIES`] or more through the ring in the period. With `sticky` (a POLL) a
    /// transfer stays busy through the short waits between its bursts (a segment that came
    /// ahead of the rest), until a period that moved nothing through the ring; a waiting read
    /// always comes after something moved, so it judges its period alone.
    fn end_period(&self, sticky: bool) {
        let served = self.served.swap(0, Ordering::Relaxed);
        let was_busy = sticky && self.busy.load(Ordering::Relaxed);
        self.busy.store(served >= BUSY_ENTRIES || (was_busy && served > 0), Ordering::Relaxed);
    }

    fn record(&self, fault: RingFault) {
        let (kind, a, b) = match fault {
            RingFault::Access(f) => (if f.write { 2 } else { 1 }, f.gpa, f.len),
            RingFault::Index { head, tail } => (3, u64::from(head), u64::from(tail)),
            RingFault::Host { handle, op, errno } => {
                (if op == "read" { 4 } else { 5 }, u64::from(handle), errno as u32 as u64)
            }
            RingFault::Kick { errno } => (6, errno as u32 as u64, 0),
        };
        self.fault_a.store(a, Ordering::Relaxed);
        self.fault_b.store(b, Ordering::Relaxed);
        self.fault_kind.store(kind, Ordering::Release);
    }

    fn fault(&self) -> Option<RingFault> {
        let kind = self.fault_kind.load(Ordering::Acquire);
        let (a, b) = (self.fault_a.load(Ordering::Relaxed), self.fault_b.load(Ordering::Relaxed));
        match kind {
            1 | 2 => Some(RingFault::Access(GuestFault { gpa: a, len: b, write: kind == 2 })),
            3 => Some(RingFault::Index { head: a as u32, tail: b as u32 }),
            4 | 5 => {
                let op = if kind == 4 { "read" } else { "write" };
                Some(RingFault::Host { handle: a as u32, op, errno: b as u32 as i32 })
            }
            6 => Some(RingFault::Kick { errno: a as u32 as i32 }),
            _ => None,
        }
    }
}

/// The running ring: its I/O thread and the eventfd that wakes it.
pub struct Ring {
    shared: Arc<Shared>,
    kick: Arc<EventFd>,
    /// The ring's indices, for [`Ring::enter_poll`].
    ram: GuestRam,
    gpa: u64,
}

/// What a POLL should wait for, given the ring's state ([`Ring::enter_poll`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollFor {
    /// The guest has everything it asked the thread for: wait for the taps, as without a ring.
    Devices,
    /// The thread has not consumed every entry yet: wait for its progress, not for the taps
    /// (the frame a posted read is for is still in the tap, so a tap wait would end at once).
    Ring,
    /// Commits the guest has not taken yet: return at once.
    Nothing,
}

impl Ring {
    /// Starts an I/O thread for the ring at `gpa`, which must lie in the mapping above the
    /// guest-visible memory (`targets[h]` serves handle `h`), then routes the guest's kicks (port
    /// 0x600) to it: through a KVM ioeventfd on `vm`, or, in process mode (`vm` None), by the
    /// trap handler writing [`Ring::kick_fd`]. Returns once the thread is past its start-up (stack guard, signal stack,
    /// signal mask): the seccomp filter goes on next, and the thread never returns, as thread
    /// exit would need munmap and futex. On an error nothing is routed and the thread is stopped.
    /// `spin` is how long the thread looks at an empty ring before it sleeps (`--ring-spin`).
    pub fn start(
        vm: Option<&VmFd>,
        ram: &GuestRam,
        gpa: u64,
        targets: Vec<Target>,
        spin: Duration,
    ) -> Result<Self, RingError> {
        let ring_end = gpa.checked_add(NET_RING_SIZE as u64).ok_or(RingError::Placement)?;
        if gpa < ram.limit() || ring_end > ram.total() {
            return Err(RingError::Placement);
        }
        // Blocking: the thread sleeps in read() until a kick or a stop.
        let kick = Arc::new(EventFd::new(libc::EFD_CLOEXEC).map_err(RingError::EventFd)?);
        let shared = Arc::new(Shared {
            ready: AtomicU8::new(0),
            stop: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            fault_kind: AtomicU8::new(0),
            fault_a: AtomicU64::new(0),
            fault_b: AtomicU64::new(0),
            counters: targets.iter().map(|_| Counters::default()).collect(),
            pid: std::process::id() as libc::pid_t,
            vcpu_polling: AtomicBool::new(false),
            progress: EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).map_err(RingError::EventFd)?,
            served: AtomicU32::new(0),
            busy: AtomicBool::new(false),
        });
        let (thread_shared, thread_kick, thread_ram) = (shared.clone(), kick.clone(), ram.clone());
        std::thread::Builder::new()
            .name("tender-ring".into())
            .spawn(move || io_thread(&thread_ram, gpa, &targets, &thread_shared, &thread_kick, spin))
            .map_err(RingError::Thread)?;
        let ring = Ring { shared, kick, ram: ram.clone(), gpa };
        loop {
            match ring.shared.ready.load(Ordering::Acquire) {
                0 => std::thread::yield_now(),
                1 => break,
                _ => return Err(RingError::Placement),
            }
        }
        let Some(vm) = vm else {
            return Ok(ring);
        };
        let kick = kvm_ioeventfd {
            addr: u64::from(NET_RING_KICK_PORT),
            len: 4,
            fd: ring.kick_fd(),
            flags: 1 << kvm_ioeventfd_flag_nr_pio,
            ..Default::default()
        };
        // SAFETY: KVM_IOEVENTFD reads a `kvm_ioeventfd`, which `kick` is, on our own VM fd.
        if unsafe { ioctl_with_ref(vm, KVM_IOEVENTFD(), &kick) } < 0 {
            return Err(RingError::IoEvent(std::io::Error::last_os_error()));
        }
        Ok(ring)
    }

    /// The eventfd, which the vCPU thread writes to stop the I/O thread (for the allowlist).
    pub fn kick_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.kick.as_raw_fd()
    }

    /// The eventfd the thread signals when it consumes entries while the guest sleeps in POLL.
    pub fn progress(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the eventfd lives in `shared` as long as `self`, which the borrow is tied to.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.progress_fd()) }
    }

    pub fn progress_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.shared.progress.as_raw_fd()
    }

    /// Called by POLL before it sleeps; [`leave_poll`](Self::leave_poll) after. The guest's
    /// indices are its own to lie about: a guest that does only makes its own POLL return early
    /// or late (never later than its timeout).
    pub fn enter_poll(&self) -> PollFor {
        self.shared.end_period(true);
        self.shared.vcpu_polling.store(true, Ordering::Relaxed);
        // Store-load barrier, paired with the thread's "store ent_head; mfence; load
        // vcpu_polling": either we see its progress or it sees us polling and signals.
        fence(Ordering::SeqCst);
        let index = |offset: usize| {
            let at = GuestAddress(self.gpa + offset as u64);
            self.ram.inner().load::<u32>(at, Ordering::Acquire).unwrap_or(0)
        };
        if index(NET_RING_COM_TAIL) != index(NET_RING_COM_HEAD) {
            PollFor::Nothing
        } else if index(NET_RING_ENT_TAIL) != index(NET_RING_ENT_HEAD) {
            PollFor::Ring
        } else {
            PollFor::Devices
        }
    }

    /// Called by POLL after its wait; `frames` when it found a tap readable. If the guest moved
    /// [`BUSY_ENTRIES`] or more through the ring before it slept (a transfer, a burst), the thread,
    /// which slept while the guest did, is woken now and `needs_kick` cleared: the guest then
    /// reads the frames through the ring, and the thread's wake-up overlaps the vCPU's return
    /// to the guest, instead of the guest reading by hypercall, which it does when it finds the
    /// thread asleep. An idle service (an ARP request now and then) never used the ring, so its
    /// thread stays asleep and costs nothing.
    pub fn leave_poll(&self, frames: bool) {
        self.shared.vcpu_polling.store(false, Ordering::Relaxed);
        let at = GuestAddress(self.gpa + NET_RING_NEEDS_KICK as u64);
        // Only a thread that asked for a kick is about to read the eventfd: a kick it never
        // takes would end its next waiting read at once.
        if frames
            && self.shared.busy.load(Ordering::Relaxed)
            && self.ram.inner().load::<u32>(at, Ordering::Acquire).is_ok_and(|v| v == 1)
        {
            let _ = self.ram.inner().store(0u32, at, Ordering::Release);
            let _ = self.kick.write(1);
        }
    }

    /// Stores the receive hint (`TENDER_FEATURE_RX_HINT`): the net devices, by handle, that
    /// have a frame waiting after a NET_READ hypercall.
    pub fn set_rx_waiting(&self, handles: u64) {
        let at = GuestAddress(self.gpa + NET_RING_RX_WAITING as u64);
        let _ = self.ram.inner().store(handles, at, Ordering::Release);
    }

    /// The fault the thread found, if any.
    pub fn fault(&self) -> Option<RingFault> {
        self.shared.fault()
    }

    /// Per-handle traffic that went through the ring.
    pub fn counters(&self) -> &[Counters] {
        &self.shared.counters
    }

    /// Stops the thread once it has sent the frames the guest posted before the vCPU stopped
    /// (a reply written just before HALT still leaves). Waits at most [`STOP_GRACE`]; false if
    /// the thread had not stopped by then (it was in the middle of a large block request).
    pub fn stop(&self) -> bool {
        self.stop_within(Some(STOP_GRACE))
    }

    fn stop_within(&self, grace: Option<Duration>) -> bool {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.kick.write(1);
        let deadline = grace.map(|grace| Instant::now() + grace);
        while !self.shared.stopped.load(Ordering::Acquire) {
            if deadline.is_some_and(|deadline| Instant::now() > deadline) {
                return false;
            }
            // Not yield_now: sched_yield is not on the allowlist.
            std::hint::spin_loop();
        }
        true
    }
}

impl Drop for Ring {
    /// For library users that drop a `Vm`: waits, however long the request in progress takes,
    /// until the thread is done with the guest's devices, whose fds are closed next. (tender
    /// itself never drops: it ends the process from inside the sandbox.)
    fn drop(&mut self) {
        let _ = self.stop_within(None);
    }
}

/// How long the thread looks at an empty ring after its last entry before it sleeps, given
/// `--ring-spin` (`spin`, zero when the thread has not served anything yet), whether the guest
/// is busy ([`BUSY_ENTRIES`]) and whether it sleeps in POLL. A guest in POLL cannot post
/// anything, so the thread sleeps at once, unless the guest is busy: a busy guest's thread
/// spins [`BUSY_SPIN`] whether the guest runs or sleeps, since in a transfer the guest's next
/// entries come within a round trip, and a thread that slept must be kicked, or passed over
/// by hypercalls, for each window (TCP out of the guest ran at two thirds of the speed).
fn spin_limit(spin: Duration, busy: bool, polling: bool) -> Duration {
    match (spin.is_zero(), busy, polling) {
        (true, _, _) => Duration::ZERO,
        (false, true, _) => spin.max(BUSY_SPIN),
        (false, false, false) => spin,
        (false, false, true) => Duration::ZERO,
    }
}

fn io_thread(ram: &GuestRam, gpa: u64, targets: &[Target], shared: &Shared, kick: &EventFd, spin: Duration) {
    // Signals are for the vCPU thread: its handler sets `immediate_exit` on the vCPU.
    let _ = nix::sys::signal::SigSet::all().thread_block();
    let ring = ram.inner().get_slice(GuestAddress(gpa), NET_RING_SIZE);
    shared.ready.store(if ring.is_ok() { 1 } else { 2 }, Ordering::Release);
    if let Ok(ring) = ring {
        let mut worker = Worker { ring, ram, targets, shared, kick, spin, ent_head: 0, com_tail: 0 };
        worker.serve();
    }
    shared.stopped.store(true, Ordering::Release);
    // Parked for good: the process ends with exit_group, which takes this thread along.
    loop {
        let _ = kick.read();
    }
}

/// Which pass over the ring: while the vCPU runs, or the last one after it stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Serving,
    Last,
}

struct Worker<'a> {
    ring: VolatileSlice<'a, ()>,
    ram: &'a GuestRam,
    targets: &'a [Target],
    shared: &'a Shared,
    /// Wakes the thread: the guest's kick, or [`Ring::stop`].
    kick: &'a EventFd,
    /// How long to look at an empty ring before sleeping (`--ring-spin`).
    spin: Duration,
    /// The host's indices. The copies in the ring are for the guest to read; the guest could
    /// overwrite those, so they are never read back.
    ent_head: u32,
    com_tail: u32,
}

impl Worker<'_> {
    fn serve(&mut self) {
        // No spinning before the guest has posted anything: the vCPU thread is still setting
        // up the VM, and on a small host the spinning would slow it down.
        let mut spin = false;
        loop {
            let served = match self.wait_for_work(spin) {
                Ok(true) => self.process(Pass::Serving),
                Ok(false) => break,
                Err(fault) => Err(fault),
            };
            spin = true;
            if served.is_ok() {
                self.tell_poll();
            }
            if let Err(fault) = served {
                self.shared.record(fault);
                // SAFETY: kill(2) of our own process; this thread blocks every signal, so the
                // vCPU thread takes it, and its handler only records it and stops the vCPU.
                unsafe { libc::kill(self.shared.pid, libc::SIGUSR1) };
                return;
            }
        }
        // The vCPU has stopped: send the frames it posted last. A fault found now still decides
        // how the run ended (the vCPU thread looks after stopping this thread).
        if let Err(fault) = self.process(Pass::Last) {
            self.shared.record(fault);
        }
    }

    /// Wakes a POLL that waits for the thread's progress (see [`Ring::enter_poll`]).
    fn tell_poll(&self) {
        fence(Ordering::SeqCst);
        if self.shared.vcpu_polling.load(Ordering::Relaxed) {
            let _ = self.shared.progress.write(1);
        }
    }

    /// Spins (if `spin`) for as long as [`spin_limit`] says, then asks for a kick and sleeps.
    /// False once told to stop.
    fn wait_for_work(&self, spin: bool) -> Result<bool, RingFault> {
        loop {
            let start = Instant::now();
            let limit = |polling: bool| {
                let spin = if spin { self.spin } else { Duration::ZERO };
                spin_limit(spin, self.shared.busy.load(Ordering::Relaxed), polling)
            };
            while start.elapsed() < limit(self.shared.vcpu_polling.load(Ordering::Relaxed)) {
                for _ in 0..SPIN_CHECK {
                    if self.shared.stop.load(Ordering::Acquire) {
                        return Ok(false);
                    }
                    if self.pending() {
                        return Ok(true);
                    }
                    std::hint::spin_loop();
                }
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(false);
            }
            self.store(NET_RING_NEEDS_KICK, 1);
            // Store-load barrier (mfence): pairs with the guest's "store ent_tail; mfence; load
            // needs_kick", so that one side always sees the other's store.
            fence(Ordering::SeqCst);
            if !self.pending() && !self.shared.stop.load(Ordering::Acquire) {
                self.kick.read().map_err(|e| RingFault::Kick { errno: e.raw_os_error().unwrap_or(libc::EIO) })?;
            }
            self.store(NET_RING_NEEDS_KICK, 0);
            if self.pending() {
                return Ok(true);
            }
        }
    }

    fn pending(&self) -> bool {
        self.load(NET_RING_ENT_TAIL) != self.ent_head
    }

    fn load(&self, offset: usize) -> u32 {
        // The offsets are constants inside the slice, which `start` checked.
        self.ring.load(offset, Ordering::Acquire).unwrap_or(0)
    }

    fn store(&self, offset: usize, value: u32) {
        let _ = self.ring.store(value, offset, Ordering::Release);
    }

    /// Carries out every entry posted so far; while serving, stops early when told to stop (the
    /// last pass then takes the rest).
    fn process(&mut self, pass: Pass) -> Result<(), RingFault> {
        let tail = self.load(NET_RING_ENT_TAIL);
        if tail.wrapping_sub(self.ent_head) > NET_RING_ENTRIES {
            return Err(RingFault::Index { head: self.ent_head, tail });
        }
        let mut first = self.ent_head;
        while self.ent_head != tail {
            if pass == Pass::Serving && self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let slot = (self.ent_head % NET_RING_ENTRIES) as usize;
            let entry = self
                .ring
                .read_obj::<Abi<NetRingEntry>>(NET_RING_ENTRIES_OFFSET + slot * size_of::<NetRingEntry>())
                .map(|e| e.0)
                .unwrap_or_default();
            let target = self.targets.get(entry.handle as usize).unwrap_or(&Target::None);
            let (data, len) = (entry.data, u64::from(entry.len));
            let fault = |e| match e {
                IoError::Guest(fault) => RingFault::Access(fault),
                IoError::Host { op, errno } => RingFault::Host { handle: entry.handle, op, errno },
            };
            match (entry.operation, target) {
                (NET_RING_OP_WRITE, target) => {
                    // Fire and forget: a frame the tap refuses is dropped, as a NIC would.
                    if let Target::Net(tap) = target
                        && tap.write(self.ram, data, len).map_err(fault)? == SOLO5_R_OK
                    {
                        self.count(entry.handle, false, len);
                    }
                    self.ent_head = self.ent_head.wrapping_add(1);
                }
                (NET_RING_OP_READ, Target::Net(tap)) => {
                    // The ring answers OK, AGAIN or EINVAL (ABI section 9), never EUNSPEC.
                    let mut answer = tap.read(self.ram, data, len).map_err(fault)?;
                    if answer.0 == SOLO5_R_AGAIN && entry.offset != 0 && self.may_wait(pass) {
                        // The guest waits for its peer here, as in POLL: one request and its
                        // answer between two such waits are not a transfer.
                        self.shared.served.fetch_add(self.ent_head.wrapping_sub(first), Ordering::Relaxed);
                        first = self.ent_head;
                        self.shared.end_period(false);
                        answer = self.wait_for_frame(tap, entry.offset, data, len).map_err(fault)?;
                    }
                    let (ret, got) = match answer {
                        (SOLO5_R_EUNSPEC, _) => (SOLO5_R_EINVAL, 0),
                        answer => answer,
                    };
                    self.commit(entry, true, ret, got);
                }
                (RING_OP_BLOCK_READ | RING_OP_BLOCK_WRITE, Target::Block(_)) if pass == Pass::Last => {
                    self.ent_head = self.ent_head.wrapping_add(1);
                }
                (RING_OP_BLOCK_READ | RING_OP_BLOCK_WRITE, Target::Block(block)) => {
                    let read = entry.operation == RING_OP_BLOCK_READ;
                    let ret = block.request(self.ram, read, entry.offset, data, len).map_err(fault)?;
                    self.commit(entry, read, ret, if ret == SOLO5_R_OK { len } else { 0 });
                }
                (NET_RING_OP_READ | RING_OP_BLOCK_READ | RING_OP_BLOCK_WRITE, _) => {
                    self.commit(entry, false, SOLO5_R_EINVAL, 0);
                }
                // Unknown operations are skipped, as solo5-hvt does.
                _ => self.ent_head = self.ent_head.wrapping_add(1),
            }
        }
        self.store(NET_RING_ENT_HEAD, self.ent_head);
        self.shared.served.fetch_add(self.ent_head.wrapping_sub(first), Ordering::Relaxed);
        Ok(())
    }

    /// Whether the read at `ent_head` may wait for a frame: while serving, not told to stop, and
    /// with nothing posted after it (which the wait would hold up).
    fn may_wait(&self, pass: Pass) -> bool {
        pass == Pass::Serving
            && !self.shared.stop.load(Ordering::Acquire)
            && self.load(NET_RING_ENT_TAIL) == self.ent_head.wrapping_add(1)
    }

    /// A waiting read (`TENDER_FEATURE_WAIT_READ`) that found the tap empty: sleeps in `ppoll`
    /// on the tap and the kick eventfd for at most `wait_ns` (capped at
    /// [`NET_RING_WAIT_MAX_NS`]), and reads again whenever the tap is readable. Ends with
    /// AGAIN when the time is up or on a kick (a stop, or a guest that kicks for nothing: it
    /// only shortens its own wait); the kick is left for [`Worker::wait_for_work`] to take.
    fn wait_for_frame(&self, tap: &TapIo, wait_ns: u64, data: u64, len: u64) -> Result<(i32, u64), IoError> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + Duration::from_nanos(wait_ns.min(NET_RING_WAIT_MAX_NS));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((SOLO5_R_AGAIN, 0));
            }
            let mut fds = [
                libc::pollfd { fd: tap.raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.kick.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let timeout =
                libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos().into() };
            // SAFETY: ppoll(2) on two pollfds of ours (it writes their `revents`), a timespec of
            // ours, and no signal mask (this thread blocks every signal anyway).
            let n = unsafe {
                libc::syscall(libc::SYS_ppoll, fds.as_mut_ptr(), fds.len(), &timeout, std::ptr::null::<u8>(), 0usize)
            };
            if n < 0 || fds[1].revents != 0 {
                return Ok((SOLO5_R_AGAIN, 0));
            }
            if fds[0].revents != 0 {
                let answer = tap.read(self.ram, data, len)?;
                // AGAIN: the tap's filter dropped the frame; wait on.
                if answer.0 != SOLO5_R_AGAIN {
                    return Ok(answer);
                }
            }
        }
    }

    /// Answers `entry` (consumed) with a commit, and counts it if it succeeded.
    fn commit(&mut self, entry: NetRingEntry, read: bool, ret: i32, len: u64) {
        if ret == SOLO5_R_OK {
            self.count(entry.handle, read, len);
        }
        let commit = NetRingCommit { id: entry.id, ret, len: len as u32, _reserved: 0 };
        let at = NET_RING_COMMITS_OFFSET + (self.com_tail % NET_RING_ENTRIES) as usize * size_of::<NetRingCommit>();
        let _ = self.ring.write_obj(Abi(commit), at);
        self.ent_head = self.ent_head.wrapping_add(1);
        self.com_tail = self.com_tail.wrapping_add(1);
        // The commit is written before the index that publishes it (release).
        self.store(NET_RING_ENT_HEAD, self.ent_head);
        self.store(NET_RING_COM_TAIL, self.com_tail);
    }

    fn count(&self, handle: u32, read: bool, bytes: u64) {
        if let Some(c) = self.shared.counters.get(handle as usize) {
            let (ops, total) = if read { (&c.read_ops, &c.read_bytes) } else { (&c.write_ops, &c.write_bytes) };
            ops.fetch_add(1, Ordering::Relaxed);
            total.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
