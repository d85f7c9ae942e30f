//! The hypercalls, for both modes: the KVM loop (`vm.rs`) and the process-mode trap handler
//! (`process/`) decode an `out` and call the same [`Hypercalls::dispatch`], which runs one checked
//! handler per hypercall (`walltime`, `puts`, `poll`, block and net handlers in `devices/`) and
//! writes the result back into the guest's struct.

use guest_abi::{
    HALT_COOKIE_MAX, HYPERCALL_PIO_BASE, HcBlock, HcHalt, HcNet, HcPoll, HcPuts, HcWalltime, Hypercall,
    SOLO5_EXIT_ABORT, SOLO5_R_EINVAL, SOLO5_R_OK, TRAP_REPORT_MAGIC, TrapReport,
};

use crate::devices::Device;
use crate::devices::net::NetDevice;
use crate::devices::poll::{Poller, Wait};
use crate::devices::ring::{PollFor, Ring};
use crate::memory::GuestRam;
use crate::outcome::{GuestError, HypercallError, Trap};
use crate::report::Stats;
use crate::signals;

/// Result of one hypercall: keep running, or the guest halted.
pub enum Next {
    Resume,
    Halt(i32, Option<Trap>),
}

/// What the hypercalls reach: the ring, guest memory, the devices, POLL's wait set, and the
/// counters the report shows.
pub struct Hypercalls {
    /// The shared ring's I/O thread, when one is running (POLL waits for it too). First: it is
    /// stopped (on drop) before the memory, taps and files it uses go.
    pub ring: Option<Ring>,
    pub ram: GuestRam,
    pub devices: Vec<Device>,
    pub poller: Poller,
    pub stats: Stats,
}

impl Hypercalls {
    /// Dispatches hypercall `nr` with its argument struct at `gpa`.
    pub fn dispatch(&mut self, nr: Hypercall, gpa: u64) -> Result<Next, HypercallError> {
        self.stats.hypercalls[nr as usize] += 1;
        match nr {
            Hypercall::Walltime => self.walltime(gpa),
            Hypercall::Puts => self.puts(gpa),
            Hypercall::Poll => self.poll(gpa),
            Hypercall::BlockWrite | Hypercall::BlockRead => self.block(nr, gpa),
            Hypercall::NetWrite | Hypercall::NetRead => self.net(nr, gpa),
            Hypercall::Halt => self.halt(gpa),
        }
        .map(|()| Next::Resume)
        .or_else(|e| match e {
            HaltOr::Halt(status, trap) => Ok(Next::Halt(status, trap)),
            HaltOr::Err(e) => Err(e),
        })
    }

    fn walltime(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let (mut arg, slot): (HcWalltime, _) = self.ram.read_out_arg(gpa)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        arg.nsecs = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        Ok(self.ram.write_back(slot, arg)?)
    }

