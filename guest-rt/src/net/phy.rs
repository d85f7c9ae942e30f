//! smoltcp's view of a [`NetDevice`]: one receive and one transmit buffer, sized once from the
//! MTU, and the SYN gate of the stack's listeners in front of smoltcp (see `listener.rs`).

use alloc::vec;
use alloc::vec::Vec;

use super::listener::{SynGate, Verdict};
use crate::NetDevice;
use crate::device::Error;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

pub(crate) struct Phy {
    nic: NetDevice,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// False once a read found nothing; set again when POLL reports the NIC ready. Saves the
    /// exit of a read that cannot succeed.
    rx_pending: bool,
    /// Frames this poll may still take: the application gets to empty its sockets between
    /// batches, so that a burst (which the net ring delivers without a pause) does not overflow
    /// a socket's buffer inside one poll.
    rx_budget: u32,
    /// Length of a frame kept in `rx`, by the gate ([`Verdict::Hold`]) or by a busy-poll
    /// ([`Phy::spin_for_frame`]): it is judged (again), before any other frame, on the next
    /// receive.
    held: Option<usize>,
    /// Whether a unicast TCP or UDP frame came in since the last [`Phy::take_traffic`]: the
    /// request traffic after which [`Stack::wait`](super::Stack::wait) busy-polls.
    traffic: bool,
    /// Whether the guest sent a reply since the last [`Phy::take_traffic`]: a TCP segment with
    /// data, or a UDP datagram (not a bare ACK).
    replied: bool,
    pub(crate) gate: SynGate,
    pub(crate) hook: Option<fn(&[u8])>,
}

/// Frames one [`Stack::poll`](super::Stack::poll) takes at most: a UDP socket's queue. (Half of
/// that cost a fifth of the TCP throughput here: each poll has its own fixed cost.)
pub(crate) const RX_BATCH: u32 = super::UDP_PACKETS as u32;

impl Phy {
    pub(crate) fn new(nic: NetDevice) -> Self {
        Phy {
            nic,
            rx: vec![0; nic.max_frame()],
            tx: vec![0; nic.max_frame()],
            rx_pending: true,
            rx_budget: RX_BATCH,
            held: None,
            traffic: false,
            replied: false,
            gate: SynGate::default(),
            hook: None,
        }
    }

    /// Whether a receive may find a frame: the NIC may have one, or the gate holds one.
    pub(crate) fn rx_pending(&self) -> bool {
        self.rx_pending || self.held.is_some()
    }

    /// Whether the gate holds a SYN until a listening socket is opened for it.
    pub(crate) fn holding(&self) -> bool {
        self.held.is_some()
    }

    pub(crate) fn set_rx_pending(&mut self) {
        self.rx_pending = true;
    }

    pub(crate) fn refill_rx_budget(&mut self) {
        self.rx_budget = RX_BATCH;
    }

    /// Whether request traffic came in, and the guest replied to it, since the last call: a
    /// request and its answer, after which the next request may follow soon. A transfer into the
    /// guest (data in, bare ACKs out) is not: busy-polling there would take its segments one by
    /// one as they arrive, with an ACK for every second one, where a guest that sleeps takes them
    /// in batches with one ACK each (TCP into the guest ran at half speed).
    pub(crate) fn take_traffic(&mut self) -> bool {
        core::mem::take(&mut self.traffic) & core::mem::take(&mut self.replied)
    }

    /// Receives through the ring, again and again, until a frame comes or the monotonic clock
    /// reaches `until_ns`; true when a frame is held for the next receive. False at once without
    /// a ring: each look would be an exit. Each look asks the tender to wait for a frame until
    /// `until_ns` (a waiting read, when tender offers it): then one read is in flight and
    /// tender's thread sleeps in the kernel, instead of answering reads as fast as they come.
    pub(crate) fn spin_for_frame(&mut self, until_ns: u64) -> bool {
        loop {
            let wait_ns = until_ns.saturating_sub(crate::monotonic_ns());
            match self.nic.recv_through_ring(&mut self.rx, wait_ns) {
                Some(Ok(len)) => {
                    self.held = Some(len);
                    return true;
                }
                Some(Err(Error::Again)) if crate::monotonic_ns() < until_ns => {}
                _ => return false,
            }
        }
    }
}

const TCP: usize = 6;
const UDP: usize = 17;

/// An IPv4 or IPv6 frame's (protocol, offset of the transport header, end of the IP packet), from
/// its headers as they claim; `None` for other frames and for frames too short to say.
fn ip_packet(frame: &[u8]) -> Option<(usize, usize, usize)> {
    let byte = |at: usize| frame.get(at).copied().map(usize::from);
    match frame.get(12..14)? {
        [0x08, 0x00] => Some((byte(23)?, 14 + (byte(14)? & 0xf) * 4, 14 + (byte(16)? << 8 | byte(17)?))),
        [0x86, 0xdd] => Some((byte(20)?, 54, 54 + (byte(18)? << 8 | byte(19)?))),
        _ => None,
    }
}

/// A unicast IPv4 or IPv6 frame carrying TCP or UDP (not a broadcast, an ARP or a ping).
fn request_traffic(frame: &[u8]) -> bool {
    let unicast = frame.first().is_some_and(|b| b & 1 == 0);
    unicast && ip_packet(frame).is_some_and(|(protocol, _, _)| protocol == TCP || protocol == UDP)
}

