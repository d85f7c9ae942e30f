//! Devices the guest declares in its manifest. Handles are manifest indices.

pub mod block;
pub mod net;
pub mod poll;
pub mod ring;
pub mod rx_filter;

use block::BlockDevice;
use net::NetDevice;

use crate::memory::GuestFault;

/// What a manifest index refers to on the host.
pub enum Device {
    /// Index 0 (reserved) or an entry of a type the tender does not implement.
    None,
    Block(BlockDevice),
    Net(NetDevice),
}

impl Device {
    /// The device's name in the manifest (empty for [`Device::None`]).
    pub fn name(&self) -> &str {
        match self {
            Device::None => "",
            Device::Block(b) => &b.name,
            Device::Net(n) => &n.name,
        }
    }
}

/// Why a device request could not be answered: either ends the run, whether the request came
/// by hypercall or through the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The buffer is not guest memory the request may use.
    Guest(GuestFault),
    /// The host side failed for good (`errno`): a block file's read or write, or a tap that went
    /// away. `errno` 0 is a block file that ended early.
    Host { op: &'static str, errno: i32 },
}

/// The error for an [`IoError::Host`]'s `errno`.
pub fn host_io_error(errno: i32) -> std::io::Error {
    match errno {
        0 => std::io::ErrorKind::UnexpectedEof.into(),
        e => std::io::Error::from_raw_os_error(e),
    }
}
