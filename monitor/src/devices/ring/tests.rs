//! The I/O thread's bookkeeping, driven by hand on a small guest memory, with a datagram
//! socket pair standing in for the tap (it keeps frames apart, as a tap does). The hostile
//! suite (tests/hostile.rs) attacks the whole thing through a real guest.

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
    kick: EventFd,
}

fn rig() -> Rig {
    let mut ram = GuestRam::new(MEM + NET_RING_AREA_SIZE, MEM).unwrap();
    ram.protect_read_only(0x10_0000, 0x10_1000, false).unwrap();
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
        vcpu_polling: AtomicBool::new(false),
        progress: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        served: AtomicU32::new(0),
        busy: AtomicBool::new(false),
    };
    Rig { ram, shared, tap, host_side, kick: EventFd::new(libc::EFD_NONBLOCK).unwrap() }
}

impl Rig {
    /// Handle 1 is the NIC (MTU 1500); handle 0 is the manifest's reserved entry.
    fn taps(&self) -> [Target; 2] {
        [Target::None, Target::Net(TapIo::new(self.tap.as_raw_fd(), 1500))]
    }

    /// A worker whose own indices start at `head` and `com_tail`, as after that many entries.
    fn worker<'a>(&'a self, targets: &'a [Target], head: u32, com_tail: u32) -> Worker<'a> {
        let ring = self.ram.inner().get_slice(GuestAddress(RING), NET_RING_SIZE).unwrap();
        let spin = Duration::from_micros(u64::from(SPIN_DEFAULT_US));
        Worker { ring, ram: &self.ram, targets, shared: &self.shared, kick: &self.kick, spin, ent_head: head, com_tail }
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
        (entry(NET_RING_OP_READ, 1, BUF, u32::MAX, 0), GuestFault { gpa: BUF, len: u64::from(u32::MAX), write: false }),
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
    let eof = RingFault::Host { handle: 2, op: "read", errno: 0 };
    assert_eq!(r.worker(&targets, 0, 0).process(Pass::Serving), Err(eof));
    assert_eq!(eof.to_string(), "device 2: read failed: unexpected end of file");
    for fault in [eof, RingFault::Host { handle: 7, op: "write", errno: libc::ENOSPC }, RingFault::Kick { errno: 4 }] {
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

/// A tap whose fd has gone bad (as a deleted interface's does, with EBADFD) ends the run from the
/// thread, for a frame sent and for a read alike; a frame the tap merely refuses is dropped.
#[test]
fn a_tap_that_is_gone_is_a_host_fault() {
    let r = rig();
    // Each end of a pipe fails the other direction with EBADF: a tap fd gone bad both ways.
    let (read_end, write_end) = std::io::pipe().unwrap();
    for (operation, fd, op) in
        [(NET_RING_OP_WRITE, read_end.as_raw_fd(), "write"), (NET_RING_OP_READ, write_end.as_raw_fd(), "read")]
    {
        r.post(0, entry(operation, 1, BUF, 60, 5));
        r.set_tail(1);
        let targets = [Target::None, Target::Net(TapIo::new(fd, 1500))];
        let fault = RingFault::Host { handle: 1, op, errno: libc::EBADF };
        assert_eq!(r.worker(&targets, 0, 0).process(Pass::Serving), Err(fault));
        assert_eq!(r.host_index(NET_RING_COM_TAIL), 0, "no answer to a request that ended the run");
        r.shared.record(fault);
        assert_eq!(r.shared.fault(), Some(fault), "the fault crosses to the vCPU thread intact");
    }
    // A datagram socket whose peer is gone refuses the frame (ECONNREFUSED): dropped, as a NIC
    // would, and the ring goes on.
    let Rig { ram, shared, tap, host_side, kick } = r;
    drop(host_side);
    let r = Rig { ram, shared, tap, host_side: UnixDatagram::unbound().unwrap(), kick };
    r.post(0, entry(NET_RING_OP_WRITE, 1, BUF, 60, 5));
    r.set_tail(1);
    let taps = r.taps();
    r.worker(&taps, 0, 0).process(Pass::Serving).unwrap();
    assert_eq!(r.host_index(NET_RING_ENT_HEAD), 1);
}

/// A NET_READ that asks to wait (`offset`, TENDER_FEATURE_WAIT_READ).
fn waiting_read(id: u32, wait_ns: u64) -> NetRingEntry {
    NetRingEntry { operation: NET_RING_OP_READ, handle: 1, data: BUF + 0x1000, len: 1514, id, offset: wait_ns }
}

impl Rig {
    /// Posts a waiting read as entry `i`, alone in the ring, has `worker` serve it, and returns
    /// its commit.
    fn wait_once(&self, worker: &mut Worker<'_>, i: u32, wait_ns: u64) -> NetRingCommit {
        self.post(i, waiting_read(i, wait_ns));
        self.set_tail(i + 1);
        worker.process(Pass::Serving).unwrap();
        assert_eq!(self.host_index(NET_RING_COM_TAIL), i + 1, "every waiting read gets its commit");
        let commit = self.commit(i);
        assert_eq!(commit.id, i);
        commit
    }
}

/// A waiting read posted on an empty tap is answered by the frame that arrives while the thread
/// waits (reposted after each AGAIN, as guest-rt does, in case this host is too slow to send it
/// within one wait).
#[test]
fn a_waiting_read_is_answered_by_a_frame_that_arrives() {
    let r = rig();
    let taps = r.taps();
    let mut worker = r.worker(&taps, 0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_micros(200));
            r.host_side.send(b"a frame that came later").unwrap();
        });
        for i in 0..100_000u32 {
            let commit = r.wait_once(&mut worker, i, NET_RING_WAIT_MAX_NS);
            if commit.ret == SOLO5_R_OK {
                assert_eq!(commit.len, 23);
                let mut got = [0u8; 23];
                r.ram.inner().read_slice(&mut got, GuestAddress(BUF + 0x1000)).unwrap();
                assert_eq!(&got, b"a frame that came later");
                return;
            }
            assert_eq!(commit.ret, SOLO5_R_AGAIN);
        }
        panic!("the frame never reached a waiting read");
    });
}

