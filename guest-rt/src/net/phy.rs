//! smoltcp's view of a [`NetDevice`]: one receive and one transmit buffer, sized once from the
//! MTU.

use alloc::vec;
use alloc::vec::Vec;

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
    pub(crate) hook: Option<fn(&[u8])>,
}

impl Phy {
    pub(crate) fn new(nic: NetDevice) -> Self {
        Phy { nic, rx: vec![0; nic.max_frame()], tx: vec![0; nic.max_frame()], rx_pending: true, hook: None }
    }

    pub(crate) fn rx_pending(&self) -> bool {
        self.rx_pending
    }

    pub(crate) fn set_rx_pending(&mut self) {
        self.rx_pending = true;
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
        if !self.rx_pending {
            return None;
        }
        match self.nic.recv(&mut self.rx) {
            Ok(n) => Some((Rx { frame: &self.rx[..n], hook: self.hook }, Tx { nic: self.nic, buf: &mut self.tx })),
            Err(Error::Again) | Err(_) => {
                self.rx_pending = false;
                None
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
