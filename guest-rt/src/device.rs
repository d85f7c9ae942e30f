//! Devices the unikernel declared in its manifest: typed handles over the block and net
//! hypercalls.

use guest_abi::{MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, SOLO5_R_AGAIN, SOLO5_R_EINVAL, SOLO5_R_OK};

use crate::{bootinfo, hypercall};

/// Why a device operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No device of that name and type in the manifest.
    NotDeclared,
    /// Declared but the tender did not attach it.
    NotAttached,
    /// Nothing to read now (net), or the tender asked to retry.
    Again,
    /// A request the device refuses: out of range, not whole blocks, frame too large.
    Invalid,
    /// Any other failure the tender reports.
    Unspecified,
}

fn result(code: i32) -> Result<(), Error> {
    match code {
        SOLO5_R_OK => Ok(()),
        SOLO5_R_AGAIN => Err(Error::Again),
        SOLO5_R_EINVAL => Err(Error::Invalid),
        _ => Err(Error::Unspecified),
    }
}

fn acquire(name: &str, dev_type: u32) -> Result<(u64, &'static guest_abi::MftEntry), Error> {
    let (handle, entry) = bootinfo::find_device(name, dev_type).ok_or(Error::NotDeclared)?;
    if entry.attached == 0 {
        return Err(Error::NotAttached);
    }
    Ok((handle, entry))
}

/// A block device: `capacity` bytes in blocks of `block_size`.
#[derive(Clone, Copy, Debug)]
pub struct BlockDevice {
    handle: u64,
    capacity: u64,
    block_size: u64,
}

impl BlockDevice {
    /// The block device the manifest declares as `name`.
    pub fn open(name: &str) -> Result<Self, Error> {
        let (handle, entry) = acquire(name, MFT_DEV_BLOCK_BASIC)?;
        let b = entry.block();
        Ok(BlockDevice { handle, capacity: b.capacity, block_size: u64::from(b.block_size) })
    }

    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// Size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn blocks(&self) -> u64 {
        self.capacity / self.block_size
    }

    /// Whether `[offset, offset + len)` is whole blocks inside the device.
    fn valid(&self, offset: u64, len: usize) -> bool {
        let len = len as u64;
        offset.is_multiple_of(self.block_size)
            && len.is_multiple_of(self.block_size)
            && offset.checked_add(len).is_some_and(|end| end <= self.capacity)
    }

    /// Reads whole blocks at byte `offset` into `buf`: any number of blocks in one exit.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if !self.valid(offset, buf.len()) {
            return Err(Error::Invalid);
        }
        result(hypercall::block_read(self.handle, offset, buf))
    }

    /// Writes whole blocks from `buf` at byte `offset`: any number of blocks in one exit.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        if !self.valid(offset, buf.len()) {
            return Err(Error::Invalid);
        }
        result(hypercall::block_write(self.handle, offset, buf))
    }
}

/// A network interface: Ethernet frames in and out.
#[derive(Clone, Copy, Debug)]
pub struct NetDevice {
    handle: u64,
    mac: [u8; 6],
    mtu: u16,
}

/// Ethernet header length; a frame is at most `mtu() + ETHERNET_HEADER` bytes.
pub const ETHERNET_HEADER: usize = 14;

impl NetDevice {
    /// The net device the manifest declares as `name`.
    pub fn open(name: &str) -> Result<Self, Error> {
        let (handle, entry) = acquire(name, MFT_DEV_NET_BASIC)?;
        let n = entry.net();
        Ok(NetDevice { handle, mac: n.mac, mtu: n.mtu })
    }

    pub fn handle(&self) -> u64 {
        self.handle
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// MTU without the Ethernet header.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Largest frame, Ethernet header included: the size a receive buffer needs.
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + ETHERNET_HEADER
    }

    /// The bit of this device in a ready set (see [`wait`]).
    pub fn ready_bit(&self) -> u64 {
        1 << self.handle
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), Error> {
        if frame.len() > self.max_frame() {
            return Err(Error::Invalid);
        }
        result(hypercall::net_write(self.handle, frame))
    }

    /// Receives one frame into `buf` (at least [`max_frame`](Self::max_frame) bytes, or a
    /// larger frame is cut); `Err(Again)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let (code, len) = hypercall::net_read(self.handle, buf);
        result(code).map(|()| len)
    }
}

/// Sleeps until a net device has a frame or the monotonic clock reaches `deadline_ns`; returns
/// the ready set (test a device with [`NetDevice::ready_bit`]).
pub fn wait(deadline_ns: u64) -> u64 {
    crate::time::yield_until(deadline_ns)
}
