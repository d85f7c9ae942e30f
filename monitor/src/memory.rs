//! Guest RAM and every access the tender makes to it.
//!
//! All guest memory goes through vm-memory. On top of it this module enforces the ABI's pointer
//! rule (section 5.1: `gpa < mem_size` and `gpa + len < mem_size`, overflow-checked) and keeps
//! out-parameters away from the ranges the tender made read-only on the host, so a hostile
//! pointer becomes a clean [`GuestFault`], never a SIGSEGV of the tender.

use std::fmt;

use guest_abi::{
    BootInfo, DebugArea, HcBlock, HcHalt, HcNet, HcPoll, HcPuts, HcWalltime, NetRingCommit, NetRingEntry, TrapFrame,
    TrapReport,
};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion, VolatileSlice,
};

/// A guest request that breaks the ABI's memory rules. Ends the run (exit 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault {
    pub gpa: u64,
    pub len: u64,
    pub write: bool,
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.write {
            write!(
                f,
                "invalid guest access: gpa={:#x}, size={} (write to memory outside the guest's writable RAM)",
                self.gpa, self.len
            )
        } else {
            write!(f, "invalid guest access: gpa={:#x}, size={}", self.gpa, self.len)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {0} bytes of guest memory: {1}")]
    Allocate(u64, String),
    #[error("cannot map guest memory at {0:#x}: {1}")]
    Place(u64, std::io::Error),
    #[error("cannot write-protect guest memory: {0}")]
    Protect(std::io::Error),
    #[error("cannot write guest memory at {0:#x}")]
    Setup(u64),
}

/// An ABI struct that the tender may copy in and out of guest memory.
///
/// A local wrapper because vm-memory's `ByteValued` is a foreign trait and the structs live in
/// guest-abi, which stays dependency-free for the guest side.
#[repr(transparent)]
#[derive(Clone, Copy, Default)]
pub struct Abi<T>(pub T);

macro_rules! abi_pod {
    ($($t:ty),*) => {$(
        // SAFETY: the guest-abi struct is #[repr(C)], made only of integers and byte arrays with
        // explicit padding fields, so every bit pattern is a valid value and it has no implicit
        // padding; guest-abi asserts its size at compile time.
        unsafe impl ByteValued for Abi<$t> {}
    )*};
}
abi_pod!(
    HcWalltime,
    HcPuts,
    HcPoll,
    HcBlock,
    HcNet,
    HcHalt,
    BootInfo,
    TrapFrame,
    TrapReport,
    NetRingEntry,
    NetRingCommit,
    DebugArea
);

/// Where a struct read by [`GuestRam::read_out_arg`] goes back: only that method makes one, so
/// holding one means the range was checked writable.
#[must_use]
pub struct OutArg<T> {
    gpa: u64,
    _arg: std::marker::PhantomData<T>,
}

/// Guest RAM: one anonymous, zero-filled mapping, at GPA 0 for a VM, or at host address `base`
/// (= its GPA) in process mode. A clone shares the same mapping (the ring's I/O thread holds one).
#[derive(Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    /// Lowest guest address: 0 for a VM, the mapping's start in process mode.
    base: u64,
    /// Guest-visible size (boot info `mem_size`): the limit for every guest pointer.
    limit: u64,
    /// Host-read-only ranges `[start, end)`, sorted, from the ELF's non-writable segments.
    read_only: Vec<(u64, u64)>,
}

impl GuestRam {
    /// Allocates `total` bytes (the guest's memory plus any device areas above `limit`).
    pub fn new(total: u64, limit: u64) -> Result<Self, MemoryError> {
        let size = usize::try_from(total).map_err(|_| MemoryError::Allocate(total, "too large".into()))?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
            .map_err(|e| MemoryError::Allocate(total, e.to_string()))?;
        Ok(GuestRam { mem, base: 0, limit, read_only: Vec::new() })
    }

