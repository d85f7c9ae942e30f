//! The shared-memory ring (ABI section 9), with tender's block extension. The guest posts
//! entries to a ring at `boot_info.net_ring` and an I/O thread of the tender carries them out, so
//! a frame or a block request costs no VM exit while the thread is awake. When the thread has
//! looked at an empty ring for a while it sets `needs_kick` and sleeps on an eventfd, which KVM
//! signals when the guest writes port 0x600 (an ioeventfd: the kick never reaches the tender's
//! run loop).
//!
//! Solo5's ring carries NET_WRITE and NET_READ. When tender advertises
//! `TENDER_FEATURE_BLOCK_RING` it also carries BLOCK_WRITE and BLOCK_READ (operations 3 and 4,
//! the device offset in the entry's reserved field), each answered by a commit as a read is.
//!
//! The ring is guest memory: the guest can change any of it at any time. So the thread keeps its
//! own copies of the indices it owns, copies each entry out once before looking at it, and checks
//! every request exactly as the hypercalls do ([`TapIo`], [`BlockIo`]). A buffer outside guest
//! memory or an index more than a ring ahead ends the run as a guest fault, and a failed host read
//! or write of a block device ends it as the hypercall's would: the thread records what happened,
//! stops, and sends SIGUSR1 to the process, which interrupts the vCPU (see `signals`).
//!
//! When the vCPU has stopped, the thread makes one last pass so that frames posted just before
//! HALT still leave. That pass skips block requests: the guest never saw their commits, so, as
//! after a power cut, they may or may not have happened, and skipping them keeps the end of a
//! run short (a ring can hold over 4 TiB of block requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use guest_abi::{
    NET_RING_COM_TAIL, NET_RING_COMMITS_OFFSET, NET_RING_ENT_HEAD, NET_RING_ENT_TAIL, NET_RING_ENTRIES,
    NET_RING_ENTRIES_OFFSET, NET_RING_KICK_PORT, NET_RING_NEEDS_KICK, NET_RING_OP_READ, NET_RING_OP_WRITE,
    NET_RING_SIZE, NET_RING_SPIN_ITERS, NetRingCommit, NetRingEntry, RING_OP_BLOCK_READ, RING_OP_BLOCK_WRITE,
    SOLO5_R_EINVAL, SOLO5_R_EUNSPEC, SOLO5_R_OK,
};
use kvm_bindings::{KVMIO, kvm_ioeventfd, kvm_ioeventfd_flag_nr_pio};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::devices::block::{BlockIo, BlockIoError};
use crate::devices::net::TapIo;
use crate::memory::{Abi, GuestFault, GuestRam};
use crate::report::DeviceStats;

// kvm-ioctls' `register_ioevent` sets the length from the datamatch type, so "no datamatch" comes
// with length 0 (any width); the ABI asks for a 4-byte PIO kick, as solo5-hvt registers it.
vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);

/// How long the vCPU thread waits for the I/O thread to finish the guest's last writes.
const STOP_GRACE: Duration = Duration::from_millis(200);

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

/// What made the I/O thread end the run (exit 1): a guest that broke the ring's rules, or a
/// failed host read or write of a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingFault {
    #[error("ring: {0}")]
    Access(GuestFault),
    #[error("ring: ent_tail={tail:#x} is more than {NET_RING_ENTRIES} entries ahead of ent_head={head:#x}")]
    Index { head: u32, tail: u32 },
    /// Not the guest's doing; the run ends as the BLOCK_READ/WRITE hypercall's would.
    #[error("block device {handle}: {op} failed: {}", crate::devices::block::host_io_error(*errno))]
    Storage { handle: u32, op: &'static str, errno: i32 },
}

/// What the ring's entries for a handle (a manifest index) reach.
#[derive(Clone, Copy, Debug)]
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

impl Counters {
    /// Adds this traffic to the report's figures for the device.
    pub fn add_to(&self, stats: &mut DeviceStats) {
        stats.read_ops += self.read_ops.load(Ordering::Relaxed);
        stats.read_bytes += self.read_bytes.load(Ordering::Relaxed);
        stats.write_ops += self.write_ops.load(Ordering::Relaxed);
        stats.write_bytes += self.write_bytes.load(Ordering::Relaxed);
    }
}

