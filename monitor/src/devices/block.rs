//! Block devices: a host file per `--block:NAME=PATH`, BLOCK_READ and BLOCK_WRITE.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use guest_abi::{HcBlock, SOLO5_R_EINVAL, SOLO5_R_OK};
use tender_seccomp::BLOCK_IO_MAX;

use crate::devices::IoError;
use crate::memory::GuestRam;

pub const DEFAULT_BLOCK_SIZE: u16 = 512;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("Could not open block device: {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("{name}: Backing storage size must be block aligned ({block_size} bytes)")]
    NotAligned { name: String, block_size: u16 },
    #[error("{name}: Backing storage must be at least 1 block ({block_size} bytes) in size")]
    TooSmall { name: String, block_size: u16 },
}

pub struct BlockDevice {
    pub name: String,
    /// Owns the fd that `io` uses; lives until the process exits.
    file: File,
    io: BlockIo,
}

impl BlockDevice {
    pub fn open(name: &str, path: &Path, block_size: u16) -> Result<Self, BlockError> {
        let open_err = |err| BlockError::Open { path: path.display().to_string(), err };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        let capacity = file.metadata().map_err(open_err)?.len();
        let bs = u64::from(block_size);
        if capacity % bs != 0 {
            return Err(BlockError::NotAligned { name: name.into(), block_size });
        }
        if capacity < bs {
            return Err(BlockError::TooSmall { name: name.into(), block_size });
        }
        let io = BlockIo { fd: file.as_raw_fd(), capacity, block_size };
        Ok(BlockDevice { name: name.into(), file, io })
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn capacity(&self) -> u64 {
        self.io.capacity
    }

    pub fn block_size(&self) -> u16 {
        self.io.block_size
    }

    /// The requests, for the hypercalls and for the ring's thread.
    pub fn io(&self) -> BlockIo {
        self.io
    }

    /// BLOCK_READ or BLOCK_WRITE by hypercall. Returns the ABI result code.
    pub fn request(&self, ram: &GuestRam, read: bool, req: &HcBlock) -> Result<i32, IoError> {
        self.io.request(ram, read, req.offset, req.data, req.len)
    }
}

/// Block requests on a device's file. Copyable so that the ring's thread can hold one; the fd
/// belongs to the [`BlockDevice`].
#[derive(Clone, Copy, Debug)]
pub struct BlockIo {
    fd: RawFd,
    capacity: u64,
    block_size: u16,
}

impl BlockIo {
    /// Whether `len` bytes at `offset` are whole blocks inside the device. Several blocks per
    /// request are fine (runtimes batch); partial blocks are not.
    fn request_ok(&self, offset: u64, len: u64) -> bool {
        let bs = u64::from(self.block_size);
        len <= isize::MAX as u64
            && offset < self.capacity
            && offset.checked_add(len).is_some_and(|end| end <= self.capacity)
            && offset.is_multiple_of(bs)
            && len.is_multiple_of(bs)
    }

    /// Reads (`read`) the device at byte `offset` into the `len` bytes of guest memory at
    /// `data`, or writes them there. Returns the ABI result code: EINVAL for a request outside
    /// the device or not whole blocks.
    pub fn request(&self, ram: &GuestRam, read: bool, offset: u64, data: u64, len: u64) -> Result<i32, IoError> {
        if !self.request_ok(offset, len) {
            return Ok(SOLO5_R_EINVAL);
        }
        if read {
            let buf = ram.slice_mut(data, len).map_err(IoError::Guest)?;
            let base = buf.ptr_guard_mut().as_ptr();
            self.transfer("read", buf.len(), offset, |done, count, at| {
                // SAFETY: `base..base+len` is a checked, host-writable range of guest RAM
                // (`ram.slice_mut`) that stays mapped for this call, and `done + count <= len`.
                unsafe { libc::pread64(self.fd, base.add(done).cast(), count, at) }
            })
        } else {
            let buf = ram.slice(data, len).map_err(IoError::Guest)?;
            let base = buf.ptr_guard().as_ptr();
            self.transfer("write", buf.len(), offset, |done, count, at| {
                // SAFETY: `base..base+len` is a checked range of guest RAM (`ram.slice`) that
                // stays mapped for this call, and `done + count <= len`; the kernel only reads
                // from it.
                unsafe { libc::pwrite64(self.fd, base.add(done).cast(), count, at) }
            })
        }
    }

    /// Repeats `io(done, count, file offset)` until `len` bytes moved. A host error, or the file
    /// ending early, ends the run: the guest must never believe a write landed that did not.
    ///
    /// Each call moves a power of two of at most `BLOCK_IO_MAX` bytes (the largest that fits in
    /// what is left), which is what the seccomp filter lets through (`tender_seccomp::BlockFile`).
    fn transfer(
        &self,
        op: &'static str,
        len: usize,
        offset: u64,
        mut io: impl FnMut(usize, usize, i64) -> isize,
    ) -> Result<i32, IoError> {
        let mut done = 0usize;
        while done < len {
            let count = piece(len - done);
            match io(done, count, (offset + done as u64) as i64) {
                n if n > 0 => done += n as usize,
                0 => return Err(IoError::Host { op, errno: 0 }),
                _ => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(IoError::Host { op, errno: err.raw_os_error().unwrap_or(libc::EIO) });
                    }
                }
            }
        }
        Ok(SOLO5_R_OK)
    }
}

/// The length of the next system call for `left` (> 0) bytes: the largest power of two not
/// above `left` or `BLOCK_IO_MAX`.
fn piece(left: usize) -> usize {
    let max = BLOCK_IO_MAX as usize;
    if left >= max { max } else { 1 << left.ilog2() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_powers_of_two_up_to_the_filter_limit() {
        let max = BLOCK_IO_MAX as usize;
        for (left, want) in [(1, 1), (512, 512), (1536, 1024), (4095, 2048), (max, max), (3 * max + 7, max)] {
            assert_eq!(piece(left), want, "{left}");
        }
    }
}
