//! The network core: smoltcp over a [`NetDevice`], configured from the command line,
//! driven by one event loop that sleeps in the POLL hypercall.
//!
//! An application owns a [`Stack`] per NIC, adds smoltcp sockets to it (TCP listen/connect,
//! UDP bind), and loops: [`Stack::poll`] moves frames and timers, the application reads and
//! writes its sockets with smoltcp's own socket API, [`Stack::wait`] sleeps until a frame
//! arrives or smoltcp's next deadline. ARP and ICMP echo are answered by the stack itself.
//!
//! ```ignore
//! let (mut net, args) = Stack::from_cmdline("service")?;
//! let server = net.tcp_listen(80);
//! loop {
//!     net.poll();
//!     let sock = net.tcp(server);
//!     if sock.can_recv() { /* read a request, sock.send_slice(response) */ }
//!     net.wait();
//! }
//! ```
//!
//! Why a poll loop and not async: a unikernel has one thread and one event source (POLL); the
//! loop above is the whole scheduler, applications stay ordinary straight-line code, and every
//! buffer is sized once up front (no allocation per packet).
mod config;
mod phy;

pub use config::{IpConfig, parse_args};
pub use smoltcp;

use crate::NetDevice;
use alloc::vec;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};

use phy::Phy;

/// Default TCP socket buffer, each direction.
pub const TCP_BUFFER: usize = 64 << 10;
/// Default UDP buffer: packets and payload bytes (room for a whole batch of full-size datagrams).
pub const UDP_PACKETS: usize = 64;
pub const UDP_BUFFER: usize = 128 << 10;
/// Longest sleep when smoltcp has no deadline (smoltcp reports its own timers, DHCP's included;
/// this bounds how late an application's own checks after [`Stack::wait`] may run). Each wake-up
/// of an idle service costs two exits: at 1 s, 1,000 idle services took 14% of a CPU here
/// (docs/PERFORMANCE.md, "Density"); at 10 s, a tenth of that.
const MAX_SLEEP_NS: u64 = 10_000_000_000;

/// The smoltcp clock: guest-rt's monotonic clock.
pub fn now() -> Instant {
    Instant::from_micros((crate::monotonic_ns() / 1000) as i64)
}

/// One NIC with its interface and sockets.
pub struct Stack {
    phy: Phy,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    nic: NetDevice,
}

impl Stack {
    /// A stack on `nic` with the given IP configuration.
    pub fn new(nic: NetDevice, ip: &IpConfig) -> Self {
        let mut phy = Phy::new(nic);
        let hw = HardwareAddress::Ethernet(EthernetAddress(nic.mac()));
        let mut iface = Interface::new(Config::new(hw), &mut phy, now());
        let mut sockets = SocketSet::new(vec![]);
        let mut dhcp = None;
        match ip {
            IpConfig::Static { address, prefix, gateway } => {
                iface.update_ip_addrs(|a| {
                    let _ = a.push(IpCidr::new((*address).into(), *prefix));
                });
                if let Some(gw) = gateway {
                    let _ = iface.routes_mut().add_default_ipv4_route(*gw);
                }
            }
            IpConfig::Dhcp => dhcp = Some(sockets.add(dhcpv4::Socket::new())),
        }
        Stack { phy, iface, sockets, dhcp, nic }
    }

    /// The usual start of a one-NIC service: opens the net device `name`, configures it from
    /// the command line (`--ipv4=…`, `--ipv4-gateway=…`, `--dhcp`), and returns the stack with
    /// the application's own arguments. The error is a message for the console.
    pub fn from_cmdline(name: &str) -> Result<(Stack, alloc::vec::Vec<&'static str>), alloc::string::String> {
        let (ips, rest) = parse_args(crate::cmdline(), 1)?;
        let nic = NetDevice::open(name).map_err(|e| alloc::format!("cannot open net device {name}: {e:?}"))?;
        Ok((Stack::new(nic, &ips[0]), rest))
    }