/// What the two threads share. Only atomics: no lock may ever need a futex under seccomp.
struct Shared {
    /// 0 until the thread is past its start-up; then 1 (serving) or 2 (it could not map the ring).
    ready: AtomicU8,
    stop: AtomicBool,
    stopped: AtomicBool,
    /// 0: none; 1: read access; 2: write access; 3: index; 4: storage read; 5: storage write.
    /// `fault_a`/`fault_b` are stored first.
    fault_kind: AtomicU8,
    fault_a: AtomicU64,
    fault_b: AtomicU64,
    counters: Vec<Counters>,
    /// Our pid, for the SIGUSR1 (getpid is not on the allowlist).
    pid: libc::pid_t,
}

impl Shared {
    fn record(&self, fault: RingFault) {
        let (kind, a, b) = match fault {
            RingFault::Access(f) => (if f.write { 2 } else { 1 }, f.gpa, f.len),
            RingFault::Index { head, tail } => (3, u64::from(head), u64::from(tail)),
            RingFault::Storage { handle, op, errno } => {
                (if op == "read" { 4 } else { 5 }, u64::from(handle), errno as u32 as u64)
            }
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
                Some(RingFault::Storage { handle: a as u32, op, errno: b as u32 as i32 })
            }
            _ => None,
        }
    }
}

/// The running ring: its I/O thread and the eventfd that wakes it.
pub struct Ring {
    shared: Arc<Shared>,
    kick: Arc<EventFd>,
}

impl Ring {
    /// Starts an I/O thread for the ring at `gpa`, which must lie in the mapping above the
    /// guest-visible memory (`targets[h]` serves handle `h`), then routes the guest's kicks (port
    /// 0x600) to it. Returns once the thread is past its start-up (stack guard, signal stack,
    /// signal mask): the seccomp filter goes on next, and the thread never returns, as thread
    /// exit would need munmap and futex. On an error nothing is routed and the thread is stopped.
    pub fn start(vm: &VmFd, ram: &GuestRam, gpa: u64, targets: Vec<Target>) -> Result<Self, RingError> {
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
        });
        let (thread_shared, thread_kick, thread_ram) = (shared.clone(), kick.clone(), ram.clone());
        std::thread::Builder::new()
            .name("tender-ring".into())
            .spawn(move || io_thread(&thread_ram, gpa, &targets, &thread_shared, &thread_kick))
            .map_err(RingError::Thread)?;
        let ring = Ring { shared, kick };
        loop {
            match ring.shared.ready.load(Ordering::Acquire) {
                0 => std::thread::yield_now(),
                1 => break,
                _ => return Err(RingError::Placement),
            }
        }
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

