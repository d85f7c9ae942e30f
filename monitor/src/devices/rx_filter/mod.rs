//! A receive filter on each tap, run by the kernel (a classic BPF program attached with
//! TUNATTACHFILTER): frames the guest would drop anyway never reach the tap's queue, so they
//! never wake the guest, tender's vCPU thread or the ring's thread. On a host with many services
//! in one broadcast domain every ARP request reaches every tap; without the filter each of them
//! costs every guest a wake-up (docs/PERFORMANCE.md, "Density").
//!
//! Dropped, as a NIC's own address filter would:
//! - unicast frames for another MAC than the device's (a bridge floods frames for addresses it
//!   has not learnt yet);
//! - broadcast ARP requests (IPv4) for an address the guest has not used, once it has used one.
//!
//! Everything else passes: broadcasts other than ARP requests (DHCP), multicast, ARP replies.
//!
//! The guest's addresses are learnt from the sender address of the ARP packets it sends (its
//! replies and its own requests), at most [`ADDRESSES`] of them, newest first. An IPv4 packet it
//! sends from 0.0.0.0 (a DHCP client starting over) forgets them, so that a new lease is
//! answerable. A guest learns only what it says itself, so a wrong address harms only its own
//! reachability; each change costs an ioctl, so after [`MAX_UPDATES`] changes the filter stops
//! filtering ARP for the rest of the run (the MAC filter stays).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// `_IOW('T', 213, struct sock_fprog)`.
const TUNATTACHFILTER: libc::c_ulong = 0x4010_54d5;
/// Addresses learnt at most.
pub const ADDRESSES: usize = 4;
/// Changes of the learnt addresses after which ARP requests are no longer filtered.
pub const MAX_UPDATES: u32 = 64;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;

#[derive(Debug, thiserror::Error)]
#[error("cannot attach the receive filter: {0}")]
pub struct FilterError(std::io::Error);

/// The filter of one tap and what it has learnt.
#[derive(Debug)]
pub struct RxFilter {
    fd: RawFd,
    mac: [u8; 6],
    /// Learnt IPv4 addresses (network order as a u32 read big-endian), 0 for an empty place.
    addrs: [AtomicU32; ADDRESSES],
    updates: AtomicU32,
    /// Held while one thread rebuilds the filter; a frame that finds it held is not learnt from
    /// (the next one will be).
    busy: AtomicBool,
}

impl RxFilter {
    /// Attaches a filter that drops unicast frames for other MACs than `mac` to the tap `fd`.
    pub fn attach(fd: RawFd, mac: [u8; 6]) -> Result<Self, FilterError> {
        let filter =
            RxFilter { fd, mac, addrs: Default::default(), updates: AtomicU32::new(0), busy: AtomicBool::new(false) };
        filter.install(&[]).map_err(FilterError)?;
        Ok(filter)
    }

    /// Looks at a frame the guest sends and learns its address from it (see the module's text).
    /// Cheap when nothing changes: a few loads.
    pub fn learn(&self, frame: &[u8]) {
        let (ethertype, payload) = match frame {
            [_, _, _, _, _, _, _, _, _, _, _, _, a, b, payload @ ..] => (u16::from_be_bytes([*a, *b]), payload),
            _ => return,
        };
        let seen = match (ethertype, payload) {
            // htype, ptype 0x0800, hlen 6, plen 4, op, sha (6), spa (4)
            (ETH_P_ARP, [_, _, 0x08, 0x00, 6, 4, _, _, _, _, _, _, _, _, a, b, c, d, ..]) => {
                u32::from_be_bytes([*a, *b, *c, *d])
            }
            // An IPv4 packet from 0.0.0.0: a DHCP client without an address.
            (ETH_P_IP, [_, _, _, _, _, _, _, _, _, _, _, _, 0, 0, 0, 0, ..]) => 0,
            _ => return,
        };
        let known = self.addrs.iter().any(|a| a.load(Ordering::Relaxed) == seen);
        let empty = self.addrs.iter().all(|a| a.load(Ordering::Relaxed) == 0);
        if (seen != 0 && known) || (seen == 0 && empty) || self.updates.load(Ordering::Relaxed) > MAX_UPDATES {
            return;
        }
        if self.busy.swap(true, Ordering::Acquire) {
            return;
        }
        let mut addrs: Vec<u32> = Vec::with_capacity(ADDRESSES);
        if seen != 0 {
            addrs.push(seen);
            addrs.extend(self.addrs.iter().map(|a| a.load(Ordering::Relaxed)).filter(|&a| a != 0).take(ADDRESSES - 1));
        }
        for (place, addr) in self.addrs.iter().zip(addrs.iter().copied().chain(std::iter::repeat(0))) {
            place.store(addr, Ordering::Relaxed);
        }
        let updates = self.updates.fetch_add(1, Ordering::Relaxed) + 1;
        // Past the limit: no ARP filtering any more (the empty list means "pass every ARP").
        let _ = self.install(if updates > MAX_UPDATES { &[] } else { &addrs });
        self.busy.store(false, Ordering::Release);
    }

