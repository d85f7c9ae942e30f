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
    /// Length of a frame kept in `rx` by the gate ([`Verdict::Hold`]): it is judged again, before
    /// any other frame, on the next receive.
    held: Option<usize>,
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
}

pub(crate) struct Rx<'a> {
    frame: &'a [u8],
    hook: Option<fn(&[u8])>,
}

pub(crate) struct Tx<'a> {
    nic: NetDevice,
    buf: &'a mut [u8],
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
                    Ok(n) => n,
                    Err(Error::Again) | Err(_) => {
                        self.rx_pending = false;
                        return None;
                    }
                },
            };
            match self.gate.judge(&self.rx[..len]) {
                Verdict::Pass => {
                    self.rx_budget -= 1;
                    let rx = Rx { frame: &self.rx[..len], hook: self.hook };
                    return Some((rx, Tx { nic: self.nic, buf: &mut self.tx }));
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
        Some(Tx { nic: self.nic, buf: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.nic.max_frame();
        caps
    }
}