    fn puts(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let arg: HcPuts = self.ram.read_arg(gpa)?;
        let buf = self.ram.slice(arg.data, arg.len)?;
        let mut done = 0;
        while done < buf.len() {
            // A reader that stops reading blocks this write; a signal (SIGTERM, --timeout) then
            // cuts it short, and must end the run rather than be followed by another write.
            if signals::pending().is_some() {
                return Err(HypercallError::Interrupted.into());
            }
            // SAFETY: `buf` is a checked range of guest RAM, mapped for this call; the kernel
            // only reads from it.
            let n = unsafe { libc::write(1, buf.ptr_guard().as_ptr().add(done).cast(), buf.len() - done) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(HypercallError::HostIo { device: "console".into(), op: "write", err }.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn poll(&mut self, gpa: u64) -> Result<(), HaltOr> {
        // The out-fields are checked before blocking, so a bad pointer fails fast.
        let (mut arg, slot): (HcPoll, _) = self.ram.read_out_arg(gpa)?;
        // While the guest waits for the ring's thread, POLL also wakes on its progress; when the
        // thread has work pending, POLL does not sleep at all.
        let wait_for = self.ring.as_ref().map_or(PollFor::Devices, Ring::enter_poll);
        let timeout = if wait_for == PollFor::Nothing { 0 } else { arg.timeout_nsecs };
        let waited = self.poller.wait(timeout, wait_for == PollFor::Ring);
        if let Some(ring) = &self.ring {
            let frames = matches!(waited, Ok(Wait::Ready { ready_set, .. }) if ready_set != 0);
            ring.leave_poll(frames);
        }
        match waited {
            Ok(Wait::Ready { ready_set, count }) => {
                arg.ready_set = ready_set;
                arg.ret = count;
            }
            Ok(Wait::Interrupted) => return Err(HypercallError::Interrupted.into()),
            Ok(Wait::HangUp(handle)) => {
                return Err(match self.device(handle) {
                    Some(Device::Net(dev)) => HypercallError::device(&dev.name, dev.io().hang_up()),
                    _ => HypercallError::Host(format!("poll failed: hang-up on handle {handle}")),
                }
                .into());
            }
            Err(e) => return Err(HypercallError::Host(format!("poll failed: {e}")).into()),
        }
        Ok(self.ram.write_back(slot, arg)?)
    }

    fn block(&mut self, nr: Hypercall, gpa: u64) -> Result<(), HaltOr> {
        let (mut arg, slot): (HcBlock, _) = self.ram.read_out_arg(gpa)?;
        let read = nr == Hypercall::BlockRead;
        arg.ret = match self.device(arg.handle) {
            Some(Device::Block(dev)) => {
                dev.request(&self.ram, read, &arg).map_err(|e| HypercallError::device(&dev.name, e))?
            }
            _ => SOLO5_R_EINVAL,
        };
        if arg.ret == SOLO5_R_OK {
            self.count(arg.handle, read, arg.len);
        }
        Ok(self.ram.write_back(slot, arg)?)
    }

    fn net(&mut self, nr: Hypercall, gpa: u64) -> Result<(), HaltOr> {
        let (mut arg, slot): (HcNet, _) = self.ram.read_out_arg(gpa)?;
        let read = nr == Hypercall::NetRead;
        let failed = |dev: &NetDevice, e| HypercallError::device(&dev.name, e);
        match self.device(arg.handle) {
            Some(Device::Net(dev)) if read => {
                (arg.ret, arg.len) = dev.io().read(&self.ram, arg.data, arg.len).map_err(|e| failed(dev, e))?;
                if arg.ret == SOLO5_R_OK
                    && let Some(ring) = &self.ring
                {
                    // TENDER_FEATURE_RX_HINT: which taps have another frame, by a look (no wait)
                    // at POLL's set. Anything but an answer says "maybe" for all of them.
                    let waiting = match self.poller.wait(0, false) {
                        Ok(Wait::Ready { ready_set, .. }) => ready_set,
                        _ => u64::MAX,
                    };
                    ring.set_rx_waiting(waiting);
                }
            }
            Some(Device::Net(dev)) => {
                arg.ret = dev.io().write(&self.ram, arg.data, arg.len).map_err(|e| failed(dev, e))?
            }
            _ => arg.ret = SOLO5_R_EINVAL,
        }
        if arg.ret == SOLO5_R_OK {
            self.count(arg.handle, read, arg.len);
        }
        Ok(self.ram.write_back(slot, arg)?)
    }

    fn halt(&mut self, gpa: u64) -> Result<(), HaltOr> {
        let arg: HcHalt = self.ram.read_arg(gpa)?;
        let mut trap = None;
        if arg.cookie != 0 {
            self.ram.check(arg.cookie, HALT_COOKIE_MAX)?;
            if arg.exit_status == SOLO5_EXIT_ABORT {
                let report: TrapReport = self.ram.read_arg(arg.cookie)?;
                let vector = (report.magic == TRAP_REPORT_MAGIC).then_some(report.vector);
                trap = Some(Trap { frame: report.frame, vector });
            }
        }
        Err(HaltOr::Halt(arg.exit_status, trap))
    }

    /// Counts one successful device operation (handle already validated by the caller).
    fn count(&mut self, handle: u64, read: bool, bytes: u64) {
        if let Some(d) = usize::try_from(handle).ok().and_then(|h| self.stats.devices.get_mut(h)) {
            let (ops, total) =
                if read { (&mut d.read_ops, &mut d.read_bytes) } else { (&mut d.write_ops, &mut d.write_bytes) };
            *ops += 1;
            *total += bytes;
        }
    }

    /// The device with handle `handle` (its manifest index), if there is one.
    pub fn device(&self, handle: u64) -> Option<&Device> {
        usize::try_from(handle).ok().and_then(|h| self.devices.get(h))
    }
}

/// Handlers return this so that HALT can leave the loop through the same `?` path as errors.
enum HaltOr {
    Halt(i32, Option<Trap>),
    Err(HypercallError),
}

impl<E: Into<HypercallError>> From<E> for HaltOr {
    fn from(e: E) -> Self {
        HaltOr::Err(e.into())
    }
}

/// A hypercall is a 4-byte OUT of a 32-bit GPA to port 0x500 + nr; anything else is an error.
pub fn decode_out(port: u16, data: &[u8]) -> Result<(Hypercall, u64), GuestError> {
    let bad_port = GuestError::Port { port, size: data.len(), direction: "out" };
    let Ok(bytes) = <[u8; 4]>::try_from(data) else {
        return Err(bad_port);
    };
    let nr = port.wrapping_sub(HYPERCALL_PIO_BASE);
    if nr >= Hypercall::COUNT {
        return Err(bad_port);
    }
    let call = Hypercall::from_nr(nr).ok_or(GuestError::Hypercall(nr))?;
    Ok((call, u64::from(u32::from_le_bytes(bytes))))
}
