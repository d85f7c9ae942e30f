//! Devices the guest declares in its manifest. Handles are manifest indices.

pub mod block;
pub mod net;
pub mod poll;
pub mod ring;

use block::BlockDevice;
use net::NetDevice;

/// What a manifest index refers to on the host.
pub enum Device {
    /// Index 0 (reserved) or an entry of a type the tender does not implement.
    None,
    Block(BlockDevice),
    Net(NetDevice),
}