/// A TCP segment carrying data or a UDP datagram, over IPv4 or IPv6 (an answer, not a bare ACK).
fn carries_data(frame: &[u8]) -> bool {
    let byte = |at: usize| frame.get(at).copied().map(usize::from);
    match ip_packet(frame) {
        Some((UDP, _, _)) => true,
        Some((TCP, transport, end)) => byte(transport + 12).is_some_and(|offset| transport + (offset >> 4) * 4 < end),
        _ => false,
    }
}

pub(crate) struct Rx<'a> {
    frame: &'a [u8],
    hook: Option<fn(&[u8])>,
}

pub(crate) struct Tx<'a> {
    nic: NetDevice,
    buf: &'a mut [u8],
    replied: &'a mut bool,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        if let Some(hook) = self.hook {
            hook(self.frame);
        }
        f(self.frame)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.buf.len());
        let r = f(&mut self.buf[..len]);
        // A frame the tender refuses is dropped, as a congested NIC would.
        let _ = self.nic.send(&self.buf[..len]);
        *self.replied |= carries_data(&self.buf[..len]);
        r
    }
}

impl Device for Phy {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        loop {
            if self.rx_budget == 0 {
                return None;
            }
            let len = match self.held.take() {
                Some(len) => len,
                None if !self.rx_pending => return None,
                None => match self.nic.recv(&mut self.rx) {
                    Ok(n) => {
                        // Saves the exit of a read that would find nothing (the tender's hint).
                        if self.nic.drained() {
                            self.rx_pending = false;
                        }
                        n
                    }
                    Err(Error::Again) | Err(_) => {
                        self.rx_pending = false;
                        return None;
                    }
                },
            };
            match self.gate.judge(&self.rx[..len]) {
                Verdict::Pass => {
                    self.rx_budget -= 1;
                    self.traffic |= request_traffic(&self.rx[..len]);
                    let rx = Rx { frame: &self.rx[..len], hook: self.hook };
                    return Some((rx, Tx { nic: self.nic, buf: &mut self.tx, replied: &mut self.replied }));
                }
                // Counted against the budget too: a flood of SYNs must not keep a poll going.
                Verdict::Drop => self.rx_budget -= 1,
                // Ends this pass's receiving: the stack opens a listening socket and passes again.
                Verdict::Hold => {
                    self.held = Some(len);
                    return None;
                }
            }
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx { nic: self.nic, buf: &mut self.tx, replied: &mut self.replied })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.nic.max_frame();
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::{carries_data, request_traffic};

    fn frame(dst0: u8, ethertype: [u8; 2], protocol_at: usize, protocol: u8) -> [u8; 60] {
        let mut f = [0u8; 60];
        f[0] = dst0;
        f[12..14].copy_from_slice(&ethertype);
        f[protocol_at] = protocol;
        f
    }

    #[test]
    fn only_unicast_tcp_and_udp_is_request_traffic() {
        assert!(request_traffic(&frame(0x02, [0x08, 0x00], 23, 6)), "TCP over IPv4");
        assert!(request_traffic(&frame(0x02, [0x08, 0x00], 23, 17)), "UDP over IPv4");
        assert!(request_traffic(&frame(0x02, [0x86, 0xdd], 20, 6)), "TCP over IPv6");
        assert!(!request_traffic(&frame(0x02, [0x08, 0x00], 23, 1)), "ICMP");
        assert!(!request_traffic(&frame(0xff, [0x08, 0x00], 23, 17)), "broadcast UDP (DHCP)");
        assert!(!request_traffic(&frame(0x33, [0x86, 0xdd], 20, 17)), "multicast");
        assert!(!request_traffic(&frame(0x02, [0x08, 0x06], 23, 17)), "ARP");
        assert!(!request_traffic(&[0x02; 20]), "too short");
    }

    /// An IPv4 frame: 20-byte IP header, then the transport header, `payload` bytes after it.
    fn ipv4(protocol: u8, transport_header: usize, payload: usize) -> alloc::vec::Vec<u8> {
        let total = 20 + transport_header + payload;
        let mut f = alloc::vec![0u8; 14 + total];
        f[0] = 0x02;
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[23] = protocol;
        if protocol == 6 {
            f[14 + 20 + 12] = ((transport_header / 4) as u8) << 4;
        }
        f
    }

    #[test]
    fn replies_are_segments_with_data_and_datagrams() {
        assert!(carries_data(&ipv4(6, 20, 100)), "TCP with data");
        assert!(carries_data(&ipv4(6, 32, 1)), "TCP with options and a byte of data");
        assert!(!carries_data(&ipv4(6, 20, 0)), "a bare ACK");
        assert!(!carries_data(&ipv4(6, 32, 0)), "a bare ACK with timestamps");
        assert!(carries_data(&ipv4(17, 8, 0)), "UDP, even empty");
        assert!(!carries_data(&ipv4(1, 8, 56)), "ICMP");
        let mut v6 = alloc::vec![0u8; 54 + 20];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[19] = 20;
        v6[20] = 6;
        v6[54 + 12] = 5 << 4;
        assert!(!carries_data(&v6), "a bare ACK over IPv6");
        v6[19] = 30;
        v6.resize(54 + 30, 0);
        assert!(carries_data(&v6), "TCP with data over IPv6");
        assert!(!carries_data(&[0x02; 30]), "too short");
        assert!(!carries_data(&ipv4(6, 20, 100)[..40]), "cut short");
    }
}
