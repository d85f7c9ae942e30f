//! Block devices: a host file per `--block:NAME=PATH`, BLOCK_READ and BLOCK_WRITE.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use guest_abi::{HcBlock, SOLO5_R_EINVAL, SOLO5_R_OK};

use crate::memory::GuestRam;
use crate::vm::HypercallError;

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
    file: File,
    pub capacity: u64,
    pub block_size: u16,
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
        Ok(BlockDevice { name: name.into(), file, capacity, block_size })
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The request's byte range, if it is whole blocks inside the device. Several blocks per
    /// request are fine (runtimes batch); partial blocks are not.
    fn request_ok(&self, req: &HcBlock) -> bool {
        let bs = u64::from(self.block_size);
        req.len <= isize::MAX as u64
            && req.offset < self.capacity
            && req.offset.checked_add(req.len).is_some_and(|end| end <= self.capacity)
            && req.offset.is_multiple_of(bs)
            && req.len.is_multiple_of(bs)
    }

    /// BLOCK_WRITE: guest memory to the file. Returns the ABI result code.
    pub fn write(&self, ram: &GuestRam, req: &HcBlock) -> Result<i32, HypercallError> {
        if !self.request_ok(req) {
            return Ok(SOLO5_R_EINVAL);
        }
        let buf = ram.slice(req.data, req.len)?;
        let base = buf.ptr_guard().as_ptr();
        self.transfer("write", buf.len(), req.offset, |done, offset| {
            // SAFETY: `base..base+len` is a checked range of guest RAM (`ram.slice`) that stays
            // mapped for this call, and `done < len`; the kernel only reads from it.
            unsafe { libc::pwrite64(self.raw_fd(), base.add(done).cast(), buf.len() - done, offset) }
        })
    }

    /// BLOCK_READ: the file to guest memory. Returns the ABI result code.
    pub fn read(&self, ram: &GuestRam, req: &HcBlock) -> Result<i32, HypercallError> {
        if !self.request_ok(req) {
            return Ok(SOLO5_R_EINVAL);
        }
        let buf = ram.slice_mut(req.data, req.len)?;
        let base = buf.ptr_guard_mut().as_ptr();
        self.transfer("read", buf.len(), req.offset, |done, offset| {
            // SAFETY: `base..base+len` is a checked, host-writable range of guest RAM
            // (`ram.slice_mut`) that stays mapped for this call, and `done < len`.
            unsafe { libc::pread64(self.raw_fd(), base.add(done).cast(), buf.len() - done, offset) }
        })
    }

    /// Repeats `io(done, file offset)` until `len` bytes moved. A host error, or the file ending
    /// early, ends the run: the guest must never believe a write landed that did not.
    fn transfer(
        &self,
        op: &'static str,
        len: usize,
        offset: u64,
        mut io: impl FnMut(usize, i64) -> isize,
    ) -> Result<i32, HypercallError> {
        let mut done = 0usize;
        while done < len {
            match io(done, (offset + done as u64) as i64) {
                n if n > 0 => done += n as usize,
                0 => return Err(self.io_error(op, std::io::ErrorKind::UnexpectedEof.into())),
                _ => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(self.io_error(op, err));
                    }
                }
            }
        }
        Ok(SOLO5_R_OK)
    }

    fn io_error(&self, op: &'static str, err: std::io::Error) -> HypercallError {
        HypercallError::HostIo { device: self.name.clone(), op, err }
    }
}
