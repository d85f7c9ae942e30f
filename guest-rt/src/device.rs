//! Devices the unikernel declared in its manifest: typed handles over the block and net
//! hypercalls.

use guest_abi::{MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, SOLO5_R_AGAIN, SOLO5_R_EINVAL, SOLO5_R_OK};

use crate::{bootinfo, hypercall, ring};

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

    /// Reads whole blocks at byte `offset` into `buf`: any number of blocks in one request,
    /// through the ring when the tender offers it for blocks (no exit), else in one hypercall.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if !self.valid(offset, buf.len()) {
            return Err(Error::Invalid);
        }
        let (data, len) = (buf.as_mut_ptr() as u64, buf.len());
        result(
            ring::block(self.handle, true, offset, data, len)
                .unwrap_or_else(|| hypercall::block_read(self.handle, offset, buf)),
        )
    }

    /// Writes whole blocks from `buf` at byte `offset`: any number of blocks in one request, as
    /// [`read`](Self::read) does.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        if !self.valid(offset, buf.len()) {
            return Err(Error::Invalid);
        }
        let (data, len) = (buf.as_ptr() as u64, buf.len());
        result(
            ring::block(self.handle, false, offset, data, len)
                .unwrap_or_else(|| hypercall::block_write(self.handle, offset, buf)),
        )
    }

    /// Reads any byte range: the whole blocks inside it straight into `buf` in one request, the
    /// partial blocks at its ends through a bounce block.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let (head, middle, tail) = self.split(offset, buf.len())?;
        let bs = self.block_size as usize;
        let mut bounce = alloc::vec![0u8; if head.is_some() || tail.is_some() { bs } else { 0 }];
        if let Some((block, skip, len)) = head {
            self.read(block, &mut bounce)?;
            buf[..len].copy_from_slice(&bounce[skip..skip + len]);
        }
        if let Some((block, at, len)) = middle {
            self.read(block, &mut buf[at..at + len])?;
        }
        if let Some((block, at, len)) = tail {
            self.read(block, &mut bounce)?;
            buf[at..at + len].copy_from_slice(&bounce[..len]);
        }
        Ok(())
    }

    /// Writes any byte range: the whole blocks inside it in one request, the partial blocks at its
    /// ends by read-modify-write.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        let (head, middle, tail) = self.split(offset, buf.len())?;
        let bs = self.block_size as usize;
        let mut bounce = alloc::vec![0u8; if head.is_some() || tail.is_some() { bs } else { 0 }];
        if let Some((block, skip, len)) = head {
            self.read(block, &mut bounce)?;
            bounce[skip..skip + len].copy_from_slice(&buf[..len]);
            self.write(block, &bounce)?;
        }
        if let Some((block, at, len)) = middle {
            self.write(block, &buf[at..at + len])?;
        }
        if let Some((block, at, len)) = tail {
            self.read(block, &mut bounce)?;
            bounce[..len].copy_from_slice(&buf[at..at + len]);
            self.write(block, &bounce)?;
        }
        Ok(())
    }

    /// Splits `[offset, offset + len)` into a partial first block (block offset, offset inside
    /// it, length), whole blocks (offset, position in the buffer, length) and a partial last
    /// block (block offset, position in the buffer, length).
    #[allow(clippy::type_complexity)]
    fn split(&self, offset: u64, len: usize) -> Result<(Option<Part>, Option<Part>, Option<Part>), Error> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.capacity).ok_or(Error::Invalid)?;
        Ok(split_range(offset, end, self.block_size))
    }
}

/// (device byte offset, buffer position or offset inside the block, length).
type Part = (u64, usize, usize);

/// See [`BlockDevice::split`]; `end` is exclusive and `bs` a power of two.
fn split_range(offset: u64, end: u64, bs: u64) -> (Option<Part>, Option<Part>, Option<Part>) {
    if offset == end {
        return (None, None, None);
    }
    let first_block = offset - offset % bs;
    let mut pos = offset;
    let mut head = None;
    if !offset.is_multiple_of(bs) || end - first_block < bs {
        let len = ((first_block + bs).min(end) - offset) as usize;
        head = Some((first_block, (offset - first_block) as usize, len));
        pos += len as u64;
    }
    let whole_end = end - end % bs;
    let mut middle = None;
    if pos < whole_end {
        middle = Some((pos, (pos - offset) as usize, (whole_end - pos) as usize));
        pos = whole_end;
    }
    let tail = (pos < end).then(|| (pos, (pos - offset) as usize, (end - pos) as usize));
    (head, middle, tail)
}

#[cfg(test)]
mod tests {
    use super::split_range;

    #[test]
    fn ranges_split_into_partial_and_whole_blocks() {
        assert_eq!(split_range(0, 1024, 512), (None, Some((0, 0, 1024)), None));
        assert_eq!(split_range(10, 20, 512), (Some((0, 10, 10)), None, None));
        assert_eq!(split_range(500, 1100, 512), (Some((0, 500, 12)), Some((512, 12, 512)), Some((1024, 524, 76))));
        assert_eq!(split_range(512, 600, 512), (Some((512, 0, 88)), None, None));
        assert_eq!(split_range(100, 512, 512), (Some((0, 100, 412)), None, None));
        assert_eq!(split_range(7, 7, 512), (None, None, None));
        // Every byte is covered exactly once, in order.
        for (o, e) in [(0u64, 5000u64), (1, 4097), (511, 513), (4095, 4096), (3, 9000)] {
            let (h, m, t) = split_range(o, e, 512);
            let total: usize = [h, m, t].iter().flatten().map(|p| p.2).sum();
            assert_eq!(total as u64, e - o);
        }
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
        if frame.len() < ETHERNET_HEADER || frame.len() > self.max_frame() {
            return Err(Error::Invalid);
        }
        match crate::ring::send(self.handle, frame) {
            Some(code) => result(code),
            None => result(hypercall::net_write(self.handle, frame)),
        }
    }

    /// Receives one frame into `buf` (at least [`max_frame`](Self::max_frame) bytes, or a
    /// larger frame is cut); `Err(Again)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let (code, len) = crate::ring::recv(self.handle, buf).unwrap_or_else(|| hypercall::net_read(self.handle, buf));
        result(code).map(|()| len)
    }

    /// Whether the frame [`recv`](Self::recv) just returned was the last one waiting, by the
    /// tender's hint (tender offers one; false when unknown): another `recv` would find nothing.
    pub(crate) fn drained(&self) -> bool {
        crate::ring::drained(self.handle)
    }

    /// Receives one frame through the shared ring even when the tender's I/O thread sleeps
    /// (the post wakes it): a busy-poll's look, which costs no exit while the thread is awake.
    /// A tender that offers waiting reads holds the read up to `wait_ns` for a frame to arrive
    /// (see `ring::recv_posted`). `None` when the ring is not in use.
    pub(crate) fn recv_through_ring(&self, buf: &mut [u8], wait_ns: u64) -> Option<Result<usize, Error>> {
        crate::ring::recv_posted(self.handle, buf, wait_ns).map(|(code, len)| result(code).map(|()| len))
    }
}

/// Sleeps until a net device has a frame or the monotonic clock reaches `deadline_ns`; returns
/// the ready set (test a device with [`NetDevice::ready_bit`]). A burst of frames through the
/// ring ends here (see `ring::end_burst`).
pub fn wait(deadline_ns: u64) -> u64 {
    ring::end_burst();
    crate::time::yield_until(deadline_ns)
}