    /// Process mode: maps `[base, total)` at the same host addresses (`MAP_FIXED_NOREPLACE`:
    /// never over anything already mapped), read and write, so that a guest address is the host
    /// address. Nothing below `base` is guest memory.
    pub fn new_at(base: u64, total: u64, limit: u64) -> Result<Self, MemoryError> {
        let too_large = || MemoryError::Allocate(total, "too large".into());
        let size = total.checked_sub(base).and_then(|s| usize::try_from(s).ok()).ok_or_else(too_large)?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a new anonymous mapping at a fixed address that the kernel refuses to place over
        // an existing one (MAP_FIXED_NOREPLACE), so no memory of ours is replaced.
        let addr = unsafe { libc::mmap(base as *mut libc::c_void, size, prot, flags, -1, 0) };
        if addr == libc::MAP_FAILED {
            return Err(MemoryError::Place(base, std::io::Error::last_os_error()));
        }
        if addr as u64 != base {
            // Kernels before 4.17 ignore the flag and may place the mapping elsewhere.
            return Err(MemoryError::Place(base, std::io::Error::from_raw_os_error(libc::EEXIST)));
        }
        let alloc = |e: String| MemoryError::Allocate(total, e);
        // SAFETY: `addr..addr+size` is the mapping just made, with these protections and flags;
        // it is never unmapped (the process ends with `_exit`).
        let region =
            unsafe { MmapRegion::build_raw(addr.cast(), size, prot, flags) }.map_err(|e| alloc(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(base)).ok_or_else(too_large)?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| alloc(e.to_string()))?;
        Ok(GuestRam { mem, base, limit, read_only: Vec::new() })
    }

    pub fn inner(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Lowest guest address (0 for a VM).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Guest-visible memory size.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// End of the whole mapping, including device areas above the guest-visible size.
    pub fn total(&self) -> u64 {
        self.base + self.mem.iter().map(|r| r.len()).sum::<u64>()
    }

    /// Host address of the mapping's start (for KVM_SET_USER_MEMORY_REGION).
    pub fn host_base(&self) -> *mut u8 {
        // The lowest guest address always exists: the mapping starts there.
        self.mem.get_host_address(GuestAddress(self.base)).unwrap_or(std::ptr::null_mut())
    }

    /// Setup-time write (loader, boot info); not for guest-supplied addresses.
    pub fn write_setup(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.mem.write_slice(data, GuestAddress(gpa)).map_err(|_| MemoryError::Setup(gpa))
    }

    /// Makes `[start, end)` read-only on the host (and executable, for the text of a process-mode
    /// guest) and remembers it, so that no out-parameter is ever written there. `start` and `end`
    /// are page aligned and inside the mapping.
    pub fn protect_read_only(&mut self, start: u64, end: u64, exec: bool) -> Result<(), MemoryError> {
        if start >= end {
            return Ok(());
        }
        let len = usize::try_from(end - start).map_err(|_| MemoryError::Setup(start))?;
        let slice = self.mem.get_slice(GuestAddress(start), len).map_err(|_| MemoryError::Setup(start))?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        let prot = if exec { libc::PROT_READ | libc::PROT_EXEC } else { libc::PROT_READ };
        // SAFETY: `ptr..ptr+len` is a page-aligned part of our own guest mapping (vm-memory
        // checked the range); making it read-only cannot invalidate any Rust reference because
        // the tender never holds references into guest memory, and every later host write goes
        // through `check_write`, which refuses this range.
        let rc = unsafe { libc::mprotect(ptr.cast(), len, prot) };
        if rc != 0 {
            return Err(MemoryError::Protect(std::io::Error::last_os_error()));
        }
        self.read_only.push((start, end));
        self.read_only.sort_unstable();
        Ok(())
    }

    /// The ABI's range rule for a guest pointer: strictly inside guest-visible memory, and not
    /// below its lowest address (process mode has nothing mapped below 0x10000). An empty range
    /// touches nothing and only needs `gpa < limit`, as under KVM: Rust's empty slices point at
    /// address 1 (`puts("")` of guest-rt).
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), GuestFault> {
        match gpa.checked_add(len) {
            Some(end) if (gpa >= self.base || len == 0) && gpa < self.limit && end < self.limit => Ok(()),
            _ => Err(GuestFault { gpa, len, write: false }),
        }
    }

