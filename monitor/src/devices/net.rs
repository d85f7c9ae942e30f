//! Network devices: a tap per `--net:NAME=IFACE` (or an open tap fd, `@FD`), NET_READ and
//! NET_WRITE.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use guest_abi::{SOLO5_R_AGAIN, SOLO5_R_EINVAL, SOLO5_R_EUNSPEC, SOLO5_R_OK};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::devices::IoError;
use crate::devices::rx_filter::{FilterError, RxFilter};
use crate::memory::GuestRam;

/// Ethernet header length: frames may be up to MTU + this.
pub const ETHERNET_HEADER: u64 = 14;
const IFNAMSIZ: usize = 16;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNGETIFF: libc::c_ulong = 0x800454d2;
/// `_IO('T', 227)`: an fd for the network namespace the tap lives in (Linux 5.2).
const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Could not attach interface: {iface}: {err}")]
    Attach { iface: String, err: std::io::Error },
    #[error("Could not attach interface: {iface}: no such interface")]
    NoSuchInterface { iface: String },
    #[error("Could not attach interface: {iface}: interface name too long (max {} characters)", IFNAMSIZ - 1)]
    NameTooLong { iface: String },
    #[error("Could not attach interface: fd {fd}: not an open tap device (IFF_TAP|IFF_NO_PI)")]
    NotATap { fd: RawFd },
    #[error("Could not attach interface: {iface}: {err}")]
    Filter { iface: String, err: FilterError },
}

/// Where a net device's tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// An existing tap interface, by name.
    Interface(String),
    /// An already-open tap fd passed by an orchestrator (`@FD`).
    Fd(RawFd),
}

pub struct NetDevice {
    pub name: String,
    tap: OwnedFd,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Frame I/O on the tap, with its receive filter; built once, so a hypercall borrows it.
    io: TapIo,
}

impl NetDevice {
    pub fn open(name: &str, source: &TapSource, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let (tap, iface) = match source {
            TapSource::Interface(iface) => (attach(iface)?, iface.clone()),
            TapSource::Fd(fd) => adopt(*fd)?,
        };
        let attach_err = |err| NetError::Attach { iface: iface.clone(), err };
        fcntl(&tap, FcntlArg::F_SETFL(OFlag::O_NONBLOCK | OFlag::O_RDWR)).map_err(|e| attach_err(e.into()))?;
        let mtu = tap_mtu(&tap, &iface).map_err(attach_err)?;
        let mac = match mac {
            Some(m) => m,
            None => random_mac().map_err(attach_err)?,
        };
        let filter = RxFilter::attach(tap.as_raw_fd(), mac).map_err(|err| NetError::Filter { iface, err })?;
        let io = TapIo { fd: tap.as_raw_fd(), mtu, filter: Some(Arc::new(filter)) };
        Ok(NetDevice { name: name.into(), tap, mac, mtu, io })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.tap.as_fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// What NET_READ and NET_WRITE need, for the vCPU thread and the net ring's I/O thread.
    /// The tap's frame I/O, for the hypercalls and (cloned) for the ring's thread.
    pub fn io(&self) -> &TapIo {
        &self.io
    }
}

/// Frame I/O on a tap, for the vCPU thread and the net ring's thread; the fd belongs to the
/// [`NetDevice`], which lives until the process exits.
#[derive(Clone, Debug)]
pub struct TapIo {
    fd: RawFd,
    mtu: u16,
    /// Learns the guest's addresses from the frames it sends.
    filter: Option<Arc<RxFilter>>,
}

impl TapIo {
    /// Frame I/O on `fd` (a tap, or any fd that keeps frames apart, for tests), unfiltered.
    #[cfg(test)]
    pub(crate) fn new(fd: RawFd, mtu: u16) -> Self {
        TapIo { fd, mtu, filter: None }
    }