    pub fn nic(&self) -> NetDevice {
        self.nic
    }

    /// The interface's IPv4 address and prefix, once configured.
    pub fn ipv4(&self) -> Option<(smoltcp::wire::Ipv4Address, u8)> {
        self.iface.ipv4_addr().map(|a| (a, self.iface.ip_addrs().first().map_or(0, IpCidr::prefix_len)))
    }

    /// Moves pending frames in (at most a batch: [`busy`](Self::busy) stays true when more may
    /// wait) and out, and runs smoltcp's timers. Returns true when a socket may have changed
    /// state.
    pub fn poll(&mut self) -> bool {
        self.phy.refill_rx_budget();
        let changed = self.iface.poll(now(), &mut self.phy, &mut self.sockets) == PollResult::SocketStateChanged;
        if let Some(h) = self.dhcp {
            self.dhcp_event(h);
        }
        changed
    }

    fn dhcp_event(&mut self, h: SocketHandle) {
        match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            Some(dhcpv4::Event::Configured(c)) => {
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(c.address));
                });
                if let Some(router) = c.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                }
            }
            Some(dhcpv4::Event::Deconfigured) => self.iface.update_ip_addrs(|a| a.clear()),
            None => {}
        }
    }

    /// Nanoseconds until smoltcp next needs [`poll`](Self::poll), at most ten seconds.
    pub fn next_deadline_ns(&mut self) -> u64 {
        match self.iface.poll_delay(now(), &self.sockets) {
            Some(d) => d.total_micros().saturating_mul(1000).min(MAX_SLEEP_NS),
            None => MAX_SLEEP_NS,
        }
    }

    /// Sleeps until a frame arrives or smoltcp's next deadline, whichever is first.
    pub fn wait(&mut self) {
        if self.phy.rx_pending() {
            return; // frames may still be queued: poll again before sleeping
        }
        let deadline = crate::monotonic_ns() + self.next_deadline_ns();
        let ready = crate::device::wait(deadline);
        self.note_ready(ready);
    }

    /// Tells the stack which NICs a wait (possibly shared by several stacks) found readable.
    pub fn note_ready(&mut self, ready_set: u64) {
        if ready_set & self.nic.ready_bit() != 0 {
            self.phy.set_rx_pending();
        }
    }

    /// Whether frames may be waiting (the caller must not sleep).
    pub fn busy(&self) -> bool {
        self.phy.rx_pending()
    }

    /// Called with every received frame before the stack sees it (for statistics or tests).
    pub fn set_rx_hook(&mut self, hook: fn(&[u8])) {
        self.phy.hook = Some(hook);
    }

    /// A TCP socket listening on `port`, with [`TCP_BUFFER`] bytes each way. A listening socket
    /// serves one connection at a time: add several for concurrent clients.
    pub fn tcp_listen(&mut self, port: u16) -> SocketHandle {
        let mut s =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
        let _ = s.listen(port);
        self.sockets.add(s)
    }

    /// A TCP socket connecting to `remote` from local port `local_port`.
    pub fn tcp_connect(
        &mut self,
        remote: smoltcp::wire::IpEndpoint,
        local_port: u16,
    ) -> Result<SocketHandle, tcp::ConnectError> {
        let mut s =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
        s.connect(self.iface.context(), remote, local_port)?;
        Ok(self.sockets.add(s))
    }

    /// A UDP socket bound to `port`.
    pub fn udp_bind(&mut self, port: u16) -> SocketHandle {
        let meta = || vec![udp::PacketMetadata::EMPTY; UDP_PACKETS];
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0; UDP_BUFFER]),
            udp::PacketBuffer::new(meta(), vec![0; UDP_BUFFER]),
        );
        let _ = s.bind(IpListenEndpoint { addr: None, port });
        self.sockets.add(s)
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(h)
    }

    pub fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut(h)
    }
}