    /// [`check`](Self::check), and the range must not touch host-read-only memory.
    pub fn check_write(&self, gpa: u64, len: u64) -> Result<(), GuestFault> {
        self.check(gpa, len)?;
        let end = gpa + len; // cannot overflow: checked above
        let overlaps = self.read_only.iter().any(|&(s, e)| gpa < e && s < end.max(gpa + 1));
        if overlaps {
            return Err(GuestFault { gpa, len, write: true });
        }
        Ok(())
    }

    /// Reads a hypercall argument struct (or any ABI struct) from a guest pointer.
    pub fn read_arg<T: Copy + Default>(&self, gpa: u64) -> Result<T, GuestFault>
    where
        Abi<T>: ByteValued,
    {
        let len = size_of::<T>() as u64;
        self.check(gpa, len)?;
        self.mem.read_obj::<Abi<T>>(GuestAddress(gpa)).map(|a| a.0).map_err(|_| GuestFault { gpa, len, write: false })
    }

    /// Writes a hypercall argument struct back (its out-fields).
    pub fn write_arg<T: Copy + Default>(&self, gpa: u64, val: T) -> Result<(), GuestFault>
    where
        Abi<T>: ByteValued,
    {
        let len = size_of::<T>() as u64;
        self.check_write(gpa, len)?;
        self.write_checked(gpa, val)
    }

    /// Reads a hypercall argument struct that has out-fields: checked once, as writable, before
    /// anything is read or done (a bad pointer fails fast); [`write_back`](Self::write_back)
    /// then writes it without checking again.
    pub fn read_out_arg<T: Copy + Default>(&self, gpa: u64) -> Result<(T, OutArg<T>), GuestFault>
    where
        Abi<T>: ByteValued,
    {
        let len = size_of::<T>() as u64;
        self.check_write(gpa, len)?;
        let val = self.mem.read_obj::<Abi<T>>(GuestAddress(gpa)).map_err(|_| GuestFault { gpa, len, write: false })?;
        Ok((val.0, OutArg { gpa, _arg: std::marker::PhantomData }))
    }

    /// Writes back a struct read by [`read_out_arg`](Self::read_out_arg), whose range was checked
    /// then (the read-only ranges are set before the guest runs and never change during it).
    pub fn write_back<T: Copy + Default>(&self, slot: OutArg<T>, val: T) -> Result<(), GuestFault>
    where
        Abi<T>: ByteValued,
    {
        self.write_checked(slot.gpa, val)
    }

    fn write_checked<T: Copy + Default>(&self, gpa: u64, val: T) -> Result<(), GuestFault>
    where
        Abi<T>: ByteValued,
    {
        let len = size_of::<T>() as u64;
        self.mem.write_obj(Abi(val), GuestAddress(gpa)).map_err(|_| GuestFault { gpa, len, write: true })
    }

    /// Up to `buf.len()` bytes at `gpa`, for the trap handler to decode the instruction at a
    /// guest's RIP: fewer at the end of the mapping, none outside it. Returns how many.
    pub fn read_code(&self, gpa: u64, buf: &mut [u8]) -> usize {
        let Some(left) = self.total().checked_sub(gpa).filter(|_| gpa >= self.base) else {
            return 0;
        };
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match self.mem.read_slice(&mut buf[..n], GuestAddress(gpa)) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }

    /// A checked view of a guest buffer that the host will read.
    pub fn slice(&self, gpa: u64, len: u64) -> Result<VolatileSlice<'_, ()>, GuestFault> {
        self.check(gpa, len)?;
        self.get(gpa, len, false)
    }

    /// A checked view of a guest buffer that the host will write.
    pub fn slice_mut(&self, gpa: u64, len: u64) -> Result<VolatileSlice<'_, ()>, GuestFault> {
        self.check_write(gpa, len)?;
        self.get(gpa, len, true)
    }

    fn get(&self, gpa: u64, len: u64, write: bool) -> Result<VolatileSlice<'_, ()>, GuestFault> {
        let fault = GuestFault { gpa, len, write };
        let n = usize::try_from(len).map_err(|_| fault)?;
        // An empty range below the base (see `check`): an empty slice at the base.
        let at = if n == 0 { gpa.max(self.base) } else { gpa };
        self.mem.get_slice(GuestAddress(at), n).map_err(|_| fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::new(4 << 20, 4 << 20).unwrap()
    }

    #[test]
    fn range_rule_is_strict_and_overflow_safe() {
        let r = ram();
        let m = r.limit();
        assert!(r.check(m - 16, 8).is_ok());
        assert!(r.check(m - 8, 8).is_err(), "ending exactly at mem_size is rejected");
        assert!(r.check(m, 0).is_err());
        assert!(r.check(u64::MAX - 3, 8).is_err());
        assert!(r.check(8, u64::MAX).is_err());
        assert!(r.check(0, 0).is_ok());
    }

    #[test]
    fn out_params_never_reach_read_only_memory() {
        let mut r = ram();
        r.protect_read_only(0x10_0000, 0x10_2000, false).unwrap();
        assert!(r.write_arg(0x10_1000, HcWalltime { nsecs: 1 }).is_err());
        assert!(r.write_arg(0x10_0ffc, HcWalltime { nsecs: 1 }).is_err(), "straddling");
        assert!(r.slice_mut(0x10_1fff, 1).is_err());
        assert!(r.slice_mut(0x10_2000, 16).is_ok());
        assert!(r.slice(0x10_1000, 16).is_ok(), "reading is fine");
        // An argument with out-fields is refused before it is read, as a write.
        assert!(r.read_out_arg::<HcWalltime>(0x10_1000).is_err_and(|f| f.write));
        assert!(r.read_out_arg::<HcWalltime>(0x10_1ffc).is_err_and(|f| f.write), "straddling");
        let (arg, slot) = r.read_out_arg::<HcWalltime>(0x10_2000).unwrap();
        r.write_back(slot, HcWalltime { nsecs: arg.nsecs + 7 }).unwrap();
        assert_eq!(r.read_arg::<HcWalltime>(0x10_2000).unwrap().nsecs, 7);
        assert!(r.check_write(0x10_2000, 0).is_ok());
        assert!(r.check_write(0x10_1000, 0).is_err(), "an empty write inside is still refused");
        r.write_arg(0x20_0000, HcWalltime { nsecs: 7 }).unwrap();
        assert_eq!(r.read_arg::<HcWalltime>(0x20_0000).unwrap().nsecs, 7);
    }

    /// Process mode: the mapping sits at its guest addresses, and nothing below its base is guest
    /// memory (the pointer rule refuses it rather than letting vm-memory fail or the host fault).
    #[test]
    fn process_mode_memory_starts_at_its_base() {
        // A base far from anything of the test process's, so that MAP_FIXED_NOREPLACE succeeds.
        let base = 0x3_0000_0000;
        let r = GuestRam::new_at(base, base + (4 << 20), base + (2 << 20)).unwrap();
        assert_eq!((r.base(), r.total(), r.host_base() as u64), (base, base + (4 << 20), base));
        assert!(r.check(0, 1).is_err(), "page 0 is not guest memory");
        assert!(r.check(base - 8, 16).is_err(), "straddling the base");
        assert!(r.check(base, 8).is_ok());
        assert!(r.check(1, 0).is_ok() && r.slice(1, 0).is_ok_and(|s| s.is_empty()), "an empty range touches nothing");
        assert!(r.check(1, 1).is_err() && r.check(base + (2 << 20), 0).is_err());
        r.write_arg(base + 0x1000, HcWalltime { nsecs: 9 }).unwrap();
        // SAFETY: reads the u64 just written through the checked path, at its host address.
        assert_eq!(unsafe { ((base + 0x1000) as *const u64).read() }, 9);
        let err = GuestRam::new_at(base, base + (4 << 20), base + (2 << 20)).err().unwrap();
        assert!(err.to_string().starts_with("cannot map guest memory at 0x300000000: "), "{err}");
    }
}