    fn install(&self, addrs: &[u32]) -> std::io::Result<()> {
        let mut code = program(self.mac, addrs);
        let prog = libc::sock_fprog { len: code.len() as u16, filter: code.as_mut_ptr() };
        // SAFETY: TUNATTACHFILTER copies the `sock_fprog` and the program it points to, both alive
        // for the call; the kernel checks the program before it attaches it.
        if unsafe { libc::ioctl(self.fd, TUNATTACHFILTER, &prog) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Jump targets while the program is written; resolved into offsets by [`Asm::finish`].
#[derive(Clone, Copy, PartialEq)]
enum To {
    Next,
    Accept,
    Drop,
    At(usize),
}

struct Asm(Vec<(u16, To, To, u32)>);

impl Asm {
    fn op(&mut self, code: u32, k: u32) {
        self.0.push((code as u16, To::Next, To::Next, k));
    }

    fn jeq(&mut self, k: u32, yes: To, no: To) {
        self.0.push(((libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, yes, no, k));
    }

    fn finish(self) -> Vec<libc::sock_filter> {
        let accept = self.0.len();
        let drop = accept + 1;
        let mut out: Vec<libc::sock_filter> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| {
                let offset = |to| match to {
                    To::Next => 0,
                    To::Accept => (accept - i - 1) as u8,
                    To::Drop => (drop - i - 1) as u8,
                    To::At(at) => (at - i - 1) as u8,
                };
                libc::sock_filter { code, jt: offset(jt), jf: offset(jf), k }
            })
            .collect();
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        out.push(libc::sock_filter { code: ret, jt: 0, jf: 0, k: u32::MAX });
        out.push(libc::sock_filter { code: ret, jt: 0, jf: 0, k: 0 });
        out
    }
}

/// The filter program for a device with `mac` whose guest uses `addrs` (none: ARP unfiltered).
/// Offsets are from the start of the Ethernet frame; a load past the end drops the frame.
pub fn program(mac: [u8; 6], addrs: &[u32]) -> Vec<libc::sock_filter> {
    let (ld_w, ld_h, ld_b) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_LD | libc::BPF_H | libc::BPF_ABS,
        libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
    );
    let mac_hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let mac_lo = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
    let mut a = Asm(Vec::new());
    // 0-3: the destination is our MAC: accept.
    a.op(ld_w, 0);
    a.jeq(mac_hi, To::Next, To::At(4));
    a.op(ld_h, 4);
    a.jeq(mac_lo, To::Accept, To::Next);
    // 4-7: broadcast goes on at 10; other multicast (group bit) is accepted at 8-9; other
    // unicast dropped.
    a.op(ld_w, 0);
    a.jeq(u32::MAX, To::Next, To::At(8));
    a.op(ld_h, 4);
    a.jeq(0xffff, To::At(10), To::Next);
    a.op(ld_b, 0);
    a.0.push(((libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16, To::Accept, To::Drop, 1));
    // 10-: a broadcast ARP request for IPv4 passes only for a learnt address.
    if addrs.is_empty() {
        return a.finish(); // 10 is the accepting return
    }
    a.op(ld_h, 12);
    a.jeq(u32::from(ETH_P_ARP), To::Next, To::Accept);
    a.op(ld_h, 20);
    a.jeq(u32::from(ARP_REQUEST), To::Next, To::Accept);
    a.op(ld_h, 16);
    a.jeq(u32::from(ETH_P_IP), To::Next, To::Accept);
    a.op(ld_w, 38);
    for (i, &addr) in addrs.iter().enumerate() {
        a.jeq(addr, To::Accept, if i + 1 == addrs.len() { To::Drop } else { To::Next });
    }
    a.finish()
}

#[cfg(test)]
mod tests;