/// A waiting read on a tap that stays empty is answered AGAIN once its wait is over (never
/// sooner), and a guest cannot make the thread wait longer than the cap.
#[test]
fn a_waiting_read_times_out_with_again() {
    let r = rig();
    let taps = r.taps();
    let mut worker = r.worker(&taps, 0, 0);
    for (i, wait_ns) in [(0u32, 300_000u64), (1, u64::MAX)] {
        let start = Instant::now();
        let commit = r.wait_once(&mut worker, i, wait_ns);
        assert!(start.elapsed() >= Duration::from_nanos(wait_ns.min(NET_RING_WAIT_MAX_NS)), "it waited");
        assert_eq!((commit.ret, commit.len), (SOLO5_R_AGAIN, 0));
    }
    assert_eq!(r.host_index(NET_RING_ENT_HEAD), 2);
}

/// A kick (a stop, or a guest that kicks for nothing) ends a wait with AGAIN and is left for
/// the thread's sleep to take; after the stop, the last pass answers a waiting read at once.
#[test]
fn a_kick_or_a_stop_ends_a_waiting_read() {
    let r = rig();
    let taps = r.taps();
    let mut worker = r.worker(&taps, 0, 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_micros(100));
            r.shared.stop.store(true, Ordering::Release);
            r.kick.write(1).unwrap();
        });
        assert_eq!(r.wait_once(&mut worker, 0, u64::MAX).ret, SOLO5_R_AGAIN);
    });
    assert_eq!(r.kick.read().unwrap(), 1, "the kick is still there for the thread's sleep");
    // Told to stop: answered at once, and so is a read with a write behind it.
    r.post(1, waiting_read(1, u64::MAX));
    r.post(2, entry(NET_RING_OP_WRITE, 1, BUF, 60, 2));
    r.set_tail(3);
    worker.process(Pass::Last).unwrap();
    assert_eq!(r.host_index(NET_RING_ENT_HEAD), 3);
    assert_eq!(r.commit(1).ret, SOLO5_R_AGAIN);
    let mut frame = [0u8; 100];
    assert_eq!(r.host_side.recv(&mut frame).unwrap(), 60, "the write behind it left");
}

/// Waits (bounded) until the ring thread has asked for a kick: it sleeps.
fn wait_asleep(ring: &Ring, r: &Rig) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.host_index(NET_RING_NEEDS_KICK) != 1 {
        assert!(Instant::now() < deadline, "the thread never went to sleep");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ring.fault().is_none());
}