    /// The tap's fd, for a thread that waits for it to become readable.
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// NET_WRITE: one frame of `len` bytes at `data` in guest memory to the tap. Returns the
    /// result code for the guest: a frame the tap refuses (the interface is down, the kernel is
    /// short of memory) is dropped, as a NIC would; a tap that is gone ends the run.
    pub fn write(&self, ram: &GuestRam, data: u64, len: u64) -> Result<i32, IoError> {
        // A frame has at least its Ethernet header and at most MTU bytes of payload after it.
        if !(ETHERNET_HEADER..=u64::from(self.mtu) + ETHERNET_HEADER).contains(&len) {
            return Ok(SOLO5_R_EINVAL);
        }
        let buf = ram.slice(data, len).map_err(IoError::Guest)?;
        // SAFETY: `buf` is a checked range of guest RAM that stays mapped for this call; the
        // kernel only reads from it.
        let n = unsafe { libc::write(self.fd, buf.ptr_guard().as_ptr().cast(), buf.len()) };
        match n {
            n if n as u64 == len => {
                if let Some(filter) = &self.filter {
                    // The headers the filter learns from: Ethernet, then ARP or IPv4 (42 bytes).
                    let mut head = [0u8; 42];
                    let got = buf.copy_to(&mut head[..]);
                    filter.learn(&head[..got]);
                }
                Ok(SOLO5_R_OK)
            }
            n if n >= 0 => Ok(SOLO5_R_EUNSPEC),
            _ => failed("write"),
        }
    }