fn io_thread(ram: &GuestRam, gpa: u64, targets: &[Target], shared: &Shared, kick: &EventFd) {
    // Signals are for the vCPU thread: its handler sets `immediate_exit` on the vCPU.
    let _ = nix::sys::signal::SigSet::all().thread_block();
    let ring = ram.inner().get_slice(GuestAddress(gpa), NET_RING_SIZE);
    shared.ready.store(if ring.is_ok() { 1 } else { 2 }, Ordering::Release);
    if let Ok(ring) = ring {
        let mut worker = Worker { ring, ram, targets, shared, ent_head: 0, com_tail: 0 };
        worker.serve(kick);
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
    /// The host's indices. The copies in the ring are for the guest to read; the guest could
    /// overwrite those, so they are never read back.
    ent_head: u32,
    com_tail: u32,
}

impl Worker<'_> {
    fn serve(&mut self, kick: &EventFd) {
        // No spinning before the guest has posted anything: the vCPU thread is still setting
        // up the VM, and on a small host the spinning would slow it down.
        let mut spins = 0;
        while self.wait_for_work(kick, spins) {
            spins = NET_RING_SPIN_ITERS;
            if let Err(fault) = self.process(Pass::Serving) {
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

    /// Spins `spins` times, then asks for a kick and sleeps. False once told to stop.
    fn wait_for_work(&self, kick: &EventFd, spins: u32) -> bool {
        loop {
            for _ in 0..spins {
                if self.shared.stop.load(Ordering::Acquire) {
                    return false;
                }
                if self.pending() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return false;
            }
            self.store(NET_RING_NEEDS_KICK, 1);
            // Store-load barrier (mfence): pairs with the guest's "store ent_tail; mfence; load
            // needs_kick", so that one side always sees the other's store.
            fence(Ordering::SeqCst);
            if !self.pending() && !self.shared.stop.load(Ordering::Acquire) {
                let _ = kick.read();
            }
            self.store(NET_RING_NEEDS_KICK, 0);
            if self.pending() {
                return true;
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
            let target = self.targets.get(entry.handle as usize).copied().unwrap_or(Target::None);
            let (data, len) = (entry.data, u64::from(entry.len));
            match (entry.operation, target) {
                (NET_RING_OP_WRITE, target) => {
                    // Fire and forget: a frame the tap refuses is dropped, as a NIC would.
                    if let Target::Net(tap) = target
                        && tap.write(self.ram, data, len).map_err(RingFault::Access)? == SOLO5_R_OK
                    {
                        self.count(entry.handle, false, len);
                    }
                    self.ent_head = self.ent_head.wrapping_add(1);
                }
                (NET_RING_OP_READ, Target::Net(tap)) => {
                    // The ring answers OK, AGAIN or EINVAL (ABI section 9), never EUNSPEC.
                    let (ret, got) = match tap.read(self.ram, data, len).map_err(RingFault::Access)? {
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
                    let ret = block.request(self.ram, read, entry.offset, data, len).map_err(|e| match e {
                        BlockIoError::Guest(fault) => RingFault::Access(fault),
                        BlockIoError::Host { op, errno } => RingFault::Storage { handle: entry.handle, op, errno },
                    })?;
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
        Ok(())
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
mod tests {
    //! The I/O thread's bookkeeping, driven by hand on a small guest memory, with a datagram
    //! socket pair standing in for the tap (it keeps frames apart, as a tap does). The hostile
    //! suite (monitor/tests/hostile.rs) attacks the whole thing through a real guest.

    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    use crate::devices::block::BlockDevice;

    use guest_abi::{NET_RING_AREA_SIZE, SOLO5_R_AGAIN};

    use super::*;

    const MEM: u64 = 4 << 20;
    const RING: u64 = MEM;
    const BUF: u64 = 0x20_0000;

    struct Rig {
        ram: GuestRam,
        shared: Shared,
        tap: UnixDatagram,
        host_side: UnixDatagram,
    }

    fn rig() -> Rig {
        let mut ram = GuestRam::new(MEM + NET_RING_AREA_SIZE, MEM).unwrap();
        ram.protect_read_only(0x10_0000, 0x10_1000).unwrap();
        let (tap, host_side) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        let shared = Shared {
            ready: AtomicU8::new(1),
            stop: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            fault_kind: AtomicU8::new(0),
            fault_a: AtomicU64::new(0),
            fault_b: AtomicU64::new(0),
            counters: (0..3).map(|_| Counters::default()).collect(),
            pid: 0,
        };
        Rig { ram, shared, tap, host_side }
    }

    impl Rig {
        /// Handle 1 is the NIC (MTU 1500); handle 0 is the manifest's reserved entry.
        fn taps(&self) -> [Target; 2] {
            [Target::None, Target::Net(TapIo::new(self.tap.as_raw_fd(), 1500))]
        }

        /// A worker whose own indices start at `head` and `com_tail`, as after that many entries.
        fn worker<'a>(&'a self, targets: &'a [Target], head: u32, com_tail: u32) -> Worker<'a> {
            let ring = self.ram.inner().get_slice(GuestAddress(RING), NET_RING_SIZE).unwrap();
            Worker { ring, ram: &self.ram, targets, shared: &self.shared, ent_head: head, com_tail }
        }

        fn post(&self, index: u32, entry: NetRingEntry) {
            let at = RING + (NET_RING_ENTRIES_OFFSET + (index % NET_RING_ENTRIES) as usize * 32) as u64;
            self.ram.inner().write_obj(Abi(entry), GuestAddress(at)).unwrap();
        }

        fn set_tail(&self, tail: u32) {
            self.ram.inner().store(tail, GuestAddress(RING + NET_RING_ENT_TAIL as u64), Ordering::Release).unwrap();
        }

        fn host_index(&self, offset: usize) -> u32 {
            self.ram.inner().load(GuestAddress(RING + offset as u64), Ordering::Acquire).unwrap()
        }

        fn commit(&self, index: u32) -> NetRingCommit {
            let at = RING + (NET_RING_COMMITS_OFFSET + (index % NET_RING_ENTRIES) as usize * 16) as u64;
            self.ram.inner().read_obj::<Abi<NetRingCommit>>(GuestAddress(at)).unwrap().0
        }
    }

    fn entry(operation: u32, handle: u32, data: u64, len: u32, id: u32) -> NetRingEntry {
        NetRingEntry { operation, handle, data, len, id, offset: 0 }
    }

    fn block_entry(operation: u32, handle: u32, offset: u64, data: u64, len: u32, id: u32) -> NetRingEntry {
        NetRingEntry { operation, handle, data, len, id, offset }
    }

    /// A file of four 512-byte blocks filled with 1, 2, 3 and 4, attached as a block device and
    /// removed when dropped.
    struct Disk {
        path: std::path::PathBuf,
        device: BlockDevice,
    }

    fn disk(test: &str) -> Disk {
        let path = std::env::temp_dir().join(format!("tender-ring-{}-{test}", std::process::id()));
        let blocks: Vec<u8> = (0..2048).map(|i| (i / 512) as u8 + 1).collect();
        std::fs::write(&path, blocks).unwrap();
        let device = BlockDevice::open("storage", &path, 512).unwrap();
        Disk { path, device }
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    impl Rig {
        /// Handle 1 is the NIC, handle 2 the disk.
        fn devices(&self, disk: &Disk) -> [Target; 3] {
            let [none, net] = self.taps();
            [none, net, Target::Block(disk.device.io())]
        }
    }

    #[test]
    fn writes_and_reads_across_the_index_wrap() {
        let r = rig();
        let head = u32::MAX - 1;
        for i in 0..3u32 {
            r.ram.write_setup(BUF + u64::from(i) * 64, &[i as u8 + 1; 60]).unwrap();
            r.post(head.wrapping_add(i), entry(NET_RING_OP_WRITE, 1, BUF + u64::from(i) * 64, 60, i));
        }
        r.host_side.send(b"a frame from the host").unwrap();
        r.post(head.wrapping_add(3), entry(NET_RING_OP_READ, 1, BUF + 0x1000, 1514, 77));
        r.post(head.wrapping_add(4), entry(NET_RING_OP_READ, 1, BUF + 0x1000, 1514, 78));
        r.set_tail(head.wrapping_add(5));
        let taps = r.taps();
        r.worker(&taps, head, u32::MAX).process(Pass::Serving).unwrap();
        for i in 0..3u8 {
            let mut frame = [0u8; 100];
            assert_eq!(r.host_side.recv(&mut frame).unwrap(), 60);
            assert_eq!(frame[..60], [i + 1; 60], "frames leave in order");
        }
        assert_eq!(r.host_index(NET_RING_ENT_HEAD), head.wrapping_add(5));
        assert_eq!(r.host_index(NET_RING_COM_TAIL), 1, "two commits, from u32::MAX round to 1");
        let (first, second) = (r.commit(u32::MAX), r.commit(0));
        assert_eq!((first.id, first.ret, first.len), (77, SOLO5_R_OK, 21));
        assert_eq!((second.id, second.ret, second.len), (78, SOLO5_R_AGAIN, 0));
        let mut got = [0u8; 21];
        r.ram.inner().read_slice(&mut got, GuestAddress(BUF + 0x1000)).unwrap();
        assert_eq!(&got, b"a frame from the host");
        let c = &r.shared.counters[1];
        assert_eq!(c.write_ops.load(Ordering::Relaxed), 3);
        assert_eq!(c.read_bytes.load(Ordering::Relaxed), 21);
    }

    #[test]
    fn bad_handles_operations_and_sizes_are_dropped_or_refused() {
        let r = rig();
        let entries = [
            entry(NET_RING_OP_READ, 0, BUF, 1514, 1),
            entry(NET_RING_OP_READ, 2, BUF, 1514, 2),
            entry(NET_RING_OP_READ, u32::MAX, BUF, 1514, 3),
            entry(NET_RING_OP_WRITE, 0, BUF, 60, 4),
            entry(NET_RING_OP_WRITE, 1, BUF, 13, 5),
            entry(NET_RING_OP_WRITE, 1, BUF, 1515, 6),
            entry(0, 1, BUF, 60, 7),
            entry(u32::MAX, 1, u64::MAX, u32::MAX, 8),
        ];
        for (i, e) in entries.iter().enumerate() {
            r.post(i as u32, *e);
        }
        r.set_tail(entries.len() as u32);
        let taps = r.taps();
        r.worker(&taps, 0, 0).process(Pass::Serving).unwrap();
        assert_eq!(r.host_index(NET_RING_ENT_HEAD), entries.len() as u32);
        assert_eq!(r.host_index(NET_RING_COM_TAIL), 3);
        for (i, id) in [1, 2, 3].into_iter().enumerate() {
            let c = r.commit(i as u32);
            assert_eq!((c.id, c.ret, c.len), (id, SOLO5_R_EINVAL, 0));
        }
        let mut frame = [0u8; 2048];
        r.host_side.set_nonblocking(true).unwrap();
        assert!(r.host_side.recv(&mut frame).is_err(), "nothing reached the tap");
    }

    #[test]
    fn indices_out_of_range_and_bad_buffers_are_faults() {
        for (head, tail) in [(0, NET_RING_ENTRIES + 1), (5, 4), (u32::MAX - 10, 2000)] {
            let r = rig();
            r.set_tail(tail);
            assert_eq!(r.worker(&[], head, 0).process(Pass::Serving), Err(RingFault::Index { head, tail }));
        }
        let cases = [
            (entry(NET_RING_OP_WRITE, 1, MEM - 10, 60, 0), GuestFault { gpa: MEM - 10, len: 60, write: false }),
            (entry(NET_RING_OP_READ, 1, RING, 1514, 0), GuestFault { gpa: RING, len: 1514, write: false }),
            (entry(NET_RING_OP_READ, 1, 0x10_0800, 64, 0), GuestFault { gpa: 0x10_0800, len: 64, write: true }),
            (
                entry(NET_RING_OP_READ, 1, BUF, u32::MAX, 0),
                GuestFault { gpa: BUF, len: u64::from(u32::MAX), write: false },
            ),
        ];
        for (e, fault) in cases {
            let r = rig();
            r.post(0, e);
            r.set_tail(1);
            let taps = r.taps();
            assert_eq!(r.worker(&taps, 0, 0).process(Pass::Serving), Err(RingFault::Access(fault)));
            r.shared.record(RingFault::Access(fault));
            assert_eq!(r.shared.fault(), Some(RingFault::Access(fault)), "the fault crosses to the vCPU thread intact");
        }
        let exactly_a_ring = rig();
        exactly_a_ring.set_tail(NET_RING_ENTRIES);
        assert_eq!(
            exactly_a_ring.worker(&[], 0, 0).process(Pass::Serving),
            Ok(()),
            "a full ring (of zeroed entries, skipped) is fine"
        );
    }

    #[test]
    fn block_requests_are_carried_out_and_bad_ones_get_einval() {
        let (r, disk) = (rig(), disk("requests"));
        r.ram.write_setup(BUF + 0x1000, &[0xaa; 512]).unwrap();
        let entries = [
            block_entry(RING_OP_BLOCK_READ, 2, 512, BUF, 1024, 1),
            block_entry(RING_OP_BLOCK_WRITE, 2, 0, BUF + 0x1000, 512, 2),
            block_entry(RING_OP_BLOCK_READ, 2, 256, BUF, 512, 3),
            block_entry(RING_OP_BLOCK_READ, 2, 1536, BUF, 1024, 4),
            block_entry(RING_OP_BLOCK_WRITE, 2, 0, BUF, 100, 5),
            block_entry(RING_OP_BLOCK_WRITE, 2, u64::MAX - 511, BUF, 512, 6),
            block_entry(RING_OP_BLOCK_READ, 1, 0, BUF, 512, 7),
            block_entry(RING_OP_BLOCK_READ, 0, 0, BUF, 512, 8),
            block_entry(RING_OP_BLOCK_WRITE, 9, 0, BUF, 512, 9),
            entry(NET_RING_OP_READ, 2, BUF, 1514, 10),
            entry(NET_RING_OP_WRITE, 2, BUF, 60, 11),
        ];
        for (i, e) in entries.iter().enumerate() {
            r.post(i as u32, *e);
        }
        r.set_tail(entries.len() as u32);
        let targets = r.devices(&disk);
        r.worker(&targets, 0, 0).process(Pass::Serving).unwrap();
        assert_eq!(r.host_index(NET_RING_ENT_HEAD), entries.len() as u32);
        assert_eq!(r.host_index(NET_RING_COM_TAIL), 10, "every entry but the net write is answered");
        let answers: Vec<_> = (0..10).map(|i| r.commit(i)).map(|c| (c.id, c.ret, c.len)).collect();
        let mut want = vec![(1, SOLO5_R_OK, 1024), (2, SOLO5_R_OK, 512)];
        want.extend((3..=10).map(|id| (id, SOLO5_R_EINVAL, 0)));
        assert_eq!(answers, want);
        let mut got = [0u8; 1024];
        r.ram.inner().read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert!(got[..512].iter().all(|&b| b == 2) && got[512..].iter().all(|&b| b == 3), "blocks 1 and 2 read");
        let file = std::fs::read(&disk.path).unwrap();
        assert!(file[..512].iter().all(|&b| b == 0xaa), "block 0 written");
        assert!(file[512..].iter().zip(512..).all(|(&b, i)| b == (i / 512) as u8 + 1), "nothing else written");
        let c = &r.shared.counters[2];
        let counted = [&c.read_ops, &c.read_bytes, &c.write_ops, &c.write_bytes].map(|n| n.load(Ordering::Relaxed));
        assert_eq!(counted, [1, 1024, 1, 512]);
    }

    #[test]
    fn bad_block_buffers_and_failed_host_io_are_faults() {
        let cases = [
            (
                block_entry(RING_OP_BLOCK_WRITE, 2, 0, MEM - 10, 512, 0),
                GuestFault { gpa: MEM - 10, len: 512, write: false },
            ),
            (block_entry(RING_OP_BLOCK_READ, 2, 0, RING, 512, 0), GuestFault { gpa: RING, len: 512, write: false }),
            (
                block_entry(RING_OP_BLOCK_READ, 2, 0, 0x10_0800, 512, 0),
                GuestFault { gpa: 0x10_0800, len: 512, write: true },
            ),
        ];
        for (e, fault) in cases {
            let (r, disk) = (rig(), disk("buffers"));
            r.post(0, e);
            r.set_tail(1);
            let targets = r.devices(&disk);
            assert_eq!(r.worker(&targets, 0, 0).process(Pass::Serving), Err(RingFault::Access(fault)));
            assert_eq!(r.host_index(NET_RING_COM_TAIL), 0, "no answer to a request that ended the run");
            assert_eq!(std::fs::read(&disk.path).unwrap()[..512], [1; 512], "the file is untouched");
        }
        // The file shrinks behind the tender's back: the read it promised cannot be done.
        let (r, disk) = (rig(), disk("eof"));
        std::fs::OpenOptions::new().write(true).open(&disk.path).unwrap().set_len(1024).unwrap();
        r.post(0, block_entry(RING_OP_BLOCK_READ, 2, 1536, BUF, 512, 0));
        r.set_tail(1);
        let targets = r.devices(&disk);
        let eof = RingFault::Storage { handle: 2, op: "read", errno: 0 };
        assert_eq!(r.worker(&targets, 0, 0).process(Pass::Serving), Err(eof));
        assert_eq!(eof.to_string(), "block device 2: read failed: unexpected end of file");
        for fault in [eof, RingFault::Storage { handle: 7, op: "write", errno: libc::ENOSPC }] {
            r.shared.record(fault);
            assert_eq!(r.shared.fault(), Some(fault), "the fault crosses to the vCPU thread intact");
        }
    }

    #[test]
    fn after_the_vcpu_stopped_frames_leave_and_block_requests_are_skipped() {
        let (r, disk) = (rig(), disk("last-pass"));
        r.ram.write_setup(BUF, &[0xaa; 512]).unwrap();
        r.post(0, block_entry(RING_OP_BLOCK_WRITE, 2, 0, BUF, 512, 1));
        r.post(1, entry(NET_RING_OP_WRITE, 1, BUF, 60, 2));
        r.set_tail(2);
        let targets = r.devices(&disk);
        // Told to stop: the serving pass leaves everything to the last pass.
        r.shared.stop.store(true, Ordering::Release);
        r.worker(&targets, 0, 0).process(Pass::Serving).unwrap();
        assert_eq!(r.host_index(NET_RING_ENT_HEAD), 0);
        let mut worker = r.worker(&targets, 0, 0);
        worker.process(Pass::Last).unwrap();
        assert_eq!(r.host_index(NET_RING_ENT_HEAD), 2, "both entries consumed");
        assert_eq!(r.host_index(NET_RING_COM_TAIL), 0, "no commit");
        let mut frame = [0u8; 100];
        assert_eq!(r.host_side.recv(&mut frame).unwrap(), 60, "the frame left");
        assert_eq!(std::fs::read(&disk.path).unwrap()[..512], [1; 512], "the block write did not happen");
    }
}