/// A POLL that ends with a frame wakes the sleeping thread (and clears `needs_kick`, so the guest
/// posts its reads without a kick) only after a burst through the ring: an idle service's thread,
/// and that of a service answering one request at a time, stays asleep.
#[test]
fn a_poll_that_finds_a_frame_wakes_the_thread_only_after_a_burst() {
    let r = rig();
    // A thread that spins half a second before it sleeps again: long enough to see it awake.
    let ring = Ring::start(None, &r.ram, RING, r.taps().to_vec(), Duration::from_millis(500)).unwrap();
    r.host_side.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.ram.write_setup(BUF, &[7; 60]).unwrap();
    let mut tail = 0;
    // The guest sends `n` frames through the ring, kicks, and sleeps in POLL once they have left,
    // which ends with a frame (`frames`) or not; returns `needs_kick` after the POLL.
    let mut poll_after = |n: u32, frames: bool| {
        for _ in 0..n {
            r.post(tail, entry(NET_RING_OP_WRITE, 1, BUF, 60, tail));
            tail += 1;
        }
        r.set_tail(tail);
        r.ram.inner().store(0u32, GuestAddress(RING + NET_RING_NEEDS_KICK as u64), Ordering::Release).unwrap();
        ring.kick.write(1).unwrap();
        let mut frame = [0u8; 100];
        for _ in 0..n {
            assert_eq!(r.host_side.recv(&mut frame).unwrap(), 60);
        }
        wait_asleep(&ring, &r);
        assert_eq!(ring.enter_poll(), PollFor::Devices);
        ring.leave_poll(frames);
        let needs_kick = r.host_index(NET_RING_NEEDS_KICK);
        wait_asleep(&ring, &r);
        needs_kick
    };
    assert_eq!(poll_after(0, true), 1, "no ring traffic: the thread sleeps on");
    assert_eq!(poll_after(BUSY_ENTRIES - 1, true), 1, "a request and its reply are no burst");
    assert_eq!(poll_after(BUSY_ENTRIES, false), 1, "a POLL that timed out wakes nothing");
    assert_eq!(poll_after(BUSY_ENTRIES, true), 0, "woken for the frames POLL found");
    assert_eq!(poll_after(0, true), 1, "nothing went through the ring since");
    assert!(ring.stop());
}

/// The thread's spin before it sleeps: `--ring-spin` while the guest runs, nothing while it
/// sleeps in POLL, and at least BUSY_SPIN for a busy guest either way; `--ring-spin=0` (or a
/// thread that has served nothing yet) never spins.
#[test]
fn a_busy_guests_thread_spins_whether_the_guest_runs_or_polls() {
    let us = Duration::from_micros;
    assert_eq!(spin_limit(us(20), false, false), us(20), "a guest that runs");
    assert_eq!(spin_limit(us(20), false, true), Duration::ZERO, "a guest asleep in POLL posts nothing");
    assert_eq!(spin_limit(us(20), true, false), BUSY_SPIN, "a transfer, guest running");
    assert_eq!(spin_limit(us(20), true, true), BUSY_SPIN, "a transfer, guest between windows");
    assert_eq!(spin_limit(us(1000), true, true), us(1000), "a longer --ring-spin stays");
    for (busy, polling) in [(false, false), (false, true), (true, false), (true, true)] {
        assert_eq!(spin_limit(Duration::ZERO, busy, polling), Duration::ZERO, "--ring-spin=0");
    }
}

/// A guest is busy when it moved BUSY_ENTRIES or more through the ring between two waits for its
/// peer: a POLL (where a transfer stays busy through short wake-ups) or a read the thread held
/// for a frame (where one request and its answer are judged alone, so that a service answering
/// requests back to back, which never POLLs, is not taken for a transfer).
#[test]
fn the_guest_is_busy_after_a_burst_between_two_waits_for_its_peer() {
    let r = rig();
    let taps = r.taps();
    let mut worker = r.worker(&taps, 0, 0);
    r.ram.write_setup(BUF, &[7; 60]).unwrap();
    let busy = || r.shared.busy.load(Ordering::Relaxed);
    let mut tail = 0;
    // `writes` frames, then a read that waits (the tap stays empty) if `wait`.
    let mut period = |writes: u32, wait: bool| {
        for _ in 0..writes {
            r.post(tail, entry(NET_RING_OP_WRITE, 1, BUF, 60, tail));
            tail += 1;
        }
        if wait {
            r.post(tail, waiting_read(tail, 1_000));
            tail += 1;
        }
        r.set_tail(tail);
        worker.process(Pass::Serving).unwrap();
        let mut frame = [0u8; 100];
        for _ in 0..writes {
            assert_eq!(r.host_side.recv(&mut frame).unwrap(), 60);
        }
    };
    period(BUSY_ENTRIES, true);
    assert!(busy(), "a window of segments, then a wait for the ACK");
    period(3, true);
    assert!(!busy(), "a request's answer, then a wait for the next request");
    period(BUSY_ENTRIES, false);
    r.shared.end_period(true);
    assert!(busy(), "a burst, then a POLL");
    period(1, false);
    r.shared.end_period(true);
    assert!(busy(), "a POLL woken by one segment ahead of the rest");
    r.shared.end_period(true);
    assert!(!busy(), "a POLL after a period that moved nothing");
}