    /// NET_READ: at most one frame from the tap into the `len` bytes at `data`. Returns the
    /// result code and the frame length; a tap that is gone ends the run.
    pub fn read(&self, ram: &GuestRam, data: u64, len: u64) -> Result<(i32, u64), IoError> {
        let buf = ram.slice_mut(data, len).map_err(IoError::Guest)?;
        // SAFETY: `buf` is a checked, host-writable range of guest RAM that stays mapped for
        // this call.
        let n = unsafe { libc::read(self.fd, buf.ptr_guard_mut().as_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => Ok((SOLO5_R_OK, n as u64)),
            0 => Ok((SOLO5_R_AGAIN, 0)),
            _ => failed("read").map(|ret| (ret, 0)),
        }
    }

    /// Why epoll reported an error or hang-up on the tap: the error a read gives now (without
    /// taking a frame: it asks for 0 bytes), or EIO if the read succeeds. Either way the run
    /// ends, since epoll would report the same again at once.
    pub fn hang_up(&self) -> IoError {
        let mut nothing = [0u8; 0];
        // SAFETY: a zero-length read into our own (empty) buffer writes nothing.
        let n = unsafe { libc::read(self.fd, nothing.as_mut_ptr().cast(), 0) };
        let errno = if n < 0 { last_errno() } else { libc::EIO };
        IoError::Host { op: "read", errno }
    }
}

/// The guest's answer to a failed tap read or write (`op`), or the end of the run if the tap is
/// gone.
fn failed(op: &'static str) -> Result<i32, IoError> {
    match last_errno() {
        libc::EAGAIN => Ok(SOLO5_R_AGAIN),
        errno if tap_gone(op, errno) => Err(IoError::Host { op, errno }),
        _ => Ok(SOLO5_R_EUNSPEC),
    }
}

/// Whether a tap read or write failing with `errno` means the tap is gone for good. A deleted
/// interface gives EBADFD on both, and epoll reports EPOLLERR for it at once, so answering
/// anything but the end of the run would make guest and tender spin. An interface that is only
/// down refuses writes with EIO, which passes once it is up again: that frame is just dropped.
fn tap_gone(op: &str, errno: i32) -> bool {
    match errno {
        libc::EBADFD | libc::EBADF | libc::ENXIO | libc::ENODEV => true,
        // A non-blocking read on a live tap never fails with EIO.
        libc::EIO => op == "read",
        _ => false,
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Opens an existing tap interface. It must exist already: TUNSETIFF on an unknown name would
/// silently create a new interface.
fn attach(iface: &str) -> Result<OwnedFd, NetError> {
    if iface.is_empty() || iface.len() >= IFNAMSIZ {
        return Err(NetError::NameTooLong { iface: iface.into() });
    }
    if nix::net::if_::if_nametoindex(iface).is_err() {
        return Err(NetError::NoSuchInterface { iface: iface.into() });
    }
    let tap = tun_tap::Iface::without_packet_info(iface, tun_tap::Mode::Tap)
        .map_err(|err| NetError::Attach { iface: iface.into(), err })?;
    if tap.name() != iface {
        let err = std::io::Error::other(format!("kernel attached {} instead", tap.name()));
        return Err(NetError::Attach { iface: iface.into(), err });
    }
    // SAFETY: `into_raw_fd` hands over sole ownership of the tap's open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(tap.into_raw_fd()) })
}

/// Takes over an fd passed by the caller, after checking that it is a tap without packet info.
fn adopt(fd: RawFd) -> Result<(OwnedFd, String), NetError> {
    let not_tap = NetError::NotATap { fd };
    if fd < 0 || fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
        return Err(not_tap);
    }
    let mut ifr = [0u8; 40];
    // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes on x86-64) into `ifr`; on a non-tun fd
    // it fails with EBADFD/EINVAL and writes nothing.
    let rc = unsafe { libc::ioctl(fd, TUNGETIFF, ifr.as_mut_ptr()) };
    let flags = libc::c_short::from_ne_bytes([ifr[16], ifr[17]]);
    if rc != 0 || flags & IFF_TAP == 0 || flags & IFF_NO_PI == 0 {
        return Err(not_tap);
    }
    let name = CStr::from_bytes_until_nul(&ifr[..IFNAMSIZ]).map_err(|_| NetError::NotATap { fd })?;
    // SAFETY: the caller gave this fd to tender for the run (`--net:NAME=@FD`); it is open
    // (checked above) and from now on owned, and closed, by the device.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((owned, name.to_string_lossy().into_owned()))
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for an immediate fcntl(F_GETFD) probe, which is harmless on any fd number.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// The tap's MTU, asked in the tap's own network namespace: an fd passed with `@FD` may belong
/// to a tap in another namespace than tender's (an orchestrator opened it there), where the name
/// means nothing or, worse, another interface.
fn tap_mtu(tap: &OwnedFd, iface: &str) -> std::io::Result<u16> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd for the tap's namespace.
    let ns = unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETDEVNETNS) };
    if ns < 0 {
        return interface_mtu(iface); // older kernels: the name in our own namespace
    }
    // SAFETY: `ns` was just returned to us and is owned by nobody else.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    let iface = iface.to_string();
    // setns applies to the calling thread only: a short-lived thread asks from inside.
    std::thread::spawn(move || {
        // SAFETY: moves only this thread, which ends right after, into the tap's namespace. It
        // needs CAP_SYS_ADMIN; without it the thread stays in tender's namespace, which is then
        // the best guess (an unprivileged caller normally shares its namespace with the tap).
        let _ = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        interface_mtu(&iface)
    })
    .join()
    .map_err(|_| std::io::Error::other("MTU lookup thread failed"))?
}

/// The interface MTU (without the Ethernet header), from SIOCGIFMTU in this thread's namespace.
fn interface_mtu(iface: &str) -> std::io::Result<u16> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain data; zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into the `ifreq` we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFMTU the union holds `ifru_mtu`.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    u16::try_from(mtu).map_err(|_| std::io::Error::other("MTU out of range"))
}

/// A random locally administered unicast MAC.
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    mac[0] = (mac[0] & !0x01) | 0x02;
    Ok(mac)
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        // from_str_radix alone would take a sign ("+2").
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `xx:xx:xx:xx:xx:xx`, the form [`parse_mac`] reads.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let mac = [0x02, 0, 0xab, 0x10, 0xff, 0x01];
        assert_eq!(format_mac(&mac), "02:00:ab:10:ff:01");
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
    }
}
