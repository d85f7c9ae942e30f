//! The filter program run by the real kernel: attached to one end of a datagram socket pair
//! (SO_ATTACH_FILTER runs the same classic BPF on each datagram, from its first byte, as
//! TUNATTACHFILTER does on each frame), frames sent from the other end arrive or not.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use super::*;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GUEST: [u8; 4] = [10, 0, 0, 2];

fn arp(dst: [u8; 6], op: u16, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn ipv4(dst: [u8; 6], src: [u8; 4]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[255, 255, 255, 255]);
    f.extend_from_slice(&[0; 8]);
    f
}

/// Which of `frames` pass `program`, in the kernel.
fn passes(program: &[libc::sock_filter], frames: &[Vec<u8>]) -> Vec<bool> {
    let (rx, tx) = UnixDatagram::pair().unwrap();
    rx.set_nonblocking(true).unwrap();
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: SO_ATTACH_FILTER copies the program, alive for the call, onto our own socket.
    let rc = unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as u32,
        )
    };
    assert_eq!(rc, 0, "the kernel accepts the program: {}", std::io::Error::last_os_error());
    frames
        .iter()
        .map(|f| {
            tx.send(f).unwrap();
            let mut buf = [0u8; 2048];
            rx.recv(&mut buf).is_ok()
        })
        .collect()
}

const BROADCAST: [u8; 6] = [0xff; 6];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x63];

#[test]
fn frames_for_another_mac_are_dropped_and_arp_for_the_guest_passes_before_learning() {
    let frames = [
        ipv4(MAC, [10, 0, 0, 1]),
        ipv4(OTHER_MAC, [10, 0, 0, 1]),
        ipv4([0x01, 0, 0x5e, 0, 0, 1], [10, 0, 0, 1]),
        arp(BROADCAST, 1, [10, 0, 0, 1], [10, 0, 0, 99]),
        arp(BROADCAST, 1, [10, 0, 0, 1], GUEST),
        ipv4(BROADCAST, [0, 0, 0, 0]),
        vec![0u8; 3],
    ];
    assert_eq!(passes(&program(MAC, &[]), &frames), [true, false, true, true, true, true, false]);
}

#[test]
fn once_learnt_only_arp_requests_for_the_guest_pass() {
    let addrs = [u32::from_be_bytes(GUEST), u32::from_be_bytes([192, 168, 7, 7])];
    let frames = [
        arp(BROADCAST, 1, [10, 0, 0, 1], [10, 0, 0, 99]),
        arp(BROADCAST, 1, [10, 0, 0, 1], GUEST),
        arp(BROADCAST, 1, [10, 0, 0, 1], [192, 168, 7, 7]),
        arp(BROADCAST, 2, [10, 0, 0, 1], [10, 0, 0, 99]),
        arp(MAC, 1, [10, 0, 0, 1], [10, 0, 0, 99]),
        ipv4(BROADCAST, [10, 0, 0, 1]),
        arp(BROADCAST, 1, [10, 0, 0, 1], [10, 0, 0, 99])[..30].to_vec(),
    ];
    assert_eq!(passes(&program(MAC, &addrs), &frames), [false, true, true, true, true, true, false]);
}

#[test]
fn addresses_are_learnt_from_what_the_guest_sends() {
    // A socket stands in for the tap: TUNATTACHFILTER fails on it, which `learn` ignores.
    let (sock, _peer) = UnixDatagram::pair().unwrap();
    let f = RxFilter {
        fd: sock.as_raw_fd(),
        mac: MAC,
        addrs: Default::default(),
        updates: AtomicU32::new(0),
        busy: AtomicBool::new(false),
    };
    let learnt = |f: &RxFilter| f.addrs.iter().map(|a| a.load(Ordering::Relaxed).to_be_bytes()).collect::<Vec<_>>();
    f.learn(&arp(BROADCAST, 2, GUEST, [10, 0, 0, 1]));
    assert_eq!(learnt(&f)[0], GUEST, "from an ARP reply");
    f.learn(&arp(BROADCAST, 1, GUEST, [10, 0, 0, 1]));
    assert_eq!(f.updates.load(Ordering::Relaxed), 1, "nothing new: no update");
    for short in [&[0u8; 5][..], &arp(BROADCAST, 1, [1, 2, 3, 4], GUEST)[..25], &ipv4(MAC, [10, 0, 0, 2])] {
        f.learn(short);
    }
    assert_eq!(learnt(&f), [GUEST, [0; 4], [0; 4], [0; 4]], "short frames and ordinary packets teach nothing");
    f.learn(&ipv4(BROADCAST, [0, 0, 0, 0]));
    assert_eq!(learnt(&f), [[0; 4]; 4], "a DHCP client starting over forgets");
    for i in 0..(MAX_UPDATES + 10) {
        f.learn(&arp(BROADCAST, 1, [10, 0, (i >> 8) as u8, i as u8], GUEST));
    }
    assert_eq!(f.updates.load(Ordering::Relaxed), MAX_UPDATES + 1, "updates stop at the limit");
}
